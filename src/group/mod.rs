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
use crate::problems;
use crate::replica::Replica;
use crate::seal::{GroupKey, Keyring};
use crate::secret;
use crate::store::{get_bytes, list_all, Got, PutMode, Store, StoreError};
use crate::trust::{self, Signed};
use crate::FORMAT;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;
use x25519_dalek::{PublicKey, StaticSecret};

mod epochs;

/// `ZV_METADATA`: the id of the encrypted group this replica belongs to.
pub const GROUP_META: &str = "group";
/// `ZV_METADATA`: set once the bucket was found to hold no encrypted group.
const CHECKED_META: &str = "group.checked_plain";
/// `ZV_METADATA`: set once this member's card is in the bucket.
const CARD_META: &str = "group.card_published";

/// Argon2id cost of a new passphrase grant: 64 MiB, 3 passes (RFC 9106's second
/// recommended setting). Stored with each grant, so it can grow later.
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
pub const KDF_ITERATIONS: u32 = 3;
/// Parameters read from the bucket above these are refused: a hostile grant must
/// not make a device spend gigabytes or minutes.
const KDF_MAX_MEMORY_KIB: u32 = 1024 * 1024;
const KDF_MAX_ITERATIONS: u32 = 16;

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

/// What is wrapped: every epoch's key the granter holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    group: String,
    epochs: BTreeMap<String, String>,
}

/// The keyring file, `<db>.dimple/group.keys`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    group: String,
    epochs: BTreeMap<String, String>,
}

fn keys_to_map(ring: &Keyring) -> BTreeMap<String, String> {
    ring.epochs().map(|(e, k)| (e.to_string(), B64.encode(k.0))).collect()
}

fn ring_from_map(group: &str, epochs: &BTreeMap<String, String>) -> Option<Keyring> {
    let mut ring = Keyring::new(Uuid::parse_str(group).ok()?);
    for (e, k) in epochs {
        let key: [u8; 32] = B64.decode(k).ok()?.try_into().ok()?;
        ring.insert(Uuid::parse_str(e).ok()?, GroupKey(key));
    }
    Some(ring)
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

fn aead_seal(key: &[u8; 32], aad: &[u8], msg: &[u8]) -> (String, String) {
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt((&nonce).into(), Payload { msg, aad })
        .expect("XChaCha20-Poly1305 seals any length we use");
    (B64.encode(nonce), B64.encode(ct))
}

fn aead_open(key: &[u8; 32], aad: &[u8], nonce: &str, wrapped: &str) -> Option<Vec<u8>> {
    let nonce: [u8; 24] = B64.decode(nonce).ok()?.try_into().ok()?;
    let ct = B64.decode(wrapped).ok()?;
    XChaCha20Poly1305::new(key.into()).decrypt((&nonce).into(), Payload { msg: &ct, aad }).ok()
}

/// The key that wraps to `recipient`: HKDF-SHA256 over the X25519 agreement, salted
/// with both public keys.
fn wrap_key(shared: &[u8; 32], ephemeral: &PublicKey, recipient: &PublicKey) -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared)
        .expand(b"dimple grant/1", &mut out)
        .expect("32 bytes is a valid HKDF length");
    out
}

fn payload(ring: &Keyring) -> Vec<u8> {
    serde_json::to_vec(&Wrapped { group: ring.group.to_string(), epochs: keys_to_map(ring) }).expect("serializes")
}

fn unpayload(bytes: &[u8], group: &str, origin: &str) -> Result<Keyring> {
    let w: Wrapped = serde_json::from_slice(bytes).map_err(|e| Error::bad(origin, format!("malformed keys: {e}")))?;
    if w.group != group {
        return Err(Error::bad(origin, format!("holds the keys of group {}, not {group}", w.group)));
    }
    ring_from_map(&w.group, &w.epochs).ok_or_else(|| Error::bad(origin, "malformed keys"))
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

fn grant_aad(key: &str, group: &str) -> Vec<u8> {
    format!("dimple grant/1\0{group}\0{key}").into_bytes()
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

async fn put_passphrase_grant(store: &dyn Store, ring: &Keyring, passphrase: &str) -> Result<()> {
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

/// Makes `r` a member holding `ring`: keys saved, its card published.
pub async fn adopt(r: &mut Replica, store: &dyn Store, ring: Keyring) -> Result<()> {
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

/// Takes in grants addressed to this device for epochs it does not hold.
async fn accept_grants(r: &mut Replica, store: &dyn Store, group: &str) -> Result<()> {
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
fn not_from_a_member(held: &Keyring, granted: &Keyring) -> Option<&'static str> {
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
async fn put_grant(r: &mut Replica, store: &dyn Store, ring: &Keyring, card: &Card, revoked: &[String]) -> Result<()> {
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

/// Before a member passes keys on (a grant, a new epoch): every epoch granted
/// to it since it last pulled. It passes on the keys it holds, so a device it
/// grants would lack the newer epoch, and so would the passphrase grant a new
/// epoch writes; and the cards members sealed under that epoch would not open
/// for it, so a new epoch would leave them out.
async fn take_new_grants(r: &mut Replica, store: &dyn Store) -> Result<()> {
    match group_of(r)? {
        Some(group) => accept_grants(r, store, &group).await,
        None => Ok(()),
    }
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
