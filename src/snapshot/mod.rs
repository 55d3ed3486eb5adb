//! `dimple compact`: a snapshot of a replica's state in the bucket, so that a new
//! replica downloads one file and only the batches after it (SPEC 8).
//!
//! The snapshot (`schema/snapshot.sql`) holds the tracked tables, their CREATE TABLE
//! statements, the merge state (`ZV_CLOCK` winners and their changes) and the cursor
//! vector it reflects: per author, the last batch applied (id, sha256, last change
//! id) and its pinned key. It is read from the replica in one read transaction in
//! which no captured write is waiting for an id, so tables, log and cursors agree.
//!
//! Publishing: the file goes to `snapshots/<snapshot_id>.db` (create-only, never
//! rewritten), and only then does `snapshots/LATEST.json` point at it, so a reader
//! never sees a pointer to a missing or half-written snapshot. The pointer only
//! moves forward (a slower compactor does not replace a newer snapshot). Snapshots
//! older than the grace period and not pointed at are deleted, so a clone that read
//! the previous pointer a moment ago still finds its file.

use crate::clock::{self, parse_id, stamp_of};
use crate::codec::{self, Codec, Kind};
use crate::error::{Error, Result};
use crate::layout;
use crate::replica::Replica;
use crate::sql::ident;
use crate::store::{list_all, Got, PutMode, Store, StoreError};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod inspect;

/// A snapshot file as this build writes it: the log in a replica's own form
/// (records per row, schema/log.sql), so a clone copies it page by page.
pub(crate) const SCHEMA: &str = concat!(
    include_str!("../../schema/log.sql"),
    include_str!("../../schema/log_views.sql"),
    include_str!("../../schema/snapshot.sql")
);

/// The snapshot format this build writes (pointer and file): 4, the log as
/// records per row in form 3 (src/record/mod.rs). Formats 3 and 2 had the same
/// records in forms 2 and 1, and format 1 (schema/snapshot_log.sql, or the
/// text tables of schema/wire_log.sql before it) carried the log a row per
/// change; all are still read. A build that knows fewer formats refuses a
/// newer pointer by its number (a build of format 3 would otherwise find the
/// records damaged).
pub const SNAPSHOT_FORMAT: i64 = 4;

/// Whether this build reads snapshots of `format`.
pub fn readable(format: i64) -> bool {
    (1..=SNAPSHOT_FORMAT).contains(&format)
}

/// Pointers and snapshots larger than these are refused unread.
pub const MAX_POINTER_BYTES: usize = 64 * 1024;

/// Default time a superseded snapshot is kept for clones already downloading it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `snapshots/LATEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub format: i64,
    pub snapshot_id: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
    pub source_replica: String,
    pub created_at: String,
    /// The source replica's public key, and its signature over the pointer with
    /// `signature` empty: a clone checks both against the source's signed head, so
    /// whoever can only write to the bucket cannot hand clones a forged snapshot.
    pub public_key: String,
    pub signature: String,
}

impl Pointer {
    fn signing_bytes(&self) -> Vec<u8> {
        let unsigned = Pointer { signature: String::new(), ..self.clone() };
        serde_json::to_vec(&unsigned).expect("pointers serialize")
    }

    pub fn sign(mut self, key: &ed25519_dalek::SigningKey) -> Pointer {
        self.signature = crate::trust::sign(key, &self.signing_bytes());
        self
    }

    /// Checks that the pointer is signed by the key its source replica signs its
    /// head with. Costs one GET (the source's head).
    pub async fn verify_source(&self, store: &dyn Store, codec: &Codec, origin: &str) -> Result<()> {
        crate::trust::verify(&self.public_key, &self.signing_bytes(), &self.signature)
            .map_err(|r| Error::bad(origin, format!("snapshot pointer signature: {r}")))?;
        // The source's key as it publishes it: in its signed head, or, for a replica
        // that never pushed, in its descriptor (written by `compact`).
        let source = &self.source_replica;
        let head_key = layout::head_key(source);
        let key = match store.get(&head_key, None).await {
            Ok(Got::Found { bytes, .. }) => {
                let plain = codec.decode(Kind::Head, &head_key, &bytes)?;
                crate::head::Head::parse(&plain, &head_key, source, None)?.body.public_key
            }
            Ok(Got::NotModified) | Err(StoreError::NotFound(_)) => {
                let desc_key = layout::descriptor_key(source);
                match store.get(&desc_key, None).await {
                    Ok(Got::Found { bytes, .. }) => {
                        let plain = codec.decode(Kind::Descriptor, &desc_key, &bytes)?;
                        crate::head::Descriptor::parse(&plain, &desc_key, source)?.public_key
                    }
                    Ok(Got::NotModified) | Err(StoreError::NotFound(_)) => {
                        return Err(Error::bad(origin, format!("snapshot source {source} is not in the bucket")))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        if key != self.public_key {
            return Err(Error::bad(
                origin,
                format!("snapshot is signed by a key that is not its source replica {}'s", self.source_replica),
            ));
        }
        Ok(())
    }

    pub fn parse(bytes: &[u8], origin: &str) -> Result<Pointer> {
        if bytes.len() > MAX_POINTER_BYTES {
            return Err(Error::bad(origin, "snapshot pointer is too large"));
        }
        let p: Pointer = serde_json::from_slice(bytes)
            .map_err(|e| Error::bad(origin, format!("malformed snapshot pointer: {e}")))?;
        if !readable(p.format) {
            return Err(Error::bad(
                origin,
                format!("unknown snapshot format {} (this dimple reads formats 1 to {SNAPSHOT_FORMAT})", p.format),
            ));
        }
        if parse_id(&p.snapshot_id).is_none() || p.key != layout::snapshot_key(&p.snapshot_id) {
            return Err(Error::bad(origin, format!("pointer names {:?}, which is not a snapshot key", p.key)));
        }
        Ok(p)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    pub snapshot_id: String,
    pub key: String,
    pub bytes: u64,
    pub tables: usize,
    pub rows: u64,
    pub changes: u64,
    pub cursors: usize,
    /// Whether LATEST.json now points at this snapshot (false: a newer one exists).
    pub published: bool,
    pub deleted: Vec<String>,
    /// Batches deleted because the snapshot covers them (`compact --prune`).
    pub pruned_batches: Vec<String>,
    /// Values stored out of line that nothing references any more (`compact --prune`).
    pub blobs: crate::blob::gc::Collected,
    /// The members the published snapshot covered further than this replica had
    /// applied: caught up from it first, so the new one covers no less.
    pub caught_up: Vec<String>,
    /// The cursor (replica, batch id) of every author the snapshot reflects.
    #[serde(skip)]
    pub covered: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Counts {
    tables: usize,
    rows: u64,
    changes: u64,
    cursors: usize,
}

/// Writes the snapshot file of `r` at `path`; with `pushed_only`, None when a
/// change of its own waits for a push (the caller pushes and tries again).
fn write_file(r: &mut Replica, path: &Path, snapshot_id: &str, pushed_only: bool) -> Result<Option<Counts>> {
    let _ = std::fs::remove_file(path);
    let s = Connection::open(path)?;
    crate::record::register(&s)?;
    // Changes are copied before their transactions: the snapshot is ours, whole or
    // not at all, so its foreign key is not checked row by row.
    s.execute_batch("PRAGMA journal_mode=MEMORY; PRAGMA page_size=4096; PRAGMA foreign_keys=OFF;")?;
    s.execute_batch(SCHEMA)?;
    s.execute("ATTACH ?1 AS src", [r.path().display().to_string()])?;
    s.busy_timeout(r.opts.busy_timeout)?;
    let public_key = r.public_key()?;
    for _attempt in 0..20 {
        s.execute_batch("BEGIN")?;
        // The read transaction starts here: if no captured write waits for an id at
        // this moment, every table row is explained by the log we copy.
        let pending = crate::track::pending_count(&s, "src")?;
        if pending > 0 {
            s.execute_batch("ROLLBACK")?;
            r.capture()?;
            continue;
        }
        // The source's cursor is its last pushed batch: a change after it would
        // be in the snapshot and in no batch.
        let pushed = crate::meta::PushState::load_in(&s, "src")?;
        if pushed_only && crate::outbox::holds_after(&s, "src", &pushed.through)? {
            s.execute_batch("ROLLBACK")?;
            s.execute_batch("DETACH src")?;
            return Ok(None);
        }
        let counts = copy(&s, r, snapshot_id, &public_key, pushed)?;
        s.execute_batch("COMMIT")?;
        s.execute_batch("DETACH src")?;
        return Ok(Some(counts));
    }
    Err(Error::Invalid(
        "the application keeps writing: could not read a quiet moment for the snapshot; try again".into(),
    ))
}

/// `pushed` is the source's push state, read in the same read transaction.
fn copy(
    s: &Connection,
    r: &Replica,
    snapshot_id: &str,
    public_key: &str,
    pushed: crate::meta::PushState,
) -> Result<Counts> {
    let mut counts = Counts::default();
    let tables: Vec<(String, String)> = s
        .prepare(
            "SELECT t.tbl, m.sql FROM src.ZV_TRACKED t JOIN src.sqlite_master m ON m.type = 'table' AND m.name = t.tbl ORDER BY t.tbl",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (tbl, sql) in &tables {
        s.execute("INSERT INTO ZV_SCHEMA(tbl, sql) VALUES (?1, ?2)", [tbl, sql])?;
        // Unqualified CREATE TABLE creates in main: the snapshot file.
        s.execute_batch(sql)?;
        counts.rows += s.execute(&format!("INSERT INTO main.{0} SELECT * FROM src.{0}", ident(tbl)), [])? as u64;
        counts.tables += 1;
    }
    // The snapshot carries the log in the replica's own form (schema/log.sql,
    // whose views give the seed's tables): the records of the winning changes,
    // no history, and the names, authors and transactions they use. A clone
    // copies these tables page by page.
    counts.changes = crate::log::copy_winners(s, "src")?;
    crate::peers::copy_to_snapshot(s)?;
    // The source itself: its last pushed batch.
    let name: Option<String> =
        s.query_row("SELECT value FROM src.ZV_METADATA WHERE key = 'name'", [], |r| r.get(0)).optional()?;
    s.execute(
        "INSERT OR REPLACE INTO main.ZV_CURSOR(replica, name, public_key, batch_id, batch_sha256, last_change_id, change_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            r.id(),
            name,
            public_key,
            pushed.batch_id,
            pushed.sha256,
            (!pushed.through.is_empty()).then_some(pushed.through),
            pushed.change_count
        ],
    )?;
    counts.cursors = s.query_row("SELECT count(*) FROM main.ZV_CURSOR", [], |r| r.get(0))?;
    s.execute(
        "INSERT INTO ZV_SNAPSHOT(format, snapshot_id, source_replica, created_at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![SNAPSHOT_FORMAT, snapshot_id, r.id(), clock::rfc3339(r.opts.clock.now_ms())],
    )?;
    Ok(counts)
}

/// The current pointer and its ETag, if any.
pub async fn latest(store: &dyn Store, codec: &Codec) -> Result<Option<(Pointer, String)>> {
    let key = layout::snapshot_pointer_key();
    match store.get(&key, None).await {
        Ok(Got::Found { bytes, etag }) => {
            Ok(Some((Pointer::parse(&codec.decode(Kind::SnapshotPointer, &key, &bytes)?, &key)?, etag)))
        }
        Ok(Got::NotModified) => Ok(None),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a snapshot of `r` to the bucket, points LATEST.json at it, and deletes
/// snapshots superseded for longer than `grace`.
pub async fn compact(r: &mut Replica, store: &dyn Store, grace: Duration) -> Result<CompactReport> {
    compact_with(r, store, grace, false).await
}

/// [`compact`], and with `prune_batches` the batches the new snapshot covers and
/// older than `grace` are deleted too: the bucket stops growing. A replica whose
/// cursor falls behind them catches up from the snapshot ([`crate::catchup`]).
pub async fn compact_with(
    r: &mut Replica,
    store: &dyn Store,
    grace: Duration,
    prune_batches: bool,
) -> Result<CompactReport> {
    if !r.direction()?.pushes() {
        return Err(Error::Invalid(
            "this replica only pulls: it writes nothing to the bucket, and a snapshot of it would hand its local writes to clones alone; compact on a replica that pushes".into(),
        ));
    }
    r.capture()?;
    // Clones check the snapshot's signature against the key the source publishes.
    // New grants first: the snapshot is sealed under the newest epoch.
    let codec = crate::group::prepare(r, store, true).await?;
    // A copy of this database writing under our id would make the snapshot state
    // this copy's changes under ids the other copy gives its own.
    crate::sync::own_head_is_ours(r, store, &codec, None).await?;
    crate::sync::publish_descriptor(r, store, &codec).await?;
    let published = crate::catchup::before_compacting(r, store, &codec).await?;
    // What it caught up holds large values as references, as a pull's would.
    crate::blob::transfer::fetch_unless_lazy(r, store, &codec).await?;
    if !published.behind.is_empty() {
        return Err(Error::Invalid(format!(
            "the published snapshot covers {} member(s) further than this replica has applied, whose changes it does not take ({}): a snapshot from here would lose the batches pruned under that one; compact on a member that applies them",
            published.behind.len(),
            published.behind.join(", ")
        )));
    }
    let mut report = write_and_point(r, store, &codec, grace, published.snapshot_id.as_deref(), false).await?;
    report.caught_up = published.caught_up;
    if prune_batches && report.published {
        report.pruned_batches = prune_covered(r, store, &report.covered, grace).await?;
    }
    if prune_batches {
        report.blobs = crate::blob::gc::collect(r, store, &codec, grace).await?;
    }
    Ok(report)
}

/// Deletes every batch at or before a covered cursor and older than `grace`
/// (create-only objects are deleted, never rewritten).
async fn prune_covered(
    r: &Replica,
    store: &dyn Store,
    covered: &[(String, String)],
    grace: Duration,
) -> Result<Vec<String>> {
    let cutoff = r.opts.clock.now_ms().saturating_sub(grace.as_millis() as u64);
    let mut deleted = Vec::new();
    for (replica, cursor) in covered {
        if !layout::is_canonical_uuid(replica) {
            continue;
        }
        for meta in list_all(store, &format!("batches/{replica}/"), None).await? {
            let Some(batch_id) =
                meta.key.strip_prefix(&format!("batches/{replica}/")).and_then(|k| k.strip_suffix(".db"))
            else {
                continue;
            };
            let Some(uuid) = parse_id(batch_id) else { continue };
            if batch_id <= cursor.as_str() && stamp_of(&uuid).ms < cutoff {
                match store.delete(&meta.key).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => deleted.push(meta.key),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(deleted)
}

/// The snapshot of `r` as the first object of another group's bucket (`dimple
/// encrypt`): `r` stays where it is; new devices clone from this.
pub async fn seed(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<CompactReport> {
    r.capture()?;
    crate::sync::put_descriptor(r, store, codec).await?;
    write_and_point(r, store, codec, Duration::MAX, None, true).await
}

/// Writes the snapshot and points LATEST.json at it in place of the snapshot
/// `replaces` (None: in place of none), which the caller made sure it covers.
/// Pushes first, unless `seeding` another group's bucket, where `r` does not push.
async fn write_and_point(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    grace: Duration,
    replaces: Option<&str>,
    seeding: bool,
) -> Result<CompactReport> {
    let snapshot_id = r.new_id()?.to_string();
    let path = r.side().file(&format!("snapshot-{snapshot_id}.db"));
    let mut counts = None;
    for _attempt in 0..20 {
        // A snapshot states its source's changes only as far as its batches carry
        // them, so a source that stopped after compacting leaves nothing behind
        // that clones alone would have. A seed is another group's first object.
        if !seeding {
            crate::sync::push_after_pull(r, store).await?;
        }
        match write_file(r, &path, &snapshot_id, !seeding) {
            Ok(Some(c)) => {
                counts = Some(c);
                break;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
    }
    let Some(counts) = counts else {
        let _ = std::fs::remove_file(&path);
        return Err(Error::Invalid(
            "the application keeps writing: every push was followed by new changes before the snapshot; try again"
                .into(),
        ));
    };
    // What the snapshot covers, read before it is sealed.
    let covered: Vec<(String, String)> = Connection::open(&path)
        .and_then(|c| {
            c.prepare("SELECT replica, batch_id FROM ZV_CURSOR WHERE batch_id IS NOT NULL")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(Error::from)?;
    // Hashed and uploaded from the file: a snapshot is as big as the database.
    let key = layout::snapshot_key(&snapshot_id);
    if let Err(e) = codec.encode_file(Kind::Snapshot, &key, &path) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    let sha256 = codec::file_sha256(&path).map_err(|e| Error::io(&path, e))?;
    let pointer = Pointer {
        format: SNAPSHOT_FORMAT,
        snapshot_id: snapshot_id.clone(),
        key: key.clone(),
        sha256,
        size,
        source_replica: r.id().to_owned(),
        created_at: clock::rfc3339(r.opts.clock.now_ms()),
        public_key: r.public_key()?,
        signature: String::new(),
    }
    .sign(r.signing_key()?);
    let uploaded = store.put_file(&key, &path, PutMode::Create).await;
    let _ = std::fs::remove_file(&path);
    uploaded?;
    let current = latest(store, codec).await?;
    let published = match &current {
        Some((p, _)) if p.snapshot_id >= snapshot_id => false,
        // Published since this replica made sure it covers the one it replaces:
        // the other may cover members further.
        Some((p, _)) if Some(p.snapshot_id.as_str()) != replaces => false,
        _ => {
            let mode = match current {
                Some((_, etag)) => PutMode::Update(etag),
                None => PutMode::Create,
            };
            let pointer_key = layout::snapshot_pointer_key();
            let body = codec.encode(
                Kind::SnapshotPointer,
                &pointer_key,
                serde_json::to_vec_pretty(&pointer).expect("serializes"),
            )?;
            match crate::store::update_or_recognise(store, &pointer_key, body, mode, |_| false).await {
                Ok(_) => {
                    if !seeding {
                        crate::meta::set_snapshot_published(&r.sync, &snapshot_id)?;
                    }
                    true
                }
                // Another compactor moved the pointer meanwhile: its snapshot is newer.
                Err(StoreError::PreconditionFailed(_)) => false,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let deleted = collect_garbage(r, store, codec, grace).await?;
    Ok(CompactReport {
        snapshot_id,
        key,
        bytes: size,
        tables: counts.tables,
        rows: counts.rows,
        changes: counts.changes,
        cursors: counts.cursors,
        published,
        deleted,
        pruned_batches: Vec::new(),
        blobs: Default::default(),
        caught_up: Vec::new(),
        covered,
    })
}

/// Deletes snapshots older than `grace` that LATEST.json does not point at.
async fn collect_garbage(r: &Replica, store: &dyn Store, codec: &Codec, grace: Duration) -> Result<Vec<String>> {
    let keep = latest(store, codec).await?.map(|(p, _)| p.snapshot_id);
    let cutoff = r.opts.clock.now_ms().saturating_sub(grace.as_millis() as u64);
    let mut deleted = Vec::new();
    for meta in list_all(store, layout::SNAPSHOTS_PREFIX, None).await? {
        let Some(id) = layout::parse_snapshot_key(&meta.key) else { continue };
        if keep.as_deref() == Some(id) {
            continue;
        }
        let Some(uuid) = parse_id(id) else { continue };
        if stamp_of(&uuid).ms < cutoff {
            match store.delete(&meta.key).await {
                Ok(()) | Err(StoreError::NotFound(_)) => deleted.push(meta.key),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(deleted)
}
