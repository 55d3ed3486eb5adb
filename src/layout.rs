//! Every bucket key dimple reads or writes is built here, and only here.
//!
//! ```text
//! replicas/<replica_id>/replica.json   descriptor (format, id, name, public key, signed schema)
//! replicas/<replica_id>/LATEST.json    signed head: newest batch and its sha256
//! batches/<replica_id>/<batch_id>.db   immutable batch files
//! digests/<replica_id>.json            per-table state digests at a cursor vector (verify)
//! snapshots/<snapshot_id>.db           immutable compacted state (compact, clone)
//! snapshots/LATEST.json                pointer to the newest complete snapshot
//! blobs/<name>                         a large value stored out of line (docs/attachments.md):
//!                                      name = its sha256, or a keyed hash of it when encrypted
//! ```
//!
//! An encrypted group adds (docs/trust.md):
//!
//! ```text
//! group.json                           the group's id (in the clear: marks the bucket encrypted)
//! members/<replica_id>.json            a member's card: its keys, sealed with the group key
//! join/<replica_id>.json               a device waiting for the group key: its public keys, signed
//! grants/<replica_id>/<epoch>.json     the group's keys wrapped to one member's exchange key
//! grants/passphrase/<epoch>.json       the group's keys wrapped to a key derived from the passphrase
//! epochs/<epoch>.json                  the devices a key epoch shuts out, sealed under that epoch's key
//! ```

pub const REPLICAS_PREFIX: &str = "replicas/";
pub const DESCRIPTOR: &str = "replica.json";
pub const HEAD: &str = "LATEST.json";

pub fn descriptor_key(replica: &str) -> String {
    format!("{REPLICAS_PREFIX}{replica}/{DESCRIPTOR}")
}

pub fn head_key(replica: &str) -> String {
    format!("{REPLICAS_PREFIX}{replica}/{HEAD}")
}

pub fn batch_key(replica: &str, batch_id: &str) -> String {
    format!("batches/{replica}/{batch_id}.db")
}

pub const DIGESTS_PREFIX: &str = "digests/";
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";

pub fn digest_key(replica: &str) -> String {
    format!("{DIGESTS_PREFIX}{replica}.json")
}

/// The replica id of a listed `digests/<id>.json` key, if it is exactly that.
pub fn parse_digest_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix(DIGESTS_PREFIX)?.strip_suffix(".json")?;
    is_canonical_uuid(id).then_some(id)
}

pub fn snapshot_key(snapshot_id: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{snapshot_id}.db")
}

pub fn snapshot_pointer_key() -> String {
    format!("{SNAPSHOTS_PREFIX}LATEST.json")
}

/// The snapshot id of a listed `snapshots/<id>.db` key, if it is exactly that.
pub fn parse_snapshot_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix(SNAPSHOTS_PREFIX)?.strip_suffix(".db")?;
    is_canonical_uuid(id).then_some(id)
}

pub const BLOBS_PREFIX: &str = "blobs/";

pub fn blob_key(name: &str) -> String {
    format!("{BLOBS_PREFIX}{name}")
}

/// The name in a listed `blobs/<name>` key, if it is exactly that (64 hex digits).
pub fn parse_blob_key(key: &str) -> Option<&str> {
    let name = key.strip_prefix(BLOBS_PREFIX)?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(name)
}

pub const GROUP: &str = "group.json";
pub const MEMBERS_PREFIX: &str = "members/";
pub const JOIN_PREFIX: &str = "join/";
pub const GRANTS_PREFIX: &str = "grants/";
/// The grants directory of the passphrase (not a replica id, so never a member's).
pub const PASSPHRASE: &str = "passphrase";

pub const EPOCHS_PREFIX: &str = "epochs/";

pub fn epoch_key(epoch: &str) -> String {
    format!("{EPOCHS_PREFIX}{epoch}.json")
}

pub fn member_key(replica: &str) -> String {
    format!("{MEMBERS_PREFIX}{replica}.json")
}

pub fn join_key(replica: &str) -> String {
    format!("{JOIN_PREFIX}{replica}.json")
}

/// `grants/<holder>/`: `holder` is a replica id or [`PASSPHRASE`].
pub fn grants_prefix(holder: &str) -> String {
    format!("{GRANTS_PREFIX}{holder}/")
}

pub fn grant_key(holder: &str, epoch: &str) -> String {
    format!("{GRANTS_PREFIX}{holder}/{epoch}.json")
}

/// The id in a listed `<prefix><id>.json` key (members/, join/, grants/`<holder>`/),
/// if it is exactly that.
pub fn parse_id_key<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let id = key.strip_prefix(prefix)?.strip_suffix(".json")?;
    is_canonical_uuid(id).then_some(id)
}

/// What a key found under `replicas/` is, if it is one of ours.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplicaObject<'a> {
    Descriptor(&'a str),
    Head(&'a str),
}

/// Parses a listed key. Keys that are not exactly ours (extra path segments, other
/// file names, ids that are not canonical UUIDs) are ignored rather than trusted.
pub fn parse_replica_key(key: &str) -> Option<ReplicaObject<'_>> {
    let rest = key.strip_prefix(REPLICAS_PREFIX)?;
    let (id, file) = rest.split_once('/')?;
    if !is_canonical_uuid(id) {
        return None;
    }
    match file {
        DESCRIPTOR => Some(ReplicaObject::Descriptor(id)),
        HEAD => Some(ReplicaObject::Head(id)),
        _ => None,
    }
}

/// Lowercase hyphenated UUID text: the only form ids take in keys and in the log.
pub fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// The 16 bytes of `s` when it [`is_canonical_uuid`], read in the one pass
/// that checks it: a pull reads every change's id this way (a check, then
/// `uuid`'s parse, went over the text twice).
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b: &[u8; 36] = s.as_bytes().try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    // Where each byte's two digits start: the groups are 8-4-4-4-12 digits.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [0u8; 16];
    // Any digit that is not one has its high bits set here.
    let mut not_digits = 0u8;
    for (byte, at) in out.iter_mut().zip(AT) {
        let (hi, lo) = (HEX_DIGIT[b[at] as usize], HEX_DIGIT[b[at + 1] as usize]);
        not_digits |= hi | lo;
        *byte = hi << 4 | lo;
    }
    (not_digits < 16).then_some(out)
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass reading agrees with the check and `uuid`'s parse, on
        /// ids, ids with one character changed, and any text.
        #[test]
        fn uuid_bytes_reads_exactly_the_canonical_ids(
            id in any::<[u8; 16]>(),
            at in 0usize..36,
            with in any::<char>(),
            other in ".{0,40}",
        ) {
            let canonical = uuid::Uuid::from_bytes(id).to_string();
            let mut changed: Vec<char> = canonical.chars().collect();
            changed[at] = with;
            let changed: String = changed.into_iter().collect();
            for s in [canonical.as_str(), &changed, &canonical.to_uppercase(), &other] {
                let expected = is_canonical_uuid(s).then(|| *uuid::Uuid::parse_str(s).unwrap().as_bytes());
                prop_assert_eq!(uuid_bytes(s), expected, "{:?}", s);
            }
            prop_assert_eq!(uuid_bytes(&canonical), Some(id));
        }
    }

    #[test]
    fn listed_keys_are_parsed_only_when_exactly_ours() {
        let id = "0190a4c2-7b3e-7def-8abc-0123456789ab";
        assert_eq!(parse_replica_key(&head_key(id)), Some(ReplicaObject::Head(id)));
        assert_eq!(parse_replica_key(&descriptor_key(id)), Some(ReplicaObject::Descriptor(id)));
        assert_eq!(parse_replica_key(&format!("replicas/{id}/x/LATEST.json")), None);
        assert_eq!(parse_replica_key("replicas/../LATEST.json"), None);
        assert_eq!(parse_replica_key(&format!("replicas/{}/LATEST.json", id.to_uppercase())), None);
    }
}
