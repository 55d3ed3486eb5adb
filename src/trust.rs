//! Replica keys (the ed25519 key pair that signs this replica's heads) and whom
//! this replica trusts (the group's trust mode, each remote replica's trust state).
//!
//! The private key lives in a file beside the database (`<db>.dimple/replica.key`),
//! owner-only, and is never uploaded or logged; the public key is published in
//! `replica.json` and in every head. See docs/trust.md for the threat model.

use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn generate(path: &Path) -> Result<SigningKey> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut f =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(B64.encode(key.to_bytes()).as_bytes()).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(key)
}

pub fn load(path: &Path) -> Result<SigningKey> {
    let text = crate::secret::read(path, "replica key")?.ok_or_else(|| {
        Error::Invalid(format!("{}: replica key missing; a replica cannot push without its key", path.display()))
    })?;
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Invalid(format!("{}: not a dimple replica key", path.display())))?;
    Ok(SigningKey::from_bytes(&bytes))
}

pub fn public_b64(key: &SigningKey) -> String {
    B64.encode(key.verifying_key().to_bytes())
}

pub fn sign(key: &SigningKey, msg: &[u8]) -> String {
    B64.encode(key.sign(msg).to_bytes())
}

/// Checks `sig` over `msg` against a base64 public key; every failure is a reason.
pub fn verify(public_b64: &str, msg: &[u8], sig_b64: &str) -> std::result::Result<(), String> {
    let pk: [u8; 32] =
        B64.decode(public_b64).ok().and_then(|b| b.try_into().ok()).ok_or("public key is not 32 bytes of base64")?;
    let pk = VerifyingKey::from_bytes(&pk).map_err(|_| "public key is not a valid ed25519 key")?;
    let sig: [u8; 64] =
        B64.decode(sig_b64).ok().and_then(|b| b.try_into().ok()).ok_or("signature is not 64 bytes of base64")?;
    pk.verify(msg, &Signature::from_bytes(&sig)).map_err(|_| "signature does not verify".to_owned())
}

/// An object signed by a replica key: `{"body": ..., "signature": ...}`, the
/// signature over the body's compact JSON (serde_json). Grants, join requests,
/// member cards and published schemas all take this form.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    pub body: T,
    pub signature: String,
}

impl<T: serde::Serialize> Signed<T> {
    pub fn new(key: &SigningKey, body: T) -> Signed<T> {
        let signature = sign(key, &serde_json::to_vec(&body).expect("bodies serialize"));
        Signed { body, signature }
    }

    /// Checks the signature against a base64 public key; every failure is a reason.
    pub fn verify(&self, public_b64: &str) -> std::result::Result<(), String> {
        verify(public_b64, &serde_json::to_vec(&self.body).expect("bodies serialize"), &self.signature)
    }
}

/// A short fingerprint of a public key for people to compare.
pub fn fingerprint(public_b64: &str) -> String {
    crate::codec::sha256_hex(public_b64.as_bytes())[..16].to_owned()
}

/// Whether a replica seen for the first time is applied at once (`pinned`: its key is
/// pinned on first use) or held until a person vouches for it with `dimple trust`
/// (`explicit`): the seed's "Want to sync with replica XYZ?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustMode {
    Pinned,
    Explicit,
}

/// `ZV_METADATA` key of the group's trust mode (absent = pinned).
pub const MODE_KEY: &str = "trust_mode";

impl std::str::FromStr for TrustMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pinned" => Ok(TrustMode::Pinned),
            "explicit" => Ok(TrustMode::Explicit),
            _ => Err(Error::Invalid(format!("trust mode {s:?} is neither `pinned` nor `explicit`"))),
        }
    }
}

impl TrustMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustMode::Pinned => "pinned",
            TrustMode::Explicit => "explicit",
        }
    }
}

/// A replica's trust (kept by [`crate::peers`]).
pub use crate::peers::Trust;
pub const PINNED: Trust = Trust::Pinned;
pub const TRUSTED: Trust = Trust::Trusted;
pub const REVOKED: Trust = Trust::Revoked;

pub fn mode(conn: &rusqlite::Connection) -> Result<TrustMode> {
    crate::meta::get(conn, MODE_KEY)?.as_deref().unwrap_or("pinned").parse()
}

/// Sets the mode. Replicas already applied under `pinned` become `trusted` when the
/// group turns `explicit`: they were accepted before, and holding them now would
/// stop a working group without anyone having vouched against them. Returns how
/// many were promoted.
pub fn set_mode(conn: &rusqlite::Connection, mode: TrustMode) -> Result<usize> {
    let tx = conn.unchecked_transaction()?;
    crate::meta::set(&tx, MODE_KEY, mode.as_str())?;
    let promoted = match mode {
        TrustMode::Explicit => crate::peers::trust_applied(&tx)?,
        TrustMode::Pinned => 0,
    };
    tx.commit()?;
    Ok(promoted)
}

/// Sets the trust of the one known replica whose id starts with `id` and returns
/// its full id (see [`crate::peers::set_trust`]).
pub fn set_replica(conn: &rusqlite::Connection, id: &str, state: Trust) -> Result<String> {
    crate::peers::set_trust(conn, id, state)
}
