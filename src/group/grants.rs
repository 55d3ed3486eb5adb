//! A device's grant, `grants/<replica>/<epoch>.json`: the group's keys wrapped
//! to one device's exchange key and signed by the member that granted them,
//! naming the devices its epoch shuts out. Written by `dimple trust` and by a
//! new epoch; taken in on every sync, on the checks that keep an outsider's or
//! a revoked device's grant out.

use super::wrap::{aead_open, aead_seal, grant_aad, payload, unpayload, wrap_key};
use super::{
    epochs, exchange_public, exchange_secret, group_of, keyring, member_keyring, parse_card, save_keyring, sign,
    verified, Card,
};
use crate::clock;
use crate::error::{Error, Result};
use crate::layout;
use crate::peers::{self, Trust};
use crate::problems;
use crate::replica::Replica;
use crate::seal::Keyring;
use crate::store::{get_bytes, list_all, PutMode, Store, StoreError};
use crate::trust;
use crate::FORMAT;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    format: i64,
    group: String,
    /// The newest epoch among the keys inside.
    epoch: String,
    member: String,
    granter: String,
    granter_key: String,
    ephemeral: String,
    nonce: String,
    wrapped: String,
    /// Every replica the granter holds revoked (older builds: those removed with
    /// this epoch): the devices the epoch shuts out ([`epochs`]).
    revoked: Vec<String>,
    created_at: String,
}

/// Takes in grants addressed to this device for epochs it does not hold.
pub(super) async fn accept_grants(r: &mut Replica, store: &dyn Store, group: &str) -> Result<()> {
    let me = r.id().to_owned();
    let mut ring = keyring(r)?;
    let had = ring.len();
    let now = clock::rfc3339(r.opts.clock.now_ms());
    // A forked device keeps the exchange key of the id it forked from, so the
    // grants to that id open here too: an epoch started before this device's new
    // card was out reaches it that way.
    let origin = crate::meta::get(&r.sync, crate::fork::FORKED_FROM)?.filter(|id| layout::is_canonical_uuid(id));
    let mut listed = Vec::new();
    for addressee in std::iter::once(me.clone()).chain(origin) {
        for meta in list_all(store, &layout::grants_prefix(&addressee), None).await? {
            listed.push((addressee.clone(), meta));
        }
    }
    for (addressee, meta) in listed {
        let Some(epoch) = layout::parse_id_key(&meta.key, &layout::grants_prefix(&addressee)) else { continue };
        if Uuid::parse_str(epoch).is_ok_and(|e| ring.get(&e).is_some()) {
            continue;
        }
        let bytes = match get_bytes(store, &meta.key).await {
            Ok((b, _)) => b,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        match open_grant(r, &ring, &bytes, &meta.key, group, epoch, &addressee) {
            // An epoch that shuts this device out is not taken in through its origin.
            Ok((_, revoked, _)) if addressee != me && revoked.contains(&me) => {}
            Ok((granted, revoked, granter)) => {
                // A grant to this device naming it revoked contradicts itself:
                // keeping that would block this device, and name it in its own grants.
                let revoked: Vec<String> = revoked.into_iter().filter(|id| *id != me).collect();
                let (newest, _) = granted.newest().expect("a grant's epoch is among its keys");
                epochs::record(&r.sync, newest, &revoked, granted.epochs().map(|(e, _)| e))?;
                for (e, k) in granted.epochs() {
                    ring.insert(*e, k.clone());
                }
                for id in revoked.iter().filter(|id| **id != me && layout::is_canonical_uuid(id)) {
                    peers::revoke(&r.sync, id, &now)?;
                }
                problems::clear(&r.sync, &granter)?;
            }
            Err(Error::BadData { origin, reason }) => {
                problems::record(&r.sync, &me, &origin, &reason, &now)?;
            }
            Err(e) => return Err(e),
        }
    }
    if ring.len() != had {
        save_keyring(r, &ring)?;
        r.codec = None;
    }
    Ok(())
}

/// Opens and checks one grant; returns its keys, its revocations and its granter.
fn open_grant(
    r: &Replica,
    ring: &Keyring,
    bytes: &[u8],
    key: &str,
    group: &str,
    epoch: &str,
    addressee: &str,
) -> Result<(Keyring, Vec<String>, String)> {
    let g: Grant = verified(bytes, key, |g: &Grant| &g.granter_key)?;
    if g.group != group || g.member != addressee || g.epoch != epoch || g.format != FORMAT {
        return Err(Error::bad(key, "grant is for another group, device or epoch"));
    }
    if !layout::is_canonical_uuid(&g.granter) {
        return Err(Error::bad(key, "grant names a malformed granter"));
    }
    match peers::get(&r.sync, &g.granter)? {
        Some(p) if p.trust == Trust::Revoked => {
            return Err(Error::bad(key, format!("granted by {}, which is revoked here", g.granter)))
        }
        Some(p) if p.public_key.as_deref().is_some_and(|k| k != g.granter_key) => {
            return Err(Error::bad(
                key,
                format!("granted by {} with a key other than the one pinned for it", g.granter),
            ))
        }
        _ => {}
    }
    let ephemeral: [u8; 32] = B64
        .decode(&g.ephemeral)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::bad(key, "ephemeral key is not 32 bytes"))?;
    let ephemeral = PublicKey::from(ephemeral);
    let secret = exchange_secret(r)?;
    let shared = secret.diffie_hellman(&ephemeral);
    if !shared.was_contributory() {
        return Err(Error::bad(key, "ephemeral key is degenerate"));
    }
    let wrapping = wrap_key(shared.as_bytes(), &ephemeral, &PublicKey::from(&secret));
    let plain = aead_open(&wrapping, &grant_aad(key, group), &g.nonce, &g.wrapped)
        .ok_or_else(|| Error::bad(key, "grant does not open with this device's exchange key"))?;
    let granted = unpayload(&plain, group, key)?;
    if granted.newest().map(|(e, _)| e.to_string()).as_deref() != Some(epoch) {
        return Err(Error::bad(key, "grant's epoch is not the newest of the keys it carries"));
    }
    if let Some(why) = not_from_a_member(ring, &granted) {
        return Err(Error::bad(key, why));
    }
    // An epoch far in the future would sort above every epoch a rekey could start
    // within the drift limit, and so could never be closed.
    let limit = r.opts.clock.now_ms().saturating_add(r.opts.max_drift_ms);
    for (e, _) in granted.epochs().filter(|(e, _)| ring.get(e).is_none()) {
        if clock::stamp_of(e).ms > limit {
            return Err(Error::bad(
                key,
                format!("grant carries key epoch {e}, which lies in the future beyond the drift limit"),
            ));
        }
    }
    if ring.is_empty() {
        // First grant: its granter is trusted on first use.
        peers::seen(&r.sync, &g.granter, &clock::rfc3339(r.opts.clock.now_ms()))?;
        if peers::get(&r.sync, &g.granter)?.is_some_and(|p| p.public_key.is_none()) {
            peers::pin(&r.sync, &g.granter, &g.granter_key, "")?;
        }
    }
    Ok((granted, g.revoked, g.granter))
}

/// Why keys `granted` to a device holding `held` cannot come from a member, if
/// they cannot. Someone outside the group cannot know the group's first key,
/// which every member holds, and a member's keys are the same bytes everywhere.
/// The keys may lack epochs `held` has: a member that started an epoch at the
/// same moment as another did not know the other's ([`epochs`] keeps what
/// each shuts out).
pub(super) fn not_from_a_member(held: &Keyring, granted: &Keyring) -> Option<&'static str> {
    if held.epochs().next().is_some_and(|(first, k)| granted.get(first) != Some(k)) {
        return Some("grant does not carry the group's first key: not from a member");
    }
    if held.epochs().any(|(e, k)| granted.get(e).is_some_and(|g| g != k)) {
        return Some("grant carries another key for an epoch this device holds: not from a member");
    }
    None
}

/// Wraps every key of `ring` to `card`'s exchange key as `grants/<member>/<epoch>.json`,
/// naming `revoked`: every device the newest epoch shuts out, so that a device
/// granted later knows them too.
pub(super) async fn put_grant(
    r: &mut Replica,
    store: &dyn Store,
    ring: &Keyring,
    card: &Card,
    revoked: &[String],
) -> Result<()> {
    let (epoch, _) = ring.newest().expect("members hold a key");
    let key = layout::grant_key(&card.replica, &epoch.to_string());
    let recipient = exchange_public(card, &layout::member_key(&card.replica))?;
    let ephemeral = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&recipient);
    if !shared.was_contributory() {
        return Err(Error::bad(layout::join_key(&card.replica), "exchange key is degenerate"));
    }
    let wrapping = wrap_key(shared.as_bytes(), &ephemeral_public, &recipient);
    let group = ring.group.to_string();
    let (nonce, wrapped) = aead_seal(&wrapping, &grant_aad(&key, &group), &payload(ring));
    let body = Grant {
        format: FORMAT,
        group,
        epoch: epoch.to_string(),
        member: card.replica.clone(),
        granter: r.id().to_owned(),
        granter_key: r.public_key()?,
        ephemeral: B64.encode(ephemeral_public.as_bytes()),
        nonce,
        wrapped,
        revoked: revoked.to_vec(),
        created_at: clock::rfc3339(r.opts.clock.now_ms()),
    };
    let bytes = sign(r, body)?;
    store.put(&key, bytes, PutMode::Overwrite).await?;
    Ok(())
}

/// What `dimple trust` did for a waiting device.
#[derive(Debug, Clone, Serialize)]
pub struct Granted {
    pub replica: String,
    pub key_fingerprint: String,
}

/// Grants the group's keys to the waiting device whose id starts with `id`.
pub async fn grant(r: &mut Replica, store: &dyn Store, id: &str) -> Result<Granted> {
    take_new_grants(r, store).await?;
    let ring = member_keyring(r)?;
    // The device would hold an epoch a revoked device may hold too.
    if let Some(why) = epochs::block(&r.sync, &ring)? {
        return Err(Error::Invalid(format!("cannot grant yet: {why}")));
    }
    let revoked: Vec<String> = epochs::revoked_here(&r.sync)?.into_iter().collect();
    let mut matching = Vec::new();
    for meta in list_all(store, layout::JOIN_PREFIX, None).await? {
        if let Some(full) = layout::parse_id_key(&meta.key, layout::JOIN_PREFIX) {
            if full.starts_with(id) {
                matching.push(full.to_owned());
            }
        }
    }
    let full = match matching.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::Invalid(format!(
                "no device {id:?} is waiting for the group key (its `dimple init` publishes the request)"
            )))
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{id:?} matches {} waiting devices; give more of the id",
                matching.len()
            )))
        }
    };
    let key = layout::join_key(&full);
    let (bytes, _) = get_bytes(store, &key).await?;
    let c = parse_card(&bytes, &key, &full)?;
    let now = clock::rfc3339(r.opts.clock.now_ms());
    peers::seen(&r.sync, &full, &now)?;
    match peers::get(&r.sync, &full)?.and_then(|p| p.public_key) {
        Some(pinned) if pinned != c.public_key => {
            return Err(Error::bad(&key, "join request carries a key other than the one pinned for this replica"))
        }
        Some(_) => {}
        None => peers::pin(&r.sync, &full, &c.public_key, "")?,
    }
    put_grant(r, store, &ring, &c, &revoked).await?;
    peers::set_trust(&r.sync, &full, Trust::Trusted)?;
    Ok(Granted { replica: full, key_fingerprint: trust::fingerprint(&c.public_key) })
}

/// Before a member passes keys on (a grant, a new epoch): every epoch granted
/// to it since it last pulled. It passes on the keys it holds, so a device it
/// grants would lack the newer epoch, and so would the passphrase grant a new
/// epoch writes; and the cards members sealed under that epoch would not open
/// for it, so a new epoch would leave them out.
pub(super) async fn take_new_grants(r: &mut Replica, store: &dyn Store) -> Result<()> {
    match group_of(r)? {
        Some(group) => accept_grants(r, store, &group).await,
        None => Ok(()),
    }
}
