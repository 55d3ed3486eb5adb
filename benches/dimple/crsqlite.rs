//! cr-sqlite (vlcn.io) side by side: its loadable extension, built by
//! `scripts/fetch-crsqlite`, loaded into the same bundled SQLite as everything else.

use crate::capture::{self, Times, CREATE};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// The extension's path, or why there is none.
pub fn locate() -> Result<PathBuf, String> {
    let path = match std::env::var_os("DIMPLE_CRSQLITE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".crsqlite/crsqlite.so"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found; run scripts/fetch-crsqlite to build it from the npm package's source",
            path.display()
        ))
    }
}

pub fn version(so: &Path) -> String {
    std::fs::read_to_string(so.with_file_name("VERSION")).map(|v| v.trim().to_owned()).unwrap_or_default()
}

/// The capture group's writes on a CRR table, through a plain connection that loaded
/// the extension; then the file's bytes (its WAL checkpointed into it).
pub fn writes_on(so: &Path, db: &Path, n: usize) -> rusqlite::Result<(Times, u64)> {
    let conn = Connection::open(db)?;
    // SAFETY: loading a native extension that we built ourselves from its source.
    unsafe {
        conn.load_extension_enable()?;
        conn.load_extension(so, None::<&str>)?;
        conn.load_extension_disable()?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(CREATE)?;
    // The one-argument form passes a Rust "main" literal to C as if NUL-terminated,
    // which a current nightly build turns into SQLITE_NOMEM; name the schema instead.
    conn.query_row("SELECT crsql_as_crr('main', 't')", [], |_| Ok(()))?;
    let times = capture::writes(&conn, n);
    let bytes = capture::sizes(&conn).0;
    conn.query_row("SELECT crsql_finalize()", [], |_| Ok(()))?;
    Ok((times, bytes))
}

pub fn writes(so: &Path, db: &Path, n: usize) -> Result<(Times, u64), String> {
    writes_on(so, db, n).map_err(|e| format!("loading or using {}: {e}", so.display()))
}
