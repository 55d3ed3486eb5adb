//! Push: this replica's new changes to the bucket, crash-safe at every step.
//!
//! The batch file and the signed head are saved as the in-flight push before
//! anything is uploaded, so a crash or a timeout at any point is finished by the
//! next push with the very same bytes; nothing is uploaded twice under different
//! ids. The batch is created first and the head written second, so no reader ever
//! sees a head that names a missing batch.

use super::PushReport;
use crate::batch;
use crate::changelog;
use crate::clock;
use crate::codec::{self, Codec, Kind};
use crate::error::{Error, Result};
use crate::head::{Descriptor, Head, HeadBody};
use crate::layout;
use crate::meta::{self, Inflight, PushState};
use crate::outbox;
use crate::replica::Replica;
use crate::store::{self, PutMode, Store, StoreError, Written};
use crate::FORMAT;
use rusqlite::TransactionBehavior;

pub async fn push(r: &mut Replica, store: &dyn Store) -> Result<PushReport> {
    push_sealing(r, store, true).await
}

/// [`push`] right after a pull, which took in this device's new grants.
pub(crate) async fn push_after_pull(r: &mut Replica, store: &dyn Store) -> Result<PushReport> {
    push_sealing(r, store, false).await
}

/// A member takes in new grants before it seals anything (`refresh`), unless a
/// pull just did: a member that pushes without pulling (the agent pushes as soon
/// as the app writes) must not seal under an epoch a rekey has closed, which the
/// devices it revoked can still open.
async fn push_sealing(r: &mut Replica, store: &dyn Store, refresh: bool) -> Result<PushReport> {
    r.capture()?;
    if !r.direction()?.pushes() {
        return Ok(PushReport::default()); // pull-only: not a single put
    }
    let codec = crate::group::prepare(r, store, refresh).await?;
    publish_descriptor(r, store, &codec).await?;
    crate::schema::publish(r, store, &codec).await?;
    let mut report = PushReport::default();
    if let Some(inf) = Inflight::load(&r.sync)? {
        report.changes += inf.changes;
        report.batches += 1;
        complete(r, store, inf, &codec).await?;
    }
    let dir = r.side().outbox()?;
    loop {
        let me = r.id().to_owned();
        let state = PushState::load(&r.sync)?;
        // Read once, never held whole: the changes go into the batch file as they
        // come, and the values they store out of line are noted on the way.
        let mut refs = std::collections::BTreeSet::new();
        let batch_id = r.hlc.tick().to_string();
        let path = dir.join(format!("{batch_id}.db"));
        let written = batch::write_with(&path, &me, &codec, |add| {
            let span = outbox::each_unpushed(&r.sync, &me, &state.through, r.opts.batch_changes, |c| {
                refs.extend(crate::blob::reference(c.new_value.as_deref()));
                add(c)
            })?;
            Ok(span.map(|span| batch::Header {
                format: FORMAT,
                replica: me.clone(),
                batch_id: batch_id.clone(),
                prev_batch_id: state.batch_id.clone(),
                prev_sha256: state.sha256.clone(),
                first_change_id: span.first_id,
                last_change_id: span.last_id,
                transaction_count: span.transactions as i64,
                change_count: span.changes as i64,
            }))
        })?;
        let Some((header, bytes)) = written else { break };
        let mut unsaved = Unsaved(Some(&path));
        // Every value the batch stores out of line is in the bucket before the batch.
        report.blobs.add(crate::blob::transfer::send(r, store, &codec, refs).await?);
        let sha256 = codec::sha256_hex(&bytes);
        let (batch_count, change_count) = (state.batch_count + 1, state.change_count + header.change_count);
        let body = HeadBody {
            format: FORMAT,
            replica: me.clone(),
            name: r.name()?,
            public_key: r.public_key()?,
            batch_key: layout::batch_key(&me, &batch_id),
            batch_id: batch_id.clone(),
            sha256: sha256.clone(),
            first_change_id: header.first_change_id.clone(),
            last_change_id: header.last_change_id.clone(),
            batch_count,
            change_count,
            updated_at: clock::rfc3339(r.hlc.now_ms()),
            recent_batch_ids: recent_after(&state, &batch_id),
        };
        let head = Head::sign(body, r.signing_key()?);
        let inf = Inflight {
            batch_id,
            sha256,
            through: header.last_change_id.clone(),
            changes: header.change_count as usize,
            batch_count,
            change_count,
            head: String::from_utf8(head.to_bytes()).expect("JSON is UTF-8"),
        };
        {
            let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
            inf.save(&tx)?;
            changelog::save_clock(&tx, &r.hlc)?;
            tx.commit()?;
            unsaved.0 = None;
        }
        report.batches += 1;
        report.changes += inf.changes;
        complete(r, store, inf, &codec).await?;
    }
    crate::blob::transfer::sweep_out(r)?;
    if report.changes > 0 {
        crate::replica::reclaim(&r.sync)?;
    }
    Ok(report)
}

/// A batch file not (yet) saved as the in-flight push: removed when the push
/// stops before that (its values failed to upload, say), as the next push builds
/// its own.
struct Unsaved<'p>(Option<&'p std::path::Path>);

impl Drop for Unsaved<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The head's list of recent batch ids once `newest` is pushed.
fn recent_after(state: &PushState, newest: &str) -> Vec<String> {
    let mut ids = state.recent.clone();
    ids.push(newest.to_owned());
    let excess = ids.len().saturating_sub(crate::head::RECENT_BATCHES);
    ids.drain(..excess);
    ids
}

/// Finishes an in-flight push: batch, then head, then the local cursor.
async fn complete(r: &mut Replica, store: &dyn Store, inf: Inflight, codec: &Codec) -> Result<()> {
    let me = r.id().to_owned();
    let path = r.side().outbox()?.join(format!("{}.db", inf.batch_id));
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let key = layout::batch_key(&me, &inf.batch_id);
    // Our earlier attempt may have landed; different bytes mean someone else wrote
    // under our id.
    let landed = store::create_or_accept(store, &key, bytes, |b| codec::sha256_hex(b) == inf.sha256).await;
    ours_or_conflict(landed, &me)?;
    let state = PushState::load(&r.sync)?;
    let head_key = layout::head_key(&me);
    let mode = match &state.head_etag {
        Some(etag) => PutMode::Update(etag.clone()),
        None => PutMode::Create,
    };
    // Sealed afresh on each attempt (a new nonce): the head is recognised as ours
    // by what it says, not by its bytes.
    let head = codec.encode(Kind::Head, &head_key, inf.head.clone().into_bytes())?;
    // Our previous head rewritten with a new ETag (restored from a backup, copied
    // back by hand) means nobody else wrote under our id: go on. So does this very
    // head landed by an earlier attempt that never heard back: sealed, its bytes
    // differ from this attempt's (a new nonce), what it says does not.
    let public_key = r.public_key()?;
    let ours = |b: &[u8]| {
        let named = head_batch(codec, b, &head_key, &me, &public_key);
        named.is_some() && (named == state.batch_id || named.as_ref() == Some(&inf.batch_id))
    };
    let landed = store::update_or_recognise(store, &head_key, head, mode, ours).await;
    let etag = ours_or_conflict(landed, &me)?.etag().to_owned();
    let done = PushState {
        through: inf.through.clone(),
        batch_id: Some(inf.batch_id.clone()),
        sha256: Some(inf.sha256.clone()),
        head_etag: Some(etag),
        batch_count: inf.batch_count,
        change_count: inf.change_count,
        recent: recent_after(&state, &inf.batch_id),
    };
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    done.save(&tx)?;
    Inflight::clear(&tx)?;
    tx.commit()?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// A write under our id that met someone else's object: another device claims it.
fn ours_or_conflict(landed: std::result::Result<Written, StoreError>, me: &str) -> Result<Written> {
    match landed {
        Err(StoreError::PreconditionFailed(_)) => Err(Error::ReplicaConflict(me.to_owned())),
        other => Ok(other?),
    }
}

/// Refuses to go on when another device writes under our id. A push finds out by
/// its head's precondition; a copy with nothing left to push would never push
/// again, and pulls skip their own id, so it would miss the other copy's writes
/// for good: pulls and compactions ask here. `listed` is the head's ETag from a
/// listing already made (no request when it is the one we wrote); None reads it.
pub(crate) async fn own_head_is_ours(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    listed: Option<&str>,
) -> Result<()> {
    let state = PushState::load(&r.sync)?;
    if listed.is_some() && listed == state.head_etag.as_deref() {
        return Ok(());
    }
    let me = r.id().to_owned();
    let head_key = layout::head_key(&me);
    let bytes = match store.get(&head_key, state.head_etag.as_deref()).await {
        Ok(store::Got::NotModified) | Err(StoreError::NotFound(_)) => return Ok(()),
        Ok(store::Got::Found { bytes, .. }) => bytes,
        Err(e) => return Err(e.into()),
    };
    // Ours: signed with our key and naming the last batch we recorded, or the one
    // whose push has not recorded it yet.
    let named = head_batch(codec, &bytes, &head_key, &me, &r.public_key()?);
    let inflight = Inflight::load(&r.sync)?.map(|inf| inf.batch_id);
    match named {
        Some(batch) if Some(&batch) == state.batch_id.as_ref() || Some(&batch) == inflight.as_ref() => Ok(()),
        _ => Err(Error::ReplicaConflict(me)),
    }
}

/// The batch `stored` names, if it is a head signed with our key.
fn head_batch(codec: &Codec, stored: &[u8], head_key: &str, me: &str, public_key: &str) -> Option<String> {
    let plain = codec.decode(Kind::Head, head_key, stored).ok()?;
    Some(Head::parse(&plain, head_key, me, Some(public_key)).ok()?.body.batch_id)
}

pub(crate) async fn publish_descriptor(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<()> {
    if meta::descriptor_published(&r.sync)?.is_some() {
        return Ok(());
    }
    put_descriptor(r, store, codec).await?;
    meta::set_descriptor_published(&r.sync, &clock::rfc3339(r.hlc.now_ms()))
}

/// This replica's `replica.json`, with `schema` (signed) when given.
pub(crate) fn descriptor(r: &mut Replica, schema: Option<serde_json::Value>) -> Result<Descriptor> {
    Ok(Descriptor {
        format: FORMAT,
        replica: r.id().to_owned(),
        name: r.name()?,
        public_key: r.public_key()?,
        created_at: meta::get(&r.sync, "created_at")?.unwrap_or_default(),
        schema,
    })
}

/// Writes `replica.json` (create-only; an earlier copy with our key is accepted).
pub(crate) async fn put_descriptor(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<()> {
    let me = r.id().to_owned();
    let d = descriptor(r, None)?;
    let key = layout::descriptor_key(&me);
    let bytes = codec.encode(Kind::Descriptor, &key, serde_json::to_vec_pretty(&d).expect("serializes"))?;
    // Already there: ours when it carries our key (an earlier attempt, or the
    // descriptor of a database copied before it ever pushed).
    let ours = |b: &[u8]| {
        codec
            .decode(Kind::Descriptor, &key, b)
            .and_then(|plain| Descriptor::parse(&plain, &key, &me))
            .is_ok_and(|theirs| theirs.public_key == d.public_key)
    };
    ours_or_conflict(store::create_or_accept(store, &key, bytes, ours).await, &me)?;
    Ok(())
}
