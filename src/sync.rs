//! Pull and push: moving batches between a replica and the bucket.
//!
//! Push: upload the batch (create-only), then the head (If-Match on the ETag we last
//! wrote). Before either, the batch file and the signed head are saved as the
//! "in-flight" push, so a crash or a timeout at any point is finished by the next
//! push with the very same bytes; nothing is uploaded twice under different ids.
//!
//! Pull: one paged LIST of `replicas/`; a GET only for heads whose ETag changed;
//! then the new batches, walked back from the head along the hash chain to the last
//! batch applied, verified, and applied oldest first, each in one SQLite transaction
//! together with the cursor. A replica whose objects are bad gets a problem row and
//! keeps its cursor; the others sync on.

use crate::batch::{self, sha256_hex};
use crate::changelog;
use crate::clock::{self, parse_id};
use crate::error::{Error, Result};
use crate::head::{Descriptor, Head, HeadBody, MAX_JSON_BYTES};
use crate::layout::{self, ReplicaObject};
use crate::merge::{Change, Merger, ALIVE, DEAD};
use crate::problems;
use crate::replica::{meta_get, meta_set, Replica};
use crate::store::{get_bytes, list_all, Got, ObjectMeta, PutMode, RequestStats, Store, StoreError};
use crate::track::ROW;
use crate::trust::{self, TrustMode};
use crate::{value, FORMAT};
use futures::StreamExt;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    pub batches: usize,
    pub changes: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PullReport {
    pub replicas_seen: usize,
    pub batches: usize,
    pub changes: usize,
    /// Problems recorded by this pull, one line each.
    pub problems: Vec<String>,
    /// Replicas whose changes are held until someone runs `dimple trust` (explicit
    /// trust mode): their heads verified, their keys are pinned, nothing applied.
    pub waiting_for_trust: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub pull: PullReport,
    pub push: PushReport,
    pub requests: RequestStats,
}

/// A push saved before it is uploaded (see module docs).
#[derive(Debug, Serialize, Deserialize)]
struct Inflight {
    batch_id: String,
    sha256: String,
    through: String,
    changes: usize,
    batch_count: i64,
    change_count: i64,
    head: String,
}

const INFLIGHT: &str = "push.inflight";

fn outbox(r: &Replica) -> Result<PathBuf> {
    let dir = r.side().join("outbox");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

pub async fn push(r: &mut Replica, store: &dyn Store) -> Result<PushReport> {
    r.capture()?;
    if !r.direction()?.pushes() {
        return Ok(PushReport::default()); // pull-only: not a single put
    }
    publish_descriptor(r, store).await?;
    let mut report = PushReport::default();
    if let Some(inf) = meta_get(&r.sync, INFLIGHT)? {
        let inf: Inflight =
            serde_json::from_str(&inf).map_err(|e| Error::Invalid(format!("corrupt {INFLIGHT}: {e}")))?;
        report.changes += inf.changes;
        report.batches += 1;
        complete(r, store, inf).await?;
    }
    let dir = outbox(r)?;
    loop {
        let me = r.id().to_owned();
        let through = meta_get(&r.sync, "push.through")?.unwrap_or_default();
        let changes = changelog::own_changes_after(&r.sync, &me, &through, r.opts.batch_changes)?;
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else { break };
        let batch_id = r.hlc.tick().to_string();
        let txns = changes.iter().map(|c| &c.transaction_id).collect::<std::collections::BTreeSet<_>>().len();
        let header = batch::Header {
            format: FORMAT,
            replica: me.clone(),
            batch_id: batch_id.clone(),
            prev_batch_id: meta_get(&r.sync, "push.batch_id")?,
            prev_sha256: meta_get(&r.sync, "push.sha256")?,
            first_change_id: first.id.clone(),
            last_change_id: last.id.clone(),
            transaction_count: txns as i64,
            change_count: changes.len() as i64,
        };
        let bytes = batch::write(&dir.join(format!("{batch_id}.db")), &header, &changes)?;
        let sha256 = sha256_hex(&bytes);
        let count = |k: &str| -> Result<i64> { Ok(meta_get(&r.sync, k)?.and_then(|v| v.parse().ok()).unwrap_or(0)) };
        let (batch_count, change_count) =
            (count("push.batch_count")? + 1, count("push.change_count")? + changes.len() as i64);
        let body = HeadBody {
            format: FORMAT,
            replica: me.clone(),
            name: r.name()?,
            public_key: r.public_key()?,
            batch_key: layout::batch_key(&me, &batch_id),
            batch_id: batch_id.clone(),
            sha256: sha256.clone(),
            first_change_id: first.id.clone(),
            last_change_id: last.id.clone(),
            batch_count,
            change_count,
            updated_at: clock::rfc3339(r.hlc.now_ms()),
            recent_batch_ids: recent_after(r, &batch_id)?,
        };
        let head = Head::sign(body, r.signing_key()?);
        let inf = Inflight {
            batch_id,
            sha256,
            through: last.id.clone(),
            changes: changes.len(),
            batch_count,
            change_count,
            head: String::from_utf8(head.to_bytes()).expect("JSON is UTF-8"),
        };
        {
            let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
            meta_set(&tx, INFLIGHT, &serde_json::to_string(&inf).expect("serializes"))?;
            changelog::save_clock(&tx, &r.hlc)?;
            tx.commit()?;
        }
        report.batches += 1;
        report.changes += inf.changes;
        complete(r, store, inf).await?;
    }
    Ok(report)
}

/// The head's list of recent batch ids once `newest` is pushed.
fn recent_after(r: &Replica, newest: &str) -> Result<Vec<String>> {
    let mut ids: Vec<String> =
        meta_get(&r.sync, "push.recent")?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
    ids.push(newest.to_owned());
    let excess = ids.len().saturating_sub(crate::head::RECENT_BATCHES);
    ids.drain(..excess);
    Ok(ids)
}

/// Finishes an in-flight push: batch, then head, then the local cursor.
async fn complete(r: &mut Replica, store: &dyn Store, inf: Inflight) -> Result<()> {
    let me = r.id().to_owned();
    let path = outbox(r)?.join(format!("{}.db", inf.batch_id));
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let key = layout::batch_key(&me, &inf.batch_id);
    match store.put(&key, bytes, PutMode::Create).await {
        Ok(_) => {}
        // Our earlier attempt landed, or someone else wrote under our id.
        Err(StoreError::PreconditionFailed(_)) => {
            let (existing, _) = get_bytes(store, &key).await?;
            if sha256_hex(&existing) != inf.sha256 {
                return Err(Error::ReplicaConflict(me));
            }
        }
        Err(e) => return Err(e.into()),
    }
    let head_key = layout::head_key(&me);
    let mode = match meta_get(&r.sync, "push.head_etag")? {
        Some(etag) => PutMode::Update(etag),
        None => PutMode::Create,
    };
    let etag = match store.put(&head_key, inf.head.clone().into_bytes(), mode).await {
        Ok(etag) => etag,
        Err(StoreError::PreconditionFailed(_)) => match store.get(&head_key, None).await? {
            Got::Found { bytes, etag } if bytes == inf.head.as_bytes() => etag,
            // Our previous head, rewritten with a new ETag (restored from a backup,
            // copied back by hand): nobody else wrote under our id, so go on.
            Got::Found { bytes, etag } if is_our_last_head(r, &head_key, &bytes)? => {
                store.put(&head_key, inf.head.clone().into_bytes(), PutMode::Update(etag)).await?
            }
            _ => return Err(Error::ReplicaConflict(me)),
        },
        Err(e) => return Err(e.into()),
    };
    let recent = serde_json::to_string(&recent_after(r, &inf.batch_id)?).expect("serializes");
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (k, v) in [
        ("push.recent", recent.as_str()),
        ("push.through", inf.through.as_str()),
        ("push.batch_id", &inf.batch_id),
        ("push.sha256", &inf.sha256),
        ("push.head_etag", &etag),
        ("push.batch_count", &inf.batch_count.to_string()),
        ("push.change_count", &inf.change_count.to_string()),
    ] {
        meta_set(&tx, k, v)?;
    }
    tx.execute("DELETE FROM ZV_METADATA WHERE key = ?1", [INFLIGHT])?;
    tx.commit()?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Whether `bytes` is a head signed with our key naming the last batch we pushed.
fn is_our_last_head(r: &mut Replica, head_key: &str, bytes: &[u8]) -> Result<bool> {
    let (me, key) = (r.id().to_owned(), r.public_key()?);
    let Ok(head) = Head::parse(bytes, head_key, &me, Some(&key)) else { return Ok(false) };
    Ok(meta_get(&r.sync, "push.batch_id")?.as_deref() == Some(head.body.batch_id.as_str()))
}

pub(crate) async fn publish_descriptor(r: &mut Replica, store: &dyn Store) -> Result<()> {
    if meta_get(&r.sync, "descriptor.published")?.is_some() {
        return Ok(());
    }
    let me = r.id().to_owned();
    let d = Descriptor {
        format: FORMAT,
        replica: me.clone(),
        name: r.name()?,
        public_key: r.public_key()?,
        created_at: meta_get(&r.sync, "created_at")?.unwrap_or_default(),
    };
    let key = layout::descriptor_key(&me);
    match store.put(&key, serde_json::to_vec_pretty(&d).expect("serializes"), PutMode::Create).await {
        Ok(_) => {}
        Err(StoreError::PreconditionFailed(_)) => {
            let (bytes, _) = get_bytes(store, &key).await?;
            let theirs = Descriptor::parse(&bytes, &key, &me)?;
            if theirs.public_key != d.public_key {
                return Err(Error::ReplicaConflict(me));
            }
        }
        Err(e) => return Err(e.into()),
    }
    meta_set(&r.sync, "descriptor.published", &clock::rfc3339(r.hlc.now_ms()))
}

/// Where we are with one remote replica.
#[derive(Debug, Default)]
struct Cursor {
    public_key: Option<String>,
    head_etag: Option<String>,
    batch_id: Option<String>,
    batch_sha256: Option<String>,
    last_change_id: Option<String>,
    trust: String,
}

fn cursor(r: &Replica, id: &str) -> Result<Option<Cursor>> {
    Ok(r.sync
        .query_row(
            "SELECT public_key, head_etag, batch_id, batch_sha256, last_change_id, trust FROM ZV_REPLICA WHERE id = ?1",
            [id],
            |row| {
                Ok(Cursor {
                    public_key: row.get(0)?,
                    head_etag: row.get(1)?,
                    batch_id: row.get(2)?,
                    batch_sha256: row.get(3)?,
                    last_change_id: row.get(4)?,
                    trust: row.get(5)?,
                })
            },
        )
        .optional()?)
}

pub async fn pull(r: &mut Replica, store: &dyn Store) -> Result<PullReport> {
    r.refresh_schema()?;
    r.capture()?;
    if !r.direction()?.pulls() {
        return Ok(PullReport::default()); // push-only: remote changes are never applied
    }
    let listing = list_all(store, layout::REPLICAS_PREFIX, None).await?;
    let mut heads: BTreeMap<String, Option<ObjectMeta>> = BTreeMap::new();
    for meta in listing {
        match layout::parse_replica_key(&meta.key) {
            Some(ReplicaObject::Head(id)) => {
                heads.insert(id.to_owned(), Some(meta));
            }
            Some(ReplicaObject::Descriptor(id)) => {
                heads.entry(id.to_owned()).or_default();
            }
            None => {}
        }
    }
    let mut report = PullReport { replicas_seen: heads.len(), ..Default::default() };
    let now = clock::rfc3339(r.hlc.now_ms());
    let mode = trust::mode(&r.sync)?;
    for (id, head) in heads {
        if id == r.id() {
            continue;
        }
        r.sync.execute(
            "INSERT INTO ZV_REPLICA(id, first_seen, last_seen) VALUES (?1, ?2, ?2) ON CONFLICT DO UPDATE SET last_seen = ?2",
            params![id, now],
        )?;
        let Some(head) = head else { continue };
        match pull_replica(r, store, &id, &head, mode, &mut report).await {
            Ok(Pulled::Applied) => problems::clear(&r.sync, &id)?,
            Ok(Pulled::Held) => {
                problems::clear(&r.sync, &id)?;
                report.waiting_for_trust.push(id.clone());
            }
            Ok(Pulled::Revoked) => {}
            Err(Error::BadData { origin, reason }) => {
                problems::record(&r.sync, &id, &origin, &reason, &now)?;
                report.problems.push(format!("{origin}: {reason}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// What became of one replica's head.
enum Pulled {
    /// Everything up to the head is applied (or nothing was new).
    Applied,
    /// Verified and pinned, but explicit trust mode holds its changes.
    Held,
    /// Revoked: not even read.
    Revoked,
}

async fn pull_replica(
    r: &mut Replica,
    store: &dyn Store,
    id: &str,
    head_meta: &ObjectMeta,
    mode: TrustMode,
    report: &mut PullReport,
) -> Result<Pulled> {
    let known = cursor(r, id)?.unwrap_or_default();
    if known.trust == trust::REVOKED {
        return Ok(Pulled::Revoked);
    }
    if known.head_etag.as_deref() == Some(head_meta.etag.as_str()) {
        return Ok(Pulled::Applied);
    }
    let head_key = layout::head_key(id);
    if head_meta.size > MAX_JSON_BYTES as u64 {
        // Refused from the listing alone: no point downloading it.
        let size = head_meta.size;
        return Err(Error::bad(&head_key, format!("head is {size} bytes, more than the {MAX_JSON_BYTES} allowed")));
    }
    let (bytes, etag) = match store.get(&head_key, known.head_etag.as_deref()).await {
        Ok(Got::Found { bytes, etag }) => (bytes, etag),
        Ok(Got::NotModified) => return Ok(Pulled::Applied),
        Err(StoreError::NotFound(_)) => return Ok(Pulled::Applied), // deleted since the listing
        Err(e) => return Err(e.into()),
    };
    let head = Head::parse(&bytes, &head_key, id, known.public_key.as_deref())?.body;
    if known.public_key.is_none() {
        r.sync.execute(
            "UPDATE ZV_REPLICA SET public_key = ?2, name = ?3 WHERE id = ?1",
            params![id, head.public_key, head.name],
        )?;
    }
    // The head etag is not stored while held, so the first pull after `trust` reads
    // the head again and applies.
    if mode == TrustMode::Explicit && known.trust != trust::TRUSTED {
        return Ok(Pulled::Held);
    }
    if known.batch_id.as_deref() == Some(head.batch_id.as_str()) {
        r.sync.execute("UPDATE ZV_REPLICA SET head_etag = ?2 WHERE id = ?1", params![id, etag])?;
        return Ok(Pulled::Applied);
    }
    if let Some(last) = &known.last_change_id {
        if head.last_change_id <= *last {
            return Err(Error::bad(
                &head_key,
                format!(
                    "head is older than one already applied (ends at {}, we have {last}): replayed or rolled back",
                    head.last_change_id
                ),
            ));
        }
    }
    let chain = fetch_chain(r, store, id, &head, &known).await?;
    for (path, key, sha) in chain.iter().rev() {
        let n = apply_batch(r, id, path, key, sha)?;
        report.batches += 1;
        report.changes += n;
        let _ = std::fs::remove_file(path);
    }
    r.sync.execute("UPDATE ZV_REPLICA SET head_etag = ?2, name = ?3 WHERE id = ?1", params![id, etag, head.name])?;
    Ok(Pulled::Applied)
}

/// Batches fetched at once when the head lists them.
const FETCH_CONCURRENCY: usize = 8;

/// Downloads one batch into the spool; returns its path and sha256.
/// A downloaded batch in the spool: the SQLite file inside it (unpacked once, on
/// arrival), the sha256 of the bytes as stored, which the chain covers, and whether
/// unpacking failed (reported only once the hash has been checked, so an altered
/// batch is refused for its hash first).
struct Fetched {
    path: PathBuf,
    sha256: String,
    unpacked: Result<()>,
}

async fn download(store: &dyn Store, spool: &Path, id: &str, batch_id: &str, max: usize) -> Result<Fetched> {
    let key = layout::batch_key(id, batch_id);
    let bytes = match get_bytes(store, &key).await {
        Ok((b, _)) => b,
        Err(StoreError::NotFound(_)) => {
            return Err(Error::bad(&key, "batch is missing from the chain (deleted or never uploaded)"))
        }
        Err(e) => return Err(e.into()),
    };
    if bytes.len() > max {
        return Err(Error::bad(&key, format!("batch is {} bytes, over the cap of {max} bytes", bytes.len())));
    }
    let path = spool.join(format!("{id}-{batch_id}.db"));
    let (file, unpacked) = match batch::unpack(&bytes, &key) {
        Ok(sqlite) => (sqlite, Ok(())),
        Err(e) => (std::borrow::Cow::Borrowed(&bytes[..]), Err(e)),
    };
    std::fs::write(&path, &*file).map_err(|e| Error::io(&path, e))?;
    Ok(Fetched { path, sha256: sha256_hex(&bytes), unpacked })
}

/// Downloads the batches between our cursor and `head` and verifies the chain from
/// the head back to our cursor. Batches the head lists are fetched concurrently
/// first; the walk then checks each link (and fetches, one by one, any older batch
/// the head did not list). Returns (spool path, key, sha256), newest first.
async fn fetch_chain(
    r: &Replica,
    store: &dyn Store,
    id: &str,
    head: &HeadBody,
    known: &Cursor,
) -> Result<Vec<(PathBuf, String, String)>> {
    let spool = r.side().join("spool");
    std::fs::create_dir_all(&spool).map_err(|e| Error::io(&spool, e))?;
    let recent = &head.recent_batch_ids;
    let listed = match known.batch_id.as_ref().and_then(|b| recent.iter().position(|x| x == b)) {
        Some(p) => &recent[p + 1..],
        None => &recent[..],
    };
    let max = r.opts.max_batch_bytes;
    let mut prefetched: HashMap<String, Fetched> = HashMap::new();
    let mut downloads = futures::stream::iter(listed.iter().map(|b| {
        let spool = &spool;
        async move { download(store, spool, id, b, max).await.map(|d| (b.clone(), d)) }
    }))
    .buffer_unordered(FETCH_CONCURRENCY);
    while let Some(done) = downloads.next().await {
        let (b, d) = done?;
        prefetched.insert(b, d);
    }
    let mut chain = Vec::new();
    let (mut want_id, mut want_sha) = (head.batch_id.clone(), head.sha256.clone());
    loop {
        let key = layout::batch_key(id, &want_id);
        let Fetched { path, sha256: sha, unpacked } = match prefetched.remove(&want_id) {
            Some(d) => d,
            None => download(store, &spool, id, &want_id, r.opts.max_batch_bytes).await?,
        };
        if sha != want_sha {
            return Err(Error::bad(
                &key,
                format!("sha256 is {sha}, but the chain says {want_sha}: batch altered or replaced"),
            ));
        }
        unpacked?;
        let header = batch::open(&path, &key, id)?.header;
        if header.batch_id != want_id {
            return Err(Error::bad(&key, format!("batch says it is {}, but is stored as {want_id}", header.batch_id)));
        }
        chain.push((path, key.clone(), sha));
        if header.prev_batch_id == known.batch_id {
            if header.prev_sha256 != known.batch_sha256 {
                return Err(Error::bad(
                    &key,
                    "previous-batch hash does not match the batch we applied: history was rewritten",
                ));
            }
            // Listed but not on the chain from our cursor: nothing to apply.
            for f in prefetched.into_values() {
                let _ = std::fs::remove_file(f.path);
            }
            return Ok(chain);
        }
        match (header.prev_batch_id, header.prev_sha256) {
            (Some(p), Some(s)) => (want_id, want_sha) = (p, s),
            _ => {
                return Err(Error::bad(
                    &key,
                    "chain starts over without reaching the last batch we applied: history was rewritten",
                ))
            }
        }
    }
}

/// Checks every change of a downloaded batch, then applies it in one transaction
/// together with the replica's cursor.
fn apply_batch(r: &mut Replica, id: &str, path: &std::path::Path, key: &str, sha: &str) -> Result<usize> {
    let batch = batch::open(path, key, id)?;
    let changes = batch.changes()?;
    let known = cursor(r, id)?.unwrap_or_default();
    if let Some(last) = &known.last_change_id {
        if batch.header.first_change_id <= *last {
            return Err(Error::bad(key, "change ids go backwards from the last batch applied"));
        }
    }
    let cap = match meta_get(&r.sync, MAX_VALUE_KEY)? {
        Some(v) => v.parse().map_err(|_| Error::Invalid(format!("{MAX_VALUE_KEY} {v:?} is not a number of bytes")))?,
        None => r.opts.max_value_bytes,
    };
    for c in &changes {
        check_change(r, key, c, cap)?;
    }
    let me = r.id().to_owned();
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    r.hlc.observe_persisted(&tx)?;
    changelog::ingest(&tx, &mut r.hlc, &me)?;
    {
        let merger = Merger::new(&tx)?;
        let mut txn = tx.prepare_cached("INSERT OR IGNORE INTO ZV_TRANSACTION(id, author) VALUES (?1, ?2)")?;
        let mut last_txn = "";
        for c in &changes {
            if c.transaction_id != last_txn {
                txn.execute(params![c.transaction_id, id])?;
                last_txn = &c.transaction_id;
            }
        }
        merger.apply_many(&changes).map_err(|e| local_refusal(key, e))?;
    }
    if let Some(last) = changes.last().and_then(|c| parse_id(&c.id)) {
        r.hlc.observe(&last);
    }
    changelog::save_clock(&tx, &r.hlc)?;
    tx.execute(
        "UPDATE ZV_REPLICA SET batch_id = ?2, batch_sha256 = ?3, last_change_id = ?4, change_count = change_count + ?5 WHERE id = ?1",
        params![id, batch.header.batch_id, sha, batch.header.last_change_id, changes.len() as i64],
    )?;
    tx.commit()?;
    Ok(changes.len())
}

/// Refuses a change that is malformed or too far in the future, before anything of
/// its batch is applied.
fn check_change(r: &Replica, key: &str, c: &Change, max_value_bytes: usize) -> Result<()> {
    let id = parse_id(&c.id).ok_or_else(|| Error::bad(key, format!("change id {:?} is not a UUIDv7", c.id)))?;
    r.hlc.check_drift(&id).map_err(|e| Error::bad(key, e.to_string()))?;
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

/// `ZV_METADATA` key overriding [`crate::Options::max_value_bytes`].
pub const MAX_VALUE_KEY: &str = "max_value_bytes";

/// A remote change that breaks a local constraint (UNIQUE, NOT NULL, CHECK, a type
/// the key cannot hold) refuses its batch for that replica only, instead of failing
/// the whole pull and stopping every other replica with it.
fn local_refusal(key: &str, e: Error) -> Error {
    match e {
        Error::Sqlite(ref s) if s.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Error::bad(key, format!("batch cannot be applied here: {s}"))
        }
        Error::BadData { reason, .. } => Error::bad(key, reason),
        e => e,
    }
}

pub async fn sync(r: &mut Replica, store: &crate::store::Metered<dyn Store>) -> Result<SyncReport> {
    let before = store.stats();
    let pull = pull(r, store).await?;
    let push = push(r, store).await?;
    meta_set(&r.sync, "last_sync", &clock::rfc3339(r.hlc.now_ms()))?;
    Ok(SyncReport { pull, push, requests: store.stats().since(&before) })
}
