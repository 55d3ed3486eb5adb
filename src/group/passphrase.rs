//! The passphrase grant, `grants/passphrase/<epoch>.json`: the group's keys
//! sealed under a key Argon2id derives from the passphrase, for devices that
//! join by knowing it. Its parameters come from the bucket, so they are capped
//! before any work is spent on them.

use super::detect;
use super::grants::not_from_a_member;
use super::wrap::{aead_open, aead_seal, grant_aad, payload, unpayload};
use crate::error::{Error, Result};
use crate::head::MAX_JSON_BYTES;
use crate::layout;
use crate::seal::Keyring;
use crate::store::{get_bytes, list_all, ObjectMeta, PutMode, Store, StoreError};
use crate::FORMAT;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Argon2id cost of a new passphrase grant: 64 MiB, 3 passes (RFC 9106's second
/// recommended setting). Stored with each grant, so it can grow later.
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
pub const KDF_ITERATIONS: u32 = 3;

/// Parameters read from the bucket above these are refused: a hostile grant must
/// not make a device spend gigabytes or minutes.
const KDF_MAX_MEMORY_KIB: u32 = 1024 * 1024;
const KDF_MAX_ITERATIONS: u32 = 16;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PassphraseGrant {
    format: i64,
    group: String,
    epoch: String,
    kdf: Kdf,
    nonce: String,
    wrapped: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

fn derive(passphrase: &str, kdf: &Kdf, origin: &str) -> Result<[u8; 32]> {
    if kdf.algorithm != "argon2id"
        || kdf.memory_kib > KDF_MAX_MEMORY_KIB
        || kdf.iterations > KDF_MAX_ITERATIONS
        || kdf.parallelism != 1
    {
        return Err(Error::bad(origin, format!("passphrase parameters out of range: {kdf:?}")));
    }
    let salt = B64.decode(&kdf.salt).map_err(|_| Error::bad(origin, "salt is not base64"))?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| Error::bad(origin, format!("passphrase parameters: {e}")))?;
    let mut out = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &salt, &mut out)
        .map_err(|e| Error::bad(origin, format!("passphrase parameters: {e}")))?;
    Ok(out)
}

pub(super) async fn put_passphrase_grant(store: &dyn Store, ring: &Keyring, passphrase: &str) -> Result<()> {
    let (epoch, _) = ring.newest().expect("a group has a key");
    let key = layout::grant_key(layout::PASSPHRASE, &epoch.to_string());
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let kdf = Kdf {
        algorithm: "argon2id".to_owned(),
        memory_kib: KDF_MEMORY_KIB,
        iterations: KDF_ITERATIONS,
        parallelism: 1,
        salt: B64.encode(salt),
    };
    let wrapping = derive(passphrase, &kdf, &key)?;
    let group = ring.group.to_string();
    let (nonce, wrapped) = aead_seal(&wrapping, &grant_aad(&key, &group), &payload(ring));
    let g = PassphraseGrant { format: FORMAT, group, epoch: epoch.to_string(), kdf, nonce, wrapped };
    store.put(&key, serde_json::to_vec_pretty(&g).expect("serializes"), PutMode::Overwrite).await?;
    Ok(())
}

/// Refuses a passphrase a rekey retired: a newer epoch's notice than every
/// passphrase grant says a member started an epoch without one. The grants
/// left would open only epochs the members have moved on from (and a device
/// revoked with that epoch may hold), so the device would join a group nobody
/// seals to any more.
async fn retired(store: &dyn Store, grants: &[ObjectMeta]) -> Result<()> {
    let epoch_of = |key: &str, prefix: &str| layout::parse_id_key(key, prefix).and_then(|e| Uuid::parse_str(e).ok());
    let prefix = layout::grants_prefix(layout::PASSPHRASE);
    let granted = grants.iter().filter_map(|m| epoch_of(&m.key, &prefix)).max();
    let notices = list_all(store, layout::EPOCHS_PREFIX, None).await?;
    let newest = notices.iter().filter_map(|m| epoch_of(&m.key, layout::EPOCHS_PREFIX)).max();
    match (newest, granted) {
        (Some(newest), Some(granted)) if newest > granted => Err(Error::Invalid(format!(
            "this group's passphrase was retired: key epoch {newest} was started without one; ask a member for the new passphrase, or init without one and have a member run `dimple trust` for this device"
        ))),
        _ => Ok(()),
    }
}

/// The group's keys opened with the passphrase, before anything local changes (a
/// wrong passphrase leaves no trace).
pub async fn unlock(store: &dyn Store, passphrase: &str) -> Result<Keyring> {
    let Some(group) = detect(store).await? else {
        return Err(Error::Invalid("this bucket holds no encrypted group (create one with `--encrypt`)".to_owned()));
    };
    let mut listed = list_all(store, &layout::grants_prefix(layout::PASSPHRASE), None).await?;
    if listed.is_empty() {
        return Err(Error::Invalid(
            "this group has no passphrase: init without one and ask a member to run `dimple trust` for this device"
                .to_owned(),
        ));
    }
    listed.sort_by(|a, b| b.key.cmp(&a.key)); // newest epoch first
    retired(store, &listed).await?;
    let mut derived: Vec<(Kdf, [u8; 32])> = Vec::new();
    let mut found: Option<Keyring> = None;
    for meta in listed {
        // Older grants' epochs are in the newest ring, unless two members started
        // epochs at the same moment: then each grant holds its own, and both are
        // needed to read what was sealed under each.
        let epoch = layout::parse_id_key(&meta.key, &layout::grants_prefix(layout::PASSPHRASE));
        if let (Some(ring), Some(epoch)) = (&found, epoch) {
            if Uuid::parse_str(epoch).is_ok_and(|e| ring.get(&e).is_some()) {
                continue;
            }
        }
        let (bytes, _) = match get_bytes(store, &meta.key).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(g) = serde_json::from_slice::<PassphraseGrant>(&bytes) else { continue };
        if g.group != group || bytes.len() > MAX_JSON_BYTES {
            continue;
        }
        let wrapping = match derived.iter().find(|(k, _)| *k == g.kdf) {
            Some((_, w)) => *w,
            None => {
                let Ok(w) = derive(passphrase, &g.kdf, &meta.key) else { continue };
                derived.push((g.kdf.clone(), w));
                w
            }
        };
        if let Some(plain) = aead_open(&wrapping, &grant_aad(&meta.key, &group), &g.nonce, &g.wrapped) {
            let ring = unpayload(&plain, &group, &meta.key)?;
            match &mut found {
                None if !ring.is_empty() => found = Some(ring),
                None => {}
                // Taken in on the terms of a member's grant.
                Some(held) if not_from_a_member(held, &ring).is_none() => {
                    for (e, k) in ring.epochs() {
                        held.insert(*e, k.clone());
                    }
                }
                Some(_) => {}
            }
        }
    }
    found.ok_or_else(|| Error::Invalid("wrong passphrase for this bucket's encrypted group".to_owned()))
}
