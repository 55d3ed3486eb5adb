//! Pull: other replicas' new batches into this one.
//!
//! One paged LIST of `replicas/` gives every head with its ETag; a head is read
//! only when its ETag changed. Each replica is then handled on its own: its head
//! verified against the pinned key, its trust decided, its chain fetched and
//! verified back to our cursor ([`super::chain`]), and its batches applied oldest
//! first ([`super::apply`]). A replica whose objects are bad gets a problem and
//! keeps its cursor; the others sync on.

use super::{apply, chain, check, PullReport};
use crate::clock;
use crate::codec::{Codec, Kind};
use crate::error::{Error, Result};
use crate::head::{Head, MAX_JSON_BYTES};
use crate::layout::{self, ReplicaObject};
use crate::peers::{self, Trust};
use crate::problems;
use crate::replica::Replica;
use crate::store::{list_all, Got, ObjectMeta, Store, StoreError};
use crate::trust::{self, TrustMode};
use std::collections::BTreeMap;

pub async fn pull(r: &mut Replica, store: &dyn Store) -> Result<PullReport> {
    // SQLite's default checkpoints the WAL into the file whenever it passes 1000
    // pages, which a batch of 10k changes does at every commit: each checkpoint
    // writes pages again that the next batch dirties anew, and syncs the file.
    // While a pull applies, they come every APPLY_CHECKPOINT_PAGES instead.
    let before = crate::sql::checkpoint_every(&r.sync, APPLY_CHECKPOINT_PAGES)?;
    let pulled = pull_all(r, store).await;
    let restored = crate::sql::checkpoint_every(&r.sync, before);
    let report = pulled?;
    restored?;
    crate::clone::finished(&r.sync)?;
    // Values written into rows can grow it too, with no change pulled.
    r.shrink_wal();
    Ok(report)
}

/// WAL pages between checkpoints while a pull applies batches (64 MiB of 4 KiB
/// pages). A pull of 1.2M changes, alternating builds: 3.86-4.21 s with SQLite's
/// 1000, 3.86-3.92 s with 4096, 3.61-3.81 s with this. The cost: an app that
/// commits meanwhile runs SQLite's checkpoint of what has gathered, up to this
/// much instead of about a batch. The space is given back after the pull.
const APPLY_CHECKPOINT_PAGES: i64 = 16384;

async fn pull_all(r: &mut Replica, store: &dyn Store) -> Result<PullReport> {
    // Captures local writes too (before any remote change is applied).
    r.refresh_schema()?;
    if !r.direction()?.pulls() {
        return Ok(PullReport::default()); // push-only: remote changes are never applied
    }
    let codec = crate::group::prepare(r, store, true).await?;
    let listing = list_all(store, layout::REPLICAS_PREFIX, None).await?;
    let mut heads: BTreeMap<String, Option<ObjectMeta>> = BTreeMap::new();
    let mut schemas: BTreeMap<String, ObjectMeta> = BTreeMap::new();
    for meta in listing {
        match layout::parse_replica_key(&meta.key) {
            Some(ReplicaObject::Head(id)) => {
                heads.insert(id.to_owned(), Some(meta));
            }
            Some(ReplicaObject::Descriptor(id)) => {
                heads.entry(id.to_owned()).or_default();
                // The descriptor carries the replica's schema.
                schemas.insert(id.to_owned(), meta);
            }
            None => {}
        }
    }
    // Pulls skip our own id: a head there that we did not write means a copy of
    // this database writes under it, whose changes we would never apply. The
    // others' changes are applied first: `dimple fork` then knows which of this
    // copy's writes they replaced.
    let claimed = match heads.get(r.id()) {
        Some(Some(own)) => super::own_head_is_ours(r, store, &codec, Some(&own.etag)).await.err(),
        _ => None,
    };
    let mut report = PullReport { replicas_seen: heads.len(), ..Default::default() };
    let now = clock::rfc3339(r.hlc.now_ms());
    let mode = trust::mode(&r.sync)?;
    // Bookkeeping for every replica in one transaction, and problems cleared only
    // where there are some: a no-op pull among thousands of replicas writes little.
    {
        let me = r.id().to_owned();
        let tx = r.sync.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for id in heads.keys().filter(|id| **id != me) {
            peers::seen(&tx, id, &now)?;
        }
        tx.commit()?;
    }
    let with_problems = problems::replicas(&r.sync)?;
    // Schema conflicts are recorded as problems by the settle below: when problems
    // are cleared, the settle runs again to record those that remain.
    let mut resettle = !with_problems.is_empty();
    let clear = |r: &Replica, id: &str| -> Result<()> {
        if with_problems.contains(id) {
            problems::clear(&r.sync, id)?;
        }
        Ok(())
    };
    for (id, head) in heads {
        if id == r.id() {
            continue;
        }
        let pulled = match &head {
            Some(head) => pull_replica(r, store, &codec, &id, head, mode, &mut report).await,
            // No head yet (nothing pushed): only its schema (descriptor) may be new.
            None if schemas.contains_key(&id) && schema_readable(r, &id, mode)? => Ok(Pulled::Applied),
            None => continue,
        };
        // Its schema, from a replica whose changes this one applies.
        let pulled = match (pulled, schemas.get(&id)) {
            (Ok(Pulled::Applied), Some(meta)) => match crate::schema::fetch(r, store, &codec, &id, meta).await {
                Ok(read) => {
                    resettle |= read;
                    Ok(Pulled::Applied)
                }
                Err(e) => Err(e),
            },
            (other, _) => other,
        };
        match pulled {
            Ok(Pulled::Applied) => clear(r, &id)?,
            Ok(Pulled::Held) => {
                clear(r, &id)?;
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
    crate::schema::settle_if_changed(r, resettle)?;
    let fetched = crate::blob::transfer::fetch_unless_lazy(r, store, &codec).await?;
    report.blobs.add(fetched.moved);
    report.problems.extend(fetched.problems);
    report.blobs_missing = crate::blob::missing_summary(&r.sync)?;
    report.tables.sort();
    match claimed {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Why [`apply_links`] stopped.
struct Refused {
    error: Error,
    /// Batches committed before it stopped.
    applied: usize,
    /// The failing batch shared its transaction with batches now rolled back.
    shared: bool,
}

/// The open [`apply::Group`] of [`apply_links`], with what it applied: added to
/// the report once it commits.
#[derive(Default)]
struct Open {
    group: Option<apply::Group>,
    tables: Vec<String>,
    files: Vec<std::path::PathBuf>,
    /// Batches committed so far.
    applied: usize,
}

impl Open {
    fn commit(&mut self, r: &mut Replica, report: &mut PullReport) -> Result<()> {
        let Some(g) = self.group.take() else { return Ok(()) };
        let (batches, changes) = (g.batches, g.changes);
        g.commit(r)?;
        self.applied += batches;
        report.batches += batches;
        report.changes += changes;
        for t in self.tables.drain(..) {
            if !report.tables.contains(&t) {
                report.tables.push(t);
            }
        }
        for f in self.files.drain(..) {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    /// Stops with `error`: the batches in the group are whole, so they stay.
    fn stop(mut self, r: &mut Replica, report: &mut PullReport, error: Error) -> Refused {
        let error = self.commit(r, report).err().unwrap_or(error);
        Refused { error, applied: self.applied, shared: false }
    }
}

/// How [`apply_links`] ended, short of a refusal.
enum Ended {
    /// Every batch applied.
    Done,
    /// A large batch, merged as its check went on, refers to values stored out
    /// of line: its group was rolled back, after `applied` batches committed.
    Refers { applied: usize },
}

/// Applies `links` oldest first, consecutive batches sharing a transaction
/// ([`apply::Group`]; one each when `single`); a large batch is merged as its
/// check goes on when `streamed` ([`check::Ahead`]).
#[allow(clippy::too_many_arguments)]
async fn apply_links(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    id: &str,
    links: &[&chain::Link],
    single: bool,
    streamed: bool,
    report: &mut PullReport,
) -> std::result::Result<Ended, Refused> {
    let mut open = Open::default();
    // Each batch is checked on a thread of its own while the one before it is merged.
    let start = |checker: &check::Checker, l: &chain::Link, spare| {
        check::Ahead::start(checker.clone(), l.path.clone(), l.key.clone(), spare, streamed)
    };
    // The changes of the batch applied last, whose strings the next check reuses.
    let mut spare = Vec::new();
    let mut checker = match check::Checker::new(r, id) {
        Ok(c) => c,
        Err(e) => return Err(open.stop(r, report, e)),
    };
    let mut ahead = links.first().map(|l| start(&checker, l, Vec::new()));
    for (i, link) in links.iter().enumerate() {
        let checked = match ahead.take().expect("each batch's check is started before it").finish() {
            Ok(checked) => checked,
            Err(e) => return Err(open.stop(r, report, e)),
        };
        checker = checker.after(&checked.header);
        ahead = links.get(i + 1).map(|l| start(&checker, l, std::mem::take(&mut spare)));
        // Values stored out of line are downloaded and checked before any of the
        // batch is applied, with no transaction open meanwhile. This is the
        // loop's only await: a pull dropped there (cancelled) leaves no
        // transaction open on the replica's connection.
        let downloads = checked.references.any();
        if downloads || open.group.as_ref().is_some_and(apply::Group::full) {
            if let Err(e) = open.commit(r, report) {
                return Err(open.stop(r, report, e));
            }
        }
        if downloads {
            match crate::blob::transfer::prefetch(r, store, codec, &checked.references).await {
                Ok(moved) => report.blobs.add(moved),
                Err(e) => return Err(open.stop(r, report, e)),
            }
        }
        if open.group.is_none() {
            match apply::Group::begin(r, single) {
                Ok(g) => open.group = Some(g),
                Err(e) => return Err(open.stop(r, report, e)),
            }
        }
        let g = open.group.as_mut().expect("begun above");
        match g.apply(r, id, checked, &link.key, &link.sha256, &mut spare) {
            Ok(apply::Applied::Whole(tables)) => {
                open.tables.extend(tables);
                open.files.push(link.path.clone());
            }
            Ok(apply::Applied::Refers) => {
                open.group.take().expect("applying in it").rollback(r);
                return Ok(Ended::Refers { applied: open.applied });
            }
            Err(error) => {
                // Part of this batch may be in the group: all of it goes.
                let g = open.group.take().expect("applying in it");
                let shared = g.batches > 0;
                g.rollback(r);
                return Err(Refused { error, applied: open.applied, shared });
            }
        }
    }
    open.commit(r, report).map_err(|e| Refused { error: e, applied: open.applied, shared: false })?;
    Ok(Ended::Done)
}

/// Whether the schema of a replica that has no head yet is read: it would be
/// applied, were it to push.
fn schema_readable(r: &Replica, id: &str, mode: TrustMode) -> Result<bool> {
    Ok(peers::get(&r.sync, id)?.unwrap_or_default().trust.applied_in(mode))
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
    codec: &Codec,
    id: &str,
    head_meta: &ObjectMeta,
    mode: TrustMode,
    report: &mut PullReport,
) -> Result<Pulled> {
    let known = peers::get(&r.sync, id)?.unwrap_or_default();
    if known.trust == Trust::Revoked {
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
    let plain = codec.decode(Kind::Head, &head_key, &bytes)?;
    let head = Head::parse(&plain, &head_key, id, known.public_key.as_deref())?.body;
    // The bucket can put back an older head of this replica whole, seal and all:
    // one sealed under an epoch older than one already read from it is a replay.
    let epoch = codec.epoch_of(&bytes);
    let epoch_meta = format!("epoch.{id}");
    if let (Some(epoch), Some(seen)) = (epoch, crate::meta::get(&r.sync, &epoch_meta)?) {
        if epoch.to_string() < seen {
            return Err(Error::bad(
                &head_key,
                format!("head sealed under key epoch {epoch}, older than the epoch {seen} already read from this replica: replayed"),
            ));
        }
    }
    if known.public_key.is_none() {
        peers::pin(&r.sync, id, &head.public_key, &head.name)?;
    }
    // The head etag is not stored while held, so the first pull after `trust` reads
    // the head again and applies.
    if !known.trust.applied_in(mode) {
        return Ok(Pulled::Held);
    }
    if known.batch_id.as_deref() == Some(head.batch_id.as_str()) {
        peers::head_applied(&r.sync, id, &etag, None)?;
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
    let chain = match chain::fetch(r, store, codec, id, &head, &known).await {
        // Batches pruned by compaction: the newest snapshot covers them.
        Err(chain::Stopped { short: chain::Short::Missing, error }) if !report.tried_snapshot => {
            report.tried_snapshot = true;
            let moved = crate::catchup::from_snapshot(r, store, codec).await?;
            report.caught_up.extend(moved.iter().cloned());
            if !moved.iter().any(|m| m == id) {
                return Err(error);
            }
            let known = peers::get(&r.sync, id)?.unwrap_or_default();
            if known.batch_id.as_deref() == Some(head.batch_id.as_str()) {
                peers::head_applied(&r.sync, id, &etag, Some(&head.name))?;
                return Ok(Pulled::Applied);
            }
            chain::fetch(r, store, codec, id, &head, &known).await?
        }
        other => other?,
    };
    let links: Vec<&chain::Link> = chain.iter().rev().collect();
    // A batch refused halfway rolls back the batches that shared its transaction:
    // they are applied again one transaction each, up to the refused one.
    // A large batch referring to values stored out of line rolls back the
    // batches that shared its transaction: they are applied again from the
    // first of them, each checked whole before it is merged.
    let mut done = 0;
    let mut single = false;
    let mut streamed = true;
    loop {
        match apply_links(r, store, codec, id, &links[done..], single, streamed, report).await {
            Ok(Ended::Done) => break,
            Ok(Ended::Refers { applied }) => {
                done += applied;
                streamed = false;
            }
            Err(Refused { error, applied, shared: true }) if !single => {
                tracing::debug!("{error}: applying the batches of its transaction one at a time");
                done += applied;
                single = true;
            }
            Err(Refused { error, .. }) => return Err(error),
        }
    }
    peers::head_applied(&r.sync, id, &etag, Some(&head.name))?;
    if let Some(epoch) = epoch {
        crate::meta::set(&r.sync, &epoch_meta, &epoch.to_string())?;
    }
    Ok(Pulled::Applied)
}
