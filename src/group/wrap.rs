//! The cryptography of a grant, whoever it is for: what is wrapped (every
//! epoch's key), the AEAD that seals it, the key an X25519 agreement gives, and
//! the associated data that binds a grant to its object key and group. The
//! passphrase grant ([`super::passphrase`]) and a device's grant
//! ([`super::grants`]) differ only in where the wrapping key comes from.

use crate::error::{Error, Result};
use crate::seal::{GroupKey, Keyring};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;
use x25519_dalek::PublicKey;

/// What is wrapped: every epoch's key the granter holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    group: String,
    epochs: BTreeMap<String, String>,
}

pub(super) fn keys_to_map(ring: &Keyring) -> BTreeMap<String, String> {
    ring.epochs().map(|(e, k)| (e.to_string(), B64.encode(k.0))).collect()
}

pub(super) fn ring_from_map(group: &str, epochs: &BTreeMap<String, String>) -> Option<Keyring> {
    let mut ring = Keyring::new(Uuid::parse_str(group).ok()?);
    for (e, k) in epochs {
        let key: [u8; 32] = B64.decode(k).ok()?.try_into().ok()?;
        ring.insert(Uuid::parse_str(e).ok()?, GroupKey(key));
    }
    Some(ring)
}

pub(super) fn aead_seal(key: &[u8; 32], aad: &[u8], msg: &[u8]) -> (String, String) {
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt((&nonce).into(), Payload { msg, aad })
        .expect("XChaCha20-Poly1305 seals any length we use");
    (B64.encode(nonce), B64.encode(ct))
}

pub(super) fn aead_open(key: &[u8; 32], aad: &[u8], nonce: &str, wrapped: &str) -> Option<Vec<u8>> {
    let nonce: [u8; 24] = B64.decode(nonce).ok()?.try_into().ok()?;
    let ct = B64.decode(wrapped).ok()?;
    XChaCha20Poly1305::new(key.into()).decrypt((&nonce).into(), Payload { msg: &ct, aad }).ok()
}

/// The key that wraps to `recipient`: HKDF-SHA256 over the X25519 agreement, salted
/// with both public keys.
pub(super) fn wrap_key(shared: &[u8; 32], ephemeral: &PublicKey, recipient: &PublicKey) -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared)
        .expand(b"dimple grant/1", &mut out)
        .expect("32 bytes is a valid HKDF length");
    out
}

pub(super) fn payload(ring: &Keyring) -> Vec<u8> {
    serde_json::to_vec(&Wrapped { group: ring.group.to_string(), epochs: keys_to_map(ring) }).expect("serializes")
}

pub(super) fn unpayload(bytes: &[u8], group: &str, origin: &str) -> Result<Keyring> {
    let w: Wrapped = serde_json::from_slice(bytes).map_err(|e| Error::bad(origin, format!("malformed keys: {e}")))?;
    if w.group != group {
        return Err(Error::bad(origin, format!("holds the keys of group {}, not {group}", w.group)));
    }
    ring_from_map(&w.group, &w.epochs).ok_or_else(|| Error::bad(origin, "malformed keys"))
}

/// The associated data that binds a sealed object to its key in the bucket and
/// its group, for one purpose: a copy at another key, or of another kind, does
/// not open.
fn bound(purpose: &str, key: &str, group: &str) -> Vec<u8> {
    format!("dimple {purpose}/1\0{group}\0{key}").into_bytes()
}

pub(super) fn grant_aad(key: &str, group: &str) -> Vec<u8> {
    bound("grant", key, group)
}

/// An epoch's notice ([`super::epochs`]).
pub(super) fn notice_aad(key: &str, group: &str) -> Vec<u8> {
    bound("epoch", key, group)
}
