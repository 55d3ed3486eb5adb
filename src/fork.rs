//! `dimple fork`: a copied database goes on as a new replica, keeping its writes.
//!
//! When a database file is copied (a restored backup, a cloned laptop disk) and
//! both copies write, the copy that pushes second finds the replica's head changed
//! under it and stops (exit 4): pushing would fork one replica's history. Its
//! unpushed writes are real work, so instead of abandoning them (a `clone` starts
//! from the bucket and carries none of them) this copy takes a new replica id and
//! a new key pair, and its unpushed changes become changes of the new replica:
//! - a change that still wins locally gets the new replica's least id after its
//!   old one: it keeps its place in time, so it still wins here, and a write the
//!   other copy (or anyone) made later still wins over it everywhere, as it
//!   would have without the copy (a new id from the clock would have put this
//!   copy's older writes over the other copy's newer ones);
//! - a change that a newer one already replaced is dropped: re-issuing it with a
//!   new, greater id would bring back a value the group already replaced;
//! - the old id becomes a remote replica whose cursor is the last batch this copy
//!   pushed under it, so the next pull applies what the other copy pushed since.
//!
//! Everything in the database changes in one transaction. The new private key is
//! written beside the old one first and moved into place after the commit; the
//! database records its public key, so a crash in between is finished on the next
//! open ([`crate::sidedir::SideDir::finish_key_swap`]).

use crate::changelog;
use crate::clock::{self, Hlc};
use crate::error::{Error, Result};
use crate::merge::{Change, Merger};
use crate::meta::{self, PushState};
use crate::peers::{self, Peer, Trust};
use crate::replica::Replica;
use crate::trust;
use rusqlite::TransactionBehavior;
use serde::Serialize;

/// `ZV_METADATA` key naming the replica id this one forked from.
pub(crate) const FORKED_FROM: &str = "forked_from";

#[derive(Debug, Clone, Serialize)]
pub struct ForkReport {
    pub old_replica: String,
    pub new_replica: String,
    /// Unpushed changes now authored by the new replica (pushed by the next push).
    pub kept: usize,
    /// Unpushed changes already replaced by newer ones, dropped.
    pub superseded: usize,
}

/// The new replica's id for a change or transaction of the old one: the least
/// after it, so it keeps its place in time (ids ascend as the old ones did).
fn take_over(hlc: &mut Hlc, old: &str) -> Result<String> {
    let id = clock::parse_id(old).ok_or_else(|| Error::Invalid(format!("unpushed change id {old:?} is not an id")))?;
    Ok(hlc.take_over(&id).to_string())
}

/// Makes `r` a new replica that keeps its unpushed writes; returns it reopened.
pub fn fork(mut r: Replica, name: Option<&str>) -> Result<(Replica, ForkReport)> {
    let (path, opts, side) = (r.path().to_owned(), r.opts.clone(), r.side().to_owned());
    let old = r.id().to_owned();
    let old_public = r.public_key()?;
    let next_key = side.next_key();
    if next_key.exists() {
        std::fs::remove_file(&next_key).map_err(|e| Error::io(&next_key, e))?;
    }
    let new_key = trust::generate(&next_key)?;
    let new_public = trust::public_b64(&new_key);
    let new_uuid = clock::random_v7(opts.clock.as_ref());
    let new = new_uuid.to_string();
    let mut report = ForkReport { old_replica: old.clone(), new_replica: new.clone(), kept: 0, superseded: 0 };
    {
        let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
        r.hlc.observe_persisted(&tx)?;
        changelog::ingest(&tx, &mut r.hlc, &old)?;
        let mut hlc = Hlc::new(opts.clock.clone(), &new_uuid, Some(r.hlc.state()), opts.max_drift_ms);
        let pushed = PushState::load(&tx)?;
        let through = pushed.through.clone();
        let unpushed: Vec<Change> = crate::outbox::unpushed_after(&tx, &old, &through, usize::MAX)?;
        // Read whole above; what is kept is recorded again under the new id.
        crate::outbox::clear(&tx)?;
        {
            let merger = Merger::new(&tx)?;
            let mut outbox = crate::outbox::Packer::new();
            let (mut old_txn, mut new_txn): (Option<String>, Option<String>) = (None, None);
            for c in &unpushed {
                if old_txn.as_deref() != Some(c.transaction_id.as_str()) {
                    old_txn = Some(c.transaction_id.clone());
                    new_txn = None;
                }
                let wins = crate::log::winner(&tx, &c.entity_type, &c.entity_id, &c.attribute)?
                    .is_some_and(|w| w.id == c.id && w.author == old);
                crate::log::remove_own(&tx, c)?;
                if !wins {
                    report.superseded += 1;
                    continue;
                }
                let txn = match &new_txn {
                    Some(t) => t.clone(),
                    None => new_txn.insert(take_over(&mut hlc, &c.transaction_id)?).clone(),
                };
                merger.record_local(
                    &Change { id: take_over(&mut hlc, &c.id)?, transaction_id: txn, author: new.clone(), ..c.clone() },
                    &mut outbox,
                )?;
                report.kept += 1;
            }
            outbox.finish(&tx)?;
        }
        crate::log::drop_empty_transactions(&tx)?;
        // The old id is now another replica, applied up to what this copy pushed.
        let now = clock::rfc3339(opts.clock.now_ms());
        peers::add(
            &tx,
            &Peer {
                id: old.clone(),
                name: meta::get(&tx, "name")?,
                public_key: Some(old_public.clone()),
                trust: Trust::Trusted,
                head_etag: None,
                batch_id: pushed.batch_id,
                batch_sha256: pushed.sha256,
                last_change_id: (!through.is_empty()).then_some(through),
                change_count: pushed.change_count,
                first_seen: now.clone(),
                last_seen: Some(now),
            },
        )?;
        PushState::forget(&tx)?;
        // In an encrypted group the new id needs a member card of its own, or a
        // rekey would leave it out.
        crate::group::forget_card(&tx)?;
        crate::schema::forget_published(&tx)?;
        meta::set(&tx, "database_uuid", &new)?;
        meta::set(&tx, FORKED_FROM, &old)?;
        meta::set(&tx, meta::PUBLIC_KEY, &new_public)?;
        if let Some(name) = name {
            meta::set(&tx, "name", name)?;
        }
        changelog::save_clock(&tx, &hlc)?;
        tx.commit()?;
    }
    drop(r);
    // The in-flight batch, if any, was the old identity's; its changes now wait
    // under the new one.
    let outbox = side.outbox()?;
    std::fs::remove_dir_all(&outbox).map_err(|e| Error::io(&outbox, e))?;
    side.finish_key_swap(&new_public)?;
    Ok((Replica::open(&path, opts)?, report))
}
