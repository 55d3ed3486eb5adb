//! The envelope of every object an encrypted group stores: the bucket keeps the
//! bytes but can neither read them nor change, move or replay them unnoticed.
//!
//! ```text
//! magic    8 bytes   "dimple\0E"
//! epoch   16 bytes   the key epoch (a UUIDv7) whose group key sealed the object
//! nonce   19 bytes   random prefix of the STREAM nonces
//! chunks             64 KiB of content each (the last one shorter), each followed
//!                    by its 16-byte Poly1305 tag
//! ```
//!
//! XChaCha20-Poly1305 in the STREAM construction (RustCrypto's `aead::stream`,
//! big-endian 32-bit counter and a last-chunk flag): a dropped, reordered or
//! truncated chunk fails to authenticate, and an object of any size is sealed and
//! opened in bounded memory. Every chunk's associated data is the group id, the
//! epoch and the object's key in the bucket, so a ciphertext copied to another
//! key, another group or relabelled with another epoch does not open.
//!
//! Small objects take the same path with a single chunk: one format, one parser.

use crate::error::{Error, Result};
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use uuid::Uuid;

pub const MAGIC: &[u8; 8] = b"dimple\0E";
const NONCE: usize = 19;
const TAG: usize = 16;
const CHUNK: usize = 64 * 1024;
/// Bytes before the first chunk.
pub const HEADER: usize = MAGIC.len() + 16 + NONCE;

/// A 256-bit group key. Its bytes never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(..)")
    }
}

impl GroupKey {
    pub fn random() -> GroupKey {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        GroupKey(k)
    }
}

/// The group's keys this device holds, one per epoch. The newest seals; every
/// epoch opens, so history stays readable after a rekey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    pub group: Uuid,
    epochs: BTreeMap<Uuid, GroupKey>,
    /// Why nothing may be sealed under the newest epoch, if a revoked device may
    /// hold it (`group::epochs`): opening stays possible, sealing is refused.
    blocked: Option<String>,
}

impl Keyring {
    pub fn new(group: Uuid) -> Keyring {
        Keyring { group, epochs: BTreeMap::new(), blocked: None }
    }

    /// Refuses sealing, for `why`, until the ring is read again.
    pub(crate) fn block_sealing(&mut self, why: Option<String>) {
        self.blocked = why;
    }

    pub fn sealing_blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The epoch new objects are sealed under: the newest (ids are UUIDv7s).
    pub fn newest(&self) -> Option<(&Uuid, &GroupKey)> {
        self.epochs.last_key_value()
    }

    pub fn get(&self, epoch: &Uuid) -> Option<&GroupKey> {
        self.epochs.get(epoch)
    }

    pub fn insert(&mut self, epoch: Uuid, key: GroupKey) {
        self.epochs.insert(epoch, key);
    }

    pub fn epochs(&self) -> impl Iterator<Item = (&Uuid, &GroupKey)> {
        self.epochs.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.epochs.len()
    }
}

/// The name under which a value stored out of line goes into the bucket
/// (`blobs/<name>`): a keyed hash of its sha256, so that equal values share one
/// object across the group while the bucket cannot tell which known file a name
/// holds. Keyed with the group's first epoch key, which every member holds (a
/// rekey must not rename every blob); a member revoked since could still test
/// names, but never read what a later epoch sealed.
pub fn blob_name(ring: &Keyring, sha256_hex: &str) -> Result<String> {
    let (_, first) =
        ring.epochs().next().ok_or_else(|| Error::Invalid("no group key to name a value with".to_owned()))?;
    let kdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(ring.group.as_bytes()), &first.0);
    let mut name = [0u8; 32];
    let info = [b"dimple blob name\0".as_slice(), sha256_hex.as_bytes()].concat();
    kdf.expand(&info, &mut name).expect("32 bytes is a valid HKDF length");
    Ok(crate::hash::hex(&name))
}

fn aad(group: &Uuid, epoch: &Uuid, name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(44 + name.len());
    a.extend_from_slice(b"dimple/1");
    a.extend_from_slice(group.as_bytes());
    a.extend_from_slice(epoch.as_bytes());
    a.extend_from_slice(&(name.len() as u32).to_be_bytes());
    a.extend_from_slice(name.as_bytes());
    a
}

/// Whether `stored` starts like a sealed object.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// The epoch a sealed object names (unauthenticated until it opens).
pub fn epoch_of(stored: &[u8]) -> Option<Uuid> {
    is_sealed(stored)
        .then(|| stored.get(MAGIC.len()..MAGIC.len() + 16))
        .flatten()
        .map(|b| Uuid::from_bytes(b.try_into().expect("16 bytes")))
}

/// Seals `plain` as the object stored under `name`.
pub fn seal(ring: &Keyring, name: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER + plain.len() + TAG * (1 + plain.len() / CHUNK));
    seal_stream(ring, name, &mut &plain[..], &mut out)
        .map_err(|e| Error::Invalid(format!("cannot seal {name}: {e}")))?;
    Ok(out)
}

/// Opens the object stored under `name`; everything that does not authenticate is
/// refused as bad data from `name`.
pub fn open(ring: &Keyring, name: &str, stored: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(stored.len().saturating_sub(HEADER));
    open_stream(ring, name, &mut &stored[..], &mut out)?;
    Ok(out)
}

/// Seals the file at `path` in place (through a temporary file beside it).
pub fn seal_file(ring: &Keyring, name: &str, path: &Path) -> Result<()> {
    rewrite(path, |input, output| {
        seal_stream(ring, name, input, output).map_err(|e| Error::Invalid(format!("cannot seal {name}: {e}")))
    })
}

/// Opens the sealed file at `path` in place.
pub fn open_file(ring: &Keyring, name: &str, path: &Path) -> Result<()> {
    rewrite(path, |input, output| open_stream(ring, name, input, output))
}

fn rewrite(path: &Path, f: impl FnOnce(&mut dyn Read, &mut dyn Write) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("sealing");
    let io = |e| Error::io(path, e);
    let mut input = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut output = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
    let done = f(&mut input, &mut output).and_then(|()| output.flush().map_err(|e| Error::io(&tmp, e)));
    drop(output);
    match done {
        Ok(()) => std::fs::rename(&tmp, path).map_err(io),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads up to `buf.len()` bytes; fewer only at the end of the input.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn seal_stream(ring: &Keyring, name: &str, input: &mut dyn Read, out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(why) = &ring.blocked {
        return Err(std::io::Error::other(why.clone()));
    }
    let (epoch, key) = ring.newest().ok_or_else(|| std::io::Error::other("no group key"))?;
    let mut nonce = [0u8; NONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    out.write_all(MAGIC)?;
    out.write_all(epoch.as_bytes())?;
    out.write_all(&nonce)?;
    let aad = aad(&ring.group, epoch, name);
    let mut enc = EncryptorBE32::from_aead(XChaCha20Poly1305::new((&key.0).into()), (&nonce).into());
    let (mut cur, mut next) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut n = fill(input, &mut cur)?;
    loop {
        // A full chunk is the last one only if nothing follows it.
        let m = if n == CHUNK { fill(input, &mut next)? } else { 0 };
        let msg = Payload { msg: &cur[..n], aad: &aad };
        if m == 0 {
            let sealed = enc.encrypt_last(msg).map_err(|_| std::io::Error::other("chunk too large"))?;
            return out.write_all(&sealed);
        }
        let sealed = enc.encrypt_next(msg).map_err(|_| std::io::Error::other("too many chunks"))?;
        out.write_all(&sealed)?;
        std::mem::swap(&mut cur, &mut next);
        n = m;
    }
}

fn open_stream(ring: &Keyring, name: &str, input: &mut dyn Read, out: &mut dyn Write) -> Result<()> {
    let bad = |r: String| Error::bad(name, r);
    let read = |e: std::io::Error| bad(format!("cannot read the sealed object: {e}"));
    let mut header = [0u8; HEADER];
    let got = fill(input, &mut header).map_err(read)?;
    if got < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
        return Err(bad("not sealed with the group key (written by someone outside the group?)".to_owned()));
    }
    if got < HEADER {
        return Err(bad("sealed object is truncated".to_owned()));
    }
    let epoch = Uuid::from_bytes(header[8..24].try_into().expect("16 bytes"));
    let Some(key) = ring.get(&epoch) else {
        return Err(bad(format!(
            "sealed under key epoch {epoch}, which this device was not granted (revoked from the group, or the grant has not arrived yet)"
        )));
    };
    let nonce: [u8; NONCE] = header[24..].try_into().expect("19 bytes");
    let aad = aad(&ring.group, &epoch, name);
    let mut dec = DecryptorBE32::from_aead(XChaCha20Poly1305::new((&key.0).into()), (&nonce).into());
    let forged = || {
        bad("does not authenticate under the group key: altered, truncated, moved from another key, or forged"
            .to_owned())
    };
    let (mut cur, mut next) = (vec![0u8; CHUNK + TAG], vec![0u8; CHUNK + TAG]);
    let mut n = fill(input, &mut cur).map_err(read)?;
    loop {
        let m = if n == CHUNK + TAG { fill(input, &mut next).map_err(read)? } else { 0 };
        let msg = Payload { msg: &cur[..n], aad: &aad };
        if m == 0 {
            let plain = dec.decrypt_last(msg).map_err(|_| forged())?;
            return out.write_all(&plain).map_err(|e| Error::Invalid(format!("cannot write {name}: {e}")));
        }
        let plain = dec.decrypt_next(msg).map_err(|_| forged())?;
        out.write_all(&plain).map_err(|e| Error::Invalid(format!("cannot write {name}: {e}")))?;
        std::mem::swap(&mut cur, &mut next);
        n = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> Uuid {
        Uuid::from_u128(rand::random())
    }

    fn ring() -> Keyring {
        let mut r = Keyring::new(id());
        r.insert(Uuid::from_u128(1), GroupKey::random());
        r
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn anything_sealed_opens_to_the_same_bytes(len in prop_oneof![0usize..200, (CHUNK - 2)..(CHUNK + 2), (2 * CHUNK - 1)..(2 * CHUNK + 1)], seed: u64) {
            let plain: Vec<u8> = (0..len).map(|i| (seed.wrapping_mul(i as u64 + 7) >> 13) as u8).collect();
            let r = ring();
            let stored = seal(&r, "k", &plain).unwrap();
            prop_assert_eq!(stored.len(), HEADER + plain.len() + TAG * plain.len().div_ceil(CHUNK).max(1));
            prop_assert_eq!(open(&r, "k", &stored).unwrap(), plain);
        }

        #[test]
        fn any_flipped_bit_or_cut_is_refused(len in 1usize..(CHUNK * 2 + 10), at: prop::sample::Index, bit in 0u8..8, cut: bool) {
            let r = ring();
            let mut stored = seal(&r, "k", &vec![7u8; len]).unwrap();
            let i = at.index(stored.len());
            if cut { stored.truncate(i) } else { stored[i] ^= 1 << bit }
            let refused = matches!(open(&r, "k", &stored), Err(Error::BadData { .. }));
            prop_assert!(refused);
        }

        #[test]
        fn arbitrary_bytes_never_open_or_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), sealed_prefix: bool) {
            let r = ring();
            let mut stored = if sealed_prefix { seal(&r, "k", b"x").unwrap()[..HEADER].to_vec() } else { Vec::new() };
            stored.extend(bytes);
            prop_assert!(open(&r, "k", &stored).is_err());
        }
    }

    #[test]
    fn a_sealed_object_does_not_open_under_another_key_name_or_group() {
        let r = ring();
        let stored = seal(&r, "batches/a/1.db", b"content").unwrap();
        assert!(open(&r, "batches/a/2.db", &stored).is_err());
        let mut other = r.clone();
        other.group = id();
        assert!(open(&other, "batches/a/1.db", &stored).is_err());
        assert_eq!(open(&r, "batches/a/1.db", &stored).unwrap(), b"content");
    }

    #[test]
    fn the_newest_epoch_seals_and_every_epoch_opens() {
        let mut r = ring();
        let old = seal(&r, "k", b"old").unwrap();
        let newer = Uuid::from_u128(2);
        r.insert(newer, GroupKey::random());
        let new = seal(&r, "k", b"new").unwrap();
        assert_eq!(epoch_of(&new), Some(newer));
        assert_eq!(open(&r, "k", &old).unwrap(), b"old");
        let mut without_newest = Keyring::new(r.group);
        let (first, key) = r.epochs().next().map(|(e, k)| (*e, k.clone())).unwrap();
        without_newest.insert(first, key);
        let err = open(&without_newest, "k", &new).unwrap_err().to_string();
        assert!(err.contains("was not granted"), "{err}");
    }

    #[test]
    fn files_are_sealed_and_opened_in_place() {
        let r = ring();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let plain: Vec<u8> = (0..(3 * CHUNK + 5)).map(|i| i as u8).collect();
        std::fs::write(&p, &plain).unwrap();
        seal_file(&r, "snap", &p).unwrap();
        assert!(is_sealed(&std::fs::read(&p).unwrap()));
        open_file(&r, "snap", &p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), plain);
    }
}
