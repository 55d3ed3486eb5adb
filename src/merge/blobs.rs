//! Writing values stored out of line into rows (docs/attachments.md).
//!
//! The row write binds a zero-filled BLOB of the value's size (SQLite writes its
//! pages without holding it in memory), then the bytes are streamed into it from
//! the checked file through incremental blob I/O, and a TEXT value is turned back
//! into TEXT in place. Memory stays at one piece whatever the size. A table
//! without rowid has no blob handle: its values are written whole.
//!
//! A value whose bytes are not here (a lazy replica, a blob not fetched yet) leaves
//! the cell NULL and an entry in `ZV_BLOB_MISSING`, which the fetch fills later.

use super::Merger;
use crate::error::{Error, Result};
use crate::sql::ident;
use crate::track::TableInfo;
use crate::value::{self, Ref, Stored};
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{DatabaseName, OptionalExtension, ToSql};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A value bound into a table write.
pub(super) enum Bind<'v> {
    /// A key's value.
    Value(Value),
    /// A value decoded from its stored form.
    Cell(value::Cell),
    /// Text as the stored value holds it, unescaped: bound without a copy (a
    /// pull binds hundreds of thousands of them).
    Text(&'v str),
    /// Zeros of this length, filled after the row is written.
    Zero(u64),
}

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Bind::Value(v) => v.to_sql(),
            Bind::Cell(v) => v.to_sql(),
            Bind::Text(t) => Ok(ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(t.as_bytes()))),
            // `value::MAX_SIZE` keeps every checked size within an i32.
            Bind::Zero(n) => Ok(ToSqlOutput::ZeroBlob(i32::try_from(*n).unwrap_or(i32::MAX))),
        }
    }
}

/// A cell to finish once its row is written.
pub(super) struct Fill {
    column: usize,
    r: Ref,
    /// The checked bytes, when this replica has them.
    file: Option<PathBuf>,
    /// Bound whole with the row (small enough to hold): nothing left to stream.
    bound: bool,
}

const CHUNK: usize = 1 << 20;
/// Values up to this size are read and bound with the row: one write instead of
/// zeros then bytes. Larger ones stream, so memory stays at this bound.
const BIND_WHOLE_MAX: u64 = 16 << 20;

impl Merger<'_> {
    /// The bind for stored value `v` of column `column`; a reference adds a fill.
    pub(super) fn bind<'v>(&self, column: usize, v: Option<&'v str>, fills: &mut Vec<Fill>) -> Result<Bind<'v>> {
        let Some(s) = v else { return Ok(Bind::Value(Value::Null)) };
        if let Some(text) = value::plain_text(s) {
            return Ok(Bind::Text(text));
        }
        match value::decode_stored(s).map_err(|e| Error::bad("change log", e))? {
            Stored::Inline(v) => Ok(Bind::Cell(v)),
            Stored::Ref(r) => {
                let file = self.side.as_ref().and_then(|side| crate::blob::local_file(side, &r));
                let (bind, bound) = match &file {
                    Some(path) if r.size <= BIND_WHOLE_MAX => (Bind::Cell(read_value(path, &r)?), true),
                    Some(_) => (Bind::Zero(r.size), false),
                    None => (Bind::Value(Value::Null), false),
                };
                fills.push(Fill { column, r, file, bound });
                Ok(bind)
            }
        }
    }

    /// Finishes the out-of-line cells of a row just written.
    pub(super) fn fill(&self, info: &TableInfo, entity_id: &str, key: &[Value], fills: Vec<Fill>) -> Result<()> {
        for f in fills {
            let column = &info.columns[f.column];
            match &f.file {
                None if self.row_exists(info, key)? => {
                    let now = crate::clock::rfc3339(now_ms());
                    crate::blob::mark_missing(self.conn, &info.name, entity_id, column, &f.r, &now)?;
                }
                None => {}
                Some(file) => {
                    if !f.bound {
                        self.write_bytes(info, key, column, &f.r, file)?;
                    }
                    crate::blob::unmark_missing(self.conn, &info.name, entity_id, column)?;
                }
            }
        }
        Ok(())
    }

    /// Streams `file` (checked to hold `r`) into the cell, which holds zeros of its size.
    fn write_bytes(&self, info: &TableInfo, key: &[Value], column: &str, r: &Ref, file: &Path) -> Result<()> {
        let t = ident(&info.name);
        let where_key = super::key_where(info, 1);
        // A query that fails is a table WITHOUT ROWID.
        let found: Option<(&str, Option<i64>)> = rowid_name(info).and_then(|name| {
            let sql = format!("SELECT {name} FROM {t} WHERE {where_key}");
            let mut stmt = self.conn.prepare_cached(&sql).ok()?;
            stmt.query_row(rusqlite::params_from_iter(key), |row| row.get(0)).optional().ok().map(|id| (name, id))
        });
        let (rowid_name, rowid) = match found {
            Some(found) => found,
            // WITHOUT ROWID, or every name of the rowid taken by a column: no
            // blob handle; the value is written whole.
            None => {
                let v = read_value(file, r)?;
                let sql = format!("UPDATE {t} SET {} = ?{} WHERE {where_key}", ident(column), key.len() + 1);
                let mut params: Vec<&dyn ToSql> = key.iter().map(|k| k as &dyn ToSql).collect();
                params.push(&v);
                self.conn.prepare_cached(&sql)?.execute(params.as_slice())?;
                return Ok(());
            }
        };
        let Some(rowid) = rowid else { return Ok(()) };
        {
            let mut blob = self.conn.blob_open(DatabaseName::Main, &info.name, column, rowid, false)?;
            if blob.len() as u64 != r.size {
                return Err(Error::Invalid(format!(
                    "{}.{column}: the cell does not hold room for the value",
                    info.name
                )));
            }
            let mut src = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = src.read(&mut buf).map_err(|e| Error::io(file, e))?;
                if n == 0 {
                    break;
                }
                blob.write_all(&buf[..n]).map_err(|e| Error::io(file, e))?;
            }
        }
        if r.text {
            self.conn
                .prepare_cached(&format!(
                    "UPDATE {t} SET {c} = CAST({c} AS TEXT) WHERE {rowid_name} = ?1",
                    c = ident(column)
                ))?
                .execute([rowid])?;
        }
        Ok(())
    }

    /// Writes a missing value into its cell now that its bytes are here, if `r` is
    /// still the cell's winner and the row is there. Returns whether it did.
    pub fn fill_missing(&self, table: &str, entity_id: &str, attribute: &str, r: &Ref) -> Result<bool> {
        let winner = crate::log::winner(self.conn, table, entity_id, attribute)?.and_then(|w| w.new_value);
        let stored = r.encode();
        let info = self.tables.get(table).filter(|_| winner.as_deref() == Some(stored.as_str()));
        let Some(info) = info else {
            crate::blob::unmark_missing(self.conn, table, entity_id, attribute)?;
            return Ok(false);
        };
        let Some(column) = info.columns.iter().position(|c| c == attribute) else { return Ok(false) };
        let key = super::key_values(info, entity_id)?;
        if !self.row_exists(info, &key)? {
            crate::blob::unmark_missing(self.conn, table, entity_id, attribute)?;
            return Ok(false);
        }
        // The ordinary column write: it binds or streams the bytes and clears the mark.
        self.update_column(info, entity_id, &key, column, Some(&stored))?;
        Ok(true)
    }
}

/// The name that reaches a row's rowid in `info`'s table: SQLite has three,
/// and a column of the table's own named like one takes that name's place (a
/// `SELECT rowid` would read the app's column, and the bytes would go into
/// another row).
fn rowid_name(info: &TableInfo) -> Option<&'static str> {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|n| !info.columns.iter().chain(&info.key_columns).any(|c| c.eq_ignore_ascii_case(n)))
}

/// The value in `file` (checked to hold `r`), whole. TEXT is its bytes as they
/// are, as when it is streamed: SQLite holds any bytes as TEXT.
fn read_value(file: &Path, r: &Ref) -> Result<value::Cell> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    Ok(if r.text { value::Cell::Text(bytes) } else { value::Cell::Blob(bytes) })
}

/// For `ZV_BLOB_MISSING.since`, which only informs the user.
fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}
