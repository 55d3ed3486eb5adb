//! Applying verified batches: every change of a batch checked first, then all of
//! them merged together with the cursor that records the batch (consecutive
//! batches share a transaction, see [`Group`]), so a crash loses nothing and
//! applies nothing twice.

use crate::batch;
use crate::changelog;
use crate::clock::parse_id;
use crate::error::{Error, Result};
use crate::merge::{Change, Merger, ALIVE, DEAD};
use crate::meta;
use crate::peers;
use crate::replica::Replica;
use crate::track::ROW;
use crate::value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// `ZV_METADATA` key overriding [`crate::Options::max_value_bytes`].
pub const MAX_VALUE_KEY: &str = "max_value_bytes";

/// A downloaded batch whose changes pass the checks, not applied yet: all of
/// them checked already, or arriving piece by piece as a check on a thread of
/// its own passes them ([`Ahead`]).
pub struct Checked {
    pub header: batch::Header,
    changes: Changes,
    /// The tables its changes name (a streamed batch's arrive with its last piece).
    pub tables: BTreeSet<String>,
    /// The values it stores out of line that would land in a row (for prefetch;
    /// a streamed batch holds none, see [`Stream`]).
    pub references: crate::blob::transfer::Referenced,
}

enum Changes {
    /// All of them, in memory: a batch of at most [`APPLY_CHUNK`] changes.
    Kept(Vec<Change>),
    /// Checked whole and left in the batch's file, read again piece by piece as
    /// they are merged.
    InFile(Box<batch::Batch>),
    /// Being checked still, [`APPLY_CHUNK`] changes at a time.
    Streamed(Stream),
}

/// Page cache for applying a batch, per change, in KiB: about a log page per change.
const APPLY_CACHE_KIB_PER_CHANGE: i64 = 3;

/// At most this page cache for applying batches, in KiB: the apply bench's peaks
/// (1M changes in batches of 10k, then 200k updates) stay under 70 MB, against a
/// goal of 100 MB.
const APPLY_CACHE_KIB: i64 = 32768;

/// Changes merged at a time when a batch is applied (one transaction whatever its
/// size): a batch of the default size is one piece.
const APPLY_CHUNK: usize = 10_000;

/// What checking a batch needs of the replica, taken from it once: a check then
/// runs on a thread of its own, so the next batch is read and checked while this
/// one is merged (1M pulled changes: the check is a quarter of the work).
#[derive(Clone)]
pub struct Checker {
    /// The replica whose batches these are.
    id: String,
    drift: crate::clock::Drift,
    cap: usize,
    /// The last change id applied from this replica: the next batch starts after it.
    after: Option<String>,
}

impl Checker {
    pub fn new(r: &Replica, id: &str) -> Result<Self> {
        let cap = match meta::get(&r.sync, MAX_VALUE_KEY)? {
            Some(v) => {
                v.parse().map_err(|_| Error::Invalid(format!("{MAX_VALUE_KEY} {v:?} is not a number of bytes")))?
            }
            None => r.opts.max_value_bytes,
        };
        let after = peers::get(&r.sync, id)?.unwrap_or_default().last_change_id;
        Ok(Checker { id: id.to_owned(), drift: r.hlc.drift(), cap, after })
    }

    /// The checker for the batch that follows `h`, as it will be once `h` is applied.
    pub fn after(&self, h: &batch::Header) -> Checker {
        Checker { after: Some(h.last_change_id.clone()), ..self.clone() }
    }

    /// Opens a downloaded batch and checks what its header says.
    fn open(&self, path: &Path, key: &str) -> Result<batch::Batch> {
        let batch = batch::open(path, key, &self.id)?;
        if let Some(last) = &self.after {
            if batch.header.first_change_id <= *last {
                return Err(Error::bad(key, "change ids go backwards from the last batch applied"));
            }
        }
        Ok(batch)
    }

    /// Checks every change of an opened batch, reading them into the changes of
    /// `spare` (a batch applied before: see [`Group::apply`]) while it has any.
    fn check_whole(&self, batch: batch::Batch, key: &str, spare: Vec<Change>) -> Result<Checked> {
        let mut tables = BTreeSet::new();
        let mut references = crate::blob::transfer::Referenced::default();
        let mut kept = Some(Vec::with_capacity(APPLY_CHUNK.min(batch.header.change_count.max(0) as usize)));
        batch.each_change_reusing(spare, |c| {
            check_change(&self.drift, key, &c, self.cap)?;
            references.see(&c);
            if !tables.contains(&c.entity_type) {
                tables.insert(c.entity_type.clone());
            }
            match &mut kept {
                Some(v) if v.len() < APPLY_CHUNK => v.push(c),
                _ => kept = None,
            }
            Ok(())
        })?;
        let header = batch.header.clone();
        let changes = match kept {
            Some(all) => Changes::Kept(all),
            None => Changes::InFile(Box::new(batch)),
        };
        Ok(Checked { header, changes, tables, references })
    }

    /// Checks every change of an opened batch and hands them to `to` as they
    /// pass, [`APPLY_CHUNK`] at a time, reading them into the pieces `back`
    /// returns once merged. Stops at the first change that would need a value
    /// stored out of line ([`Step::Refers`]). Returns the last step to hand
    /// over, or nothing once the merge stopped taking them (it has its error).
    fn check_streamed(
        &self,
        batch: &batch::Batch,
        key: &str,
        mut spare: Vec<Change>,
        to: &SyncSender<Step>,
        back: &Receiver<Vec<Change>>,
    ) -> Option<Step> {
        let mut tables = BTreeSet::new();
        let mut references = crate::blob::transfer::Referenced::default();
        let mut piece = Vec::with_capacity(APPLY_CHUNK);
        // Why the reading stopped early, when it did: its error is only a way out.
        let mut stopped: Option<Option<Step>> = None;
        let next_spare = || {
            if spare.is_empty() {
                if let Ok(returned) = back.try_recv() {
                    spare = returned;
                }
            }
            spare.pop()
        };
        let read = batch.each_change_from(next_spare, |c| {
            check_change(&self.drift, key, &c, self.cap)?;
            references.see(&c);
            if references.any() {
                stopped = Some(Some(Step::Refers));
                return Err(Error::Invalid("stopped at a value stored out of line".into()));
            }
            if !tables.contains(&c.entity_type) {
                tables.insert(c.entity_type.clone());
            }
            piece.push(c);
            if piece.len() == APPLY_CHUNK {
                let full = std::mem::replace(&mut piece, Vec::with_capacity(APPLY_CHUNK));
                if to.send(Step::Piece(full)).is_err() {
                    stopped = Some(None);
                    return Err(Error::Invalid("the merge stopped".into()));
                }
            }
            Ok(())
        });
        if let Some(step) = stopped {
            return step;
        }
        if let Err(e) = read {
            return Some(Step::Failed(e));
        }
        if !piece.is_empty() && to.send(Step::Piece(piece)).is_err() {
            return None;
        }
        Some(Step::End(tables))
    }
}

/// What the check of a batch on its own thread hands over, in this order:
/// either `Whole`, or `Header` then any number of `Piece`s and one of `End`,
/// `Failed` and `Refers`.
enum Step {
    /// The whole batch checked (at most one piece, or streaming not wanted).
    Whole(Box<Result<Checked>>),
    Header(batch::Header),
    /// The next [`APPLY_CHUNK`] changes (fewer for the last), every one checked.
    Piece(Vec<Change>),
    /// Every change passed; the tables they name.
    End(BTreeSet<String>),
    /// A change refused after the pieces before it were handed over.
    Failed(Error),
    /// A change refers to a value stored out of line: such a batch is checked
    /// whole, so that its values are downloaded before any of it is applied.
    Refers,
}

/// A batch being checked on a thread of its own ([`Checker`]). Dropping it waits
/// for that thread, so no check outlives the pull that started it.
///
/// A batch of more than [`APPLY_CHUNK`] changes (a burst of writes pushed at
/// once is one batch) is handed over piece by piece as the check passes them,
/// and merged meanwhile. Checked whole first, the check and the merge took
/// turns, and every change was read twice, since only one piece is kept in
/// memory (a fresh pull of 1M changes pushed as four batches: 2.5 s, now 1.3-1.45
/// s). A change refused in a later piece refuses the batch all the same: its
/// transaction is rolled back whole ([`Group::apply`]).
pub struct Ahead {
    stream: Option<Stream>,
    /// The result, when no thread could be started and the check ran here.
    done: Option<Result<Checked>>,
}

/// The thread checking a batch, and what it hands over.
struct Stream {
    steps: Option<Receiver<Step>>,
    /// Pieces merged, returned for their strings to be reused.
    back: Sender<Vec<Change>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn next(&mut self) -> Result<Step> {
        let got = self.steps.as_ref().expect("a stream has its receiver until dropped").recv();
        match got {
            Ok(step) => Ok(step),
            // The thread ended without its last step: it panicked.
            Err(_) => {
                if let Some(handle) = self.thread.take() {
                    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                }
                Err(Error::Invalid("the check of a batch ended early".into()))
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A thread blocked handing over a piece returns once nobody takes it.
        self.steps.take();
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

impl Ahead {
    /// Starts checking the batch at `path`, reading it into the changes of
    /// `spare` (see [`Checker::check_whole`]); a large batch is handed over
    /// piece by piece when `streamed`.
    pub fn start(checker: Checker, path: PathBuf, key: String, spare: Vec<Change>, streamed: bool) -> Ahead {
        // Two pieces ahead at most: a piece merged while the next waits and a
        // third is read.
        let (to, steps) = sync_channel(1);
        let (back, returned) = channel();
        let spawned = std::thread::Builder::new().name("dimple-check".into()).spawn({
            let (checker, path, key) = (checker.clone(), path.clone(), key.clone());
            move || {
                let batch = match checker.open(&path, &key) {
                    Ok(b) => b,
                    Err(e) => return drop(to.send(Step::Whole(Box::new(Err(e))))),
                };
                if !streamed || batch.header.change_count <= APPLY_CHUNK as i64 {
                    return drop(to.send(Step::Whole(Box::new(checker.check_whole(batch, &key, spare)))));
                }
                if to.send(Step::Header(batch.header.clone())).is_ok() {
                    if let Some(last) = checker.check_streamed(&batch, &key, spare, &to, &returned) {
                        let _ = to.send(last);
                    }
                }
            }
        });
        match spawned {
            Ok(handle) => Ahead { stream: Some(Stream { steps: Some(steps), back, thread: Some(handle) }), done: None },
            // The spare changes went with the thread that never ran.
            Err(_) => {
                let done = checker.open(&path, &key).and_then(|b| checker.check_whole(b, &key, Vec::new()));
                Ahead { stream: None, done: Some(done) }
            }
        }
    }

    /// The checked batch, once checked whole or once its header is read.
    pub fn finish(mut self) -> Result<Checked> {
        if let Some(done) = self.done.take() {
            return done;
        }
        let mut stream = self.stream.take().expect("an Ahead holds a thread or a result");
        match stream.next()? {
            Step::Whole(checked) => *checked,
            Step::Header(header) => Ok(Checked {
                header,
                changes: Changes::Streamed(stream),
                tables: BTreeSet::new(),
                references: Default::default(),
            }),
            _ => Err(Error::Invalid("the check of a batch handed over a piece before its header".into())),
        }
    }
}

/// How [`Group::apply`] ended.
pub enum Applied {
    /// The batch is in the group; the tables its changes touch.
    Whole(BTreeSet<String>),
    /// Part of a streamed batch is in the group, and a later change refers to a
    /// value stored out of line: the group is to be rolled back and its batches
    /// applied again, each checked whole first.
    Refers,
}

/// Batches of one replica applied in one SQLite transaction, each together with
/// the cursor that records it: a crash loses the group whole, and the next pull
/// applies it again.
///
/// One commit per batch wrote every page the batch dirtied to the WAL, and a
/// batch of updates spread over the keys dirties most pages of the log and the
/// table, so each commit wrote nearly the same pages again (a pull of 200k
/// updates in batches of 10k: a quarter of its time in commits). A group ends
/// at [`GROUP_CHANGES`] changes or [`GROUP_OPEN`]: the app's writes wait while it
/// is open.
///
/// No savepoint per batch: SQLite then copies every page a batch first touches
/// to a statement journal, 12% of a fresh pull. A batch refused halfway rolls
/// its whole group back instead ([`Group::rollback`]), and the caller applies
/// the group's batches again one transaction each (see `sync::pull`).
pub struct Group {
    /// Changes and batches applied in it so far.
    pub changes: usize,
    pub batches: usize,
    opened: std::time::Instant,
    /// One batch only (the retry after a refusal).
    single: bool,
    /// The page cache to set back once the group ends.
    cache_before: i64,
}

/// A group takes no more batches once it holds this many changes.
const GROUP_CHANGES: usize = 100_000;
/// ... or once it has been open this long.
const GROUP_OPEN: std::time::Duration = std::time::Duration::from_millis(500);

impl Group {
    /// Opens the transaction: captured local writes get their ids first, as
    /// every transaction that applies remote changes does. A `single` group
    /// takes one batch.
    pub fn begin(r: &mut Replica, single: bool) -> Result<Group> {
        let cache_before: i64 = r.sync.query_row("PRAGMA cache_size", [], |row| row.get(0))?;
        r.sync.execute_batch("BEGIN IMMEDIATE")?;
        let group = Group { changes: 0, batches: 0, opened: std::time::Instant::now(), single, cache_before };
        let me = r.id().to_owned();
        let started = (|| -> Result<()> {
            r.hlc.observe_persisted(&r.sync)?;
            changelog::ingest(&r.sync, &mut r.hlc, &me).map(drop)
        })();
        if let Err(e) = started {
            group.rollback(r);
            return Err(e);
        }
        Ok(group)
    }

    /// Whether the next batch should go to a new group.
    pub fn full(&self) -> bool {
        (self.single && self.batches > 0) || self.changes >= GROUP_CHANGES || self.opened.elapsed() >= GROUP_OPEN
    }

    /// Applies one checked batch inside the group. After an error or
    /// [`Applied::Refers`], the group must be rolled back: part of the batch may
    /// be in it. The changes of a batch kept in memory are left in `spare`, for
    /// the check of a later batch to read into ([`Checker::check_whole`]).
    pub fn apply(
        &mut self,
        r: &mut Replica,
        id: &str,
        checked: Checked,
        key: &str,
        sha: &str,
        spare: &mut Vec<Change>,
    ) -> Result<Applied> {
        // The page cache grows with the group: each change of a row the log
        // already holds reads and dirties a page of the log wherever that row's
        // changes lie, and with SQLite's default most of those pages were read
        // and written out again (a pull of 200k single-column updates of 20k rows:
        // 2.1 -> 1.7 s, of which system time 0.8 -> 0.25 s). Set back once the
        // group ends, so that no dirty page is pushed out before its commit.
        let kib = (self.changes as i64 + checked.header.change_count)
            .saturating_mul(APPLY_CACHE_KIB_PER_CHANGE)
            .min(APPLY_CACHE_KIB);
        if kib > crate::sql::DEFAULT_CACHE_KIB {
            r.sync.pragma_update(None, "cache_size", -kib)?;
        }
        let Checked { header, changes, mut tables, .. } = checked;
        {
            let merger = Merger::new(&r.sync)?;
            let merge = |chunk: &[Change]| merger.apply_many(chunk).map(drop).map_err(|e| local_refusal(key, e));
            match changes {
                Changes::Kept(all) => {
                    merge(&all)?;
                    *spare = all;
                }
                Changes::InFile(batch) => {
                    let mut chunk: Vec<Change> = Vec::with_capacity(APPLY_CHUNK);
                    batch.each_change(|c| {
                        chunk.push(c);
                        if chunk.len() >= APPLY_CHUNK {
                            merge(&chunk)?;
                            chunk.clear();
                        }
                        Ok(())
                    })?;
                    merge(&chunk)?;
                }
                Changes::Streamed(mut stream) => loop {
                    match stream.next()? {
                        Step::Piece(piece) => {
                            merge(&piece)?;
                            let _ = stream.back.send(piece);
                        }
                        Step::End(named) => {
                            tables = named;
                            break;
                        }
                        Step::Failed(e) => return Err(e),
                        Step::Refers => return Ok(Applied::Refers),
                        Step::Whole(_) | Step::Header(_) => {
                            return Err(Error::Invalid("the check of a batch handed over its header twice".into()))
                        }
                    }
                },
            }
        }
        if let Some(last) = parse_id(&header.last_change_id) {
            r.hlc.observe(&last);
        }
        changelog::save_clock(&r.sync, &r.hlc)?;
        let h = &header;
        peers::batch_applied(&r.sync, id, &h.batch_id, sha, &h.last_change_id, h.change_count)?;
        self.changes += h.change_count as usize;
        self.batches += 1;
        Ok(Applied::Whole(tables))
    }

    /// Commits every batch applied in the group.
    pub fn commit(self, r: &mut Replica) -> Result<()> {
        let committed = if r.sync.is_autocommit() {
            // SQLite rolled the transaction back itself (a full disk, say).
            Err(Error::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("SQLite rolled back the transaction applying the pulled batches".into()),
            )))
        } else {
            r.sync.execute_batch("COMMIT").map_err(Error::from)
        };
        if committed.is_err() {
            self.rollback(r);
            return committed;
        }
        r.sync.pragma_update(None, "cache_size", self.cache_before)?;
        Ok(())
    }

    /// Undoes every batch of the group.
    pub fn rollback(self, r: &mut Replica) {
        if !r.sync.is_autocommit() {
            let _ = r.sync.execute_batch("ROLLBACK");
        }
        let _ = r.sync.pragma_update(None, "cache_size", self.cache_before);
    }
}

/// Refuses a change that is malformed or too far in the future, before anything of
/// its batch is applied.
fn check_change(drift: &crate::clock::Drift, key: &str, c: &Change, max_value_bytes: usize) -> Result<()> {
    let id = parse_id(&c.id).ok_or_else(|| Error::bad(key, format!("change id {:?} is not a UUIDv7", c.id)))?;
    drift.check(&id).map_err(|e| Error::bad(key, e.to_string()))?;
    if c.entity_type.is_empty() || c.attribute.is_empty() {
        return Err(Error::bad(key, format!("change {} has an empty table or column name", c.id)));
    }
    if c.attribute == ROW {
        if !matches!(c.new_value.as_deref(), Some(ALIVE) | Some(DEAD)) {
            return Err(Error::bad(key, format!("change {} has a bad row state {:?}", c.id, c.new_value)));
        }
        return Ok(());
    }
    for v in [&c.old_value, &c.new_value].into_iter().flatten() {
        if v.len() > max_value_bytes {
            return Err(Error::bad(
                key,
                format!("change {} holds a value of {} bytes, over the cap of {max_value_bytes} bytes", c.id, v.len()),
            ));
        }
        value::check(v).map_err(|e| Error::bad(key, format!("change {}: {e}", c.id)))?;
    }
    Ok(())
}

/// A remote change that breaks a local constraint (UNIQUE, NOT NULL, CHECK, a type
/// the key cannot hold) refuses its batch for that replica only, instead of failing
/// the whole pull and stopping every other replica with it.
fn local_refusal(key: &str, e: Error) -> Error {
    match e {
        Error::Sqlite(ref s) if s.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Error::bad(key, format!("batch cannot be applied here: {s}"))
        }
        // A build of SQLite with a smaller SQLITE_MAX_LENGTH than dimple's own
        // (an app embedding the library): a problem of that replica, not a pull
        // that fails for everyone.
        Error::Sqlite(ref s) if s.sqlite_error_code() == Some(rusqlite::ErrorCode::TooBig) => Error::bad(
            key,
            format!(
                "batch cannot be applied here: {s}; this build's SQLite holds smaller values than dimple's \
                 (build it with LIBSQLITE3_FLAGS=-DSQLITE_MAX_LENGTH=2147483647)"
            ),
        ),
        Error::BadData { reason, .. } => Error::bad(key, reason),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use crate::{Options, Replica};
    use rand::RngCore;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn a_value_larger_than_this_sqlite_holds_refuses_its_batch_as_a_problem_and_the_others_sync_on() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("bucket");
        std::fs::create_dir_all(&bucket).unwrap();
        let url = format!("file://{}", bucket.display());
        let replica = |name: &str| {
            let path = dir.path().join(format!("{name}.db"));
            let mut r = Replica::init(&path, Some(&url), Some(name), Options::default()).unwrap();
            r.conn().execute_batch("CREATE TABLE f(id TEXT PRIMARY KEY, data BLOB)").unwrap();
            r.track("f", false).unwrap();
            r
        };
        let (mut big, mut small, mut reader) = (replica("big"), replica("small"), replica("reader"));
        let store = block_on(crate::open_store(&url, None)).unwrap();
        let mut value = vec![0u8; 100_001 + (rand::random::<u16>() as usize)];
        rand::thread_rng().fill_bytes(&mut value);
        big.conn().execute("INSERT INTO f VALUES ('big', ?1)", [&value]).unwrap();
        small.conn().execute("INSERT INTO f VALUES ('small', x'00')", []).unwrap();
        for r in [&mut big, &mut small] {
            block_on(crate::push(r, &store)).unwrap();
        }
        // This reader's SQLite holds values of at most 100 kB, as the build of an
        // app that embeds dimple might (SQLite's default is 1e9, dimple's 2^31-1).
        // SAFETY: the handle is the reader's own open connection, used on this thread.
        unsafe {
            rusqlite::ffi::sqlite3_limit(reader.sync.handle(), rusqlite::ffi::SQLITE_LIMIT_LENGTH, 100_000);
        }
        let report = block_on(crate::pull(&mut reader, &store)).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("holds smaller values than dimple's"), "{:?}", report.problems);
        let ids: Vec<String> = reader
            .conn()
            .prepare("SELECT id FROM f")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, ["small"]);
    }
}
