//! sha256 as every hash in the bucket is written: lowercase hex. At the bottom of
//! the crate (it depends on nothing), so the store layer can check files too.

use sha2::{Digest, Sha256};
use std::path::Path;

/// Lowercase hex sha256: the form every hash in the bucket takes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file, read in pieces: files here can be as big as a database.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
