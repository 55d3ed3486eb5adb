//! Encrypted groups: who holds the group's keys, and how a device comes to hold them.
//!
//! A group key (256 random bits) per key epoch seals every object the group
//! stores ([`crate::seal`]). The keys reach a device in one of three ways, each an
//! object in the bucket that only the right holder can open:
//! - `grants/passphrase/<epoch>.json`: the keys sealed under a key Argon2id derives
//!   from the group's passphrase (its parameters and salt stored beside them);
//! - `grants/<replica>/<epoch>.json`: the keys wrapped to one device's X25519
//!   exchange key (an ephemeral X25519 agreement, HKDF-SHA256, XChaCha20-Poly1305),
//!   signed by the member that granted them;
//! - the device that created the group, or started a new epoch, holds them already.
//!
//! A device without the keys publishes a signed join request (`join/<id>.json`:
//! its public keys, no name) and waits; `dimple trust` on a member grants. Every
//! member publishes a card sealed with the group key (`members/<id>.json`), which
//! is how `rekey` finds whom to wrap a new epoch to: a card only a member could
//! have sealed. A grant is accepted only when it carries the group's first key
//! (an outsider cannot know it) and the same bytes for every other key this
//! device holds, and comes from a granter that is not revoked here; the first
//! grant a waiting device receives is trusted on first use, and its granter's
//! fingerprint is shown. Epochs two members started at once both come in
//! ([`epochs`] keeps a revoked device from being sealed to).
//!
//! This file holds the keyring, joining, member cards and new epochs; `grants`
//! a device's grants, `passphrase` the passphrase grant, `wrap` the
//! cryptography both share, and `epochs` which devices each epoch shuts out.
//!
//! Locally the keys live in `<db>.dimple/group.keys` and the exchange key in
//! `<db>.dimple/exchange.key`, both owner-only, never uploaded unwrapped, never
//! logged. `ZV_METADATA.group` names the group: a replica with it set never falls
//! back to plaintext, whatever happens to the key file.

use crate::clock;
use crate::codec::{Codec, Kind};
use crate::error::{Error, Result};
use crate::head::MAX_JSON_BYTES;
use crate::layout;
use crate::peers::{self, Trust};
use crate::replica::Replica;
use crate::seal::{GroupKey, Keyring};
use crate::secret;
use crate::store::{get_bytes, list_all, Got, PutMode, Store, StoreError};
use crate::trust::{self, Signed};
use crate::FORMAT;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;
use x25519_dalek::{PublicKey, StaticSecret};

mod epochs;
mod grants;
mod passphrase;
mod wrap;

use grants::{accept_grants, put_grant, take_new_grants};
pub use grants::{grant, Granted};
use passphrase::put_passphrase_grant;
pub use passphrase::{unlock, KDF_ITERATIONS, KDF_MEMORY_KIB};
use wrap::{keys_to_map, ring_from_map};

/// `ZV_METADATA`: the id of the encrypted group this replica belongs to.
pub const GROUP_META: &str = "group";
/// `ZV_METADATA`: set once the bucket was found to hold no encrypted group.
const CHECKED_META: &str = "group.checked_plain";
/// `ZV_METADATA`: set once this member's card is in the bucket.
const CARD_META: &str = "group.card_published";

/// `group.json`: the bucket holds an encrypted group, and which.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub format: i64,
    pub group: String,
}

/// A device's public keys: a join request (in the clear) or a member card (sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub format: i64,
    pub replica: String,
    /// ed25519, the key its heads are signed with.
    pub public_key: String,
    /// X25519, the key the group's keys are wrapped to.
    pub exchange_key: String,
    pub created_at: String,
}

/// The keyring file, `<db>.dimple/group.keys`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    group: String,
    epochs: BTreeMap<String, String>,
}

/// The group this replica belongs to, if it is in an encrypted one.
pub fn group_of(r: &Replica) -> Result<Option<String>> {
    crate::meta::get(&r.sync, GROUP_META)
}

/// The keys this device holds (empty while it waits for a grant).
pub fn keyring(r: &Replica) -> Result<Keyring> {
    let Some(group) = group_of(r)? else {
        return Err(Error::Invalid(format!("{} is not in an encrypted group", r.path().display())));
    };
    let path = r.side().group_keys();
    match secret::read(&path, "the group key file")? {
        None => {
            Ok(Keyring::new(Uuid::parse_str(&group).map_err(|_| Error::Invalid(format!("bad group id {group:?}")))?))
        }
        Some(text) => {
            let file: KeyFile = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: not a dimple key file: {e}", path.display())))?;
            if file.group != group {
                return Err(Error::Invalid(format!(
                    "{}: holds the keys of group {}, but this replica is in group {group}",
                    path.display(),
                    file.group
                )));
            }
            ring_from_map(&file.group, &file.epochs)
                .ok_or_else(|| Error::Invalid(format!("{}: not a dimple key file", path.display())))
        }
    }
}

fn save_keyring(r: &Replica, ring: &Keyring) -> Result<()> {
    let file = KeyFile { group: ring.group.to_string(), epochs: keys_to_map(ring) };
    secret::write(&r.side().group_keys(), &serde_json::to_string_pretty(&file).expect("serializes"))
}

/// This device's X25519 key, made on first use.
fn exchange_secret(r: &Replica) -> Result<StaticSecret> {
    let path = r.side().exchange_key();
    if let Some(text) = secret::read(&path, "the exchange key")? {
        let bytes: [u8; 32] = B64
            .decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Invalid(format!("{}: not a dimple exchange key", path.display())))?;
        return Ok(StaticSecret::from(bytes));
    }
    let key = StaticSecret::random_from_rng(rand::rngs::OsRng);
    secret::write(&path, &B64.encode(key.to_bytes()))?;
    Ok(key)
}

fn card(r: &mut Replica) -> Result<Card> {
    Ok(Card {
        format: FORMAT,
        replica: r.id().to_owned(),
        public_key: r.public_key()?,
        exchange_key: B64.encode(PublicKey::from(&exchange_secret(r)?).as_bytes()),
        created_at: clock::rfc3339(r.opts.clock.now_ms()),
    })
}

fn sign<T: Serialize>(r: &mut Replica, body: T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(&Signed::new(r.signing_key()?, body)).expect("serializes"))
}

/// Parses a signed object and checks its signature against the key it names.
fn verified<T: Serialize + for<'de> Deserialize<'de>>(
    bytes: &[u8],
    origin: &str,
    key_of: impl Fn(&T) -> &str,
) -> Result<T> {
    if bytes.len() > MAX_JSON_BYTES {
        return Err(Error::bad(origin, format!("{} bytes, more than the {MAX_JSON_BYTES} allowed", bytes.len())));
    }
    let s: Signed<T> = serde_json::from_slice(bytes).map_err(|e| Error::bad(origin, format!("malformed: {e}")))?;
    s.verify(key_of(&s.body)).map_err(|e| Error::bad(origin, format!("signature: {e}")))?;
    Ok(s.body)
}

fn parse_card(bytes: &[u8], origin: &str, replica: &str) -> Result<Card> {
    let c: Card = verified(bytes, origin, |c: &Card| &c.public_key)?;
    if c.replica != replica || c.format != FORMAT {
        return Err(Error::bad(
            origin,
            format!("card names replica {} (format {}), stored as {replica}", c.replica, c.format),
        ));
    }
    Ok(c)
}

fn exchange_public(card: &Card, origin: &str) -> Result<PublicKey> {
    let b: [u8; 32] = B64
        .decode(&card.exchange_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::bad(origin, "exchange key is not 32 bytes of base64"))?;
    Ok(PublicKey::from(b))
}

/// What the bucket says about encryption.
pub async fn detect(store: &dyn Store) -> Result<Option<String>> {
    match store.get(layout::GROUP, None).await {
        Ok(Got::Found { bytes, .. }) => {
            let g: GroupFile = serde_json::from_slice(&bytes)
                .ok()
                .filter(|g: &GroupFile| g.format == FORMAT && Uuid::parse_str(&g.group).is_ok())
                .ok_or_else(|| Error::bad(layout::GROUP, "not a dimple group file"))?;
            Ok(Some(g.group))
        }
        Ok(Got::NotModified) | Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Refuses a bucket that cannot become a new encrypted group: one that holds a
/// group already, or replicas in the clear. Checked before anything local changes.
pub async fn ensure_empty(store: &dyn Store) -> Result<()> {
    if detect(store).await?.is_some() {
        return Err(Error::Invalid(
            "this bucket already holds an encrypted group: join it (init without --encrypt) instead".to_owned(),
        ));
    }
    let (in_clear, _) = store.list_page(layout::REPLICAS_PREFIX, None).await?;
    if !in_clear.is_empty() {
        return Err(Error::Invalid(
            "this bucket already holds replicas in the clear; an encrypted group needs a new bucket or prefix (`dimple encrypt DB --to URL` seeds one, docs/trust.md)".to_owned(),
        ));
    }
    Ok(())
}

/// Writes `group.json` (create-only) and the passphrase grant of a new group.
async fn start(r: &mut Replica, store: &dyn Store, passphrase: Option<&str>) -> Result<Keyring> {
    ensure_empty(store).await?;
    let group = r.new_id()?;
    let epoch = r.new_id()?;
    let mut ring = Keyring::new(group);
    ring.insert(epoch, GroupKey::random());
    let file = GroupFile { format: FORMAT, group: group.to_string() };
    match store.put(layout::GROUP, serde_json::to_vec_pretty(&file).expect("serializes"), PutMode::Create).await {
        Ok(_) => {}
        Err(StoreError::PreconditionFailed(_)) => {
            return Err(Error::Invalid("another device created a group in this bucket at the same time".to_owned()))
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(p) = passphrase {
        put_passphrase_grant(store, &ring, p).await?;
    }
    Ok(ring)
}

/// Starts an encrypted group in an empty bucket (or prefix), with `r` its first
/// member; with a passphrase, devices that know it join by themselves.
pub async fn create(r: &mut Replica, store: &dyn Store, passphrase: Option<&str>) -> Result<String> {
    if group_of(r)?.is_some() {
        return Err(Error::Invalid(format!("{} is already in an encrypted group", r.path().display())));
    }
    let ring = start(r, store, passphrase).await?;
    let group = ring.group.to_string();
    adopt(r, store, ring).await?;
    Ok(group)
}

/// `dimple encrypt`: a new encrypted group in `store` (an empty bucket or prefix),
/// seeded with a snapshot of `r`'s current state. `r` itself stays in its group;
/// devices move by cloning the new one with the passphrase.
pub async fn seed(
    r: &mut Replica,
    store: &dyn Store,
    passphrase: &str,
) -> Result<(String, crate::snapshot::CompactReport)> {
    let ring = start(r, store, Some(passphrase)).await?;
    let group = ring.group.to_string();
    let report = crate::snapshot::seed(r, store, &Codec::Sealed(Arc::new(ring))).await?;
    Ok((group, report))
}

/// Makes `r` a member holding `ring`: keys saved, the revocations its epochs'
/// notices name taken in (it joined without a grant naming them), its card
/// published.
pub async fn adopt(r: &mut Replica, store: &dyn Store, ring: Keyring) -> Result<()> {
    // First: a clone cut short here adopts again when run again, which it does
    // not once the group is set.
    epochs::take_in(r, store, &ring).await?;
    save_keyring(r, &ring)?;
    crate::meta::set(&r.sync, GROUP_META, &ring.group.to_string())?;
    r.codec = Some(Codec::Sealed(Arc::new(ring)));
    publish_card(r, store).await
}

/// Joins the group in the bucket without its keys: a signed join request for a
/// member to grant. Returns the key fingerprint people compare.
pub async fn request(r: &mut Replica, store: &dyn Store, group: &str) -> Result<String> {
    crate::meta::set(&r.sync, GROUP_META, group)?;
    let c = card(r)?;
    let fingerprint = trust::fingerprint(&c.public_key);
    let bytes = sign(r, c)?;
    store.put(&layout::join_key(r.id()), bytes, PutMode::Overwrite).await?;
    Ok(fingerprint)
}

async fn publish_card(r: &mut Replica, store: &dyn Store) -> Result<()> {
    if crate::meta::get(&r.sync, CARD_META)?.is_some() {
        return Ok(());
    }
    let key = layout::member_key(r.id());
    let c = card(r)?;
    let signed = sign(r, c)?;
    let bytes = r.codec()?.encode(Kind::Member, &key, signed)?;
    store.put(&key, bytes, PutMode::Overwrite).await?;
    crate::meta::set(&r.sync, CARD_META, &clock::rfc3339(r.opts.clock.now_ms()))?;
    // Granted: the request has done its job.
    match store.delete(&layout::join_key(r.id())).await {
        Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A fork's new id publishes its own card (see [`crate::fork`]).
pub(crate) fn forget_card(conn: &rusqlite::Connection) -> Result<()> {
    crate::meta::delete(conn, CARD_META)
}

/// Records that the bucket was found to hold no encrypted group (`init` looked).
pub fn mark_plain(r: &Replica) -> Result<()> {
    crate::meta::set(&r.sync, CHECKED_META, &clock::rfc3339(r.opts.clock.now_ms()))
}

/// The codec to read and write the bucket with, settled against the bucket: a
/// plaintext replica checks once that the bucket holds no encrypted group; a
/// member takes in new grants (`refresh`: every pull, so a rekey is followed at
/// once) and is told plainly when it holds no key yet.
pub async fn prepare(r: &mut Replica, store: &dyn Store, refresh: bool) -> Result<Codec> {
    let Some(group) = group_of(r)? else {
        if crate::meta::get(&r.sync, CHECKED_META)?.is_none() {
            if detect(store).await?.is_some() {
                return Err(Error::Invalid(format!(
                    "the bucket holds an encrypted group, but {} is not in it: make a new replica with `dimple init NEW.db --bucket URL --passphrase-file FILE` (or without a passphrase, then `dimple trust` on a member)",
                    r.path().display()
                )));
            }
            crate::meta::set(&r.sync, CHECKED_META, &clock::rfc3339(r.opts.clock.now_ms()))?;
        }
        return Ok(Codec::Plain);
    };
    if refresh || r.codec.is_none() {
        accept_grants(r, store, &group).await?;
    }
    let codec = r.codec()?;
    // A card waits while sealing is blocked: a pull must go on (it may bring
    // the epoch that unblocks it).
    if !matches!(&codec, Codec::Sealed(ring) if ring.sealing_blocked().is_some()) {
        publish_card(r, store).await?;
    }
    Ok(codec)
}

/// A new epoch's id. Every device seals under the epoch of greatest id it holds,
/// so a new epoch must sort above every epoch in the ring: one started by a
/// member whose clock is behind another's would otherwise sort below an epoch the
/// devices it revokes hold, and nobody would seal under it. Taken just above the
/// newest rather than by moving the clock there: an epoch from a member whose
/// clock runs far ahead must not carry this replica's change ids past the
/// others' drift limit.
fn next_epoch(r: &mut Replica, ring: &Keyring) -> Result<Uuid> {
    let id = r.new_id()?;
    Ok(match ring.newest() {
        Some((newest, _)) if *newest >= id => clock::after(newest, id.as_u128() as u32),
        _ => id,
    })
}

fn member_keyring(r: &Replica) -> Result<Keyring> {
    let ring = keyring(r)?;
    if ring.is_empty() {
        return Err(awaiting(r));
    }
    Ok(ring)
}

fn awaiting(r: &Replica) -> Error {
    Error::AwaitingKey(format!(
        "waiting for a member: this device has not been granted the group key yet; on a member, run `dimple trust <its db> {}`",
        r.id()
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct Rekeyed {
    pub epoch: String,
    pub granted: Vec<String>,
    pub revoked: Vec<String>,
    pub passphrase: bool,
}

/// Starts a new key epoch, wrapped to every member except the revoked ones (and to
/// `passphrase` when given: without one the new epoch has no passphrase grant, so a
/// revoked device that knew the old passphrase gains nothing).
pub async fn rekey(r: &mut Replica, store: &dyn Store, revoke: &[String], passphrase: Option<&str>) -> Result<Rekeyed> {
    take_new_grants(r, store).await?;
    let mut ring = member_keyring(r)?;
    let me = r.id().to_owned();
    let mut revoked = Vec::new();
    let mut cards = Vec::new();
    let codec = r.codec()?;
    for meta in list_all(store, layout::MEMBERS_PREFIX, None).await? {
        let Some(id) = layout::parse_id_key(&meta.key, layout::MEMBERS_PREFIX) else { continue };
        let Ok((bytes, _)) = get_bytes(store, &meta.key).await else { continue };
        // A card that does not open was not sealed by a member.
        let Ok(plain) = codec.decode(Kind::Member, &meta.key, &bytes) else { continue };
        let Ok(c) = parse_card(&plain, &meta.key, id) else { continue };
        cards.push(c);
    }
    for id in revoke {
        let known: Vec<&Card> = cards.iter().filter(|c| c.replica.starts_with(id.as_str())).collect();
        let full = match known.as_slice() {
            [one] => one.replica.clone(),
            _ if layout::is_canonical_uuid(id) => id.clone(),
            [] => return Err(Error::Invalid(format!("no member {id:?} in this group (see `dimple replicas`)"))),
            _ => return Err(Error::Invalid(format!("{id:?} matches {} members; give more of the id", known.len()))),
        };
        if full == me {
            return Err(Error::Invalid("a device cannot revoke itself".to_owned()));
        }
        revoked.push(full);
    }
    // The new epoch's grants name every device revoked so far, not only the new
    // ones: a member that also holds an epoch started at the same moment learns
    // that this one shuts them all out (`epochs`).
    let mut shut_out = epochs::revoked_here(&r.sync)?;
    shut_out.extend(revoked.iter().cloned());
    let shut_out: Vec<String> = shut_out.into_iter().collect();
    let knew: Vec<Uuid> = ring.epochs().map(|(e, _)| *e).collect();
    let epoch = next_epoch(r, &ring)?;
    ring.insert(epoch, GroupKey::random());
    let mut granted = Vec::new();
    for c in &cards {
        if c.replica == me || revoked.contains(&c.replica) {
            continue;
        }
        match peers::get(&r.sync, &c.replica)? {
            Some(p) if p.trust == Trust::Revoked => continue,
            Some(p) if p.public_key.as_deref().is_some_and(|k| k != c.public_key) => continue,
            _ => {}
        }
        put_grant(r, store, &ring, c, &shut_out).await?;
        granted.push(c.replica.clone());
    }
    // To this device too, from its own card (not the bucket's): a copy of its
    // database that forks keeps its exchange key and takes the epoch in through
    // the grants to the id it forked from (`accept_grants`), though its own new
    // id has no card yet.
    let own = card(r)?;
    put_grant(r, store, &ring, &own, &shut_out).await?;
    if let Some(p) = passphrase {
        put_passphrase_grant(store, &ring, p).await?;
    }
    epochs::publish(store, &ring, &epoch, &shut_out).await?;
    let now = clock::rfc3339(r.opts.clock.now_ms());
    for id in &revoked {
        peers::revoke(&r.sync, id, &now)?;
    }
    // Only now: if a grant failed above, nobody seals under an epoch others lack.
    epochs::record(&r.sync, &epoch, &shut_out, knew.iter())?;
    save_keyring(r, &ring)?;
    r.codec = Some(Codec::Sealed(Arc::new(ring)));
    Ok(Rekeyed { epoch: epoch.to_string(), granted, revoked, passphrase: passphrase.is_some() })
}

/// What `status` says about encryption.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub key_epochs: usize,
    pub newest_epoch: Option<String>,
    /// Holds no key yet: waiting for a member's `dimple trust`.
    pub waiting_for_member: bool,
    /// Why nothing may be sealed (pushed) until a member starts a new epoch:
    /// the newest epoch does not shut out every revoked device.
    pub sealing_blocked: Option<String>,
}

pub fn status(r: &Replica) -> Result<Option<GroupStatus>> {
    let Some(group) = group_of(r)? else { return Ok(None) };
    let ring = keyring(r)?;
    Ok(Some(GroupStatus {
        group,
        key_epochs: ring.len(),
        newest_epoch: ring.newest().map(|(e, _)| e.to_string()),
        waiting_for_member: ring.is_empty(),
        sealing_blocked: epochs::block(&r.sync, &ring)?,
    }))
}

impl Replica {
    /// The codec for this replica's bucket objects, from what is on the device
    /// (see [`prepare`] for the one settled against the bucket).
    pub(crate) fn codec(&mut self) -> Result<Codec> {
        if let Some(c) = &self.codec {
            return Ok(c.clone());
        }
        let codec = match group_of(self)? {
            None => Codec::Plain,
            Some(_) => {
                let mut ring = keyring(self)?;
                if ring.is_empty() {
                    return Err(awaiting(self));
                }
                ring.block_sealing(epochs::block(&self.sync, &ring)?);
                Codec::Sealed(Arc::new(ring))
            }
        };
        self.codec = Some(codec.clone());
        Ok(codec)
    }
}
