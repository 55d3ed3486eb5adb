//! Large values stored out of line (docs/attachments.md).
//!
//! A BLOB or TEXT value at or above the threshold (64 KiB unless set) does not
//! travel inside a batch: its change carries a reference (sha256 and size, see
//! [`crate::value::Ref`]) and the bytes go once to `blobs/<name>`, content-addressed,
//! so two rows or two replicas holding the same file store it once. The app keeps
//! reading and writing plain values: locally the row holds the bytes.
//!
//! The bytes move through files, never whole through memory:
//! - capture streams the value from the pending row into `blobs/out/<sha256>`
//!   ([`Capture`]), which waits there until the batch naming it is pushed;
//! - push uploads it before that batch ([`transfer::send`]), in resumable parts when large;
//! - pull downloads it to `blobs/in/<sha256>` and checks its hash before the batch
//!   is applied ([`transfer::prefetch`]); the merger streams it into the row.
//!
//! A replica set to `lazy` applies such a change with the value missing (NULL,
//! listed in `ZV_BLOB_MISSING`) and fetches it on demand ([`transfer::fetch_missing`]).

pub mod gc;
pub mod transfer;

use crate::error::{Error, Result};
use crate::meta;
use crate::sidedir::SideDir;
use crate::value::Ref;
use rusqlite::{Connection, DatabaseName};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Values at least this big are stored out of line unless the replica says otherwise.
pub const DEFAULT_THRESHOLD: u64 = 64 << 10;
/// `ZV_METADATA` key: this replica's threshold in bytes.
pub const THRESHOLD_KEY: &str = "blob_threshold";
/// `ZV_METADATA` key: `eager` (default) or `lazy`.
pub const FETCH_KEY: &str = "blob_fetch";
/// Read and write in pieces this big.
const CHUNK: usize = 1 << 20;

/// When a replica downloads the values other replicas stored out of line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fetch {
    /// Before the batch that names them is applied.
    Eager,
    /// On demand (`dimple fetch`): rows get the value missing until then.
    Lazy,
}

impl Fetch {
    pub fn parse(s: &str) -> Result<Fetch> {
        match s {
            "eager" => Ok(Fetch::Eager),
            "lazy" => Ok(Fetch::Lazy),
            other => Err(Error::Invalid(format!("blob fetch policy {other:?}: write eager or lazy"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fetch::Eager => "eager",
            Fetch::Lazy => "lazy",
        }
    }
}

pub fn fetch_policy(conn: &Connection) -> Result<Fetch> {
    meta::get(conn, FETCH_KEY)?.map_or(Ok(Fetch::Eager), |s| Fetch::parse(&s))
}

pub fn set_fetch_policy(conn: &Connection, f: Fetch) -> Result<()> {
    meta::set(conn, FETCH_KEY, f.as_str())
}

pub fn threshold(conn: &Connection) -> Result<u64> {
    match meta::get(conn, THRESHOLD_KEY)? {
        Some(v) => v.parse().map_err(|_| Error::Invalid(format!("{THRESHOLD_KEY} {v:?} is not a number of bytes"))),
        None => Ok(DEFAULT_THRESHOLD),
    }
}

/// Sets the threshold; below 1 KiB a reference would be no smaller than the value.
pub fn set_threshold(conn: &Connection, bytes: u64) -> Result<()> {
    if bytes < 1024 {
        return Err(Error::Invalid(format!("blob threshold {bytes}: it must be at least 1024 bytes")));
    }
    meta::set(conn, THRESHOLD_KEY, &bytes.to_string())
}

/// The side directory of the database `conn` is open on (None in memory).
pub(crate) fn side_of(conn: &Connection) -> Option<SideDir> {
    conn.path().filter(|p| !p.is_empty()).map(|p| SideDir::of(Path::new(p)))
}

/// Where the bytes of `r` are on this machine, if they are: captured here and not
/// yet pushed, or downloaded and checked.
pub fn local_file(side: &SideDir, r: &Ref) -> Option<PathBuf> {
    [side.blobs_in_path(), side.blobs_out_path()]
        .into_iter()
        .map(|d| d.join(&r.sha256))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == r.size))
}

/// Turns captured values into references, during [`crate::changelog::ingest`].
pub struct Capture {
    /// u64::MAX when the database has no side directory (in memory): values then
    /// stay inline.
    pub threshold: u64,
    out: Option<PathBuf>,
}

impl Capture {
    pub fn load(conn: &Connection) -> Result<Capture> {
        Ok(match side_of(conn) {
            Some(side) => Capture { threshold: threshold(conn)?, out: Some(side.blobs_out_path()) },
            None => Capture { threshold: u64::MAX, out: None },
        })
    }

    /// The reference to the value in column `column` of row `rowid` of `table`,
    /// read in pieces. With `keep`, the bytes are kept in `blobs/out/` for the
    /// push (a new value); without, only hashed (an old value, never sent).
    pub fn stream(
        &self,
        conn: &Connection,
        table: &str,
        column: &str,
        rowid: i64,
        text: bool,
        keep: bool,
    ) -> Result<Ref> {
        let blob = conn.blob_open(DatabaseName::Main, table, column, rowid, true)?;
        self.take(blob, text, keep)
    }

    /// As [`Capture::stream`], for a value already in memory.
    pub fn bytes(&self, bytes: &[u8], text: bool, keep: bool) -> Result<Ref> {
        self.take(bytes, text, keep)
    }

    fn take(&self, mut source: impl Read, text: bool, keep: bool) -> Result<Ref> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let out = match (&self.out, keep) {
            (Some(dir), true) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let tmp = dir.join(format!(".{:016x}.tmp", rand::random::<u64>()));
                let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
                Some((tmp, std::io::BufWriter::new(f)))
            }
            _ => None,
        };
        let mut out = out;
        loop {
            let n = source.read(&mut buf).map_err(|e| Error::Invalid(format!("cannot read a captured value: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if let Some((tmp, w)) = out.as_mut() {
                w.write_all(&buf[..n]).map_err(|e| Error::io(tmp, e))?;
            }
        }
        let r = Ref { sha256: crate::hash::hex(&hasher.finalize()), size, text };
        if let (Some((tmp, w)), Some(dir)) = (out, &self.out) {
            // On disk before the change naming it commits: a crash never leaves a
            // reference whose bytes this replica lost.
            let f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            let dest = dir.join(&r.sha256);
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        }
        Ok(r)
    }
}

/// What moved out of line in one push or pull.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub count: u64,
    pub bytes: u64,
    /// Wall time of the transfers that moved them, in milliseconds: what a user
    /// divides `bytes` by to see the throughput (`sync --json`).
    pub millis: u64,
}

impl Missing {
    pub fn of(values: &[MissingValue]) -> Missing {
        Missing { count: values.len() as u64, bytes: values.iter().map(|m| m.r.size).sum() }
    }
}

impl Moved {
    pub fn add(&mut self, other: Moved) {
        self.count += other.count;
        self.bytes += other.bytes;
        self.millis += other.millis;
    }

    /// The same, its `millis` what the transfers `took` when anything moved.
    pub(crate) fn timed(mut self, took: std::time::Duration) -> Moved {
        if self.count > 0 {
            self.millis = took.as_millis() as u64;
        }
        self
    }
}

/// Values this replica lacks, as `status` shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Missing {
    pub count: u64,
    pub bytes: u64,
}

/// A value missing here, in a row that is alive.
#[derive(Debug, Clone)]
pub struct MissingValue {
    pub table: String,
    pub entity_id: String,
    pub attribute: String,
    pub r: Ref,
    /// The replica that wrote the winning change.
    pub author: String,
}

/// The values missing here whose reference is still the winner of its cell, in
/// rows that are alive (a cell written since, or a deleted row, waits for nothing).
pub fn missing(conn: &Connection) -> Result<Vec<MissingValue>> {
    let entries: Vec<(String, String, String, String)> = conn
        .prepare("SELECT tbl, entity_id, attribute, ref FROM ZV_BLOB_MISSING ORDER BY tbl, entity_id, attribute")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (table, entity_id, attribute, text) in entries {
        let Some(w) = still_waiting(conn, &table, &entity_id, &attribute, &text)? else { continue };
        let alive = crate::log::winner(conn, &table, &entity_id, crate::track::ROW)?
            .is_some_and(|row| row.new_value.as_deref() == Some(crate::merge::ALIVE));
        if !alive {
            continue;
        }
        if let Ok(crate::value::Stored::Ref(r)) = crate::value::decode_stored(&text) {
            out.push(MissingValue { table, entity_id, attribute, r, author: w.author });
        }
    }
    Ok(out)
}

/// The winner of a listed cell while it is still the reference `text` the
/// cell waits for (None: written since, it waits for nothing).
fn still_waiting(
    conn: &Connection,
    table: &str,
    entity_id: &str,
    attribute: &str,
    text: &str,
) -> Result<Option<crate::log::Winner>> {
    Ok(crate::log::winner(conn, table, entity_id, attribute)?.filter(|w| w.new_value.as_deref() == Some(text)))
}

/// The cells of one row that still wait for a value, by column: the reference
/// each waits for. The row alive or not: a change of key reads them as its old
/// row goes.
pub fn waiting_in_row(
    conn: &Connection,
    table: &str,
    entity_id: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let listed: Vec<(String, String)> = conn
        .prepare_cached("SELECT attribute, ref FROM ZV_BLOB_MISSING WHERE tbl = ?1 AND entity_id = ?2")?
        .query_map([table, entity_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = std::collections::BTreeMap::new();
    for (attribute, text) in listed {
        if still_waiting(conn, table, entity_id, &attribute, &text)?.is_some() {
            out.insert(attribute, text);
        }
    }
    Ok(out)
}

/// Clears a value this replica has not fetched (a lazy replica's), without
/// downloading it: the cell's value becomes NULL on every replica. This is the
/// app's way to clear such a cell, since NULL written over the NULL it holds is
/// taken for the app writing back what it read (docs/attachments.md). Returns
/// false, and writes nothing, when the cell does not wait for a value (fetched,
/// written since, or never missing): an ordinary `UPDATE` clears it then.
pub fn clear(r: &mut crate::Replica, table: &str, entity_id: &str, column: &str) -> Result<bool> {
    r.transaction(|tx| {
        if !waiting_in_row(tx, table, entity_id)?.contains_key(column) {
            return Ok(false);
        }
        let info = crate::track::inspect(tx, table)?
            .ok_or_else(|| Error::Invalid(format!("{table} is not a table of this database")))?;
        // The column's place in the list the pending rows are read with.
        let recorded = crate::track::recorded_columns(tx, table)?.unwrap_or_default();
        let Some(at) = recorded.iter().position(|c| c == column) else {
            return Err(Error::Invalid(format!("{table} has no tracked column {column}")));
        };
        let key = crate::merge::key_values(&info, entity_id)?;
        let sql = format!(
            "INSERT INTO {}(op, pk, col) SELECT {}, {}, {at} FROM main.{} AS r WHERE {}",
            crate::sql::ident(&crate::track::pending_table(table)),
            crate::track::OP_CLEAR,
            crate::track::captured_key(&info, "r"),
            crate::sql::ident(table),
            crate::merge::key_where(&info, 1)
        );
        Ok(tx.execute(&sql, rusqlite::params_from_iter(key.iter()))? == 1)
    })
}

pub fn missing_summary(conn: &Connection) -> Result<Missing> {
    Ok(Missing::of(&missing(conn)?))
}

/// Records that cell (`table`, `entity_id`, `attribute`) lacks the value `r`: the
/// one writer of `ZV_BLOB_MISSING`.
pub fn mark_missing(
    conn: &Connection,
    table: &str,
    entity_id: &str,
    attribute: &str,
    r: &Ref,
    now: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO ZV_BLOB_MISSING(tbl, entity_id, attribute, ref, since) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(rusqlite::params![table, entity_id, attribute, r.encode(), now])?;
    Ok(())
}

/// The cell waits for no value any more (written, or its wait ended).
pub fn unmark_missing(conn: &Connection, table: &str, entity_id: &str, attribute: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM ZV_BLOB_MISSING WHERE tbl = ?1 AND entity_id = ?2 AND attribute = ?3")?
        .execute([table, entity_id, attribute])?;
    Ok(())
}

/// The references among stored values, for the push and the prefetch.
pub fn reference(stored: Option<&str>) -> Option<Ref> {
    let s = stored?;
    if !s.starts_with(r#"{"blobref""#) && !s.starts_with(r#"{"textref""#) {
        return None;
    }
    match crate::value::decode_stored(s) {
        Ok(crate::value::Stored::Ref(r)) => Some(r),
        _ => None,
    }
}
