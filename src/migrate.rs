//! Upgrades of dimple's own tables in an existing replica, run on open.
//!
//! Each step runs in one `BEGIN IMMEDIATE` transaction together with the version
//! that records it, so a crash midway leaves the database as it was and the next
//! open runs the step again. Steps only ever add information; they never touch the
//! app's tables.

use crate::error::{Error, Result};
use crate::meta;
use rusqlite::{Connection, TransactionBehavior};

/// dimple's tables in a replica, as `init` creates them (idempotent). The views
/// that read the records (schema/log_views.sql) are not stored in a replica:
/// [`crate::log::register`] makes them TEMP views on each connection.
pub const SCHEMA: &str = concat!(include_str!("../schema/log.sql"), include_str!("../schema/local.sql"));

/// The log's tables with the views over them stored in the file, as the
/// upgrade steps before version 10 made them (the step to 10 drops the views).
const LOG_WITH_VIEWS: &str = concat!(include_str!("../schema/log.sql"), include_str!("../schema/log_views.sql"));

const KEY: &str = "local_schema";
/// The change log's tables as replicas kept them up to version 3 (and as snapshots
/// still carry them).
const WIRE_LOG: &str = include_str!("../schema/wire_log.sql");

/// The local schema version `schema/local.sql` creates.
pub const CURRENT: i64 = 10;

/// Brings the ZV_ tables up to [`CURRENT`]; a database from a newer dimple is
/// refused rather than misread.
pub fn upgrade(conn: &mut Connection) -> Result<()> {
    let version = version_of(conn)?;
    if version > CURRENT {
        return Err(Error::Invalid(format!(
            "this replica's tables are version {version}, newer than this dimple understands ({CURRENT}); upgrade dimple"
        )));
    }
    if version == CURRENT {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have upgraded while we waited for the lock.
    let at = version_of(&tx)?;
    if at < 2 {
        authors_in_the_log(&tx)?;
    }
    if at < 3 {
        // Version 3: ZV_BLOB_MISSING (attachments); only a table added.
        tx.execute_batch(include_str!("../schema/local.sql"))?;
    }
    if at < 4 {
        compact_log(&tx)?;
    }
    if at < 5 {
        packed_outbox(&tx, at)?;
    }
    if at < 6 {
        records_per_row(&tx)?;
    }
    if (6..9).contains(&at) {
        // Below 6 the step above wrote the records in the current form already.
        records_in_current_form(&tx)?;
    }
    if at < 8 {
        views_with_pasts(&tx)?;
    }
    if at < 10 {
        views_out_of_the_file(&tx)?;
    }
    meta::set(&tx, KEY, &CURRENT.to_string())?;
    tx.commit()?;
    Ok(())
}

fn version_of(conn: &Connection) -> Result<i64> {
    match meta::get(conn, KEY)? {
        Some(v) => v.parse().map_err(|_| Error::Invalid(format!("ZV_METADATA {KEY} {v:?} is not a number"))),
        // Before versions were recorded: version 1, unless the tables already have
        // the author columns (a replica made by this dimple before its first write).
        None => {
            let has_author: bool = conn.query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('ZV_CHANGE') WHERE name = 'author_n'",
                [],
                |r| r.get(0),
            )?;
            Ok(if has_author { 2 } else { 1 })
        }
    }
}

/// Version 2: changes and clock entries carry the author of their transaction (as a
/// `ZV_AUTHOR` number), and ids are unique per author (issue 9: one member reusing another's ids must not
/// take them away from it).
fn authors_in_the_log(tx: &Connection) -> Result<()> {
    tx.execute_batch(
        "ALTER TABLE ZV_CHANGE RENAME TO ZV_OLD_CHANGE;
         ALTER TABLE ZV_TRANSACTION RENAME TO ZV_OLD_TRANSACTION;
         ALTER TABLE ZV_CLOCK RENAME TO ZV_OLD_CLOCK;",
    )?;
    tx.execute_batch(WIRE_LOG)?;
    tx.execute_batch(
        "INSERT INTO ZV_TRANSACTION(id, author) SELECT id, author FROM ZV_OLD_TRANSACTION;
         INSERT OR IGNORE INTO ZV_AUTHOR(id) SELECT DISTINCT author FROM ZV_OLD_TRANSACTION ORDER BY author;
         INSERT INTO ZV_CHANGE(id, transaction_id, entity_type, entity_id, attribute, old_value, new_value, author_n)
           SELECT c.id, c.transaction_id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value, a.n
           FROM ZV_OLD_CHANGE c JOIN ZV_OLD_TRANSACTION t ON t.id = c.transaction_id JOIN ZV_AUTHOR a ON a.id = t.author;
         INSERT INTO ZV_CLOCK(entity_type, entity_id, attribute, change_id, author_n)
           SELECT k.entity_type, k.entity_id, k.attribute, k.change_id, c.author_n
           FROM ZV_OLD_CLOCK k JOIN ZV_CHANGE c ON c.id = k.change_id;",
    )?;
    let lost: i64 = tx.query_row(
        "SELECT (SELECT count(*) FROM ZV_OLD_CHANGE) - (SELECT count(*) FROM ZV_CHANGE)
              + (SELECT count(*) FROM ZV_OLD_CLOCK) - (SELECT count(*) FROM ZV_CLOCK)",
        [],
        |r| r.get(0),
    )?;
    if lost != 0 {
        return Err(Error::Invalid(format!(
            "cannot upgrade the change log: {lost} changes or clock entries name no transaction; nothing was changed"
        )));
    }
    tx.execute_batch("DROP TABLE ZV_OLD_CLOCK; DROP TABLE ZV_OLD_CHANGE; DROP TABLE ZV_OLD_TRANSACTION;")?;
    Ok(())
}

/// Version 4: the change log in its compact form (schema/log.sql): ids as bytes,
/// names and transactions numbered, no separate clock; the seed's tables become
/// views with their columns (version 5's step then puts this replica's changes
/// after the push cursor in the outbox). Nothing is lost: the step counts the
/// changes on both sides and stops, changing nothing, when they differ.
fn compact_log(tx: &Connection) -> Result<()> {
    tx.execute_batch(
        "ALTER TABLE ZV_CHANGE RENAME TO ZV_V3_CHANGE;
         ALTER TABLE ZV_TRANSACTION RENAME TO ZV_V3_TRANSACTION;
         ALTER TABLE ZV_CLOCK RENAME TO ZV_V3_CLOCK;",
    )?;
    tx.execute_batch(LOG_WITH_VIEWS)?;
    let moved = crate::log::import(
        tx,
        "SELECT c.id AS id, c.transaction_id AS transaction_id, c.entity_type AS entity_type,
                c.entity_id AS entity_id, c.attribute AS attribute, c.old_value AS old_value,
                c.new_value AS new_value, a.id AS author
         FROM ZV_V3_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n",
        "the change log",
    )?;
    let before: i64 = tx.query_row("SELECT count(*) FROM ZV_V3_CHANGE", [], |r| r.get(0))?;
    if moved as i64 != before {
        return Err(Error::Invalid(format!(
            "cannot upgrade the change log: {before} changes, of which {moved} could be moved; nothing was changed"
        )));
    }
    // Transactions that hold no change any more (history pruned) are kept too.
    tx.execute_batch(&format!(
        "INSERT OR IGNORE INTO ZV_AUTHOR(id) SELECT DISTINCT author FROM ZV_V3_TRANSACTION;
         INSERT OR IGNORE INTO ZV_TX(id, author_n)
           SELECT CASE WHEN length({b}) = 16 AND {t} = t.id THEN {b} ELSE t.id END, a.n
           FROM ZV_V3_TRANSACTION t JOIN ZV_AUTHOR a ON a.id = t.author;",
        b = crate::log::id_blob_sql("t.id"),
        t = crate::log::id_text_sql(&crate::log::id_blob_sql("t.id")),
    ))?;
    tx.execute_batch("DROP TABLE ZV_V3_CLOCK; DROP TABLE ZV_V3_CHANGE; DROP TABLE ZV_V3_TRANSACTION;")?;
    Ok(())
}

/// Version 5: the outbox holds unpushed changes whole, in packets
/// (src/outbox.rs), instead of a row per change naming its place in the log. A
/// version-4 outbox is read through the log, in id order, exactly as its push
/// would have read it; a log that was in the text form until the step before
/// has no outbox yet, and its changes after the push cursor are the ones waiting.
/// The step stops, changing nothing, when an outbox entry has no change in the
/// log.
fn packed_outbox(tx: &Connection, from: i64) -> Result<()> {
    let me: String = meta::get(tx, "database_uuid")?.unwrap_or_default();
    if from < 4 {
        let through = meta::PushState::load(tx)?.through;
        crate::outbox::rebuild(tx, &me, &through)?;
        return Ok(());
    }
    tx.execute_batch("ALTER TABLE ZV_OUTBOX RENAME TO ZV_V4_OUTBOX;")?;
    tx.execute_batch(LOG_WITH_VIEWS)?;
    let moved = crate::outbox::fill(
        tx,
        "JOIN ZV_V4_OUTBOX o ON o.id = l.id AND o.type_n = l.type_n AND o.entity_id = l.entity_id AND o.attr_n = l.attr_n
         WHERE l.author_n = (SELECT n FROM ZV_AUTHOR WHERE id = ?1) ORDER BY o.id",
        &[&me],
    )?;
    let before: u64 = tx.query_row("SELECT count(*) FROM ZV_V4_OUTBOX", [], |r| r.get(0))?;
    if moved != before {
        return Err(Error::Invalid(format!(
            "cannot upgrade the outbox: {before} unpushed changes, of which {moved} are in the change log; nothing was changed"
        )));
    }
    tx.execute_batch("DROP TABLE ZV_V4_OUTBOX;")?;
    Ok(())
}

/// Version 6: the log as a record per table row holding its winners, and the
/// superseded changes in a history (schema/log.sql, docs/design/log-per-row.md);
/// `ZV_LOG` becomes a view of both. A log that an earlier step of this same
/// upgrade wrote is already in that form. The step counts the changes on both
/// sides and stops, changing nothing, when they differ.
fn records_per_row(tx: &Connection) -> Result<()> {
    if !crate::sql::has_table(tx, "main", "ZV_LOG")? {
        return Ok(());
    }
    // The seed's views name the table: they are made again over the new one.
    tx.execute_batch(
        "DROP VIEW IF EXISTS main.ZV_CHANGE; DROP VIEW IF EXISTS main.ZV_CLOCK;
         ALTER TABLE ZV_LOG RENAME TO ZV_V5_LOG;",
    )?;
    tx.execute_batch(LOG_WITH_VIEWS)?;
    let read = crate::log::records_from(tx, "main.ZV_V5_LOG")?;
    let before: u64 = tx.query_row("SELECT count(*) FROM ZV_V5_LOG", [], |r| r.get(0))?;
    let after = crate::log::count(tx)? as u64;
    if read != before || after != before {
        return Err(Error::Invalid(format!(
            "cannot upgrade the change log: {before} changes, of which {after} could be moved; nothing was changed"
        )));
    }
    tx.execute_batch("DROP TABLE ZV_V5_LOG;")?;
    Ok(())
}

/// Versions 7 and 9: every record written again in the form this build
/// writes (src/record/mod.rs), in one pass whichever of the two a replica lacks.
/// Version 7, form 2: an id may also be a difference from the record's first
/// id, and a difference across milliseconds is written as milliseconds and
/// counter (a row with a middle column updated took a full 16 bytes for the
/// next column's id and 9 for the update's). Version 9, form 3: a change with
/// the author and transaction numbers of the change before it in the record
/// leaves them out (two bytes a cell), and one whose old value is the new
/// value of the change it superseded, kept in the record's past, leaves that
/// out.
fn records_in_current_form(tx: &Connection) -> Result<()> {
    crate::log::rewrite_records(tx, crate::record::encode_row)?;
    Ok(())
}

/// Version 8: a record may keep its row's past, the changes superseded there
/// (src/record/mod.rs), and `ZV_LOG` reads it with `dimple_past`. Only the views
/// change: the history's rows stay where they are, and a record without a
/// past is the same bytes as before.
fn views_with_pasts(tx: &Connection) -> Result<()> {
    tx.execute_batch(MAIN_VIEWS_DROPPED)?;
    tx.execute_batch(LOG_WITH_VIEWS)?;
    Ok(())
}

/// Version 10: the views that read the records through dimple's functions
/// (`ZV_LOG`, `ZV_CHANGE`, `ZV_CLOCK`) leave the file; each dimple connection
/// makes them as TEMP views ([`crate::log::register`]). SQLite checks every
/// view of the file when an app renames a table or column or drops a column,
/// and on the app's own connection, which lacks the functions, that check
/// failed: no app could run those migrations on any of its tables.
fn views_out_of_the_file(tx: &Connection) -> Result<()> {
    tx.execute_batch(MAIN_VIEWS_DROPPED)?;
    Ok(())
}

const MAIN_VIEWS_DROPPED: &str =
    "DROP VIEW IF EXISTS main.ZV_CHANGE; DROP VIEW IF EXISTS main.ZV_CLOCK; DROP VIEW IF EXISTS main.ZV_LOG;";

/// `ZV_LOG` as local schema 6 and 7 made it, before records kept a past.
const VERSION_7_LOG_VIEW: &str = "DROP VIEW main.ZV_LOG;
    CREATE VIEW main.ZV_LOG (type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value) AS
    SELECT r.type_n, r.entity_id, c.attr_n, c.id, c.author_n, c.tx_n, c.old_value, c.new_value
    FROM ZV_ROW r, dimple_cells(r.cells) c
    UNION ALL
    SELECT type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value FROM ZV_HISTORY;";

/// Writes every record in form 2, as local schema 8 wrote them, and the
/// version to 8: what the tests of the upgrade start from. Returns how many
/// records changed form.
#[doc(hidden)]
pub fn back_to_version_8(conn: &mut Connection) -> Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(&crate::log::views_sql(false))?;
    let n = crate::log::rewrite_records(&tx, crate::record::encode_form_2)?;
    meta::set(&tx, KEY, "8")?;
    tx.commit()?;
    Ok(n)
}

/// [`back_to_version_8`], then the records' pasts moved into the history and
/// `ZV_LOG` and the version made what local schema 7 had. Returns how many
/// changes moved.
#[doc(hidden)]
pub fn back_to_version_7(conn: &mut Connection) -> Result<usize> {
    back_to_version_8(conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = crate::log::pasts_to_history(&tx)?;
    tx.execute_batch(VERSION_7_LOG_VIEW)?;
    meta::set(&tx, KEY, "7")?;
    tx.commit()?;
    Ok(n)
}

/// [`back_to_version_7`], then every record back into form 1, as local schema
/// 6 wrote them, and the version to 6. Returns how many records changed form.
#[doc(hidden)]
pub fn back_to_version_6(conn: &mut Connection) -> Result<u64> {
    back_to_version_7(conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = crate::log::rewrite_records(&tx, |cells, _| crate::record::encode_form_1(cells))?;
    meta::set(&tx, KEY, "6")?;
    tx.commit()?;
    Ok(n)
}
