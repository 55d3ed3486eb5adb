//! Which devices each key epoch shuts out, so that a member seals only under an
//! epoch that no revoked device holds.
//!
//! Epochs used to form a line: a grant had to carry every key its recipient
//! held. Two members starting epochs at the same moment then split the group for
//! good (each side refused the other's grant), and so did a revoked device that
//! started an epoch of its own before the members took in the one revoking it:
//! those that took its epoch first refused the revocation and went on sealing
//! under a key it holds. Now a member takes in every epoch a member grants it
//! (concurrent epochs merge), and what keeps a revoked device out is this record:
//! for each epoch, the devices its grant says it shuts out (a new epoch's grant
//! names every device its starter holds revoked, not only the new ones) and the
//! epochs its granter held, whose revoked devices it did not grant either. A
//! member seals under its newest epoch only if that epoch shuts out every device
//! any epoch it holds revoked; otherwise it refuses to seal until a member starts
//! a new epoch (`dimple rekey`), which does.
//!
//! Epochs taken in before this record existed have no entry: they formed a line,
//! so an entry-less newest epoch is sealed under as before.
//!
//! A device that joins by passphrase takes its keys in without a grant naming
//! the revoked devices, so each new epoch also says it in the bucket: its notice,
//! `epochs/<epoch>.json`, sealed under that epoch's own key, which a device the
//! epoch shuts out never held. It can neither read a notice nor write one that
//! opens; it can only delete one, which leaves a joiner as it was before notices
//! existed, learning the revocation from the next epoch's grant.

use super::wrap::{aead_open, aead_seal, notice_aad};
use crate::clock;
use crate::error::Result;
use crate::head::MAX_JSON_BYTES;
use crate::layout;
use crate::peers;
use crate::replica::Replica;
use crate::seal::Keyring;
use crate::store::{get_bytes, PutMode, Store, StoreError};
use crate::FORMAT;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// `ZV_METADATA`: what each epoch's grant said, as JSON (epoch id -> [`Entry`]).
const EPOCHS_META: &str = "group.epochs";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    /// The devices the epoch's grant named as revoked.
    revoked: Vec<String>,
    /// The other epochs its granter held when it granted this one.
    knew: Vec<String>,
}

fn load(conn: &Connection) -> Result<BTreeMap<String, Entry>> {
    // Written only by this replica; an unreadable record counts as none (the
    // entry-less, pre-record behaviour), never as a reason to stop syncing.
    Ok(crate::meta::get(conn, EPOCHS_META)?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default())
}

/// Records what the grant of `epoch` (or this member, starting it) said.
pub(crate) fn record<'a>(
    conn: &Connection,
    epoch: &Uuid,
    revoked: &[String],
    knew: impl Iterator<Item = &'a Uuid>,
) -> Result<()> {
    let mut all = load(conn)?;
    let epoch = epoch.to_string();
    let knew = knew.map(Uuid::to_string).filter(|e| *e != epoch).collect();
    all.insert(epoch, Entry { revoked: revoked.to_vec(), knew });
    crate::meta::set(conn, EPOCHS_META, &serde_json::to_string(&all).expect("serializes"))
}

/// Every device some epoch held here revoked: what a new epoch's grants name.
pub(crate) fn revoked_here(conn: &Connection) -> Result<BTreeSet<String>> {
    Ok(revoked_in(&load(conn)?))
}

fn revoked_in(all: &BTreeMap<String, Entry>) -> BTreeSet<String> {
    all.values().flat_map(|e| e.revoked.iter().cloned()).collect()
}

/// The devices `epoch` shuts out: those its grant names and, through the epochs
/// its granter held, those they shut out. `None` for an epoch with no entry.
fn shut_out(all: &BTreeMap<String, Entry>, epoch: &str) -> Option<BTreeSet<String>> {
    all.get(epoch)?;
    let (mut out, mut seen, mut todo) = (BTreeSet::new(), BTreeSet::new(), vec![epoch.to_owned()]);
    while let Some(e) = todo.pop() {
        if !seen.insert(e.clone()) {
            continue;
        }
        if let Some(entry) = all.get(&e) {
            out.extend(entry.revoked.iter().cloned());
            todo.extend(entry.knew.iter().cloned());
        }
    }
    Some(out)
}

/// Why this member must not seal under `ring`'s newest epoch, if it must not: a
/// device some epoch revoked may hold it.
pub(crate) fn block(conn: &Connection, ring: &Keyring) -> Result<Option<String>> {
    let Some((newest, _)) = ring.newest() else { return Ok(None) };
    let all = load(conn)?;
    let Some(out) = shut_out(&all, &newest.to_string()) else { return Ok(None) };
    let open: Vec<String> = revoked_in(&all).into_iter().filter(|id| !out.contains(id)).collect();
    if open.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "the newest key epoch, {newest}, was started without revoking {} ({}): two members started key epochs at once, or a revoked device started one; run `dimple rekey DB` on a member to start an epoch that shuts them out",
        if open.len() == 1 { "a revoked device" } else { "revoked devices" },
        open.join(", ")
    )))
}

/// `epochs/<epoch>.json`: the epoch and its group in the clear, what it shuts
/// out sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notice {
    format: i64,
    group: String,
    epoch: String,
    nonce: String,
    sealed: String,
}

/// What a notice seals: every device its starter held revoked, the new ones too.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutOut {
    revoked: Vec<String>,
}

/// Writes the notice of `epoch` (a new one, in `ring`), naming `revoked`.
pub(crate) async fn publish(store: &dyn Store, ring: &Keyring, epoch: &Uuid, revoked: &[String]) -> Result<()> {
    let key = layout::epoch_key(&epoch.to_string());
    let epoch_key = ring.get(epoch).expect("a new epoch is in the ring that starts it");
    let group = ring.group.to_string();
    let body = serde_json::to_vec(&ShutOut { revoked: revoked.to_vec() }).expect("serializes");
    let (nonce, sealed) = aead_seal(&epoch_key.0, &notice_aad(&key, &group), &body);
    let notice = Notice { format: FORMAT, group, epoch: epoch.to_string(), nonce, sealed };
    store.put(&key, serde_json::to_vec_pretty(&notice).expect("serializes"), PutMode::Overwrite).await?;
    Ok(())
}

/// For a device taking `ring` in without a grant (by passphrase): what each
/// epoch's notice says, recorded as a grant's would be, its devices revoked
/// here. A notice names every device revoked so far, so it stands alone (no
/// epochs it knew). An epoch without one (started by an older build, or
/// deleted) changes nothing; one that does not open under its epoch's key was
/// not written by a holder of that key, and is skipped.
pub(crate) async fn take_in(r: &Replica, store: &dyn Store, ring: &Keyring) -> Result<()> {
    let group = ring.group.to_string();
    let now = clock::rfc3339(r.opts.clock.now_ms());
    for (epoch, epoch_key) in ring.epochs() {
        let key = layout::epoch_key(&epoch.to_string());
        let bytes = match get_bytes(store, &key).await {
            Ok((b, _)) => b,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(revoked) = open_notice(&bytes, &key, &group, epoch, &epoch_key.0) else {
            tracing::warn!("{key}: not a notice sealed under its epoch's key; skipped");
            continue;
        };
        let revoked: Vec<String> =
            revoked.into_iter().filter(|id| id != r.id() && layout::is_canonical_uuid(id)).collect();
        record(&r.sync, epoch, &revoked, std::iter::empty())?;
        for id in &revoked {
            peers::revoke(&r.sync, id, &now)?;
        }
    }
    Ok(())
}

fn open_notice(bytes: &[u8], key: &str, group: &str, epoch: &Uuid, epoch_key: &[u8; 32]) -> Option<Vec<String>> {
    if bytes.len() > MAX_JSON_BYTES {
        return None;
    }
    let n: Notice = serde_json::from_slice(bytes).ok()?;
    if n.format != FORMAT || n.group != group || n.epoch != epoch.to_string() {
        return None;
    }
    let plain = aead_open(epoch_key, &notice_aad(key, group), &n.nonce, &n.sealed)?;
    Some(serde_json::from_slice::<ShutOut>(&plain).ok()?.revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE ZV_METADATA(key TEXT PRIMARY KEY, value TEXT)").unwrap();
        c
    }

    fn ring(epochs: &[u128]) -> Keyring {
        let mut r = Keyring::new(Uuid::from_u128(1));
        for &e in epochs {
            r.insert(Uuid::from_u128(e), crate::seal::GroupKey::random());
        }
        r
    }

    fn ids(n: &[u128]) -> Vec<Uuid> {
        n.iter().map(|&e| Uuid::from_u128(e)).collect()
    }

    #[test]
    fn an_entry_less_newest_epoch_is_sealed_under_as_before() {
        let c = conn();
        record(&c, &Uuid::from_u128(10), &["x".to_owned()], ids(&[5]).iter()).unwrap();
        assert_eq!(block(&c, &ring(&[5, 10, 20])).unwrap(), None);
    }

    #[test]
    fn an_epoch_shuts_out_what_the_epochs_its_granter_held_revoked() {
        let c = conn();
        record(&c, &Uuid::from_u128(10), &["x".to_owned()], ids(&[5]).iter()).unwrap();
        // Started by a member that held epoch 10 but named nobody itself (an
        // older build's grant names only the devices it revokes anew).
        record(&c, &Uuid::from_u128(20), &[], ids(&[5, 10]).iter()).unwrap();
        assert_eq!(block(&c, &ring(&[5, 10, 20])).unwrap(), None);
    }

    #[test]
    fn concurrent_epochs_that_revoke_different_devices_block_sealing_until_one_covers_both() {
        let c = conn();
        record(&c, &Uuid::from_u128(10), &["x".to_owned()], ids(&[5]).iter()).unwrap();
        record(&c, &Uuid::from_u128(11), &["y".to_owned()], ids(&[5]).iter()).unwrap();
        let why = block(&c, &ring(&[5, 10, 11])).unwrap().expect("11 does not shut x out");
        assert!(why.contains("(x)"), "{why}");
        record(&c, &Uuid::from_u128(12), &["x".to_owned(), "y".to_owned()], ids(&[5, 10, 11]).iter()).unwrap();
        assert_eq!(block(&c, &ring(&[5, 10, 11, 12])).unwrap(), None);
    }

    /// A notice opens only under the key of the epoch it names, for its group
    /// and its own object key: a device the epoch shuts out holds only older
    /// keys, so what it writes there is not read.
    #[test]
    fn a_notice_opens_only_under_its_own_epochs_key() {
        let ring = ring(&[5, 10]);
        let (old, new) = (Uuid::from_u128(5), Uuid::from_u128(10));
        let group = ring.group.to_string();
        let revoked = vec![Uuid::from_u128(77).to_string()];
        let sealed_by = |epoch: &Uuid, under: &Uuid, key: &str, group: &str| {
            let body = serde_json::to_vec(&ShutOut { revoked: revoked.clone() }).unwrap();
            let (nonce, sealed) = aead_seal(&ring.get(under).unwrap().0, &notice_aad(key, group), &body);
            let n = Notice { format: FORMAT, group: group.to_owned(), epoch: epoch.to_string(), nonce, sealed };
            serde_json::to_vec(&n).unwrap()
        };
        let key = layout::epoch_key(&new.to_string());
        let new_key = &ring.get(&new).unwrap().0;
        let honest = sealed_by(&new, &new, &key, &group);
        assert_eq!(open_notice(&honest, &key, &group, &new, new_key), Some(revoked.clone()));
        let forged = sealed_by(&new, &old, &key, &group);
        assert_eq!(open_notice(&forged, &key, &group, &new, new_key), None, "sealed under an older epoch");
        let moved = layout::epoch_key(&old.to_string());
        assert_eq!(open_notice(&honest, &moved, &group, &new, new_key), None, "copied to another epoch's key");
        let other = Uuid::from_u128(2).to_string();
        let elsewhere = sealed_by(&new, &new, &key, &other);
        assert_eq!(open_notice(&elsewhere, &key, &group, &new, new_key), None, "another group's");
        assert_eq!(open_notice(b"not json", &key, &group, &new, new_key), None);
    }

    #[test]
    fn a_cycle_of_epochs_that_name_each_other_ends() {
        let c = conn();
        record(&c, &Uuid::from_u128(10), &[], ids(&[11]).iter()).unwrap();
        record(&c, &Uuid::from_u128(11), &["x".to_owned()], ids(&[10]).iter()).unwrap();
        assert_eq!(block(&c, &ring(&[10, 11])).unwrap(), None);
    }
}
