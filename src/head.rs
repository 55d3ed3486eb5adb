//! The JSON objects under `replicas/<id>/`: the descriptor and the signed head.
//!
//! A head is signed over its canonical encoding: the fields below, in this order,
//! serialized by serde_json without the signature. A reader re-encodes what it
//! parsed and verifies that, so whitespace or key order in the stored file do not
//! matter, but every value does.

use crate::clock::parse_id;
use crate::error::{Error, Result};
use crate::trust;
use crate::FORMAT;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// Heads and descriptors larger than this are refused unread.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadBody {
    pub format: i64,
    pub replica: String,
    pub name: String,
    pub public_key: String,
    pub batch_id: String,
    pub batch_key: String,
    pub sha256: String,
    pub first_change_id: String,
    pub last_change_id: String,
    pub batch_count: i64,
    pub change_count: i64,
    pub updated_at: String,
    /// Ids of the newest batches, oldest first, the newest last (at most
    /// [`RECENT_BATCHES`]): a puller that is not far behind learns every key it
    /// needs at once and fetches them concurrently instead of one by one down the
    /// chain. The chain itself is still what is verified.
    #[serde(default)]
    pub recent_batch_ids: Vec<String>,
}

/// How many batch ids a head lists.
pub const RECENT_BATCHES: usize = 64;

/// `LATEST.json`: the body's fields plus `signature`, in one flat object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub body: HeadBody,
    pub signature: String,
}

impl Head {
    pub fn sign(body: HeadBody, key: &SigningKey) -> Head {
        let signature = trust::sign(key, &canonical(&body));
        Head { body, signature }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_value(&self.body).expect("heads serialize");
        v["signature"] = self.signature.clone().into();
        serde_json::to_vec_pretty(&v).expect("heads serialize")
    }

    /// Parses and checks a head read from `origin` for `replica`; `pinned` is the key
    /// already trusted for it (None on first sight: the head's own key is checked
    /// against itself, and the caller pins it).
    pub fn parse(bytes: &[u8], origin: &str, replica: &str, pinned: Option<&str>) -> Result<Head> {
        let bad = |r: String| Error::bad(origin, r);
        if bytes.len() > MAX_JSON_BYTES {
            return Err(bad(format!("head is {} bytes, more than the {MAX_JSON_BYTES} allowed", bytes.len())));
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("head is not JSON: {e}")))?;
        if let Some(f) = value.get("format").and_then(|f| f.as_i64()) {
            if f != FORMAT {
                return Err(bad(format!("unknown head format {f} (this dimple reads format {FORMAT})")));
            }
        }
        let signature = match value.as_object_mut().and_then(|o| o.remove("signature")) {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(bad("head has no signature".to_owned())),
        };
        let body: HeadBody = serde_json::from_value(value).map_err(|e| bad(format!("malformed head: {e}")))?;
        let head = Head { body, signature };
        let b = &head.body;
        if b.replica != replica {
            return Err(bad(format!("head names replica {}, but is stored under {replica}", b.replica)));
        }
        for id in [&b.batch_id, &b.first_change_id, &b.last_change_id] {
            if parse_id(id).is_none() {
                return Err(bad(format!("{id:?} is not a UUIDv7 id")));
            }
        }
        if b.recent_batch_ids.len() > RECENT_BATCHES || b.recent_batch_ids.iter().any(|id| parse_id(id).is_none()) {
            return Err(bad("head lists malformed recent batch ids".to_owned()));
        }
        if b.batch_key != crate::layout::batch_key(replica, &b.batch_id) {
            return Err(bad(format!("head points at {:?}, outside its replica's batches", b.batch_key)));
        }
        let key = pinned.unwrap_or(&b.public_key);
        if key != b.public_key {
            return Err(bad(format!(
                "head carries public key {} but {} was pinned for this replica",
                trust::fingerprint(&b.public_key),
                trust::fingerprint(key)
            )));
        }
        trust::verify(key, &canonical(b), &head.signature).map_err(|r| bad(format!("head signature: {r}")))?;
        Ok(head)
    }
}

fn canonical(body: &HeadBody) -> Vec<u8> {
    serde_json::to_vec(body).expect("heads serialize")
}

/// `replica.json`: who a replica is, for people and for `dimple replicas`, and
/// the schema of its tracked tables (signed on its own, see [`crate::schema`]).
/// Readers ignore fields they do not know, so builds from before the schema
/// travelled read it as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub format: i64,
    pub replica: String,
    pub name: String,
    pub public_key: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
}

impl Descriptor {
    pub fn parse(bytes: &[u8], origin: &str, replica: &str) -> Result<Descriptor> {
        let bad = |r: String| Error::bad(origin, r);
        // It carries the schema of every tracked table: more room than a head.
        let max = crate::schema::MAX_SCHEMA_BYTES;
        if bytes.len() > max {
            return Err(bad(format!("descriptor is {} bytes, more than the {max} allowed", bytes.len())));
        }
        let d: Descriptor = serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed replica.json: {e}")))?;
        if d.format != FORMAT {
            return Err(bad(format!("unknown descriptor format {}", d.format)));
        }
        if d.replica != replica {
            return Err(bad(format!("replica.json names {}, but is stored under {replica}", d.replica)));
        }
        Ok(d)
    }
}
