//! The one place where the bytes of an object stored in the bucket are made, read
//! and hashed. Every object dimple writes goes through [`Codec::encode`] (or
//! [`Codec::encode_file`]) and every object it reads through [`Codec::decode`] (or
//! [`Codec::decode_file`]), so a new object kind or a new layer is a change here
//! and nowhere else.
//!
//! Batches are zstd frames holding the SQLite file (readers also take the plain
//! file, see docs/format.md); every other object is stored as it is made. In an
//! encrypted group ([`Codec::Sealed`]) every object is then sealed with the group
//! key ([`crate::seal`]), bound to its key in the bucket. Hashes in heads, chains
//! and snapshot pointers are of the stored bytes, so a reader checks them before
//! decoding anything.

use crate::error::{Error, Result};
pub use crate::hash::{file_sha256, hex, sha256_hex};
use crate::seal::{self, Keyring};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// What an object is, which decides how its bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `batches/<replica>/<batch>.db`
    Batch,
    /// `replicas/<replica>/LATEST.json`
    Head,
    /// `replicas/<replica>/replica.json`
    Descriptor,
    /// `snapshots/<snapshot>.db` (handled as a file: it is as big as a database)
    Snapshot,
    /// `snapshots/LATEST.json`
    SnapshotPointer,
    /// `digests/<replica>.json`
    Digest,
    /// `members/<replica>.json` (encrypted groups only)
    Member,
    /// `blobs/<name>`: a value stored out of line, as its bytes (a file).
    Blob,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const ZSTD_LEVEL: i32 = 3;
/// A stored batch may not unpack to more than this (a small download must not
/// become an unbounded file).
pub const MAX_UNPACKED: u64 = 1 << 30;

/// How this replica's group stores objects: in the clear, or sealed with the
/// group's keys.
#[derive(Debug, Clone, Default)]
pub enum Codec {
    #[default]
    Plain,
    Sealed(Arc<Keyring>),
}

impl Codec {
    /// The bytes to store under `key` for an object of `kind` whose content is `plain`.
    pub fn encode(&self, kind: Kind, key: &str, plain: Vec<u8>) -> Result<Vec<u8>> {
        let packed = match kind {
            Kind::Batch => zstd::bulk::compress(&plain, ZSTD_LEVEL).map_err(cannot_compress)?,
            _ => plain,
        };
        self.seal(key, packed)
    }

    /// The bytes to store under `key` for the batch whose SQLite file is at `path`,
    /// compressed as it is read: only the compressed form is ever in memory.
    pub fn encode_batch_file(&self, key: &str, path: &Path) -> Result<Vec<u8>> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let packed = zstd::stream::encode_all(std::io::BufReader::new(file), ZSTD_LEVEL).map_err(cannot_compress)?;
        self.seal(key, packed)
    }

    /// `packed` as stored under `key`: sealed in an encrypted group.
    fn seal(&self, key: &str, packed: Vec<u8>) -> Result<Vec<u8>> {
        match self {
            Codec::Plain => Ok(packed),
            Codec::Sealed(ring) => seal::seal(ring, key, &packed),
        }
    }

    /// The bytes inside the envelope of what is stored under `key` (the bytes
    /// themselves in the clear, where a sealed object is refused).
    fn open<'b>(&self, key: &str, stored: &'b [u8]) -> Result<Cow<'b, [u8]>> {
        match self {
            Codec::Plain if seal::is_sealed(stored) => Err(not_in_group(key)),
            Codec::Plain => Ok(Cow::Borrowed(stored)),
            Codec::Sealed(ring) => Ok(Cow::Owned(seal::open(ring, key, stored)?)),
        }
    }

    /// The content of the object of `kind` stored under `key`. Input from the
    /// bucket is untrusted: whatever cannot be decoded is refused as bad data.
    pub fn decode<'b>(&self, kind: Kind, key: &str, stored: &'b [u8]) -> Result<Cow<'b, [u8]>> {
        match (kind, self.open(key, stored)?) {
            (Kind::Batch, Cow::Borrowed(b)) => unpack_batch(b, key),
            (Kind::Batch, Cow::Owned(b)) => Ok(Cow::Owned(unpack_batch(&b, key)?.into_owned())),
            (_, packed) => Ok(packed),
        }
    }

    /// [`Codec::decode`] of a batch into the file at `path`, decompressed as it is
    /// written: only the stored (compressed) bytes are in memory, not the SQLite
    /// file, which can be tens of megabytes for one burst of writes.
    pub fn decode_batch_to_file(&self, key: &str, stored: &[u8], path: &Path) -> Result<()> {
        let packed = self.open(key, stored)?;
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        // Large writes: a batch file is written whole, and 8 KiB at a time was
        // a system call per two pages.
        let mut out = std::io::BufWriter::with_capacity(256 << 10, file);
        if packed.starts_with(&ZSTD_MAGIC) {
            unzstd_batch(&packed, key, &mut out)?;
        } else {
            std::io::Write::write_all(&mut out, &packed).map_err(|e| Error::io(path, e))?;
        }
        std::io::Write::flush(&mut out).map_err(|e| Error::io(path, e))
    }

    /// Turns the file at `path` (the content of the object stored under `key`)
    /// into its stored form, in place, in bounded memory.
    pub fn encode_file(&self, kind: Kind, key: &str, path: &Path) -> Result<()> {
        debug_assert!(matches!(kind, Kind::Snapshot | Kind::Blob), "only snapshots and blobs travel as files");
        match self {
            Codec::Plain => Ok(()),
            Codec::Sealed(ring) => seal::seal_file(ring, key, path),
        }
    }

    /// Turns the stored object downloaded to `path` into its content, in place.
    pub fn decode_file(&self, kind: Kind, key: &str, path: &Path) -> Result<()> {
        debug_assert!(matches!(kind, Kind::Snapshot | Kind::Blob), "only snapshots and blobs travel as files");
        match self {
            // A value may start with any bytes, the envelope's magic included: its
            // sha256, checked next, says whether it is the one referenced.
            Codec::Plain if kind == Kind::Blob => Ok(()),
            Codec::Plain => {
                let mut head = [0u8; 8];
                let n = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                    .map_err(|e| Error::io(path, e))?;
                if seal::is_sealed(&head[..n]) {
                    return Err(not_in_group(key));
                }
                Ok(())
            }
            Codec::Sealed(ring) => seal::open_file(ring, key, path),
        }
    }

    /// The key epoch a stored object was sealed under (None in the clear).
    pub fn epoch_of(&self, stored: &[u8]) -> Option<uuid::Uuid> {
        match self {
            Codec::Plain => None,
            Codec::Sealed(_) => seal::epoch_of(stored),
        }
    }
}

fn not_in_group(key: &str) -> Error {
    Error::bad(key, "encrypted with a group key, but this replica is not in an encrypted group")
}

fn cannot_compress(e: std::io::Error) -> Error {
    Error::Invalid(format!("cannot compress a batch: {e}"))
}

/// The SQLite file inside a stored batch: unpacked when compressed, as is otherwise
/// (opening it then says whether it is a batch at all).
fn unpack_batch<'b>(stored: &'b [u8], origin: &str) -> Result<Cow<'b, [u8]>> {
    if !stored.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(stored));
    }
    let mut out = Vec::new();
    unzstd_batch(stored, origin, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Unpacks the zstd frame of a batch into `out`, refusing a broken frame and one
/// that unpacks to more than [`MAX_UNPACKED`] bytes.
fn unzstd_batch(packed: &[u8], origin: &str, out: &mut impl std::io::Write) -> Result<()> {
    use std::io::Read;
    let bad = |e: std::io::Error| Error::bad(origin, format!("not a readable compressed batch: {e}"));
    let decoder = zstd::stream::read::Decoder::with_buffer(packed).map_err(bad)?;
    let n = std::io::copy(&mut decoder.take(MAX_UNPACKED + 1), out).map_err(bad)?;
    if n > MAX_UNPACKED {
        return Err(Error::bad(origin, format!("batch unpacks to more than {MAX_UNPACKED} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_decoded_into_its_file_in_either_form_and_a_broken_frame_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let stored = Codec::Plain.encode(Kind::Batch, "b", plain.clone()).unwrap();
        Codec::Plain.decode_batch_to_file("b", &stored, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), plain);
        Codec::Plain.decode_batch_to_file("b", &plain, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), plain, "an uncompressed batch of an earlier build");
        let cut = &stored[..stored.len() / 2];
        let err = Codec::Plain.decode_batch_to_file("b", cut, &path).unwrap_err();
        assert!(err.to_string().contains("not a readable compressed batch"), "{err}");
    }

    #[test]
    fn a_batch_is_stored_compressed_and_read_back_in_either_form() {
        let plain = b"SQLite format 3\0 and the rest of a batch".repeat(50);
        let stored = Codec::Plain.encode(Kind::Batch, "b", plain.clone()).unwrap();
        assert!(stored.starts_with(&ZSTD_MAGIC) && stored.len() < plain.len());
        assert_eq!(Codec::Plain.decode(Kind::Batch, "b", &stored).unwrap().as_ref(), &plain[..]);
        assert!(matches!(Codec::Plain.decode(Kind::Batch, "b", &plain).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn a_sealed_batch_is_compressed_then_sealed_and_refused_by_a_plain_reader() {
        let mut ring = Keyring::new(uuid::Uuid::from_u128(9));
        ring.insert(uuid::Uuid::from_u128(1), seal::GroupKey::random());
        let sealed = Codec::Sealed(Arc::new(ring));
        let plain = b"SQLite format 3\0 and the rest of a batch".repeat(50);
        let stored = sealed.encode(Kind::Batch, "b", plain.clone()).unwrap();
        assert!(seal::is_sealed(&stored) && stored.len() < plain.len(), "compressed before it is sealed");
        assert_eq!(sealed.decode(Kind::Batch, "b", &stored).unwrap().as_ref(), &plain[..]);
        assert!(matches!(Codec::Plain.decode(Kind::Batch, "b", &stored), Err(Error::BadData { .. })));
        assert!(matches!(sealed.decode(Kind::Batch, "b", &plain), Err(Error::BadData { .. })), "plaintext refused");
    }

    #[test]
    fn hashes_are_lowercase_hex_of_the_stored_bytes() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(file_sha256(&p).unwrap(), sha256_hex(b"abc"));
    }
}
