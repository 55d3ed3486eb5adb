//! The one place where the bytes of an object stored in the bucket are made, read
//! and hashed. Every object dimple writes goes through [`encode`] (or
//! [`encode_file`]) and every object it reads through [`decode`] (or
//! [`decode_file`]), so a new object kind, or a new layer such as encryption, is a
//! change here and nowhere else.
//!
//! Today: batches are zstd frames holding the SQLite file (readers also take the
//! plain file, see docs/format.md); every other object is stored as it is made.
//! Hashes in heads, chains and snapshot pointers are of the stored bytes, so a
//! reader checks them before decoding anything.

use crate::error::{Error, Result};
pub use crate::hash::{file_sha256, hex, sha256_hex};
use std::borrow::Cow;
use std::path::Path;

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
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const ZSTD_LEVEL: i32 = 3;
/// A stored batch may not unpack to more than this (a small download must not
/// become an unbounded file).
pub const MAX_UNPACKED: u64 = 1 << 30;

/// The bytes to store for an object of `kind` whose content is `plain`.
pub fn encode(kind: Kind, plain: Vec<u8>) -> Result<Vec<u8>> {
    match kind {
        Kind::Batch => zstd::bulk::compress(&plain, ZSTD_LEVEL)
            .map_err(|e| Error::Invalid(format!("cannot compress a batch: {e}"))),
        _ => Ok(plain),
    }
}

/// The content of a stored object of `kind` read from `origin`. Input from the
/// bucket is untrusted: whatever cannot be decoded is refused as bad data.
pub fn decode<'b>(kind: Kind, stored: &'b [u8], origin: &str) -> Result<Cow<'b, [u8]>> {
    match kind {
        Kind::Batch => unpack_batch(stored, origin),
        _ => Ok(Cow::Borrowed(stored)),
    }
}

/// Turns the file at `path` (an object's content) into its stored form, in place.
pub fn encode_file(kind: Kind, path: &Path) -> Result<()> {
    debug_assert_eq!(kind, Kind::Snapshot, "only snapshots travel as files");
    let _ = path;
    Ok(())
}

/// Turns the stored object downloaded to `path` into its content, in place.
pub fn decode_file(kind: Kind, path: &Path, origin: &str) -> Result<()> {
    debug_assert_eq!(kind, Kind::Snapshot, "only snapshots travel as files");
    let _ = (path, origin);
    Ok(())
}

/// The SQLite file inside a stored batch: unpacked when compressed, as is otherwise
/// (opening it then says whether it is a batch at all).
fn unpack_batch<'b>(stored: &'b [u8], origin: &str) -> Result<Cow<'b, [u8]>> {
    if !stored.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(stored));
    }
    use std::io::Read;
    let bad = |e: std::io::Error| Error::bad(origin, format!("not a readable compressed batch: {e}"));
    let decoder = zstd::stream::read::Decoder::with_buffer(stored).map_err(bad)?;
    let mut out = Vec::new();
    decoder.take(MAX_UNPACKED + 1).read_to_end(&mut out).map_err(bad)?;
    if out.len() as u64 > MAX_UNPACKED {
        return Err(Error::bad(origin, format!("batch unpacks to more than {MAX_UNPACKED} bytes")));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_stored_compressed_and_read_back_in_either_form() {
        let plain = b"SQLite format 3\0 and the rest of a batch".repeat(50);
        let stored = encode(Kind::Batch, plain.clone()).unwrap();
        assert!(stored.starts_with(&ZSTD_MAGIC) && stored.len() < plain.len());
        assert_eq!(decode(Kind::Batch, &stored, "b").unwrap().as_ref(), &plain[..]);
        assert!(matches!(decode(Kind::Batch, &plain, "b").unwrap(), Cow::Borrowed(_)));
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
