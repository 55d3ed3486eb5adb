//! Checking a downloaded batch before any of it stays applied: every change
//! read from the batch file and refused when malformed, out of order, too far in
//! the future or too large, on a thread of its own ([`Ahead`]) so that the next
//! batch is checked while this one is merged, and a large batch handed over to
//! the merge piece by piece as its changes pass.

use crate::batch;
use crate::error::{Error, Result};
use crate::merge::{Change, RowIndex, ALIVE, DEAD};
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
    pub(super) changes: Changes,
    /// The tables its changes name (a streamed batch's arrive with its last piece).
    pub tables: BTreeSet<String>,
    /// The values it stores out of line that would land in a row (for prefetch;
    /// a streamed batch holds none, see [`Stream`]).
    pub references: crate::blob::transfer::Referenced,
}

pub(super) enum Changes {
    /// All of them, in memory: a batch of at most [`APPLY_CHUNK`] changes, with
    /// the rows they name.
    Kept(Vec<Change>, RowIndex),
    /// Checked whole and left in the batch's file, read again piece by piece as
    /// they are merged.
    InFile(Box<batch::Batch>),
    /// Being checked still, [`APPLY_CHUNK`] changes at a time.
    Streamed(Stream),
}

/// Changes merged at a time when a batch is applied (one transaction whatever its
/// size): a batch of the default size is one piece.
pub(super) const APPLY_CHUNK: usize = 10_000;

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
    /// `spare` (a batch applied before: see [`super::apply::Group::apply`]) while it has any.
    fn check_whole(&self, batch: batch::Batch, key: &str, spare: Vec<Change>) -> Result<Checked> {
        let mut tables = BTreeSet::new();
        let mut references = crate::blob::transfer::Referenced::default();
        let mut kept = Some(Vec::with_capacity(APPLY_CHUNK.min(batch.header.change_count.max(0) as usize)));
        let now = self.drift.now_ms();
        batch.each_change_reusing(spare, |c, id| {
            check_change(&self.drift, now, key, &c, &id, self.cap)?;
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
            Some(all) => {
                let rows = RowIndex::of(&all);
                Changes::Kept(all, rows)
            }
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
        let mut now = self.drift.now_ms();
        let read = batch.each_change_from(next_spare, |c, id| {
            check_change(&self.drift, now, key, &c, &id, self.cap)?;
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
                let rows = RowIndex::of(&full);
                if to.send(Step::Piece(full, rows)).is_err() {
                    stopped = Some(None);
                    return Err(Error::Invalid("the merge stopped".into()));
                }
                now = self.drift.now_ms();
            }
            Ok(())
        });
        if let Some(step) = stopped {
            return step;
        }
        if let Err(e) = read {
            return Some(Step::Failed(e));
        }
        if !piece.is_empty() {
            let rows = RowIndex::of(&piece);
            if to.send(Step::Piece(piece, rows)).is_err() {
                return None;
            }
        }
        Some(Step::End(tables))
    }
}

/// What the check of a batch on its own thread hands over, in this order:
/// either `Whole`, or `Header` then any number of `Piece`s and one of `End`,
/// `Failed` and `Refers`.
pub(super) enum Step {
    /// The whole batch checked (at most one piece, or streaming not wanted).
    Whole(Box<Result<Checked>>),
    Header(batch::Header),
    /// The next [`APPLY_CHUNK`] changes (fewer for the last), every one checked,
    /// and the rows they name.
    Piece(Vec<Change>, RowIndex),
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
/// transaction is rolled back whole ([`super::apply::Group::apply`]).
pub struct Ahead {
    stream: Option<Stream>,
    /// The result, when no thread could be started and the check ran here.
    done: Option<Result<Checked>>,
}

/// The thread checking a batch, and what it hands over.
pub(super) struct Stream {
    steps: Option<Receiver<Step>>,
    /// Pieces merged, returned for their strings to be reused.
    pub(super) back: Sender<Vec<Change>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    pub(super) fn next(&mut self) -> Result<Step> {
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

/// Refuses a change that is malformed or too far in the future (its id `id`
/// beyond the drift allowed at `now`), before anything of its batch is applied.
fn check_change(
    drift: &crate::clock::Drift,
    now: u64,
    key: &str,
    c: &Change,
    id: &uuid::Uuid,
    max_value_bytes: usize,
) -> Result<()> {
    drift.check_at(id, now).map_err(|e| Error::bad(key, e.to_string()))?;
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
