//! Shared set-up: replicas in a temporary directory syncing through a directory
//! bucket, and a reference model of the merge rules computed from a change log.

use dimple::clock::ManualClock;
use dimple::store::{LocalStore, Metered, Store};
pub use dimple::value::Cell;
use dimple::{Options, Replica};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const TABLE_SQL: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, a, b TEXT, c REAL)";

/// Where a group's bucket lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    /// A fresh bucket on the S3 test server started by `scripts/test`.
    S3,
}

pub struct Group {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    /// `s3://bucket/prefix` and endpoint when on S3.
    s3: Option<(String, String)>,
}

impl Group {
    pub fn new() -> Self {
        // Start at the real time so that CLI runs (on the system clock) fit in.
        let now = dimple::clock::Clock::now_ms(&dimple::clock::SystemClock);
        Group { dir: tempfile::tempdir().unwrap(), clock: ManualClock::new(now), s3: None }
    }

    /// A group on `backend`; for S3, None when S3 tests are skipped on purpose
    /// (`DIMPLE_SKIP_S3=1` outside CI; see store_contract::s3_support).
    pub fn on(backend: Backend, test: &str) -> Option<Self> {
        let mut g = Group::new();
        if backend == Backend::S3 {
            // One bucket per test run, one prefix per group: buckets are costly on
            // the test server, and prefixes are how sync groups share a bucket anyway.
            static BUCKET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
            let bucket = BUCKET.get_or_init(|| {
                let store = block_on(crate::store_contract::s3_support::fresh_store("engine")).unwrap()?;
                Some(store.describe().split(" at ").next().unwrap_or_default().trim_end_matches('/').to_owned())
            });
            let endpoint = crate::store_contract::s3_support::endpoint().unwrap()?;
            let url = format!("{}/{test}-{:08x}", bucket.as_ref()?, rand::random::<u32>());
            g.s3 = Some((url, endpoint));
        }
        Some(g)
    }

    /// The bucket URL replicas are initialised with.
    pub fn bucket_url(&self) -> String {
        match &self.s3 {
            Some((url, _)) => url.clone(),
            None => self.bucket().display().to_string(),
        }
    }

    pub fn bucket(&self) -> PathBuf {
        self.dir.path().join("bucket")
    }

    /// The bare backend, for wrapping in fault injection.
    pub fn raw_store(&self) -> Box<dyn Store> {
        match &self.s3 {
            Some((url, endpoint)) => Box::new(block_on(dimple::store::S3Store::open(url, Some(endpoint))).unwrap()),
            None => Box::new(LocalStore::open(self.bucket()).unwrap()),
        }
    }

    pub fn store(&self) -> Metered<dyn Store> {
        Metered::new(self.raw_store())
    }

    pub fn opts(&self) -> Options {
        Options { clock: Arc::new(self.clock.clone()), ..Options::default() }
    }

    pub fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// A new replica with table `t` created and tracked.
    pub fn replica(&self, name: &str) -> Replica {
        let path = self.db(name);
        let r = Replica::init(&path, Some(&self.bucket_url()), Some(name), self.opts()).unwrap();
        r.conn().execute_batch(TABLE_SQL).unwrap();
        let mut r = r;
        r.track("t", false).unwrap();
        r
    }

    pub fn reopen(&self, name: &str) -> Replica {
        Replica::open(&self.db(name), self.opts()).unwrap()
    }
}

/// One runtime for the whole test binary: an S3 client's connections belong to the
/// runtime that opened them.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
        .block_on(f)
}

/// A row as SQLite holds it: TEXT as its bytes (an app may store any).
pub type Row = Vec<Cell>;

/// Every row of a table, ordered by key, every column.
pub fn rows(conn: &rusqlite::Connection, table: &str) -> Vec<Row> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1")).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Cell>(i)).collect()).unwrap().map(Result::unwrap).collect()
}

pub fn open_plain(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    // The log's views read its records through dimple's function.
    dimple::log::register(&c).unwrap();
    c
}

/// The merge rules as plainly as they can be written: per (entity, attribute) the
/// greatest id wins; a row exists when its `*` winner is `true`; its columns are
/// their winners (NULL when never written). Computed from a log, for table `t`.
pub fn model_of_log(conn: &rusqlite::Connection, columns: &[&str]) -> Vec<Row> {
    let changes = log_changes(conn);
    model_of_changes(changes.iter().map(|(e, a, v)| (e.as_str(), a.as_str(), v.as_deref())), columns)
}

/// Every change of table `t` in the log, in id order: (entity, attribute,
/// encoded new value).
pub fn log_changes(conn: &rusqlite::Connection) -> Vec<(String, String, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT entity_id, attribute, new_value FROM ZV_CHANGE WHERE entity_type = 't' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

/// [`model_of_log`] of changes given in ascending id order: (entity, attribute,
/// encoded new value).
pub fn model_of_changes<'a>(
    in_id_order: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>,
    columns: &[&str],
) -> Vec<Row> {
    // The last change of each (entity, attribute) in id order has the greatest id.
    let mut winners: BTreeMap<(&str, &str), Option<&str>> = BTreeMap::new();
    for (entity, attr, value) in in_id_order {
        winners.insert((entity, attr), value);
    }
    let mut out = Vec::new();
    for (&(entity, attr), v) in &winners {
        if attr == "*" && *v == Some("true") {
            let mut row = vec![Cell::Text(entity.as_bytes().to_vec())];
            for col in columns {
                row.push(match winners.get(&(entity, *col)).copied().flatten() {
                    Some(enc) => dimple::value::decode(enc).unwrap(),
                    None => Cell::Null,
                });
            }
            out.push(row);
        }
    }
    out
}

pub fn change_ids(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn.prepare("SELECT id FROM ZV_CHANGE ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// Copies replica `from`'s database, its WAL and the directory beside it, as a
/// disk copy would (no connection is in a transaction).
pub fn copy_database(g: &Group, from: &str, to: &str) {
    let (src, dst) = (g.db(from), g.db(to));
    std::fs::copy(&src, &dst).unwrap();
    let wal = |p: &std::path::Path| std::path::PathBuf::from(format!("{}-wal", p.display()));
    if wal(&src).exists() {
        std::fs::copy(wal(&src), wal(&dst)).unwrap();
    }
    let side = |p: &std::path::Path| std::path::PathBuf::from(format!("{}.dimple", p.display()));
    copy_dir(&side(&src), &side(&dst));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
