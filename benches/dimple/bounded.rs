//! A bucket that stops growing: 20 rounds of 100k updates over 10k rows, with
//! `compact --prune` every 5 rounds (grace 0). At the end the bucket should hold
//! the newest snapshot and the batches after it, not the 20 rounds of history; a
//! replica last synced at round 2 catches up from the snapshot.

use crate::report::Table;
use crate::{runtime, scaled};
use dimple::{Options, Replica};
use std::path::Path;
use std::time::{Duration, Instant};

fn bytes_under(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
                bytes += m.len();
            }
        }
    }
    (n, bytes)
}

pub fn run(dir: &Path, scale: f64, table: &mut Table) {
    let rows = scaled(10_000, scale);
    let dir = dir.join("bounded");
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let url = bucket.display().to_string();
    let rt = runtime();
    let store = rt.block_on(dimple::open_store(&url, None)).unwrap();
    let open = |name: &str| {
        let mut r = Replica::init(&dir.join(format!("{name}.db")), Some(&url), Some(name), Options::default()).unwrap();
        r.conn().execute_batch("CREATE TABLE t(id TEXT PRIMARY KEY, a INTEGER, b TEXT, c REAL)").unwrap();
        r.track("t", false).unwrap();
        r
    };
    let (mut w, mut behind) = (open("writer"), open("behind"));
    w.conn()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {})
             INSERT INTO t SELECT printf('row-%06d', i), 0, 'text', 0.5 FROM n",
            rows - 1
        ))
        .unwrap();
    let mut pushed_batches = 0;
    let mut pushed_bytes = 0u64;
    let t = Instant::now();
    for round in 1..=20 {
        for _ in 0..10 {
            w.conn().execute("UPDATE t SET a = a + 1", []).unwrap();
        }
        let before = store.stats();
        let report = rt.block_on(dimple::sync(&mut w, &store)).unwrap();
        pushed_batches += report.push.batches;
        pushed_bytes += store.stats().since(&before).bytes_up;
        if round == 2 {
            rt.block_on(dimple::sync(&mut behind, &store)).unwrap();
        }
        if round % 5 == 0 {
            rt.block_on(dimple::snapshot::compact_with(&mut w, &store, Duration::ZERO, true)).unwrap();
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    let (snap_n, snap_bytes) = bytes_under(&bucket.join("snapshots"));
    let (batch_n, batch_bytes) = bytes_under(&bucket.join("batches"));
    let t = Instant::now();
    let caught = rt.block_on(dimple::sync(&mut behind, &store)).unwrap();
    let catchup = t.elapsed().as_secs_f64();
    assert_eq!(caught.pull.caught_up.len(), 1, "the behind replica caught up from the snapshot");
    let same: bool = {
        let q = "SELECT group_concat(id || a, ',') FROM (SELECT id, a FROM t ORDER BY id)";
        let a: String = w.conn().query_row(q, [], |r| r.get(0)).unwrap();
        let b: String = behind.conn().query_row(q, [], |r| r.get(0)).unwrap();
        a == b
    };
    assert!(same, "the behind replica equals the writer");
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    table.section(&format!(
        "bounded bucket: 20 rounds of {} updates over {rows} rows, compact --prune every 5 rounds (grace 0)",
        rows * 10
    ));
    table.row(
        "bucket after 20 rounds (snapshots + batches)",
        format!("{} in {} objects", mb(snap_bytes + batch_bytes), snap_n + batch_n),
        format!("{} in {pushed_batches} batches", mb(pushed_bytes)),
        format!("{:.1}x smaller", pushed_bytes as f64 / (snap_bytes + batch_bytes).max(1) as f64),
        "snapshot + batches after it",
        // The newest snapshot and its pointer; every batch is covered by it.
        Some(batch_n == 0 && snap_n == 2),
    );
    table.row(
        "replica last synced at round 2 catches up",
        crate::report::secs(catchup),
        String::new(),
        String::new(),
        "from the snapshot, equal",
        Some(same),
    );
    table.note(&format!(
        "(20 rounds written, pushed and compacted in {elapsed:.0} s; baseline: every batch ever pushed, which grows with every round while the pruned bucket stays at one snapshot)"
    ));
}
