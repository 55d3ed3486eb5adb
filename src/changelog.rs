//! Reads and writes of the change log: turning captured writes into changes with
//! ids, and reading changes back for push and for `dimple log`.

use crate::clock::Hlc;
use crate::error::{Error, Result};
use crate::merge::{entity_id_of, Change, Merger, ALIVE, DEAD};
use crate::sql::ident;
use crate::track::{self, ROW};
use crate::value;
use rusqlite::types::Value;
use rusqlite::{params, Connection};

/// Gives ids to everything the triggers captured since the last call and records it
/// as one transaction authored by `me`. Runs inside the caller's write transaction:
/// the app's writes and their ids then become visible together, and pending rows
/// are always turned into changes before any remote change is applied (otherwise a
/// remote change could overwrite a local write that later gets a newer id).
///
/// Column positions in pending rows refer to the column list recorded in
/// `ZV_TRACKED` when the triggers that wrote them were installed; `track` ingests
/// before it reinstalls triggers, so the two always agree.
pub fn ingest(conn: &Connection, hlc: &mut Hlc, me: &str) -> Result<usize> {
    let tracked: Vec<(String, String)> = conn
        .prepare_cached("SELECT tbl, columns FROM ZV_TRACKED ORDER BY tbl")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let merger = Merger::new(conn)?;
    let mut txn: Option<String> = None;
    let mut n = 0;
    for (tbl, columns) in tracked {
        let columns: Vec<String> = serde_json::from_str(&columns)
            .map_err(|e| Error::Invalid(format!("ZV_TRACKED columns of {tbl} are corrupt: {e}")))?;
        let pending = ident(&track::pending_table(&tbl));
        let cols: String = (0..columns.len()).map(|i| format!(", c{i}")).collect();
        let mut stmt = conn.prepare(&format!("SELECT seq, op, pk, col, old, new{cols} FROM {pending} ORDER BY seq"))?;
        let mut rows = stmt.query([])?;
        let mut last_seq = None;
        while let Some(r) = rows.next()? {
            last_seq = Some(r.get::<_, i64>(0)?);
            let op: i64 = r.get(1)?;
            let Some(entity_id) = entity_id_of(&r.get(2)?) else {
                tracing::warn!(table = %tbl, "captured a row whose key is neither text nor integer; skipped");
                continue;
            };
            let txn_id = match &txn {
                Some(t) => t.clone(),
                None => {
                    let t = hlc.tick().to_string();
                    conn.prepare_cached("INSERT INTO ZV_TRANSACTION(id, author) VALUES (?1, ?2)")?
                        .execute(params![t, me])?;
                    txn.insert(t).clone()
                }
            };
            let mut record = |attribute: &str, old_value: Option<String>, new_value: String| {
                n += 1;
                merger.record_local(&Change {
                    id: hlc.tick().to_string(),
                    transaction_id: txn_id.clone(),
                    entity_type: tbl.clone(),
                    entity_id: entity_id.clone(),
                    attribute: attribute.to_owned(),
                    old_value,
                    new_value: Some(new_value),
                })
            };
            match op {
                track::OP_INSERT => {
                    record(ROW, None, ALIVE.to_owned())?;
                    // An insert's columns have no old value (SQL NULL, unlike JSON null).
                    for (i, c) in columns.iter().enumerate() {
                        record(c, None, value::encode(&r.get::<_, Value>(6 + i)?))?;
                    }
                }
                track::OP_DELETE => record(ROW, None, DEAD.to_owned())?,
                track::OP_UPDATE => {
                    let i: usize = r.get::<_, i64>(3)?.try_into().unwrap_or(usize::MAX);
                    let c = columns.get(i).ok_or_else(|| {
                        Error::Invalid(format!(
                            "captured update of column #{i} of {tbl}, which has {} columns",
                            columns.len()
                        ))
                    })?;
                    record(c, Some(value::encode(&r.get::<_, Value>(4)?)), value::encode(&r.get::<_, Value>(5)?))?;
                }
                _ => return Err(Error::Invalid(format!("captured write {last_seq:?} of {tbl} has unknown op {op}"))),
            }
        }
        if let Some(seq) = last_seq {
            conn.execute(&format!("DELETE FROM {pending} WHERE seq <= ?1"), [seq])?;
        }
    }
    if n > 0 {
        save_clock(conn, hlc)?;
    }
    Ok(n)
}

pub fn save_clock(conn: &Connection, hlc: &Hlc) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO ZV_METADATA(key, value) VALUES ('clock', ?1)")?
        .execute([hlc.state().to_string()])?;
    Ok(())
}

/// This replica's changes after `after` (a change id), whole transactions only,
/// stopping once `limit` changes are gathered.
pub fn own_changes_after(conn: &Connection, me: &str, after: &str, limit: usize) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.transaction_id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value
         FROM ZV_CHANGE c JOIN ZV_TRANSACTION t ON t.id = c.transaction_id
         WHERE c.id > ?1 AND t.author = ?2 ORDER BY c.id",
    )?;
    let mut rows = stmt.query(params![after, me])?;
    let mut out: Vec<Change> = Vec::new();
    while let Some(r) = rows.next()? {
        let c = row_to_change(r)?;
        if out.len() >= limit && out.last().is_some_and(|l| l.transaction_id != c.transaction_id) {
            break;
        }
        out.push(c);
    }
    Ok(out)
}

pub fn row_to_change(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    Ok(Change {
        id: r.get(0)?,
        transaction_id: r.get(1)?,
        entity_type: r.get(2)?,
        entity_id: r.get(3)?,
        attribute: r.get(4)?,
        old_value: r.get(5)?,
        new_value: r.get(6)?,
    })
}

/// One line of `dimple log`.
#[derive(Debug, serde::Serialize)]
pub struct LogEntry {
    pub id: String,
    pub transaction_id: String,
    pub author: String,
    pub entity_type: String,
    pub entity_id: String,
    pub attribute: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    /// Whether this change is the current winner for its attribute.
    pub winner: bool,
}

pub fn history(conn: &Connection, entity: Option<(&str, &str)>, limit: usize) -> Result<Vec<LogEntry>> {
    let sql =
        "SELECT c.id, c.transaction_id, t.author, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value,
                      EXISTS (SELECT 1 FROM ZV_CLOCK k WHERE k.entity_type = c.entity_type AND k.entity_id = c.entity_id
                              AND k.attribute = c.attribute AND k.change_id = c.id)
               FROM ZV_CHANGE c JOIN ZV_TRANSACTION t ON t.id = c.transaction_id
               WHERE (?1 IS NULL OR (c.entity_type = ?1 AND c.entity_id = ?2))
               ORDER BY c.id DESC LIMIT ?3";
    let (t, e) = entity.unzip();
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params![t, e, limit as i64], |r| {
        Ok(LogEntry {
            id: r.get(0)?,
            transaction_id: r.get(1)?,
            author: r.get(2)?,
            entity_type: r.get(3)?,
            entity_id: r.get(4)?,
            attribute: r.get(5)?,
            old_value: r.get(6)?,
            new_value: r.get(7)?,
            winner: r.get(8)?,
        })
    })?;
    let mut out: Vec<LogEntry> = rows.collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}
