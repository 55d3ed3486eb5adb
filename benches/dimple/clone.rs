//! Clone: a bucket holding 1M changes over 100k rows from 4 replicas (each row
//! inserted, then its 4 columns updated, then its name updated again: 10 changes a
//! row). A new replica is cloned from it twice, each time in a child process (this
//! binary re-executed) so its peak RSS is the clone's own: first by full replay (no
//! snapshot yet), then, after `compact`, from the snapshot plus the batches after it.

use crate::report::{secs, Table};
use crate::{runtime, scaled};
use dimple::{Options, Replica};
use rusqlite::params;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub const CHILD_ARG: &str = "__clone-child";
const WRITERS: usize = 4;
const ROWS_PER_TXN: usize = 500;
const TABLE: &str = "CREATE TABLE items(id TEXT PRIMARY KEY NOT NULL, name TEXT, qty INTEGER, price REAL, note TEXT)";

fn writer(dir: &Path, bucket: &str, w: usize, rows: usize) {
    let db = dir.join(format!("writer{w}.db"));
    let mut r = Replica::init(&db, Some(bucket), Some(&format!("writer{w}")), Options::default()).unwrap();
    r.conn().execute_batch(TABLE).unwrap();
    r.track("items", false).unwrap();
    for start in (0..rows).step_by(ROWS_PER_TXN) {
        let end = (start + ROWS_PER_TXN).min(rows);
        r.transaction(|tx| {
            let mut ins = tx.prepare_cached("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for i in start..end {
                ins.execute(params![format!("w{w}-{i:08}"), format!("item {i}"), i as i64, i as f64 / 4.0, "note"])?;
            }
            Ok(())
        })
        .unwrap();
    }
    for (sql, _) in [
        ("UPDATE items SET name = name || '!', qty = qty + 1, price = price + 1, note = 'edited' WHERE id = ?1", 4),
        ("UPDATE items SET name = 'renamed ' || qty WHERE id = ?1", 1),
    ] {
        for start in (0..rows).step_by(ROWS_PER_TXN) {
            r.transaction(|tx| {
                let mut upd = tx.prepare_cached(sql)?;
                for i in start..(start + ROWS_PER_TXN).min(rows) {
                    upd.execute([format!("w{w}-{i:08}")])?;
                }
                Ok(())
            })
            .unwrap();
        }
    }
    assert_eq!(crate::push_to(&mut r, bucket), rows * 10);
}

const PASSPHRASE: &str = "bench passphrase";

/// Runs a clone child (with the passphrase of an encrypted group when `sealed`);
/// returns (seconds, peak RSS in MB).
fn clone_child(bucket: &str, db: &Path, sealed: bool) -> (f64, f64) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(CHILD_ARG).arg(bucket).arg(db);
    if sealed {
        cmd.env("DIMPLE_PASSPHRASE", PASSPHRASE);
    }
    let field = crate::child(cmd, "clone");
    (field("secs"), field("hwm_kb") / 1024.0)
}

fn rows_of(db: &Path) -> Vec<(String, String, i64, f64, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c.prepare("SELECT * FROM items ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub fn run(dir: &Path, scale: f64, table: &mut Table) {
    let rows = scaled(25_000, scale);
    let total = WRITERS * rows * 10;
    let dir = dir.join("clone");
    let bucket_dir = dir.join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let bucket = format!("file://{}", bucket_dir.display());
    eprintln!("clone: building the bucket ({WRITERS} replicas x {} changes over {} rows)", rows * 10, rows);
    let t = Instant::now();
    for w in 0..WRITERS {
        writer(&dir, &bucket, w, rows);
    }
    let build = t.elapsed().as_secs_f64();

    // Full replay: no snapshot exists yet; the clone needs the table to exist.
    let replay_db = dir.join("replay.db");
    rusqlite::Connection::open(&replay_db).unwrap().execute_batch(TABLE).unwrap();
    eprintln!("clone: full replay of {total} changes (child process)");
    let (replay_s, replay_mb) = clone_child(&bucket, &replay_db, false);

    // The replayed clone has everything: it writes the snapshot.
    let rt = runtime();
    let mut source = Replica::open(&replay_db, Options::default()).unwrap();
    let store = rt.block_on(dimple::open_store(&bucket, None)).unwrap();
    rt.block_on(dimple::snapshot::compact(&mut source, &store, std::time::Duration::from_secs(7 * 86_400))).unwrap();

    let snap_db = dir.join("from-snapshot.db");
    eprintln!("clone: from the snapshot (child process)");
    let (snap_s, snap_mb) = clone_child(&bucket, &snap_db, false);
    let (a, b) = (rows_of(&replay_db), rows_of(&snap_db));
    assert_eq!(a.len(), WRITERS * rows, "every row was cloned");
    assert!(a == b, "both clones hold the same table");

    // The same state as an encrypted group (`dimple encrypt`), cloned from its
    // sealed snapshot.
    let sealed_dir = dir.join("sealed-bucket");
    std::fs::create_dir_all(&sealed_dir).unwrap();
    let sealed_bucket = format!("file://{}", sealed_dir.display());
    let sealed_store = rt.block_on(dimple::open_store(&sealed_bucket, None)).unwrap();
    rt.block_on(dimple::group::seed(&mut source, &sealed_store, PASSPHRASE)).unwrap();
    let sealed_db = dir.join("from-sealed-snapshot.db");
    eprintln!("clone: from the encrypted snapshot (child process)");
    let (sealed_s, sealed_mb) = clone_child(&sealed_bucket, &sealed_db, true);
    assert!(rows_of(&sealed_db) == a, "the encrypted clone holds the same table");

    let at_scale = |ok: bool| if scale == 1.0 { Some(ok) } else { None };
    table.section(&format!(
        "clone: {total} changes over {} rows from {WRITERS} replicas, local-directory bucket",
        WRITERS * rows
    ));
    table.row(
        "clone from a snapshot vs full replay",
        secs(snap_s),
        secs(replay_s),
        format!("{:.1}x faster", replay_s / snap_s),
        ">= 5x, < 10 s",
        at_scale(replay_s / snap_s >= 5.0 && snap_s < 10.0),
    );
    table.row(
        "peak RSS, snapshot clone (replay in baseline)",
        format!("{snap_mb:.0} MB"),
        format!("{replay_mb:.0} MB"),
        String::new(),
        "< 200 MB",
        at_scale(snap_mb.max(replay_mb) < 200.0),
    );
    table.row(
        "encrypted snapshot clone vs plaintext snapshot clone",
        secs(sealed_s),
        secs(snap_s),
        format!("{:.2}x the time, {sealed_mb:.0} MB peak", sealed_s / snap_s),
        "< 10 s, < 200 MB",
        at_scale(sealed_s < 10.0 && sealed_mb < 200.0),
    );
    table.note(&format!("(bucket built in {build:.0} s)"));
}

/// The child: `__clone-child BUCKET DB`. Prints one line of key=value figures.
pub fn child(args: &[String]) {
    let [bucket, db] = args else { panic!("usage: {CHILD_ARG} BUCKET DB") };
    let rt = runtime();
    let store = rt.block_on(dimple::open_store(bucket, None)).unwrap();
    let t = Instant::now();
    // The passphrase's Argon2id is part of an encrypted clone's time.
    let keys = std::env::var("DIMPLE_PASSPHRASE").ok().map(|p| rt.block_on(dimple::group::unlock(&store, &p)).unwrap());
    let (_r, report) = rt
        .block_on(dimple::clone::clone_with_keys(
            bucket,
            Path::new(db),
            Some("clone"),
            Options::default(),
            &store,
            &|_| {},
            keys,
        ))
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(report.pull.problems.is_empty(), "clone problems: {:?}", report.pull.problems);
    println!("secs={secs} hwm_kb={}", crate::apply::status_kb("VmHWM"));
}
