//! An app keeps writing through plain SQL while dimple syncs the same file: no
//! write is lost and the app never sees "database is locked".

use crate::support::*;
use std::process::{Command, Stdio};

const APP: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=5)  # Python's default busy timeout
n = int(sys.argv[2])
for i in range(n):
    db.execute("INSERT INTO t(id, a, b) VALUES (?, ?, 'new')", (f"app{i:05}", i))
    if i > 0:
        db.execute("UPDATE t SET b = 'updated' WHERE id = ?", (f"app{i-1:05}",))
    db.commit()
print("done", n)
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
    let writes = 1500;
    let mut app = Command::new("python3")
        .args(["-c", APP, g.db("a").to_str().unwrap(), &writes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut syncs = 0;
    while app.try_wait()?.is_none() {
        block_on(dimple::sync(&mut a, &store))?;
        syncs += 1;
    }
    let out = app.wait_with_output()?;
    assert!(out.status.success(), "the app failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(syncs >= 2, "dimple synced only {syncs} times while the app wrote");
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
