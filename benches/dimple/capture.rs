//! Write-time cost of capture, as the app feels it: the same inserts and updates
//! through a plain rusqlite connection on an untracked table (plain SQLite), on a
//! dimple-tracked one (the triggers capture), and on a cr-sqlite CRR when available.

use crate::report::{rate, secs, Table};
use crate::{crsqlite, scaled};
use dimple::{Options, Replica};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

fn plain(dir: &Path, n: usize, run: usize) -> Times {
    let path = fresh(dir, "plain", run);
    let c = app_conn(&path);
    c.execute_batch(CREATE).unwrap();
    writes(&c, n)
}

/// Returns the app's times and the seconds dimple then took to give the captured
/// writes ids (`Replica::capture`, what the agent or the next sync does).
fn tracked(dir: &Path, n: usize, run: usize) -> (Times, f64) {
    let path = fresh(dir, "tracked", run);
    {
        let mut r = Replica::init(&path, None, Some("bench"), Options::default()).unwrap();
        r.conn().execute_batch(CREATE).unwrap();
        r.track("t", false).unwrap();
    }
    let times = writes(&app_conn(&path), n);
    let mut r = Replica::open(&path, Options::default()).unwrap();
    let t = Instant::now();
    let changes = r.capture().unwrap();
    assert_eq!(changes, n * 5, "every insert is 4 changes, every update 1");
    (times, t.elapsed().as_secs_f64())
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
    let (mut base, mut dim, mut ingest) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(plain(dir, n, next()));
        let (t, i) = tracked(dir, n, next());
        dim.push(t);
        ingest.push(i);
    }
    let (base_i, base_u) = (mid(base.iter().map(|t| t.insert)), mid(base.iter().map(|t| t.update)));
    let (dim_i, dim_u) = (mid(dim.iter().map(|t| t.insert)), mid(dim.iter().map(|t| t.update)));
    let ingest = mid(ingest.into_iter());
    let goal_ok = |r: f64| if scale == 1.0 { Some(r <= 2.0) } else { None };
    table.section(&format!(
        "capture: {n} rows, TEXT key + 3 columns, one transaction each; plain rusqlite connection, median of {RUNS}"
    ));
    let (ri, ru) = (dim_i / base_i, dim_u / base_u);
    table.row(
        &format!("insert {n} rows, tracked (triggers)"),
        secs(dim_i),
        secs(base_i),
        format!("{ri:.2}x"),
        "<= 2x",
        goal_ok(ri),
    );
    table.row(
        &format!("update {n} rows, 1 column, tracked"),
        secs(dim_u),
        secs(base_u),
        format!("{ru:.2}x"),
        "<= 2x",
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
    let so = match crsqlite::locate() {
        Ok(so) => so,
        Err(why) => return table.note(&format!("cr-sqlite: not available ({why})")),
    };
    let runs: Result<Vec<Times>, String> =
        (0..RUNS).map(|_| crsqlite::writes(&so, &fresh(dir, "crsql", next()), n)).collect();
    let runs = match runs {
        Ok(v) => v,
        Err(why) => return table.note(&format!("cr-sqlite: not available ({why})")),
    };
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
}

fn mid(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
