//! The log's edits outside merging: pruning the history, a fork's removal of
//! an own change, a snapshot's log written and read, and imports of the text
//! form (a clone of an old snapshot, an upgrade).

use super::*;
use crate::error::{Error, Result};
use crate::merge::{Change, Outcome};
use crate::record::{self, Cell, Id};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

/// Takes `c` (a change of this replica, not pushed) out of the log; the caller
/// empties the outbox ([`crate::outbox::clear`]). When `c` was its cell's
/// winner, the best change of the cell's history (the record's past and
/// `ZV_HISTORY`) takes its place.
pub fn remove_own(conn: &Connection, c: &Change) -> Result<()> {
    let (Some(type_n), Some(attr_n)) = (known_name(conn, &c.entity_type)?, known_name(conn, &c.attribute)?) else {
        return Ok(());
    };
    let Some(author_n) = known_author(conn, &c.author)? else { return Ok(()) };
    // Out of the cell's history: one change, by its id and author number.
    let unhistory = |id: Value, author_n: i64| -> Result<()> {
        conn.prepare_cached(
            "DELETE FROM ZV_HISTORY WHERE type_n = ?1 AND entity_id = ?2 AND attr_n = ?3 AND id = ?4 AND author_n = ?5",
        )?
        .execute(params![type_n, c.entity_id, attr_n, id, author_n])?;
        Ok(())
    };
    unhistory(id_value(&c.id), author_n)?;
    let Some((mut cells, mut past)) = record_of(conn, &c.entity_type, &c.entity_id)? else { return Ok(()) };
    let id = Id::of(&c.id);
    let is_c = |x: &Cell| x.attr_n == attr_n as u64 && x.id == id && x.author_n == author_n as u64;
    let kept = past.len();
    past.retain(|x| !is_c(x));
    let write =
        |cells: &[Cell], past: &[Cell]| -> Result<()> {
            conn.prepare_cached("UPDATE ZV_ROW SET cells = ?3 WHERE type_n = ?1 AND entity_id = ?2")?
                .execute(params![type_n, c.entity_id, record::encode_row(cells, past)])?;
            Ok(())
        };
    let Some(at) = cells.iter().position(is_c) else {
        if past.len() != kept {
            write(&cells, &past)?;
        }
        return Ok(());
    };
    cells.remove(at);
    let mut stmt = conn.prepare_cached(
        "SELECT h.id, h.author_n, h.tx_n, h.old_value, h.new_value, a.id FROM ZV_HISTORY h
         JOIN ZV_AUTHOR a ON a.n = h.author_n WHERE h.type_n = ?1 AND h.entity_id = ?2 AND h.attr_n = ?3",
    )?;
    // The cell's superseded changes with their authors' ids (the merge orders
    // by id, then author), each from the history (None) or the past (Some(at)).
    let mut superseded: Vec<(Cell, String, Option<usize>)> = Vec::new();
    let mut rows = stmt.query(params![type_n, c.entity_id, attr_n])?;
    while let Some(r) = rows.next()? {
        let cell = Cell {
            attr_n: attr_n as u64,
            id: stored_to_id(r.get(0)?)?,
            author_n: r.get::<_, i64>(1)? as u64,
            tx_n: r.get::<_, i64>(2)? as u64,
            old_value: r.get(3)?,
            new_value: r.get(4)?,
        };
        superseded.push((cell, r.get(5)?, None));
    }
    drop(rows);
    for (at, cell) in past.iter().enumerate().filter(|(_, x)| x.attr_n == attr_n as u64) {
        superseded.push((cell.clone(), author_of(conn, cell.author_n)?, Some(at)));
    }
    let best =
        superseded.into_iter().max_by(|(a, a_author, _), (b, b_author, _)| (&a.id, a_author).cmp(&(&b.id, b_author)));
    if let Some((next, _, from_past)) = best {
        match from_past {
            Some(i) => drop(past.remove(i)),
            None => unhistory(stored_id(&next.id), next.author_n as i64)?,
        }
        record::merge(&mut cells, next, |_, _| std::cmp::Ordering::Equal);
    }
    if cells.is_empty() {
        // No winner left, so no past either (a past change was superseded by
        // a winner of its cell).
        conn.prepare_cached("DELETE FROM ZV_ROW WHERE type_n = ?1 AND entity_id = ?2")?
            .execute(params![type_n, c.entity_id])?;
    } else {
        write(&cells, &past)?;
    }
    Ok(())
}

/// Removes the superseded changes (the history and the records' pasts) older
/// than id `before` (stored form), of a tracked table and column, and not
/// waiting in the outbox (a change of replica `me` after `through`, the push
/// cursor's stored form). Returns how many; the caller drops the transactions
/// left empty ([`drop_empty_transactions`]). Winners are never removed.
///
/// The pasts are read in one pass over every record (they are not indexed by
/// id): retention runs at most once an hour.
pub fn prune_superseded(conn: &Connection, before: &Value, me: &str, through: &Value) -> Result<usize> {
    let pruned = prune_history_rows(conn, before, me, through)?;
    let tracked = tracked_cells(conn)?;
    let me = known_author(conn, me)?.map(|n| n as u64);
    let mut in_pasts = 0;
    records_again(
        conn,
        &mut |type_n, cells, mut past| {
            let kept = past.len();
            past.retain(|c| {
                let prunable = id_before(&c.id, before)
                    && tracked.contains(&(type_n as u64, c.attr_n))
                    && !(Some(c.author_n) == me && id_after(&c.id, through));
                !prunable
            });
            if past.len() == kept {
                return Ok(None);
            }
            in_pasts += kept - past.len();
            Ok(Some(record::encode_row(&cells, &past)))
        },
        true,
    )?;
    Ok(pruned + in_pasts)
}

/// The (table, attribute) numbers of the tracked tables' columns and rows.
fn tracked_cells(conn: &Connection) -> Result<std::collections::HashSet<(u64, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT t.n, c.n FROM ZV_TRACKED k JOIN ZV_NAME t ON t.name = k.tbl
         JOIN ZV_NAME c ON c.name = '*' OR c.name IN (SELECT value FROM json_each(k.columns))",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// [`prune_superseded`] of the history's rows.
fn prune_history_rows(conn: &Connection, before: &Value, me: &str, through: &Value) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM ZV_HISTORY AS l
         WHERE l.id < ?1
           AND EXISTS (SELECT 1 FROM ZV_TRACKED t
                       WHERE t.tbl = (SELECT name FROM ZV_NAME WHERE n = l.type_n)
                         AND ((SELECT name FROM ZV_NAME WHERE n = l.attr_n) = '*'
                              OR (SELECT name FROM ZV_NAME WHERE n = l.attr_n) IN (SELECT value FROM json_each(t.columns))))
           AND NOT (l.author_n IS (SELECT n FROM ZV_AUTHOR WHERE id = ?2) AND l.id > ?3)",
        params![before, me, through],
    )?)
}

/// Writes the records of the log of schema `from` (its winners) into the
/// snapshot being built (schema `main`, in the form of schema/log.sql, empty),
/// with the names, authors and transactions they use; no history (the records'
/// pasts are left out). Returns how many changes.
pub fn copy_winners(s: &Connection, from: &str) -> Result<u64> {
    s.execute_batch(&format!(
        "INSERT INTO main.ZV_AUTHOR SELECT * FROM {from}.ZV_AUTHOR;
         INSERT INTO main.ZV_NAME SELECT * FROM {from}.ZV_NAME;"
    ))?;
    // Each record cut before its past as it is copied: a copy then an update
    // left the snapshot's pages as full as before (the bounded bucket's
    // snapshot took 3.3 MB instead of 1.4).
    {
        let mut read =
            s.prepare(&format!("SELECT type_n, entity_id, cells FROM {from}.ZV_ROW ORDER BY type_n, entity_id"))?;
        let mut write = s.prepare("INSERT INTO main.ZV_ROW(type_n, entity_id, cells) VALUES (?1, ?2, ?3)")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let cells = record_in(r, 2)?;
            write.execute(params![r.get::<_, Value>(0)?, r.get::<_, Value>(1)?, record::without_past(cells)?])?;
        }
    }
    s.execute_batch(&format!(
        "INSERT INTO main.ZV_TX SELECT * FROM {from}.ZV_TX
           WHERE n IN (SELECT c.tx_n FROM main.ZV_ROW r, dimple_cells(r.cells) c);"
    ))?;
    Ok(count(s)? as u64)
}

/// Copies the checked log of a snapshot (attached as `snap`) into this log when
/// it is empty: its numbers as they are, and its records page by page (SQLite's
/// transfer optimization: the bulk of a clone's time otherwise) when it is in
/// the replica's own form, else (a row per change, snapshot format 1) made into
/// records in one pass over its key order. Returns false, copying nothing, when
/// this log holds anything: the caller then imports change by change.
pub fn copy_from_snapshot(conn: &Connection) -> Result<bool> {
    let empty: bool = conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM main.ZV_ROW) AND NOT EXISTS (SELECT 1 FROM main.ZV_HISTORY)
            AND NOT EXISTS (SELECT 1 FROM main.ZV_AUTHOR) AND NOT EXISTS (SELECT 1 FROM main.ZV_NAME)
            AND NOT EXISTS (SELECT 1 FROM main.ZV_TX)",
        [],
        |r| r.get(0),
    )?;
    if !empty {
        return Ok(false);
    }
    conn.execute_batch(
        "INSERT INTO main.ZV_AUTHOR SELECT * FROM snap.ZV_AUTHOR;
         INSERT INTO main.ZV_NAME SELECT * FROM snap.ZV_NAME;
         INSERT INTO main.ZV_TX SELECT * FROM snap.ZV_TX;",
    )?;
    if crate::sql::has_table(conn, "snap", "ZV_ROW")? {
        // A snapshot carries no history (whatever its ZV_HISTORY holds is not read).
        conn.execute_batch("INSERT INTO main.ZV_ROW SELECT * FROM snap.ZV_ROW;")?;
        let format: i64 = conn.query_row("SELECT format FROM snap.ZV_SNAPSHOT", [], |r| r.get(0))?;
        if format < crate::snapshot::SNAPSHOT_FORMAT {
            // Formats 2 and 3: its records are in forms 1 and 2.
            rewrite_records(conn, record::encode_row)?;
        }
    } else {
        records_from(conn, "snap.ZV_LOG")?;
    }
    Ok(true)
}

/// Writes every record of this log again with `encode` (of its cells and
/// past) from what it reads in any form (src/record/mod.rs): the upgrades to
/// forms 2 and 3, a snapshot's records of an older format (checked readable
/// before), and tests going back to older forms. A record that cannot be read is left as it is.
/// Returns how many records changed.
pub(crate) fn rewrite_records(tx: &Connection, encode: fn(&[Cell], &[Cell]) -> Vec<u8>) -> Result<u64> {
    records_again(tx, &mut |_, cells, past| Ok(Some(encode(&cells, &past))), true)
}

/// How many records are not in the form this build writes (an older form,
/// from an upgrade not run yet or a process of an older build): what the
/// tests of the upgrade look for.
#[doc(hidden)]
pub fn records_in_older_form(conn: &Connection) -> Result<u64> {
    records_again(conn, &mut |_, cells, past| Ok(Some(record::encode_row(&cells, &past))), false)
}

/// Moves every record's past into `ZV_HISTORY`, leaving records of winners
/// alone: the log as local schema 7 and earlier kept it (tests going back to
/// those versions). Returns how many changes moved.
#[doc(hidden)]
pub fn pasts_to_history(tx: &Connection) -> Result<usize> {
    let moved = tx.execute(
        "INSERT INTO ZV_HISTORY(type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value)
         SELECT r.type_n, r.entity_id, p.attr_n, p.id, p.author_n, p.tx_n, p.old_value, p.new_value
         FROM ZV_ROW r, dimple_past(r.cells) p",
        [],
    )?;
    rewrite_records(tx, |cells, _| record::encode_form_2(cells, &[]))?;
    Ok(moved)
}

/// What [`records_again`] asks of each record: given its table number, cells
/// and past, the bytes it should be, or None to leave it as it is.
type Again<'a> = dyn FnMut(i64, Vec<Cell>, Vec<Cell>) -> Result<Option<Vec<u8>>> + 'a;

/// Writes again each record `again` encodes otherwise than it is, when
/// `write_them`; returns how many there are. A chunk of rows at a time in key
/// order, since SQLite does not promise what a scan sees of rows updated under
/// it.
fn records_again(tx: &Connection, again: &mut Again<'_>, write_them: bool) -> Result<u64> {
    // Rows and bytes a chunk holds at most: records with large values inline
    // would otherwise take a chunk's rows times their size in memory.
    const CHUNK: i64 = 4096;
    const CHUNK_BYTES: usize = 16 << 20;
    let mut read = tx.prepare(
        "SELECT type_n, entity_id, cells FROM main.ZV_ROW WHERE ?4 OR (type_n, entity_id) > (?1, ?2)
         ORDER BY type_n, entity_id LIMIT ?3",
    )?;
    let mut write = tx.prepare("UPDATE main.ZV_ROW SET cells = ?3 WHERE type_n = ?1 AND entity_id = ?2")?;
    let (mut after, mut n): (Option<(i64, rusqlite::types::Value)>, u64) = (None, 0);
    loop {
        let (type_n, entity_id) = after.clone().unwrap_or((0, rusqlite::types::Value::Null));
        let mut chunk: Vec<(i64, rusqlite::types::Value, Option<Vec<u8>>)> = Vec::new();
        let mut rows = read.query(rusqlite::params![type_n, entity_id, CHUNK, after.is_none()])?;
        let mut bytes = 0;
        while let Some(r) = rows.next()? {
            let cells = r.get_ref(2)?.as_blob().ok().map(<[u8]>::to_vec);
            bytes += cells.as_ref().map_or(0, Vec::len);
            chunk.push((r.get(0)?, r.get(1)?, cells));
            if bytes >= CHUNK_BYTES {
                break;
            }
        }
        drop(rows);
        let Some(last) = chunk.last() else { return Ok(n) };
        after = Some((last.0, last.1.clone()));
        for (type_n, entity_id, cells) in chunk {
            // A damaged record stays as it is: it stops reads of its row alone,
            // and `dimple verify` names it, as before (never a replica that no
            // longer opens).
            let Some(cells) = cells else { continue };
            let Ok((read, past)) = record::decode_row(&cells) else { continue };
            let Some(again) = again(type_n, read, past)? else { continue };
            if again != cells {
                if write_them {
                    write.execute(rusqlite::params![type_n, entity_id, again])?;
                }
                n += 1;
            }
        }
    }
}

/// Merges the changes of `from`, a log in the form of schema/snapshot_log.sql
/// whose numbers are this log's, into this log, each row's record written once
/// (the source is read in its key order: a row's changes come together). Returns
/// how many changes were read; the caller checks them (a snapshot's are checked
/// before, an upgrade's counted after).
pub(crate) fn records_from(conn: &Connection, from: &str) -> Result<u64> {
    let log = Log::new(conn)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value FROM {from}
         ORDER BY type_n, entity_id, attr_n, id, author_n"
    ))?;
    let mut rows = stmt.query([])?;
    let mut open: Option<(i64, String, Open)> = None;
    let mut read = 0;
    while let Some(r) = rows.next()? {
        let type_n: i64 = r.get(0)?;
        let entity_id = r.get_ref(1)?.as_str().map_err(|e| Error::Invalid(format!("a change's row id: {e}")))?;
        if open.as_ref().is_none_or(|(t, e, _)| *t != type_n || e != entity_id) {
            if let Some((t, e, o)) = open.take() {
                log.close(t, &e, &o)?;
            }
            open = Some((type_n, entity_id.to_owned(), Open::absent()));
        }
        let cell = Cell {
            attr_n: r.get::<_, i64>(2)? as u64,
            id: stored_to_id(r.get(3)?)?,
            author_n: r.get::<_, i64>(4)? as u64,
            tx_n: r.get::<_, i64>(5)? as u64,
            old_value: r.get(6)?,
            new_value: r.get(7)?,
        };
        let (_, e, o) = open.as_mut().expect("opened above");
        log.merge_cell(o, type_n, e, cell)?;
        read += 1;
    }
    if let Some((t, e, o)) = open.take() {
        log.close(t, &e, &o)?;
    }
    Ok(read)
}

/// Drops transactions no change names any more.
pub fn drop_empty_transactions(conn: &Connection) -> Result<usize> {
    Ok(conn.execute("DELETE FROM ZV_TX WHERE n NOT IN (SELECT tx_n FROM ZV_LOG)", [])?)
}

/// Loads changes in the text form into the log: `source` is a SELECT (of
/// dimple's own making) giving (id, transaction_id, entity_type, entity_id,
/// attribute, old_value, new_value, author) with the author as replica id text.
/// Changes the log holds are skipped; returns how many were added. Used to upgrade
/// a log kept in the text form and to clone from a snapshot. The source is read
/// once, its text borrowed, never copied, and the page cache is made large enough
/// for the log being built (the inserts land all over its b-tree: sorting them
/// first was slower, 1.8 s against 1.3 s for a clone of 500k changes). A change id
/// that is not a canonical UUID refuses the whole file (the caller's transaction
/// is then rolled back).
pub fn import(conn: &Connection, source: &str, origin: &str) -> Result<u64> {
    crate::sql::with_cache(conn, crate::sql::BIG_CACHE_KIB, || import_rows(conn, source, origin))
}

fn import_rows(conn: &Connection, source: &str, origin: &str) -> Result<u64> {
    let log = Log::new(conn)?;
    let bad = |e: rusqlite::types::FromSqlError| Error::bad(origin, format!("unreadable change: {e}"));
    let mut stmt = conn.prepare(&format!(
        "SELECT id, transaction_id, entity_type, entity_id, attribute, old_value, new_value, author FROM ({source})"
    ))?;
    let mut rows = stmt.query([])?;
    let mut added = 0;
    while let Some(r) = rows.next()? {
        let text = |i: usize| -> Result<&str> { r.get_ref(i)?.as_str().map_err(bad) };
        let maybe = |i: usize| -> Result<Option<&str>> { r.get_ref(i)?.as_str_or_null().map_err(bad) };
        let id = text(0)?;
        if !crate::layout::is_canonical_uuid(id) {
            return Err(Error::bad(origin, format!("change id {id:?} is not a canonical UUID")));
        }
        let parts = Parts {
            id,
            transaction_id: text(1)?,
            entity_type: text(2)?,
            entity_id: text(3)?,
            attribute: text(4)?,
            old_value: maybe(5)?,
            new_value: maybe(6)?,
            author: text(7)?,
        };
        if log.merge_now(&parts)? != Outcome::Duplicate {
            added += 1;
        }
    }
    Ok(added)
}
