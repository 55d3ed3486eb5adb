//! A replica: one SQLite database taking part in sync, opened by dimple.
//!
//! Two connections to the same file: `app` has the capture triggers enabled and
//! serves [`Replica::transaction`]; `sync` has triggers disabled
//! (`SQLITE_DBCONFIG_ENABLE_TRIGGER`) so that applying remote changes is not
//! captured again as local writes. Both use WAL and a busy timeout, and every write
//! dimple makes is a short `BEGIN IMMEDIATE` transaction, so an app writing to the
//! same file waits at most for one batch to apply.

use crate::changelog;
use crate::clock::{self, Clock, Hlc, SystemClock};
use crate::error::{Error, Result};
use crate::merge::Merger;
use crate::meta;
use crate::sidedir::SideDir;
use crate::track::{self, TableInfo};
use crate::{trust, FORMAT};
use ed25519_dalek::SigningKey;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
pub const DEFAULT_MAX_BATCH_BYTES: usize = 256 << 20;

/// What a replica needs from its surroundings; tests swap the clock.
#[derive(Clone)]
pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// Remote ids further than this in the future are refused (SPEC 4).
    pub max_drift_ms: u64,
    /// Changes per uploaded batch (whole transactions are never split).
    pub batch_changes: usize,
    pub busy_timeout: Duration,
    /// Encoded remote values longer than this refuse their whole batch (SPEC 6), so
    /// one writer cannot fill every replica's disk through a single cell.
    /// `ZV_METADATA.max_value_bytes`, when set, overrides it for this replica.
    pub max_value_bytes: usize,
    /// Batch objects larger than this are refused before they are opened.
    pub max_batch_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            max_drift_ms: clock::DEFAULT_MAX_DRIFT_MS,
            batch_changes: 10_000,
            busy_timeout: Duration::from_secs(10),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

pub struct Replica {
    path: PathBuf,
    side: SideDir,
    pub(crate) app: Connection,
    pub(crate) sync: Connection,
    id: String,
    pub(crate) hlc: Hlc,
    pub(crate) opts: Options,
    key: Option<SigningKey>,
    /// How bucket objects are stored (see [`crate::group`]), once known.
    pub(crate) codec: Option<crate::codec::Codec>,
}

/// The longest busy timeout any replica of this process was opened with, in ms:
/// what [`poll_busy`] waits for at most (SQLite's handler takes no state of ours).
static BUSY_LIMIT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Waits for the database lock in 1 ms steps. SQLite's own busy timeout backs off
/// to 100 ms between tries, and an app committing in a tight loop frees the lock
/// for microseconds at a time: with long sleeps dimple can miss every gap for the
/// whole timeout and fail with "database is locked". Short steps catch the gaps.
fn poll_busy(tries: i32) -> bool {
    let limit = BUSY_LIMIT_MS.load(std::sync::atomic::Ordering::Relaxed);
    if tries as u64 >= limit {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

/// The WAL file size a pull leaves at most ([`Replica::shrink_wal`]): what SQLite's
/// default checkpoint interval of 1000 pages lets it reach.
const WAL_KEPT_BYTES: u64 = 4 << 20;

fn connect(path: &Path, opts: &Options, triggers: bool) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| not_a_database(path, e))?;
    // The functions only: the log's views come once the tables are upgraded
    // (an upgrade renames tables, and SQLite checks every view when it does).
    crate::record::register(&conn)?;
    BUSY_LIMIT_MS.fetch_max(opts.busy_timeout.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    conn.busy_handler(Some(poll_busy))?;
    // Read the header now: a file that is not SQLite is the user's mistake (exit 1),
    // reported with its path, not an internal error from the first real query.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).map_err(|e| not_a_database(path, e))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(256);
    if !triggers {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
        // Remote changes arrive in id order, not in an order that satisfies the
        // app's foreign keys (a child may be merged before its parent).
        conn.pragma_update(None, "foreign_keys", "OFF")?;
    }
    Ok(conn)
}

/// Captured writes wait in the pending tables, and changes for the next push in
/// the outbox (compressed): after a burst of writes both are emptied, and their
/// pages stay in the file as free pages, which later writes reuse. A
/// database the app set to incremental auto-vacuum gets them back once they are a
/// quarter of the file and at least 4 MiB. dimple does not turn auto-vacuum on
/// itself: it makes every insert of the app's slower (by about a third, measured
/// with `cargo bench --bench dimple capture`).
pub(crate) fn reclaim(conn: &Connection) -> Result<()> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != 2 {
        return Ok(());
    }
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if free * page >= 4 << 20 && free * 4 >= pages {
        // One result row per page given back: stepped to the end, or it stops at one.
        let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(())
}

fn not_a_database(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            Error::Invalid(format!("{}: not a SQLite database (or it is encrypted)", path.display()))
        }
        Some(
            rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied,
        ) => Error::Invalid(format!("{}: cannot open the database: {e}", path.display())),
        _ => Error::Sqlite(e),
    }
}

/// `<db>.dimple/`: the replica's private files (see [`SideDir`]).
pub fn side_dir(db: &Path) -> PathBuf {
    SideDir::of(db).path().to_owned()
}

impl Replica {
    /// Makes `path` (new or an existing database) a replica: dimple's tables, a new
    /// replica id, a key pair, the bucket URL.
    pub fn init(path: &Path, bucket: Option<&str>, name: Option<&str>, opts: Options) -> Result<Replica> {
        Replica::init_with(path, bucket, name, opts, &[])
    }

    /// [`Replica::init`], with `extra` metadata written in the same transaction:
    /// a database is never a replica without them (a clone's marks).
    pub(crate) fn init_with(
        path: &Path,
        bucket: Option<&str>,
        name: Option<&str>,
        opts: Options,
        extra: &[(&str, &str)],
    ) -> Result<Replica> {
        if let Some(b) = bucket {
            crate::store::BucketUrl::parse(b)?;
        }
        let app = connect(path, &opts, true)?;
        let existing: Option<String> = app
            .query_row("SELECT value FROM ZV_METADATA WHERE key='database_uuid'", [], |r| r.get(0))
            .optional()
            .unwrap_or(None);
        if let Some(id) = existing {
            return Err(Error::Invalid(format!("{} is already a dimple replica (id {id})", path.display())));
        }
        let side = SideDir::of(path);
        side.create()?;
        let key_path = side.key();
        if key_path.exists() {
            std::fs::remove_file(&key_path).map_err(|e| Error::io(&key_path, e))?;
        }
        trust::generate(&key_path)?;
        app.pragma_update(None, "journal_mode", "WAL")?;
        let id = clock::random_v7(opts.clock.as_ref()).to_string();
        let name = name.map(str::to_owned).unwrap_or_else(default_name);
        let now = clock::rfc3339(opts.clock.now_ms());
        let tx = app.unchecked_transaction()?;
        tx.execute_batch(crate::migrate::SCHEMA)?;
        for (k, v) in [
            ("database_uuid", id.as_str()),
            ("format", &FORMAT.to_string()),
            ("local_schema", &crate::migrate::CURRENT.to_string()),
            ("name", &name),
            ("created_at", &now),
        ] {
            meta::set(&tx, k, v)?;
        }
        if let Some(b) = bucket {
            meta::set(&tx, "bucket", b)?;
        }
        for (k, v) in extra {
            meta::set(&tx, k, v)?;
        }
        tx.commit()?;
        drop(app);
        Replica::open(path, opts)
    }

    pub fn open(path: &Path, opts: Options) -> Result<Replica> {
        if !path.exists() {
            return Err(Error::Invalid(format!("{}: no such database", path.display())));
        }
        let mut app = connect(path, &opts, true)?;
        let id: Option<String> = app
            .query_row("SELECT value FROM ZV_METADATA WHERE key='database_uuid'", [], |r| r.get(0))
            .optional()
            .map_err(|_| Error::NotInitialized(path.display().to_string()))?;
        let id = id.ok_or_else(|| Error::NotInitialized(path.display().to_string()))?;
        let format: Option<String> = meta::get(&app, "format")?;
        if format.as_deref() != Some(&FORMAT.to_string()) {
            return Err(Error::Invalid(format!(
                "{}: replica format {:?} is not supported by this dimple (format {FORMAT})",
                path.display(),
                format
            )));
        }
        crate::migrate::upgrade(&mut app)?;
        crate::log::register(&app)?;
        if let Some(public) = meta::get(&app, meta::PUBLIC_KEY)? {
            SideDir::of(path).finish_key_swap(&public)?;
        }
        let uuid = Uuid::parse_str(&id).map_err(|_| Error::Invalid(format!("bad database_uuid {id:?}")))?;
        let last = meta::get(&app, "clock")?.and_then(|s| clock::parse_id(&s));
        let max_drift_ms = opts.max_drift_ms;
        let hlc = Hlc::new(opts.clock.clone(), &uuid, last, max_drift_ms);
        let sync = connect(path, &opts, false)?;
        crate::log::register(&sync)?;
        Ok(Replica { path: path.to_owned(), side: SideDir::of(path), app, sync, id, hlc, opts, key: None, codec: None })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gives back the space of a WAL grown past [`WAL_KEPT_BYTES`] (a pull lets it
    /// grow to 64 MiB between checkpoints): checkpoints it and truncates it when no
    /// other connection is using it right now. It never waits for one: an app
    /// reading or writing at that moment keeps the file as it is, and SQLite starts
    /// it over at a later checkpoint. Housekeeping only: what the pull applied is
    /// committed already, so a failure here is logged, not returned.
    pub(crate) fn shrink_wal(&self) {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        if std::fs::metadata(PathBuf::from(wal)).map_or(true, |m| m.len() <= WAL_KEPT_BYTES) {
            return;
        }
        if let Err(e) = self.truncate_wal_unless_busy() {
            tracing::warn!(db = %self.path.display(), "could not give back the WAL's space after a pull: {e}");
        }
    }

    /// `wal_checkpoint(TRUNCATE)` without the busy handler. When another connection
    /// is using the WAL, SQLite says so in the row (busy = 1), not as an error.
    fn truncate_wal_unless_busy(&self) -> rusqlite::Result<()> {
        self.sync.busy_handler(None)?;
        let done = self.sync.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        self.sync.busy_handler(Some(poll_busy))?;
        done
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn side(&self) -> &SideDir {
        &self.side
    }

    pub fn name(&self) -> Result<String> {
        Ok(meta::get(&self.app, "name")?.unwrap_or_default())
    }

    pub fn bucket(&self) -> Result<Option<String>> {
        meta::get(&self.app, "bucket")
    }

    pub fn set_bucket(&self, url: &str) -> Result<()> {
        crate::store::BucketUrl::parse(url)?;
        meta::set(&self.app, "bucket", url)
    }

    /// Which way this replica syncs (see [`crate::direction`]).
    pub fn direction(&self) -> Result<crate::direction::Direction> {
        crate::direction::get(&self.app)
    }

    pub fn set_direction(&self, d: crate::direction::Direction) -> Result<()> {
        crate::direction::set(&self.app, d)
    }

    /// The connection with capture on: plain SQL on it is captured like any app's.
    pub fn conn(&self) -> &Connection {
        &self.app
    }

    pub(crate) fn signing_key(&mut self) -> Result<&SigningKey> {
        if self.key.is_none() {
            self.key = Some(trust::load(&self.side.key())?);
        }
        Ok(self.key.as_ref().expect("just loaded"))
    }

    pub fn public_key(&mut self) -> Result<String> {
        Ok(trust::public_b64(self.signing_key()?))
    }

    /// A new id from the replica's clock, saved before it names anything: a
    /// snapshot or a key epoch is named by one in the bucket, and an id given
    /// again (after a restart on a clock set back, or by another process on this
    /// file) would name two things. Where a change id names its replica, this
    /// one holds random bits: two copies of one database share a clock and a
    /// replica id, and would otherwise name their snapshots, or epochs with two
    /// different keys, alike.
    pub(crate) fn new_id(&mut self) -> Result<uuid::Uuid> {
        let tx = self.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.hlc.observe_persisted(&tx)?;
        let id = self.hlc.tick();
        changelog::save_clock(&tx, &self.hlc)?;
        tx.commit()?;
        Ok(crate::clock::compose(crate::clock::stamp_of(&id), rand::random()))
    }

    /// Starts capturing writes to `table`. Rows already in it are recorded as
    /// inserts; changes for it that arrived before (from replicas that track it)
    /// are applied now.
    pub fn track(&mut self, table: &str, allow_integer_key: bool) -> Result<TableInfo> {
        let info = track::inspect(&self.sync, table)?
            .ok_or_else(|| Error::Invalid(format!("no table named {table:?} in {}", self.path.display())))?;
        track::validate(&info, allow_integer_key)?;
        track::validate_key_collation(&self.sync, table)?;
        let now = clock::rfc3339(self.opts.clock.now_ms());
        let already = track::recorded_columns(&self.sync, table)?.is_some();
        let tx = self.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.hlc.observe_persisted(&tx)?;
        // Writes captured by the old triggers are read with the old column list.
        changelog::ingest(&tx, &mut self.hlc, &self.id)?;
        track::install(&tx, &info, !already, &now)?;
        changelog::ingest(&tx, &mut self.hlc, &self.id)?;
        Merger::new(&tx)?.rebuild(table)?;
        tx.commit()?;
        Ok(info)
    }

    pub fn untrack(&mut self, table: &str) -> Result<()> {
        let tx = self.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.hlc.observe_persisted(&tx)?;
        // Writes captured before untracking still belong to the log.
        changelog::ingest(&tx, &mut self.hlc, &self.id)?;
        if !track::untrack(&tx, table)? {
            return Err(Error::Invalid(format!("table {table:?} is not tracked")));
        }
        // Its rows and its name are no longer this replica's to sync.
        for origin in [changelog::bad_key_origin(table), changelog::renamed_origin(table)] {
            crate::problems::clear_local(&tx, &self.id, &origin)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Takes in tracked tables whose columns changed (ALTER TABLE): the values
    /// written to new columns are captured and capture is reinstalled (by
    /// [`changelog::ingest`], on any path), then changes the log held for the new
    /// columns are applied here, on the connection whose writes are not captured.
    /// Returns the tables that gained columns.
    pub fn refresh_schema(&mut self) -> Result<Vec<String>> {
        let tx = self.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.hlc.observe_persisted(&tx)?;
        changelog::ingest(&tx, &mut self.hlc, &self.id)?;
        let changed: Vec<String> =
            meta::get(&tx, changelog::REBUILD_KEY)?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
        {
            let merger = Merger::new(&tx)?;
            for table in &changed {
                merger.rebuild(table)?;
            }
        }
        tx.execute("DELETE FROM ZV_METADATA WHERE key = ?1", [changelog::REBUILD_KEY])?;
        tx.commit()?;
        Ok(changed)
    }

    /// Runs `f` in one write transaction on the capturing connection; its writes to
    /// tracked tables become changes (old and new values) of one dimple transaction.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self.app.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        self.hlc.observe_persisted(&tx)?;
        changelog::ingest(&tx, &mut self.hlc, &self.id)?;
        tx.commit()?;
        Ok(out)
    }

    /// Gives ids to writes captured from other connections. Returns how many changes.
    pub fn capture(&mut self) -> Result<usize> {
        let tx = self.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.hlc.observe_persisted(&tx)?;
        // The page cache grows with the number of writes waiting, not with their
        // bytes: the pages this job writes are the log's. A large value's pages,
        // read in pieces from its pending row, would fill a big cache, and the
        // memory stayed with the process (the blobs bench: pull peak 66 -> 131 MiB).
        let kib = (track::pending_span(&tx)? / 4).min(crate::sql::BIG_CACHE_KIB);
        let n = if kib > crate::sql::DEFAULT_CACHE_KIB {
            crate::sql::with_cache(&tx, kib, || changelog::ingest(&tx, &mut self.hlc, &self.id))?
        } else {
            changelog::ingest(&tx, &mut self.hlc, &self.id)?
        };
        tx.commit()?;
        if n > 0 {
            reclaim(&self.sync)?;
        }
        Ok(n)
    }

    /// Changes captured by triggers and not yet given ids.
    pub fn pending_captured(&self) -> Result<i64> {
        track::pending_count(&self.sync, "main")
    }

    /// This replica's changes not yet pushed.
    pub fn unpushed(&self) -> Result<i64> {
        let through = meta::PushState::load(&self.sync)?.through;
        crate::outbox::unpushed_count(&self.sync, &through)
    }
}

impl Hlc {
    /// Another process (the app through the library, a CLI run) may have issued ids
    /// since this one loaded the clock: under the write lock, the stored state is the
    /// truth, so move past it before issuing more.
    pub(crate) fn observe_persisted(&mut self, conn: &Connection) -> Result<()> {
        if let Some(id) = meta::get(conn, "clock")?.and_then(|s| clock::parse_id(&s)) {
            self.observe(&id);
        }
        Ok(())
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "replica".to_owned())
}
