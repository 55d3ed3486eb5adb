//! The database file's write-ahead log while dimple syncs. A pull checkpoints it
//! into the file every 64 MiB rather than every 4 MiB (each checkpoint rewrites
//! pages the next batch dirties again, and syncs the file), and gives the space
//! back when it ends: the WAL it leaves is no bigger than SQLite's usual 4 MiB.

use crate::support::*;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn wal_bytes(db: &std::path::Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(std::path::PathBuf::from(wal)).map(|m| m.len()).unwrap_or(0)
}

/// A writer that pushed `batches` batches of 300 rows of 4 KiB of random text each.
fn pushed_batches(
    g: &Group,
    store: &dimple::store::Metered<dyn dimple::store::Store>,
    batches: usize,
) -> Result<dimple::Replica, Box<dyn std::error::Error>> {
    let mut w = g.replica("w");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for batch in 0..batches {
        for i in 0..300 {
            let text: String = (0..4096).map(|_| rng.gen_range('!'..='~')).collect();
            w.conn()
                .execute("INSERT INTO t(id, b) VALUES (?1, ?2)", rusqlite::params![format!("{batch}-{i}"), text])?;
        }
        block_on(dimple::push(&mut w, store))?;
    }
    Ok(w)
}

#[test]
fn a_pull_leaves_a_wal_of_at_most_4_mib() -> TestResult {
    let g = Group::new();
    let store = g.store();
    // Eight batches of about 1.5 MB: far more WAL than 4 MiB.
    let w = pushed_batches(&g, &store, 8)?;
    let mut r = g.replica("r");
    block_on(dimple::pull(&mut r, &store))?;
    assert_eq!(rows(r.conn(), "t"), rows(w.conn(), "t"));
    let after = wal_bytes(&g.db("r"));
    assert!(after <= 4 * MIB, "the pull left a WAL of {after} bytes");
    Ok(())
}

#[test]
fn a_pull_while_an_app_holds_a_read_open_neither_waits_for_it_nor_fails() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let w = pushed_batches(&g, &store, 4)?;
    let mut r = g.replica("r");
    let app = open_plain(&g.db("r"));
    app.execute_batch("BEGIN")?;
    let seen: i64 = app.query_row("SELECT count(*) FROM t", [], |row| row.get(0))?;
    // The WAL cannot be cut back while the app reads an older snapshot from it:
    // the pull ends without it rather than waiting out its busy timeout.
    block_on(dimple::pull(&mut r, &store))?;
    let still: i64 = app.query_row("SELECT count(*) FROM t", [], |row| row.get(0))?;
    assert_eq!((seen, still), (0, 0), "the app's read saw one snapshot throughout");
    app.execute_batch("COMMIT")?;
    assert_eq!(rows(r.conn(), "t"), rows(w.conn(), "t"));
    Ok(())
}
