//! Catching up from the newest snapshot when the batches a replica still needs
//! were pruned by `dimple compact --prune` (docs/bootstrap.md).
//!
//! A snapshot holds, per (row, column), the winning change and every cursor it
//! reflects. Merging those winners into a replica that is behind gives the state
//! that replaying the pruned batches would have given (last-writer-wins keeps the
//! greatest change per column, whatever the order), so the replica merges them like
//! any remote changes, moves its cursors forward to the snapshot's, and walks the
//! chains from there. Its own writes, pushed or not, stay in its log and win or lose
//! as they would have. Only authors this replica accepts are taken from the
//! snapshot: not revoked, trusted in an explicit group, and with the key pinned here
//! if there is one; the others stay where they are (and their problem with them).

use crate::clone;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::merge::{Change, Merger};
use crate::peers;
use crate::replica::Replica;
use crate::snapshot;
use crate::store::Store;
use rusqlite::{params, TransactionBehavior};

/// Merges the newest snapshot into `r` for the authors it accepts. Returns the
/// replicas whose cursor moved forward (empty: the snapshot did not help).
pub async fn from_snapshot(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<Vec<String>> {
    let Some((pointer, _)) = snapshot::latest(store, codec).await? else { return Ok(Vec::new()) };
    Ok(merge_published(r, store, codec, &pointer).await?.moved)
}

/// The published snapshot as a compaction about to replace it found it.
#[derive(Debug, Default)]
pub struct Published {
    /// The snapshot LATEST.json named, which the new one may replace (None:
    /// there was none).
    pub snapshot_id: Option<String>,
    /// The members it covers further than this replica had applied, caught up
    /// from it.
    pub caught_up: Vec<String>,
    /// The members it covers further than this replica has applied and whose
    /// changes this replica does not take (held, revoked, another key).
    pub behind: Vec<String>,
}

/// Before `r` publishes a snapshot in place of the published one. Batches may
/// have been pruned under that one: they are in no chain any more, and only it
/// covers them, so the new snapshot must cover every member at least as far.
/// Merges it for the members it covers further, as a pull that met the pruned
/// batches would, and says which it still covers further. The snapshot this
/// database itself last published needs no look (its cursors only move
/// forward); one published under our id by a copy of this database does: the
/// copy may have applied authors this one never saw. One that cannot be read
/// or fails its checks covers nothing anyone could catch up from: it is
/// replaced.
pub async fn before_compacting(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<Published> {
    let Some((pointer, _)) = snapshot::latest(store, codec).await? else { return Ok(Published::default()) };
    let mut published = Published { snapshot_id: Some(pointer.snapshot_id.clone()), ..Published::default() };
    if pointer.source_replica == r.id()
        && crate::meta::snapshot_published(&r.sync)?.as_deref() == Some(pointer.snapshot_id.as_str())
    {
        return Ok(published);
    }
    match merge_published(r, store, codec, &pointer).await {
        Ok(merged) => (published.caught_up, published.behind) = (merged.moved, merged.behind),
        Err(Error::BadData { origin, reason }) => {
            tracing::warn!("the published snapshot is replaced, it cannot be used: {origin}: {reason}")
        }
        Err(e) => return Err(e),
    }
    Ok(published)
}

/// Whether a snapshot's cursor for an author (its last change id) lies beyond
/// this replica's: the one rule both the head check and the merge use.
fn ahead(theirs: Option<&str>, ours: Option<&str>) -> bool {
    match (theirs, ours) {
        (Some(theirs), Some(ours)) => theirs > ours,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// What merging a snapshot did.
#[derive(Default)]
struct Merged {
    /// The members whose cursor moved forward.
    moved: Vec<String>,
    /// The members it covers further that were not taken.
    behind: Vec<String>,
}

async fn merge_published(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    pointer: &snapshot::Pointer,
) -> Result<Merged> {
    let origin = crate::layout::snapshot_pointer_key();
    pointer.verify_source(store, codec, &origin).await?;
    // The snapshot speaks for every author it covers: taken only from a source
    // this replica applies itself, with the key pinned here if there is one.
    // Under our own id it is a copy's of this database, signed with our key.
    let ours = pointer.source_replica == r.id() && pointer.public_key == r.public_key()?;
    let source = peers::get(&r.sync, &pointer.source_replica)?.unwrap_or_default();
    let mode = crate::trust::mode(&r.sync)?;
    if !ours && (!source.trust.applied_in(mode) || source.public_key.as_ref().is_some_and(|k| *k != pointer.public_key))
    {
        return Err(Error::bad(
            &origin,
            format!("snapshot from {}, whose changes this replica does not apply", pointer.source_replica),
        ));
    }
    let path = clone::download(r, store, codec, pointer).await?;
    let out = merge_file(r, store, codec, &path, &pointer.key).await;
    let _ = std::fs::remove_file(&path);
    out
}

async fn merge_file(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    path: &std::path::Path,
    origin: &str,
) -> Result<Merged> {
    crate::snapshot::inspect::inspect(path, origin)?;
    let vouched = vouched_authors(r, store, codec, path, origin).await?;
    r.sync.execute("ATTACH ?1 AS snap", [path.display().to_string()])?;
    let out = merge_attached(r, origin, &vouched);
    r.sync.execute_batch("DETACH snap")?;
    out
}

/// The authors the snapshot covers further than this replica has applied whose
/// signed head vouches for it (an author without a head is never taken). A
/// snapshot's word is all that vouches for a pruned range, but not against the
/// author's own signed word: a cursor past its head would leave this replica
/// refusing that author's real batches ever after ("older than one already
/// applied"), and a cursor on a batch the chain from its head never reaches
/// would leave it unable to walk that chain ("missing from the chain"). Either
/// refuses the snapshot. The chain is walked only for authors the catch-up
/// would take.
async fn vouched_authors(
    r: &Replica,
    store: &dyn Store,
    codec: &Codec,
    path: &std::path::Path,
    origin: &str,
) -> Result<std::collections::BTreeSet<String>> {
    let sqlerr = |e: rusqlite::Error| Error::bad(origin, format!("not a readable snapshot: {e}"));
    type Cursor = (String, Option<String>, Option<String>, Option<String>, Option<String>);
    let cursors: Vec<Cursor> = {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlerr)?;
        if !crate::sql::has_table(&conn, "main", "ZV_AUTHOR").map_err(sqlerr)? {
            return Ok(Default::default()); // an older build's snapshot: never caught up from
        }
        let mut stmt = conn
            .prepare("SELECT replica, public_key, batch_id, batch_sha256, last_change_id FROM ZV_CURSOR")
            .map_err(sqlerr)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
            .map_err(sqlerr)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sqlerr)?
    };
    let mode = crate::trust::mode(&r.sync)?;
    let mut vouched = std::collections::BTreeSet::new();
    for (id, public_key, batch_id, sha, last) in cursors {
        let known = peers::get(&r.sync, &id)?.unwrap_or_default();
        let Some(theirs) = last.filter(|l| ahead(Some(l), known.last_change_id.as_deref())) else { continue };
        if id == r.id() || !crate::layout::is_canonical_uuid(&id) {
            continue;
        }
        let key = crate::layout::head_key(&id);
        let head = match store.get(&key, None).await {
            Ok(crate::store::Got::Found { bytes, .. }) => {
                let plain = codec.decode(crate::codec::Kind::Head, &key, &bytes)?;
                crate::head::Head::parse(&plain, &key, &id, known.public_key.as_deref())?.body
            }
            Ok(crate::store::Got::NotModified) | Err(crate::store::StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        if theirs > head.last_change_id {
            let signed = &head.last_change_id;
            return Err(Error::bad(
                origin,
                format!("snapshot states {id}'s changes up to {theirs}, past its signed head ({signed})"),
            ));
        }
        if takes(&known, mode, public_key.as_deref()) {
            let on_chain = match (&batch_id, &sha) {
                (Some(b), Some(s)) => crate::sync::chain::reaches(r, store, codec, &id, &head, b, s).await?,
                _ => false,
            };
            if !on_chain {
                let batch = batch_id.as_deref().unwrap_or("no batch");
                return Err(Error::bad(
                    origin,
                    format!("snapshot states {id}'s changes up to batch {batch}, which is not in its signed chain"),
                ));
            }
        }
        vouched.insert(id);
    }
    Ok(vouched)
}

/// Whether a catch-up takes a snapshot's changes of an author this replica
/// knows as `known`, stated with `public_key`: one it applies, with the key
/// pinned here if there is one.
fn takes(known: &peers::Peer, mode: crate::trust::TrustMode, public_key: Option<&str>) -> bool {
    known.trust.applied_in(mode)
        && public_key.is_some()
        && known.public_key.as_deref().is_none_or(|k| Some(k) == public_key)
}

fn merge_attached(r: &mut Replica, origin: &str, vouched: &std::collections::BTreeSet<String>) -> Result<Merged> {
    let me = r.id().to_owned();
    let mode = crate::trust::mode(&r.sync)?;
    if !crate::sql::has_table(&r.sync, "snap", "ZV_AUTHOR")? {
        return Ok(Merged::default()); // a snapshot of an older build: replay is the only way
    }
    type Cursor = (String, Option<String>, Option<String>, Option<String>, Option<String>, i64);
    let cursors: Vec<Cursor> = r
        .sync
        .prepare(
            "SELECT replica, public_key, batch_id, batch_sha256, last_change_id, change_count FROM snap.ZV_CURSOR",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = Vec::new();
    let mut behind = Vec::new();
    for (id, key, batch_id, sha, last, count) in cursors {
        if id == me {
            continue;
        }
        let known = peers::get(&r.sync, &id)?.unwrap_or_default();
        let ahead = ahead(last.as_deref(), known.last_change_id.as_deref());
        // No head to vouch for it: nothing of it can be pulled either.
        if ahead && !vouched.contains(&id) {
            continue;
        }
        if ahead && takes(&known, mode, key.as_deref()) {
            moved.push((id, key, batch_id, sha, last, count));
        } else if ahead {
            behind.push(id);
        }
    }
    if moved.is_empty() {
        return Ok(Merged { moved: Vec::new(), behind });
    }
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    r.hlc.observe_persisted(&tx)?;
    crate::changelog::ingest(&tx, &mut r.hlc, &me)?;
    let now = crate::clock::rfc3339(r.opts.clock.now_ms());
    {
        // A snapshot in the replica's own form (format 2 or 3) or a row per change is
        // read from its tables (checked by `inspect`), not through the views, which
        // print every id as text and which its writer chose; an older one from its
        // text tables. Either way the ids compare in their stored form.
        let records = crate::sql::has_table(&tx, "snap", "ZV_ROW")?;
        let compact = records || crate::sql::has_table(&tx, "snap", "ZV_LOG")?;
        let mut stmt = tx.prepare(if records {
            "SELECT c.id, x.id, t.name, r.entity_id, n.name, c.old_value, c.new_value, a.id
             FROM snap.ZV_ROW r, dimple_cells(r.cells) c JOIN snap.ZV_NAME t ON t.n = r.type_n
             JOIN snap.ZV_NAME n ON n.n = c.attr_n JOIN snap.ZV_TX x ON x.n = c.tx_n
             JOIN snap.ZV_AUTHOR a ON a.n = c.author_n
             WHERE a.id = ?1 AND c.id <= ?2 ORDER BY c.id"
        } else if compact {
            "SELECT l.id, x.id, t.name, l.entity_id, c.name, l.old_value, l.new_value, a.id
             FROM snap.ZV_LOG l JOIN snap.ZV_NAME t ON t.n = l.type_n JOIN snap.ZV_NAME c ON c.n = l.attr_n
             JOIN snap.ZV_TX x ON x.n = l.tx_n JOIN snap.ZV_AUTHOR a ON a.n = l.author_n
             WHERE a.id = ?1 AND l.id <= ?2 ORDER BY l.id"
        } else {
            "SELECT c.id, c.transaction_id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value, a.id
             FROM snap.ZV_CHANGE c JOIN snap.ZV_AUTHOR a ON a.n = c.author_n
             WHERE a.id = ?1 AND c.id <= ?2 ORDER BY c.id"
        })?;
        let merger = Merger::new(&tx)?;
        for (id, key, batch_id, sha, last, count) in &moved {
            let last = last.as_deref().unwrap_or_default();
            let bound =
                if compact { crate::log::id_value(last) } else { rusqlite::types::Value::Text(last.to_owned()) };
            let changes: Vec<Change> =
                stmt.query_map(params![id, bound], crate::log::row_to_change)?.collect::<rusqlite::Result<_>>()?;
            merger
                .apply_many(&changes)
                .map_err(|e| Error::bad(origin, format!("cannot merge the snapshot's changes of {id}: {e}")))?;
            peers::seen(&tx, id, &now)?;
            if peers::get(&tx, id)?.is_some_and(|p| p.public_key.is_none()) {
                peers::pin(&tx, id, key.as_deref().unwrap_or_default(), "")?;
            }
            peers::cursor_moved_to(&tx, id, batch_id.as_deref(), sha.as_deref(), last, *count)?;
        }
    }
    if let Some(newest) = moved.iter().filter_map(|m| m.4.as_deref().and_then(crate::clock::parse_id)).max() {
        r.hlc.observe(&newest);
    }
    crate::changelog::save_clock(&tx, &r.hlc)?;
    tx.commit()?;
    Ok(Merged { moved: moved.into_iter().map(|m| m.0).collect(), behind })
}
