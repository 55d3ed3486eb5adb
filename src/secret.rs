//! Files that hold secrets on the device (the replica key, the exchange key, the
//! group's keys): written owner-only and whole, read only while still owner-only.

use crate::error::{Error, Result};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `text` to `path` (0600) through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of either.
pub fn write(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let io = |e| Error::io(&tmp, e);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads `path` (None when it does not exist); refused when others can read it.
pub fn read(path: &Path, what: &str) -> Result<Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Invalid(format!(
            "{}: {what} is readable by others; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    std::fs::read_to_string(path).map(Some).map_err(|e| Error::io(path, e))
}
