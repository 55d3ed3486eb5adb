//! Apply throughput: 4 replicas each write 250k changes (50k rows x 5 attributes,
//! the row marker included) and push them in default-size batches to a local-directory
//! bucket; a fresh replica then pulls all 1M. Only the pull is timed, in a child
//! process (this binary re-executed with a hidden argument) so that its peak RSS
//! (VmHWM) is the pull's own and nothing the parent allocated.

use crate::report::{rate, secs, Table};
use crate::{runtime, scaled};
use dimple::{Options, Replica};
use rusqlite::params;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub const CHILD_ARG: &str = "__pull-child";
const WRITERS: usize = 4;
const ROWS_PER_TXN: usize = 100;
const TABLE: &str = "CREATE TABLE items(id TEXT PRIMARY KEY NOT NULL, name TEXT, qty INTEGER, price REAL, note TEXT)";

fn bucket_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// One writer: `rows` inserted in transactions of ROWS_PER_TXN, then pushed.
fn writer(dir: &Path, bucket: &str, w: usize, rows: usize) {
    let mut r = tracked(&dir.join(format!("writer{w}.db")), bucket, &format!("writer{w}"));
    for start in (0..rows).step_by(ROWS_PER_TXN) {
        r.transaction(|tx| {
            let mut ins = tx.prepare_cached("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for i in start..(start + ROWS_PER_TXN).min(rows) {
                ins.execute(params![format!("w{w}-{i:08}"), format!("item {i}"), i as i64, i as f64 / 4.0, "note"])?;
            }
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(crate::push_to(&mut r, bucket), rows * 5);
}

/// Writer `w`'s rows written through its connection as an app writing
/// between syncs does, captured together by the push: one batch.
fn burst_writer(dir: &Path, bucket: &str, w: usize, rows: usize) {
    let mut r = tracked(&dir.join(format!("burst{w}.db")), bucket, &format!("burst{w}"));
    for start in (0..rows).step_by(ROWS_PER_TXN) {
        r.conn().execute_batch("BEGIN").unwrap();
        let mut ins = r.conn().prepare_cached("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        for i in start..(start + ROWS_PER_TXN).min(rows) {
            ins.execute(params![format!("w{w}-{i:08}"), format!("item {i}"), i as i64, i as f64 / 4.0, "note"])
                .unwrap();
        }
        drop(ins);
        r.conn().execute_batch("COMMIT").unwrap();
    }
    assert_eq!(crate::push_to(&mut r, bucket), rows * 5);
}

/// A new replica at `db` tracking the table.
fn tracked(db: &Path, bucket: &str, name: &str) -> Replica {
    let mut r = Replica::init(db, Some(bucket), Some(name), Options::default()).unwrap();
    r.conn().execute_batch(TABLE).unwrap();
    r.track("items", false).unwrap();
    r
}

/// Row numbers 0..rows in an order spread over the key space, as an app with
/// random keys writes them (a fixed shuffle, the same in every run).
fn shuffled(rows: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..rows).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// Writer `w` updates one column of each of its rows, in shuffled order and
/// transactions of ROWS_PER_TXN, and pushes.
fn updater(dir: &Path, bucket: &str, w: usize, rows: usize) {
    let mut r = Replica::open(&dir.join(format!("writer{w}.db")), Options::default()).unwrap();
    for part in shuffled(rows).chunks(ROWS_PER_TXN) {
        r.transaction(|tx| {
            let mut upd = tx.prepare_cached("UPDATE items SET qty = qty + 1 WHERE id = ?1")?;
            for i in part {
                upd.execute([format!("w{w}-{i:08}")])?;
            }
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(crate::push_to(&mut r, bucket), rows);
}

pub fn run(dir: &Path, scale: f64, table: &mut Table) {
    let rows = scaled(50_000, scale);
    let total = WRITERS * rows * 5;
    let dir = dir.join("apply");
    let bucket_dir = dir.join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let bucket = bucket_url(&bucket_dir);
    eprintln!("apply: building the bucket ({WRITERS} replicas x {} changes)", rows * 5);
    let t = Instant::now();
    for w in 0..WRITERS {
        writer(&dir, &bucket, w, rows);
    }
    let build = t.elapsed().as_secs_f64();

    // The fresh replica tracks the table, so every change is applied, not only logged.
    let db = dir.join("fresh.db");
    drop(tracked(&db, &bucket, "fresh"));
    eprintln!("apply: fresh replica pulls {total} changes (child process)");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(CHILD_ARG).arg(&bucket).arg(&db);
    let field = crate::child(cmd, "pull");
    let (changes, secs_pull, cpu, hwm_kb, start_kb) =
        (field("changes"), field("secs"), field("cpu"), field("hwm_kb"), field("start_kb"));
    assert_eq!(changes as usize, total, "the pull applied every change");
    let applied: i64 =
        rusqlite::Connection::open(&db).unwrap().query_row("SELECT count(*) FROM items", [], |r| r.get(0)).unwrap();
    assert_eq!(applied as usize, WRITERS * rows, "every row reached the table");

    // Baseline: plain SQLite writing the same end state (the rows, one transaction).
    let base = plain_rows(&dir.join("plain.db"), WRITERS * rows);
    let (read, read_n) = read_batches(&bucket_dir, &dir.join("batch-read.db"));
    assert_eq!(read_n, total, "every change was read back");
    let per_s = changes / secs_pull;
    let at_scale = |ok: bool| if scale == 1.0 { Some(ok) } else { None };
    table.section(&format!(
        "apply: fresh replica pulls {total} changes from {WRITERS} replicas, local-directory bucket"
    ));
    table.row(
        "pull throughput (wall clock)",
        rate(per_s),
        String::new(),
        String::new(),
        ">= 1M/s",
        at_scale(per_s >= 1_000_000.0),
    );
    table.row(
        &format!("  per CPU-second (pull used {cpu:.2} s CPU in {secs_pull:.2} s)"),
        rate(changes / cpu),
        String::new(),
        String::new(),
        "",
        None,
    );
    table.row(
        &format!("pull time vs plain SQLite inserting the {} rows", WRITERS * rows),
        secs(secs_pull),
        secs(base),
        format!("{:.1}x", secs_pull / base),
        "",
        None,
    );
    table.row(
        "  the batch format's floor: plain SQLite reading the changes",
        secs(read),
        String::new(),
        rate(total as f64 / read),
        "",
        None,
    );
    table.row(
        "  floor of the pull: reading them + inserting the rows",
        rate(total as f64 / (read + base)),
        String::new(),
        String::new(),
        "",
        None,
    );
    let mb = hwm_kb / 1024.0;
    table.row(
        "peak RSS of the pulling process (VmHWM)",
        format!("{mb:.0} MB"),
        format!("{:.0} MB", start_kb / 1024.0),
        String::new(),
        "< 100 MB",
        at_scale(mb < 100.0),
    );
    table.note(&format!(
        "(baseline column of the RSS row: the child's RSS before pulling; bucket built in {build:.0} s)"
    ));

    // The same changes written between syncs, each writer's pushed as one batch:
    // a large batch is merged while its check goes on.
    let bursts_dir = dir.join("bursts");
    std::fs::create_dir_all(&bursts_dir).unwrap();
    let bursts = bucket_url(&bursts_dir);
    for w in 0..WRITERS {
        burst_writer(&dir, &bursts, w, rows);
    }
    let burst_db = dir.join("fresh-bursts.db");
    drop(tracked(&burst_db, &bursts, "fresh"));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(CHILD_ARG).arg(&bursts).arg(&burst_db);
    let field = crate::child(cmd, "pull");
    assert_eq!(field("changes") as usize, total, "the pull applied every change");
    assert_eq!(field("batches") as usize, WRITERS, "one batch per writer");
    let (secs_bursts, hwm_bursts) = (field("secs"), field("hwm_kb") / 1024.0);
    table.row(
        &format!("the same changes pushed as {WRITERS} bursts, one batch each"),
        rate(changes / secs_bursts),
        String::new(),
        String::new(),
        "",
        None,
    );
    table.row("  its peak RSS (VmHWM)", format!("{hwm_bursts:.0} MB"), String::new(), String::new(), "", None);

    // Then the steady state: every writer updates one column of each of its rows,
    // in an order spread over the keys, and the replica pulls those changes to rows
    // it holds, each one a seek into a log of 1M changes.
    for w in 0..WRITERS {
        updater(&dir, &bucket, w, rows);
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(CHILD_ARG).arg(&bucket).arg(&db);
    let field = crate::child(cmd, "pull");
    let (changes, secs_pull, hwm_kb) = (field("changes"), field("secs"), field("hwm_kb"));
    assert_eq!(changes as usize, WRITERS * rows, "the pull applied every update");
    let base = plain_updates(&dir.join("plain.db"), rows);
    table.row(
        &format!("then a pull of {} updates to rows it holds (keys in random order)", WRITERS * rows),
        rate(changes / secs_pull),
        String::new(),
        String::new(),
        "",
        None,
    );
    table.row(
        "  its time vs plain SQLite making the same updates",
        secs(secs_pull),
        secs(base),
        format!("{:.1}x", secs_pull / base),
        "",
        None,
    );
    table.row("  its peak RSS (VmHWM)", format!("{:.0} MB", hwm_kb / 1024.0), String::new(), String::new(), "", None);
}

/// Seconds plain SQLite takes to read every change of every batch in the bucket
/// (each file unpacked to `scratch` as a pull does, every column of `ZV_CHANGE`
/// read as text), and their count: the part of a pull the format itself costs.
fn read_batches(bucket: &Path, scratch: &Path) -> (f64, usize) {
    let files: Vec<_> = std::fs::read_dir(bucket.join("batches"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    let t = Instant::now();
    let (mut n, mut bytes) = (0, 0);
    for f in files {
        let stored = std::fs::read(&f).unwrap();
        std::fs::write(scratch, &*dimple::batch::unpack(&stored, "bench").unwrap()).unwrap();
        let c = rusqlite::Connection::open(scratch).unwrap();
        let mut stmt = c.prepare("SELECT * FROM ZV_CHANGE ORDER BY id").unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..7 {
                bytes += row.get_ref(i).unwrap().as_str_or_null().unwrap().map_or(0, str::len);
            }
            n += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert!(bytes > 0);
    let _ = std::fs::remove_file(scratch);
    (secs, n)
}

/// Plain SQLite making the updates of [`updater`] to the rows of [`plain_rows`],
/// in one transaction.
fn plain_updates(db: &Path, rows: usize) -> f64 {
    let c = rusqlite::Connection::open(db).unwrap();
    let t = Instant::now();
    c.execute_batch("BEGIN").unwrap();
    {
        let mut upd = c.prepare("UPDATE items SET qty = qty + 1 WHERE id = ?1").unwrap();
        for w in 0..WRITERS {
            for i in shuffled(rows) {
                assert_eq!(upd.execute([format!("w{w}-{:08}", i * WRITERS + w)]).unwrap(), 1);
            }
        }
    }
    c.execute_batch("COMMIT").unwrap();
    t.elapsed().as_secs_f64()
}

fn plain_rows(db: &Path, n: usize) -> f64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(TABLE).unwrap();
    let t = Instant::now();
    c.execute_batch("BEGIN").unwrap();
    {
        let mut ins = c.prepare("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        for i in 0..n {
            ins.execute(params![
                format!("w{}-{i:08}", i % WRITERS),
                format!("item {i}"),
                i as i64,
                i as f64 / 4.0,
                "note"
            ])
            .unwrap();
        }
    }
    c.execute_batch("COMMIT").unwrap();
    t.elapsed().as_secs_f64()
}

/// The child: `__pull-child BUCKET DB`. Prints one line of key=value figures.
pub fn child(args: &[String]) {
    let [bucket, db] = args else { panic!("usage: {CHILD_ARG} BUCKET DB") };
    let start_kb = status_kb("VmRSS");
    let mut r = Replica::open(Path::new(db), Options::default()).unwrap();
    let rt = runtime();
    let store = rt.block_on(dimple::open_store(bucket, None)).unwrap();
    let (t, cpu0) = (Instant::now(), cpu_secs());
    let report = rt.block_on(dimple::pull(&mut r, &store)).unwrap();
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu0);
    assert!(report.problems.is_empty(), "pull problems: {:?}", report.problems);
    println!(
        "changes={} batches={} secs={secs} cpu={cpu} hwm_kb={} start_kb={start_kb}",
        report.changes,
        report.batches,
        status_kb("VmHWM")
    );
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A `kB` field of /proc/self/status.
pub fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
