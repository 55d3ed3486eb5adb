//! Applying checked batches ([`super::check`]): the changes of a batch merged
//! together with the cursor that records the batch, consecutive batches sharing
//! a transaction ([`Group`]), so a crash loses nothing and applies nothing twice,
//! and a batch refused halfway leaves nothing of itself.

use super::check::{Changes, Checked, Step, APPLY_CHUNK};
use crate::changelog;
use crate::clock::parse_id;
use crate::error::{Error, Result};
use crate::merge::{Change, Merger, RowIndex};
use crate::peers;
use crate::replica::Replica;
use std::collections::BTreeSet;

/// Page cache for applying a batch, per change, in KiB: about a log page per change.
const APPLY_CACHE_KIB_PER_CHANGE: i64 = 3;

/// At most this page cache for applying batches, in KiB: the apply bench's peaks
/// (1M changes in batches of 10k, then 200k updates) stay under 70 MB, against a
/// goal of 100 MB.
const APPLY_CACHE_KIB: i64 = 32768;

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
    /// the check of a later batch to read into ([`super::check::Checker`]).
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
            let merge = |chunk: &[Change], rows: &RowIndex| {
                merger.apply_indexed(chunk, rows).map(drop).map_err(|e| local_refusal(key, e))
            };
            match changes {
                Changes::Kept(all, rows) => {
                    merge(&all, &rows)?;
                    *spare = all;
                }
                Changes::InFile(batch) => {
                    let mut chunk: Vec<Change> = Vec::with_capacity(APPLY_CHUNK);
                    batch.each_change(|c| {
                        chunk.push(c);
                        if chunk.len() >= APPLY_CHUNK {
                            merge(&chunk, &RowIndex::of(&chunk))?;
                            chunk.clear();
                        }
                        Ok(())
                    })?;
                    merge(&chunk, &RowIndex::of(&chunk))?;
                }
                Changes::Streamed(mut stream) => loop {
                    match stream.next()? {
                        Step::Piece(piece, rows) => {
                            merge(&piece, &rows)?;
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
