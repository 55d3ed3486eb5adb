//! Questions asked of the change log: winners, counts, greatest ids, and the
//! damage `verify` looks for. Nothing here writes.

use super::*;
use crate::error::Result;
use crate::record::{self, Cell, Id};
use rusqlite::types::Value;
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// The winning change of a cell: its id, its author's replica id and its new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    pub id: String,
    pub author: String,
    pub new_value: Option<String>,
}

/// The canonical text of a record's id.
fn id_text(id: &Id) -> String {
    match id {
        Id::Uuid(b) => blob_id_string(b),
        Id::Text(t) => t.clone(),
    }
}

/// The winner of (`table`, `entity_id`, `attribute`), if the log has the cell.
pub fn winner(conn: &Connection, table: &str, entity_id: &str, attribute: &str) -> Result<Option<Winner>> {
    let Some(attr_n) = known_name(conn, attribute)? else { return Ok(None) };
    let Some((cells, _)) = record_of(conn, table, entity_id)? else { return Ok(None) };
    let Some(w) = cells.into_iter().find(|c| c.attr_n == attr_n as u64) else { return Ok(None) };
    Ok(Some(Winner { id: id_text(&w.id), author: author_of(conn, w.author_n)?, new_value: w.new_value }))
}

/// The winning value of every attribute of a row that the log has.
pub fn winners(conn: &Connection, table: &str, entity_id: &str) -> Result<HashMap<String, Option<String>>> {
    let Some((cells, _)) = record_of(conn, table, entity_id)? else { return Ok(HashMap::new()) };
    let mut out = HashMap::with_capacity(cells.len());
    for c in cells {
        let name: String =
            conn.prepare_cached("SELECT name FROM ZV_NAME WHERE n = ?1")?.query_row([c.attr_n as i64], |r| r.get(0))?;
        out.insert(name, c.new_value);
    }
    Ok(out)
}

/// Every row id of `table` the log has a change for.
pub fn entities(conn: &Connection, table: &str) -> Result<Vec<String>> {
    let Some(t) = known_name(conn, table)? else { return Ok(Vec::new()) };
    Ok(conn
        .prepare("SELECT entity_id FROM ZV_ROW WHERE type_n = ?1")?
        .query_map([t], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// How many changes the log holds.
pub fn count(conn: &Connection) -> Result<i64> {
    Ok(count_and_greatest_id(conn)?.0)
}

/// The rows whose record cannot be read, as (table name, row id): a damaged
/// file, which `dimple verify` reports row by row.
pub fn damaged_records(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT coalesce(t.name, '#' || r.type_n), CAST(r.entity_id AS TEXT), r.cells
         FROM ZV_ROW r LEFT JOIN ZV_NAME t ON t.n = r.type_n",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let readable = match r.get_ref(2)? {
            rusqlite::types::ValueRef::Blob(b) => record::decode_keys(b).is_ok(),
            _ => false,
        };
        if !readable {
            out.push((r.get(0)?, r.get(1)?));
        }
    }
    Ok(out)
}

/// Whether `id` sorts after the stored value `after` as SQLite compares them:
/// any text before any blob, each bytewise (an empty cursor is `x''`).
pub(super) fn id_after(id: &Id, after: &Value) -> bool {
    match (id, after) {
        (Id::Uuid(b), Value::Blob(a)) => b.as_slice() > a.as_slice(),
        (Id::Uuid(_), Value::Text(_)) => true,
        (Id::Text(t), Value::Text(a)) => t.as_bytes() > a.as_bytes(),
        (Id::Text(_), Value::Blob(_)) => false,
        (_, Value::Null) => false,
        // Numbers sort before text and blobs.
        (_, Value::Integer(_) | Value::Real(_)) => true,
    }
}

/// Whether `id` sorts before the stored value `before` as SQLite compares them
/// (the other side of [`id_after`]).
pub(super) fn id_before(id: &Id, before: &Value) -> bool {
    match (id, before) {
        (Id::Uuid(b), Value::Blob(a)) => b.as_slice() < a.as_slice(),
        (Id::Text(t), Value::Text(a)) => t.as_bytes() < a.as_bytes(),
        (Id::Uuid(_), Value::Text(_)) => false,
        (Id::Text(_), Value::Blob(_)) => true,
        (_, Value::Null | Value::Integer(_) | Value::Real(_)) => false,
    }
}

/// Calls `f` with the cell (values left out) of every change the records hold:
/// the winners and the records' pasts.
fn each_record_key(conn: &Connection, mut f: impl FnMut(&Cell)) -> Result<()> {
    let mut stmt = conn.prepare("SELECT cells FROM ZV_ROW")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (cells, past) = record::decode_keys(record_in(r, 0)?)?;
        for c in cells.iter().chain(&past) {
            f(c);
        }
    }
    Ok(())
}

/// The greatest id of a change by `author`.
pub fn last_id_of(conn: &Connection, author: &str) -> Result<Option<String>> {
    let Some(author_n) = known_author(conn, author)? else { return Ok(None) };
    let history: Option<Value> =
        conn.query_row("SELECT max(id) FROM ZV_HISTORY WHERE author_n = ?1", [author_n], |r| r.get(0))?;
    greatest(conn, history, |c| c.author_n == author_n as u64)
}

/// How many changes the log holds and the greatest id among them, in one pass
/// over the records.
pub fn count_and_greatest_id(conn: &Connection) -> Result<(i64, Option<String>)> {
    let (history, max): (i64, Option<Value>) =
        conn.query_row("SELECT count(*), max(id) FROM ZV_HISTORY", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut best: Option<Id> = max.filter(|v| *v != Value::Null).map(stored_to_id).transpose()?;
    let mut cells = 0;
    each_record_key(conn, |c| {
        cells += 1;
        if best.as_ref().is_none_or(|b| c.id > *b) {
            best = Some(c.id.clone());
        }
    })?;
    Ok((history + cells, best.as_ref().map(id_text)))
}

/// The greatest of the history's `max(id)` and the ids of the records' changes
/// `which` picks.
fn greatest(conn: &Connection, history: Option<Value>, which: impl Fn(&Cell) -> bool) -> Result<Option<String>> {
    let mut best: Option<Id> = history.filter(|v| *v != Value::Null).map(stored_to_id).transpose()?;
    each_record_key(conn, |c| {
        if which(c) && best.as_ref().is_none_or(|b| c.id > *b) {
            best = Some(c.id.clone());
        }
    })?;
    Ok(best.as_ref().map(id_text))
}

/// How many changes by `author` the log holds after id `after` (in its stored
/// form, [`crate::outbox::after_value`]).
pub fn count_by_after(conn: &Connection, author: &str, after: &Value) -> Result<i64> {
    let Some(author_n) = known_author(conn, author)? else { return Ok(0) };
    let history: i64 = conn.query_row(
        "SELECT count(*) FROM ZV_HISTORY WHERE author_n = ?1 AND id > ?2",
        params![author_n, after],
        |r| r.get(0),
    )?;
    let mut cells = 0;
    each_record_key(conn, |c| {
        if c.author_n == author_n as u64 && id_after(&c.id, after) {
            cells += 1;
        }
    })?;
    Ok(history + cells)
}

/// The filter, appended to [`SELECT`], for this replica's changes after a cursor,
/// in id order: binds the replica id as ?1 and the cursor's stored form as ?2.
pub const OWN_AFTER: &str = "WHERE l.author_n = (SELECT n FROM ZV_AUTHOR WHERE id = ?1) AND l.id > ?2 ORDER BY l.id";

/// Every distinct new value in the log that starts with one of `prefixes`: how
/// the blob collector finds the references the log still holds.
pub fn new_values_starting_with(conn: &Connection, prefixes: &[&str]) -> Result<Vec<String>> {
    if prefixes.is_empty() {
        return Ok(Vec::new());
    }
    // One scan of the log, whatever the number of prefixes.
    let any = (1..=prefixes.len()).map(|i| format!("substr(new_value, 1, length(?{i})) = ?{i}")).collect::<Vec<_>>();
    let mut stmt = conn.prepare(&format!("SELECT DISTINCT new_value FROM ZV_LOG WHERE {}", any.join(" OR ")))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(prefixes), |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
