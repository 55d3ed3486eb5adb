//! An app keeps writing through plain SQL while dimple syncs the same file: no
//! write is lost and the app never sees "database is locked".

use crate::support::*;
use std::process::{Command, Stdio};

const APP: &str = r#"
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=5)  # Python's default busy timeout
stop = sys.argv[2]
i = 0
# Write until the test has seen enough syncs overlap with us.
while i < 200 or not os.path.exists(stop):
    db.execute("INSERT INTO t(id, a, b) VALUES (?, ?, 'new')", (f"app{i:06}", i))
    if i > 0:
        db.execute("UPDATE t SET b = 'updated' WHERE id = ?", (f"app{i-1:06}",))
    db.commit()
    i += 1
print(i)
"#;

#[test]
fn an_app_writing_during_sync_loses_nothing_and_never_sees_a_lock_error() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut b = g.replica("b");
    let store = g.store();
    // Something to pull while the app writes: b's rows.
    for i in 0..3000 {
        b.conn().execute("INSERT INTO t(id, a) VALUES (?1, ?2)", rusqlite::params![format!("b{i:05}"), i])?;
        if i % 100 == 0 {
            b.capture()?;
        }
    }
    block_on(dimple::push(&mut b, &store))?;
    let stop = g.dir.path().join("stop");
    let mut app = Command::new("python3")
        .args(["-c", APP, g.db("a").to_str().unwrap(), stop.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Five syncs while the app is certainly still writing (it waits for `stop`).
    for _ in 0..5 {
        assert!(app.try_wait()?.is_none(), "the app stopped early");
        block_on(dimple::sync(&mut a, &store))?;
    }
    std::fs::write(&stop, b"")?;
    let out = app.wait_with_output()?;
    assert!(out.status.success(), "the app failed: {}", String::from_utf8_lossy(&out.stderr));
    let writes: i64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let count = |r: &dimple::Replica, sql: &str| -> i64 { r.conn().query_row(sql, [], |row| row.get(0)).unwrap() };
    for r in [&a, &b] {
        assert_eq!(count(r, "SELECT count(*) FROM t WHERE id LIKE 'app%'"), writes);
        assert_eq!(count(r, "SELECT count(*) FROM t WHERE b = 'updated'"), writes - 1);
        assert_eq!(count(r, "SELECT count(*) FROM t WHERE id LIKE 'b%'"), 3000);
    }
    assert!(rows(a.conn(), "t") == rows(b.conn(), "t"), "replicas differ");
    Ok(())
}
