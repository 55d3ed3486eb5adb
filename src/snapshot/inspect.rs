//! A snapshot downloaded from the bucket is remote input, whoever signed its
//! pointer: before a clone loads it or a catch-up takes from it, its format,
//! its CREATE TABLE statements and every change of its log are checked here,
//! read from its tables and never through the views its writer chose.

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;

/// What [`inspect`] found in a snapshot it accepted.
pub(crate) struct Inspected {
    /// Its tables' (name, CREATE TABLE).
    pub(crate) tables: Vec<(String, String)>,
    /// For a log of records: how many changes and the greatest id (what a
    /// clone otherwise reads every record again for, once copied).
    pub(crate) winners: Option<(u64, Option<[u8; 16]>)>,
    /// The cells of live rows whose winning value is stored out of line.
    pub(crate) references: Vec<Referenced>,
}

/// A cell of a live row whose winning change stores its value out of line.
pub(crate) struct Referenced {
    pub(crate) table: String,
    pub(crate) entity_id: String,
    pub(crate) column: String,
    pub(crate) r: crate::value::Ref,
}

/// Checks a downloaded snapshot.
pub(crate) fn inspect(path: &Path, origin: &str) -> Result<Inspected> {
    let sqlerr = |e: rusqlite::Error| Error::bad(origin, format!("not a readable snapshot: {e}"));
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlerr)?;
    crate::record::register(&conn)?;
    let format: Option<i64> =
        conn.query_row("SELECT format FROM ZV_SNAPSHOT", [], |r| r.get(0)).optional().map_err(sqlerr)?;
    if !format.is_some_and(crate::snapshot::readable) {
        return Err(Error::bad(
            origin,
            format!(
                "unknown snapshot format {format:?} (this dimple reads formats 1 to {})",
                crate::snapshot::SNAPSHOT_FORMAT
            ),
        ));
    }
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT tbl, sql FROM ZV_SCHEMA ORDER BY tbl")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(sqlerr)?;
    for (tbl, sql) in &tables {
        // Remote SQL: run only once checked to be one plain CREATE TABLE of the
        // table it names, and never one of dimple's own (see crate::ddl).
        crate::ddl::check_create_table(tbl, sql).map_err(|reason| Error::bad(origin, reason))?;
    }
    let (mut winners, mut references) = (None, Vec::new());
    if crate::sql::has_table(&conn, "main", "ZV_ROW").map_err(sqlerr)? {
        let checked = check_records(&conn, origin)?;
        winners = Some((checked.0, checked.1));
        references = checked.2;
    } else if crate::sql::has_table(&conn, "main", "ZV_LOG").map_err(sqlerr)? {
        check_compact(&conn, origin)?;
    }
    Ok(Inspected { tables, winners, references })
}

/// A compact log from a bucket is remote input: every id 16 bytes, every number
/// naming a row of its table, every name and value text, before any of it is
/// read (by a clone, or by a replica catching up: the seed's views over a broken
/// log would silently leave changes out).
fn check_compact(conn: &Connection, origin: &str) -> Result<()> {
    let bad: Option<String> = conn
        .query_row(
            "SELECT 'a change whose id is not 16 bytes' FROM ZV_LOG WHERE typeof(id) <> 'blob' OR length(id) <> 16
             UNION ALL SELECT 'a change naming no table or column' FROM ZV_LOG
               WHERE type_n NOT IN (SELECT n FROM ZV_NAME) OR attr_n NOT IN (SELECT n FROM ZV_NAME)
             UNION ALL SELECT 'a change naming no author or transaction' FROM ZV_LOG
               WHERE author_n NOT IN (SELECT n FROM ZV_AUTHOR) OR tx_n NOT IN (SELECT n FROM ZV_TX)
             UNION ALL SELECT 'a change whose row id or value is not text' FROM ZV_LOG
               WHERE typeof(entity_id) <> 'text' OR typeof(old_value) NOT IN ('text', 'null')
                  OR typeof(new_value) NOT IN ('text', 'null')
             UNION ALL SELECT 'a transaction naming no author' FROM ZV_TX WHERE author_n NOT IN (SELECT n FROM ZV_AUTHOR)
             UNION ALL SELECT 'a name or author that is not text' FROM ZV_NAME WHERE typeof(name) <> 'text'
             UNION ALL SELECT 'a name or author that is not text' FROM ZV_AUTHOR WHERE typeof(id) <> 'text'
             LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match bad {
        Some(what) => Err(Error::bad(origin, format!("the snapshot's log holds {what}"))),
        None => Ok(()),
    }
}

/// The records of a snapshot in the replica's own form are remote input too:
/// the table laid out as ours (the clone copies it by position), every record
/// readable in one of its three forms, each exactly as written (src/record/mod.rs;
/// formats 2 and 3 hold forms 1 and 2, written again when copied; a damaged one
/// is an error of the query), no record keeping a past (a snapshot carries
/// winners alone), and every cell as [`check_compact`] wants a change. Read
/// from the tables, never through the file's own views, which its writer
/// chose. Returns how many changes the records hold and their greatest id.
pub(crate) fn check_records(conn: &Connection, origin: &str) -> Result<(u64, Option<[u8; 16]>, Vec<Referenced>)> {
    let bad = |what: String| Error::bad(origin, format!("the snapshot's log holds {what}"));
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('ZV_ROW') ORDER BY cid")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if columns != ["type_n", "entity_id", "cells"] {
        return Err(bad(format!("a record table with the columns {columns:?}")));
    }
    let unreadable = |e: rusqlite::Error| bad(format!("an unreadable record ({e})"));
    let found: Option<String> = conn
        .query_row(
            "SELECT 'a transaction naming no author' FROM ZV_TX WHERE author_n NOT IN (SELECT n FROM ZV_AUTHOR)
             UNION ALL SELECT 'a name or author that is not text' FROM ZV_NAME WHERE typeof(name) <> 'text'
             UNION ALL SELECT 'a name or author that is not text' FROM ZV_AUTHOR WHERE typeof(id) <> 'text'
             LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(unreadable)?;
    if let Some(what) = found {
        return Err(bad(what));
    }
    let numbers = |table: &str| -> Result<std::collections::HashSet<i64>> {
        let mut stmt = conn.prepare(&format!("SELECT n FROM {table}")).map_err(unreadable)?;
        let all = stmt.query_map([], |r| r.get(0)).map_err(unreadable)?.collect::<rusqlite::Result<_>>();
        all.map_err(unreadable)
    };
    let (authors, txs) = (numbers("ZV_AUTHOR")?, numbers("ZV_TX")?);
    let names: std::collections::HashMap<i64, String> = {
        let mut stmt = conn.prepare("SELECT n, name FROM ZV_NAME").map_err(unreadable)?;
        let all: rusqlite::Result<_> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(unreadable)?.collect();
        all.map_err(unreadable)?
    };
    let name = |n: u64| i64::try_from(n).ok().and_then(|n| names.get(&n));
    let mut references = Vec::new();
    let known = |set: &std::collections::HashSet<i64>, n: u64| i64::try_from(n).is_ok_and(|n| set.contains(&n));
    // Every record decoded once, here rather than through `dimple_cells` in
    // SQL: the checks of half a million cells as SQL expressions were half of
    // a clone's time.
    let mut stmt = conn.prepare("SELECT type_n, entity_id, cells FROM ZV_ROW").map_err(unreadable)?;
    let mut rows = stmt.query([]).map_err(unreadable)?;
    let (mut changes, mut greatest) = (0u64, None::<[u8; 16]>);
    while let Some(row) = rows.next().map_err(unreadable)? {
        use rusqlite::types::ValueRef;
        let ValueRef::Blob(record) = row.get_ref(2).map_err(unreadable)? else {
            return Err(bad("a record that is not bytes".into()));
        };
        if !matches!(row.get_ref(1).map_err(unreadable)?, ValueRef::Text(_)) {
            return Err(bad("a row id that is not text".into()));
        }
        let table = match row.get_ref(0).map_err(unreadable)? {
            ValueRef::Integer(n) if names.contains_key(&n) => &names[&n],
            _ => return Err(bad("a record naming no table".into())),
        };
        let (cells, past) =
            crate::record::decode_row(record).map_err(|e| bad(format!("an unreadable record ({e})")))?;
        if !past.is_empty() {
            return Err(bad("a record keeping superseded changes".into()));
        }
        let alive = cells.iter().any(|c| {
            name(c.attr_n).is_some_and(|a| a == crate::track::ROW)
                && c.new_value.as_deref() == Some(crate::merge::ALIVE)
        });
        for c in cells.iter().filter(|_| alive) {
            if let (Some(r), Some(column)) = (crate::blob::reference(c.new_value.as_deref()), name(c.attr_n)) {
                let entity_id = row.get(1).map_err(unreadable)?;
                references.push(Referenced { table: table.clone(), entity_id, column: column.clone(), r });
            }
        }
        for c in &cells {
            let crate::record::Id::Uuid(id) = c.id else {
                return Err(bad("a change whose id is not 16 bytes".into()));
            };
            changes += 1;
            greatest = greatest.max(Some(id));
            if name(c.attr_n).is_none() {
                return Err(bad("a change naming no column".into()));
            }
            if !known(&authors, c.author_n) || !known(&txs, c.tx_n) {
                return Err(bad("a change naming no author or transaction".into()));
            }
        }
    }
    Ok((changes, greatest, references))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::fixtures::{changes, records_file, snapshot_file};

    /// A compact log is remote input: bad ids, dangling numbers and values that are
    /// not text are refused, naming what is wrong (`inspect` runs this check
    /// before a clone or a catch-up attaches the file).
    #[test]
    fn a_compact_snapshot_with_a_broken_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let all = changes(0xbad, 50);
        let cases = [
            ("UPDATE ZV_LOG SET id = substr(id, 1, 15) WHERE id = (SELECT min(id) FROM ZV_LOG)", "16 bytes"),
            ("UPDATE ZV_LOG SET type_n = 999", "no table or column"),
            ("DELETE FROM ZV_TX", "no author or transaction"),
            ("UPDATE ZV_LOG SET new_value = x'00ff'", "not text"),
        ];
        for (i, (sabotage, why)) in cases.iter().enumerate() {
            let path = snapshot_file(dir.path(), &all, true);
            let broken = dir.path().join(format!("broken{i}.db"));
            std::fs::copy(&path, &broken).unwrap();
            std::fs::remove_file(&path).unwrap();
            refused_after(&Connection::open(&broken).unwrap(), sabotage, why, check_compact);
        }
    }

    /// `check` passes the snapshot open on `c`, then refuses it for `why` once
    /// `sabotage` has run.
    fn refused_after(c: &Connection, sabotage: &str, why: &str, check: fn(&Connection, &str) -> Result<()>) {
        check(c, "snapshots/x.db").expect("whole before the sabotage");
        c.execute_batch(sabotage).unwrap_or_else(|e| panic!("{sabotage}: {e}"));
        let err = check(c, "snapshots/x.db").unwrap_err().to_string();
        assert!(err.contains(why), "{sabotage}: {err}");
    }

    /// Records are remote input: a damaged record, a record keeping a past,
    /// dangling numbers, a row id that is not text and a table laid out
    /// otherwise are refused, naming what is wrong.
    #[test]
    fn a_snapshot_with_broken_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let all = changes(0xbad2, 50);
        let cases = [
            ("UPDATE ZV_ROW SET cells = CAST(cells || x'00' AS BLOB)", "unreadable record"),
            // Two ids of one node written in full: readable, but in neither
            // form's one way of writing the second.
            (
                "UPDATE ZV_ROW SET cells = CAST(x'02000190a00000007000800000000000abcd01010000'
                                                || x'03000190a00000007000800000010000abcd01010000' AS BLOB)",
                "unreadable record",
            ),
            // A change leaving its old value to a past the record does not have.
            (
                "UPDATE ZV_ROW SET cells = CAST(x'0210' || x'0190a00000007000800000000000abcd' || x'010100' AS BLOB)",
                "unreadable record",
            ),
            // A readable record keeping a superseded change: a snapshot holds
            // winners alone.
            (
                "UPDATE ZV_ROW SET cells = CAST(x'02000190a00000007000800000000000abcd01010000'
                                                || x'00' || x'02000190a0000000700080000000ffffffff01010000' AS BLOB)",
                "keeping superseded changes",
            ),
            ("UPDATE ZV_ROW SET cells = 'text'", "not bytes"),
            ("UPDATE ZV_ROW SET type_n = type_n + 999", "naming no table"),
            ("DELETE FROM ZV_NAME WHERE n = (SELECT max(n) FROM ZV_NAME)", "naming no"),
            ("DELETE FROM ZV_TX", "no author or transaction"),
            ("UPDATE ZV_ROW SET entity_id = CAST(entity_id AS BLOB)", "not text"),
            (
                "PRAGMA legacy_alter_table = ON; CREATE TABLE x(entity_id, type_n, cells);
                 INSERT INTO x SELECT entity_id, type_n, cells FROM ZV_ROW; DROP TABLE ZV_ROW;
                 ALTER TABLE x RENAME TO ZV_ROW;",
                "columns",
            ),
        ];
        for (sabotage, why) in cases {
            let (path, _) = records_file(dir.path(), &all);
            let c = Connection::open(&path).unwrap();
            crate::log::register(&c).unwrap();
            refused_after(&c, sabotage, why, |c, o| check_records(c, o).map(|_| ()));
        }
    }
}
