//! What sync costs on the wire: bytes per change of uploaded batches, and the
//! requests of a no-op sync among many replicas.

use crate::report::Table;
use crate::{runtime, scaled};
use dimple::store::{list_all, Metered, Store};
use dimple::{Options, Replica};
use rusqlite::params;
use std::path::Path;

const TABLE: &str = "CREATE TABLE items(id TEXT PRIMARY KEY NOT NULL, name TEXT, qty INTEGER, price REAL, note TEXT)";

fn replica(dir: &Path, name: &str, bucket: &str) -> Replica {
    let mut r = Replica::init(&dir.join(format!("{name}.db")), Some(bucket), Some(name), Options::default()).unwrap();
    r.conn().execute_batch(TABLE).unwrap();
    r.track("items", false).unwrap();
    r
}

/// Total size of the batch objects in the bucket.
async fn batch_bytes(store: &Metered<dyn Store>) -> u64 {
    list_all(store, "batches/", None).await.unwrap().iter().map(|m| m.size).sum()
}

/// Bytes per change of 10k-change pushes: one of inserts (row marker + 4 columns per
/// row), one of one-column updates (old and new value each).
pub fn batch(dir: &Path, scale: f64, table: &mut Table) {
    let dir = dir.join("batch");
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    let bucket = format!("file://{}", dir.join("bucket").display());
    let rt = runtime();
    let store = rt.block_on(dimple::open_store(&bucket, None)).unwrap();
    let mut r = replica(&dir, "b", &bucket);
    let rows = scaled(2_000, scale);
    eprintln!("batch: pushing {} inserted and {} updated changes", rows * 5, rows * 5);
    table.section("batch size: bytes per change of a 10k-change push, as stored in the bucket");
    let measure = |r: &mut Replica, what: &str, table: &mut Table| {
        let (before, bytes_before) = (store.stats(), rt.block_on(batch_bytes(&store)));
        let pushed = rt.block_on(dimple::push(r, &store)).unwrap();
        let (up, bytes) = (store.stats().since(&before), rt.block_on(batch_bytes(&store)) - bytes_before);
        let per = bytes as f64 / pushed.changes as f64;
        let ok = if scale == 1.0 { Some(per <= 80.0) } else { None };
        table.row(
            &format!("{what}: {} changes in {} batch(es)", pushed.changes, pushed.batches),
            format!("{per:.1} B/change"),
            String::new(),
            String::new(),
            "<= 80 B",
            ok,
        );
        table.row(
            &format!("  all bytes up for it ({} PUTs, head included)", up.put),
            format!("{:.1} B/change", up.bytes_up as f64 / pushed.changes as f64),
            String::new(),
            String::new(),
            "",
            None,
        );
    };
    for start in (0..rows).step_by(100) {
        r.transaction(|tx| {
            for i in start..(start + 100).min(rows) {
                tx.execute(
                    "INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![uuid_like(i), format!("item number {i}"), i as i64, i as f64 / 4.0, "a short note"],
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    measure(&mut r, "inserts", table);
    for start in (0..rows * 5).step_by(500) {
        r.transaction(|tx| {
            for i in start..(start + 500).min(rows * 5) {
                tx.execute(
                    "UPDATE items SET qty = ?2 WHERE id = ?1",
                    params![uuid_like(i % rows), (i * 7 + 1) as i64],
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    measure(&mut r, "updates", table);
}

/// Keys shaped like the UUIDs apps use.
fn uuid_like(i: usize) -> String {
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", h >> 32, (h >> 16) & 0xffff, h & 0xfff, i & 0xfff, i)
}

/// Requests of a no-op sync among 50 replicas that are all caught up.
pub fn requests(dir: &Path, table: &mut Table) {
    const R: usize = 50;
    let dir = dir.join("requests");
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    let bucket = format!("file://{}", dir.join("bucket").display());
    let rt = runtime();
    let store = rt.block_on(dimple::open_store(&bucket, None)).unwrap();
    eprintln!("requests: {R} replicas write, sync twice, then sync with nothing to do");
    let mut replicas: Vec<Replica> = (0..R).map(|i| replica(&dir, &format!("r{i:02}"), &bucket)).collect();
    for (i, r) in replicas.iter_mut().enumerate() {
        r.transaction(|tx| Ok(tx.execute("INSERT INTO items(id, name) VALUES (?1, 'x')", [uuid_like(i)])?)).unwrap();
        rt.block_on(dimple::sync(r, &store)).unwrap();
    }
    for r in replicas.iter_mut() {
        rt.block_on(dimple::sync(r, &store)).unwrap();
    }
    let mut reports = Vec::new();
    for r in replicas.iter_mut() {
        let rep = rt.block_on(dimple::sync(r, &store)).unwrap();
        assert_eq!(rep.pull.changes + rep.push.changes, 0, "the group was caught up");
        reports.push(rep.requests);
    }
    let expect = (2 * R).div_ceil(1000) as u64;
    let lists = reports.iter().map(|q| q.list).max().unwrap_or(0);
    let others = reports.iter().map(|q| q.total - q.list).max().unwrap_or(0);
    let total: u64 = reports.iter().map(|q| q.total).sum();
    table.section(&format!("requests: no-op sync among {R} caught-up replicas (SyncReport.requests, worst replica)"));
    table.row(
        "LIST requests",
        lists.to_string(),
        String::new(),
        String::new(),
        &format!("= {expect}"),
        Some(lists == expect),
    );
    table.row(
        "GET/PUT/HEAD/DELETE requests",
        others.to_string(),
        String::new(),
        String::new(),
        "= 0",
        Some(others == 0),
    );
    table.row(
        &format!("all {R} replicas together"),
        total.to_string(),
        String::new(),
        String::new(),
        &format!("= {}", expect * R as u64),
        Some(total == expect * R as u64),
    );
}
