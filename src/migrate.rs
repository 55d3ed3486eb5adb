//! Upgrades of dimple's own tables in an existing replica, run on open.
//!
//! Each step runs in one `BEGIN IMMEDIATE` transaction together with the version
//! that records it, so a crash midway leaves the database as it was and the next
//! open runs the step again. Steps only ever add information; they never touch the
//! app's tables.

use crate::error::{Error, Result};
use crate::meta;
use rusqlite::{Connection, TransactionBehavior};

/// dimple's tables in a replica, as `init` creates them (idempotent).
pub const SCHEMA: &str = concat!(include_str!("../schema/log.sql"), include_str!("../schema/local.sql"));

const KEY: &str = "local_schema";
/// The local schema version `schema/local.sql` creates.
pub const CURRENT: i64 = 3;

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
    tx.execute_batch(SCHEMA)?;
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
