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

use crate::error::Result;
use crate::seal::Keyring;
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

    #[test]
    fn a_cycle_of_epochs_that_name_each_other_ends() {
        let c = conn();
        record(&c, &Uuid::from_u128(10), &[], ids(&[11]).iter()).unwrap();
        record(&c, &Uuid::from_u128(11), &["x".to_owned()], ids(&[10]).iter()).unwrap();
        assert_eq!(block(&c, &ring(&[10, 11])).unwrap(), None);
    }
}
