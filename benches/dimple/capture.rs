//! The cost of capture: the same inserts and updates through a plain rusqlite
//! connection on an untracked table (plain SQLite), on a dimple-tracked one (the
//! triggers capture; then ids and the batch, the deferred part; then the file's
//! size), and on a cr-sqlite CRR when available.

use crate::report::{rate, secs, Table};
use crate::{crsqlite, scaled};
use dimple::{Options, Replica};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The hidden child mode that pushes, so that its peak RSS is the push's own.
pub const PUSH_CHILD_ARG: &str = "__push-child";
/// The hidden child mode that gives the captured writes their ids, so that its
/// peak RSS is the capture's own.
pub const CAPTURE_CHILD_ARG: &str = "__capture-child";
pub const CREATE: &str = "CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c REAL)";
const RUNS: usize = 3;

/// Seconds for `n` inserts (one transaction), then `n` one-column updates (one transaction).
#[derive(Clone, Copy)]
pub struct Times {
    pub insert: f64,
    pub update: f64,
}

pub fn key(i: usize) -> String {
    format!("{:08x}-row-{i:010}", (i as u64).wrapping_mul(0x9E37_79B9) as u32)
}

/// The app's writes: what every variant runs, on a connection it opened itself.
pub fn writes(conn: &Connection, n: usize) -> Times {
    let t0 = Instant::now();
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut ins = conn.prepare("INSERT INTO t(id, a, b, c) VALUES (?1, ?2, ?3, ?4)").unwrap();
        for i in 0..n {
            ins.execute(params![key(i), format!("name {i}"), i as i64, i as f64 * 0.5]).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    let insert = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut upd = conn.prepare("UPDATE t SET b = ?2 WHERE id = ?1").unwrap();
        for i in 0..n {
            upd.execute(params![key(i), -(i as i64) - 1]).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    Times { insert, update: t1.elapsed().as_secs_f64() }
}

fn fresh(dir: &Path, name: &str, run: usize) -> PathBuf {
    let p = dir.join(format!("{name}-{run}.db"));
    let _ = std::fs::remove_file(&p);
    p
}

fn app_conn(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c
}

/// The bytes of a database file once its WAL is checkpointed into it, and the
/// bytes its pages in use take (the file less its free pages).
pub fn sizes(conn: &Connection) -> (u64, u64) {
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
    (page * pages, page * (pages - free))
}

fn plain(dir: &Path, n: usize, run: usize) -> (Times, u64) {
    let path = fresh(dir, "plain", run);
    let c = app_conn(&path);
    c.execute_batch(CREATE).unwrap();
    let times = writes(&c, n);
    (times, sizes(&c).0)
}

/// What one tracked run measured.
#[derive(Clone, Copy)]
struct Tracked {
    /// The app's writes through the triggers.
    times: Times,
    /// Ids for the captured writes (`Replica::capture`, what the agent or the next
    /// sync does), in a child process.
    ingest: f64,
    /// The capturing process's peak RSS, and its RSS before the capture (kB).
    capture_hwm_kb: u64,
    capture_start_kb: u64,
    /// The push that follows: the batch built and written to a local-directory
    /// bucket, in a child process.
    push: f64,
    /// The pushing process's peak RSS, and its RSS before the push (kB).
    push_hwm_kb: u64,
    push_start_kb: u64,
    /// The file after the push, complete history, and the bytes of its pages in
    /// use (the rest are free pages the next writes reuse).
    file: u64,
    in_use: u64,
    /// Bytes in use once history is pruned as the default retention does once the
    /// horizon has passed (only the winning changes stay).
    retained: u64,
    /// Superseded changes kept in records, rows of the history and its pages
    /// (see `history_where`).
    history: (u64, u64, u64),
    /// Plain SQLite writing the pushed batch's rows into a fresh batch file.
    batch_rows: f64,
}

fn tracked(dir: &Path, n: usize, run: usize) -> Tracked {
    let path = fresh(dir, "tracked", run);
    let bucket = dir.join(format!("bucket-{run}"));
    let _ = std::fs::remove_dir_all(&bucket);
    std::fs::create_dir_all(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    {
        let mut r = Replica::init(&path, Some(&url), Some("bench"), Options::default()).unwrap();
        r.conn().execute_batch(CREATE).unwrap();
        r.track("t", false).unwrap();
    }
    let times = writes(&app_conn(&path), n);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.arg(CAPTURE_CHILD_ARG).arg(&path);
    let field = crate::child(cmd, "capture");
    assert_eq!(field("changes") as usize, n * 5, "every insert is 4 changes, every update 1");
    let (ingest, capture_hwm_kb, capture_start_kb) = (field("secs"), field("hwm_kb") as u64, field("start_kb") as u64);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.arg(PUSH_CHILD_ARG).arg(&url).arg(&path);
    let field = crate::child(cmd, "push");
    assert_eq!(field("changes") as usize, n * 5);
    let (push, push_hwm_kb, push_start_kb) = (field("secs"), field("hwm_kb") as u64, field("start_kb") as u64);
    let mut r = Replica::open(&path, Options::default()).unwrap();
    let (file, in_use) = sizes(r.conn());
    let history = history_where(r.conn());
    dimple::retention::set(r.conn(), dimple::retention::Retention::Days(0)).unwrap();
    let pruned = dimple::retention::prune(&mut r).unwrap();
    assert_eq!(pruned.changes, n, "each update superseded one insert's value");
    let retained = sizes(r.conn()).1;
    let batch_rows = batch_rows(&bucket, &dir.join(format!("batch-rows-{run}.db")));
    Tracked {
        times,
        ingest,
        capture_hwm_kb,
        capture_start_kb,
        push,
        push_hwm_kb,
        push_start_kb,
        file,
        in_use,
        retained,
        history,
        batch_rows,
    }
}

/// Where the superseded changes are: how many the records keep in their
/// pasts, how many are rows of `ZV_HISTORY`, and the bytes of its pages.
fn history_where(conn: &Connection) -> (u64, u64, u64) {
    let count = |sql: &str| -> u64 { conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64 };
    (
        count("SELECT count(*) FROM ZV_ROW r, dimple_past(r.cells)"),
        count("SELECT count(*) FROM ZV_HISTORY"),
        count("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'ZV_HISTORY'"),
    )
}

/// Seconds plain SQLite takes to write the rows of the batch pushed to `bucket`
/// into a fresh file of the batch format, as `batch::write_with` sets it up: the
/// part of the push that the format itself costs, whatever dimple does around it.
fn batch_rows(bucket: &Path, scratch: &Path) -> f64 {
    let dir = bucket.join("batches");
    let replica = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let stored = std::fs::read_dir(&replica).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(&stored).unwrap();
    let sqlite = dimple::batch::unpack(&bytes, "bench").unwrap();
    let source = scratch.with_extension("source");
    std::fs::write(&source, &*sqlite).unwrap();
    let (txns, changes) = {
        let c = Connection::open(&source).unwrap();
        let read = |sql: &str, n: usize| -> Vec<Vec<rusqlite::types::Value>> {
            let mut stmt = c.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect()).unwrap();
            rows.map(Result::unwrap).collect()
        };
        (read("SELECT id, author FROM ZV_TRANSACTION", 2), read("SELECT * FROM ZV_CHANGE ORDER BY id", 7))
    };
    let _ = std::fs::remove_file(scratch);
    let t = Instant::now();
    let c = Connection::open(scratch).unwrap();
    c.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=65536; BEGIN").unwrap();
    c.execute_batch(BATCH_SCHEMA).unwrap();
    {
        let mut txn = c.prepare("INSERT INTO ZV_TRANSACTION VALUES (?1, ?2)").unwrap();
        for row in &txns {
            txn.execute(rusqlite::params_from_iter(row)).unwrap();
        }
        let mut chg = c.prepare("INSERT INTO ZV_CHANGE VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").unwrap();
        for row in &changes {
            chg.execute(rusqlite::params_from_iter(row)).unwrap();
        }
    }
    c.execute_batch("COMMIT").unwrap();
    drop(c);
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(scratch);
    let _ = std::fs::remove_file(&source);
    secs
}

/// The batch file's schema, as dimple writes it.
const BATCH_SCHEMA: &str = include_str!("../../schema/batch.sql");

/// The child: `__capture-child DB`. Prints one line of key=value figures.
pub fn capture_child(args: &[String]) {
    let [db] = args else { panic!("usage: {CAPTURE_CHILD_ARG} DB") };
    let start_kb = crate::apply::status_kb("VmRSS");
    let mut r = Replica::open(Path::new(db), Options::default()).unwrap();
    let t = Instant::now();
    let changes = r.capture().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("changes={changes} secs={secs} hwm_kb={} start_kb={start_kb}", crate::apply::status_kb("VmHWM"));
}

/// The child: `__push-child BUCKET DB`. Prints one line of key=value figures.
pub fn push_child(args: &[String]) {
    let [bucket, db] = args else { panic!("usage: {PUSH_CHILD_ARG} BUCKET DB") };
    let start_kb = crate::apply::status_kb("VmRSS");
    let mut r = Replica::open(Path::new(db), Options::default()).unwrap();
    let rt = crate::runtime();
    let store = rt.block_on(dimple::open_store(bucket, None)).unwrap();
    let t = Instant::now();
    let pushed = rt.block_on(dimple::push(&mut r, &store)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("changes={} secs={secs} hwm_kb={} start_kb={start_kb}", pushed.changes, crate::apply::status_kb("VmHWM"));
}

pub fn run(dir: &Path, scale: f64, table: &mut Table) {
    let n = scaled(100_000, scale);
    eprintln!("capture: {n} inserts + {n} updates, {RUNS} runs each of plain SQLite, dimple, cr-sqlite");
    let mut run_no = 0;
    let mut next = || {
        run_no += 1;
        run_no
    };
    // Interleaved, so that a noisy neighbour hurts every variant alike.
    let (mut base, mut runs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(plain(dir, n, next()));
        runs.push(tracked(dir, n, next()));
    }
    let plain_size = base[0].1;
    let base: Vec<Times> = base.into_iter().map(|b| b.0).collect();
    let dim: Vec<Times> = runs.iter().map(|t| t.times).collect();
    let (base_i, base_u) = (mid(base.iter().map(|t| t.insert)), mid(base.iter().map(|t| t.update)));
    let (dim_i, dim_u) = (mid(dim.iter().map(|t| t.insert)), mid(dim.iter().map(|t| t.update)));
    let ingest = mid(runs.iter().map(|t| t.ingest));
    let push = mid(runs.iter().map(|t| t.push));
    let whole = mid(runs.iter().map(|t| t.times.insert + t.times.update + t.ingest + t.push));
    let within = |r: f64, goal: f64| if scale == 1.0 { Some(r <= goal) } else { None };
    let goal_ok = |r: f64| within(r, 1.6);
    table.section(&format!(
        "capture: {n} rows, TEXT key + 3 columns, one transaction each; plain rusqlite connection, median of {RUNS}"
    ));
    let (ri, ru) = (dim_i / base_i, dim_u / base_u);
    table.row(
        &format!("insert {n} rows, tracked (triggers)"),
        secs(dim_i),
        secs(base_i),
        format!("{ri:.2}x"),
        "<= 1.6x",
        goal_ok(ri),
    );
    table.row(
        &format!("update {n} rows, 1 column, tracked"),
        secs(dim_u),
        secs(base_u),
        format!("{ru:.2}x"),
        "<= 1.6x",
        goal_ok(ru),
    );
    table.row(
        &format!("  later: ids for the {} captured changes", n * 5),
        secs(ingest),
        String::new(),
        rate((n * 5) as f64 / ingest),
        "",
        None,
    );
    // A child's peak RSS, and its RSS before the job (kB), medians of the runs.
    let rss_row = |table: &mut Table, what: &str, hwm: &dyn Fn(&Tracked) -> u64, start: &dyn Fn(&Tracked) -> u64| {
        let (hwm, start) = (mid(runs.iter().map(|t| hwm(t) as f64)), mid(runs.iter().map(|t| start(t) as f64)));
        let mb = |kb: f64| format!("{:.0} MB", kb / 1024.0);
        table.row(what, mb(hwm), mb(start), String::new(), "", None);
    };
    rss_row(table, "  peak RSS of the capturing process (VmHWM)", &|t| t.capture_hwm_kb, &|t| t.capture_start_kb);
    table.row("  then: the push (batch built, local bucket)", secs(push), String::new(), String::new(), "", None);
    rss_row(table, "  peak RSS of the pushing process (VmHWM)", &|t| t.push_hwm_kb, &|t| t.push_start_kb);
    let rw = whole / (base_i + base_u);
    table.row(
        "whole capture path: writes + ids + batch",
        secs(whole),
        secs(base_i + base_u),
        format!("{rw:.2}x"),
        "<= 3x",
        within(rw, 3.0),
    );
    // What the batch format alone costs: the floor under the push.
    let rows = mid(runs.iter().map(|t| t.batch_rows));
    table.row(
        &format!("  the batch format's floor: plain SQLite writing its {} rows", n * 5),
        secs(rows),
        String::new(),
        rate((n * 5) as f64 / rows),
        "",
        None,
    );
    table.row(
        "  floor of the path: tracked writes + those rows alone",
        secs(dim_i + dim_u + rows),
        secs(base_i + base_u),
        format!("{:.2}x", (dim_i + dim_u + rows) / (base_i + base_u)),
        "",
        None,
    );
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let size_row = |table: &mut Table, what: &str, bytes: u64, goal: Option<f64>| {
        let ratio = bytes as f64 / plain_size as f64;
        let (goal_text, met) = match goal {
            Some(g) => (format!("<= {g}x"), within(ratio, g)),
            None => (String::new(), None),
        };
        table.row(what, mb(bytes), mb(plain_size), format!("{ratio:.2}x"), &goal_text, met);
    };
    let dimple_file = runs[0].file;
    size_row(table, "tracked file after the push, complete history", dimple_file, Some(3.0));
    size_row(table, "  pages in use (the rest: free pages, reused)", runs[0].in_use, Some(3.0));
    size_row(table, "  in use once superseded history is pruned", runs[0].retained, Some(2.0));
    let (kept, rows, pages) = runs[0].history;
    table.row(
        "  superseded changes: kept in their records / history rows",
        kept.to_string(),
        rows.to_string(),
        format!("history pages {}", mb(pages)),
        "",
        None,
    );
    let so = match crsqlite::locate() {
        Ok(so) => so,
        Err(why) => return table.note(&format!("cr-sqlite: not available ({why})")),
    };
    let crsql: Result<Vec<(Times, u64)>, String> =
        (0..RUNS).map(|_| crsqlite::writes(&so, &fresh(dir, "crsql", next()), n)).collect();
    let crsql = match crsql {
        Ok(v) => v,
        Err(why) => return table.note(&format!("cr-sqlite: not available ({why})")),
    };
    let crsql_file = crsql[0].1;
    let runs: Vec<Times> = crsql.into_iter().map(|r| r.0).collect();
    let (ci, cu) = (mid(runs.iter().map(|t| t.insert)), mid(runs.iter().map(|t| t.update)));
    let v = crsqlite::version(&so);
    table.row(
        &format!("insert {n} rows, cr-sqlite {v} CRR"),
        secs(ci),
        secs(base_i),
        format!("{:.2}x", ci / base_i),
        "",
        None,
    );
    table.row(
        &format!("update {n} rows, 1 column, cr-sqlite {v}"),
        secs(cu),
        secs(base_u),
        format!("{:.2}x", cu / base_u),
        "",
        None,
    );
    size_row(table, &format!("cr-sqlite {v} file after the same writes"), crsql_file, None);
    let ratio = dimple_file as f64 / crsql_file as f64;
    table.row(
        "  dimple's file after the push vs cr-sqlite's",
        mb(dimple_file),
        mb(crsql_file),
        format!("{ratio:.2}x"),
        "< 1x",
        within(ratio, 0.999),
    );
}

fn mid(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
