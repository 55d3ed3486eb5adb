//! `dimple clone`: a new replica (its own id and key pair) from a bucket (seed
//! 003's "clone a new server as a full duplicate").
//!
//! With a snapshot (`snapshots/LATEST.json`, see [`crate::snapshot`]): download it,
//! check its sha256, create the tracked tables from its CREATE TABLE statements
//! (tables that already exist in the database are kept and filled), load their rows,
//! the merge state and the cursor vector (keys pinned from it), install capture,
//! then pull: each replica's pull walks back from its head only to the snapshot's
//! cursor batch, so only the tail is downloaded.
//!
//! Without a snapshot: a full replay. Tables that already exist in DB are tracked;
//! the others are created from the schemas the replicas publish (a clone follows
//! the group's schema, see [`crate::schema`]), and their held changes applied.

use crate::clock::parse_id;
use crate::error::{Error, Result};
use crate::replica::{Options, Replica};
use crate::snapshot::{self, Pointer};
use crate::sql::ident;
use crate::store::{Store, StoreError};
use crate::sync::{pull, PullReport};
use crate::{changelog, clock, track};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub replica: String,
    /// The snapshot started from (None: full replay).
    pub snapshot: Option<String>,
    pub snapshot_rows: u64,
    pub snapshot_changes: u64,
    pub tracked: Vec<String>,
    pub pull: PullReport,
    /// It finished a clone interrupted before (see [`UNFINISHED`]).
    pub resumed: bool,
}

/// `ZV_METADATA` key of a clone not finished yet: [`STARTED`] in the
/// transaction that makes the database a replica, [`LOADED`] once its snapshot
/// (or, without one, its tables) is in, in the snapshot's own transaction;
/// deleted when the clone ends. A clone
/// cut short (network, Ctrl-C, a closed lid) leaves a replica that never
/// pushed; `dimple clone` run again on it takes up where it stopped instead
/// of refusing a database that is already a replica.
pub const UNFINISHED: &str = "clone.unfinished";
const STARTED: &str = "started";
const LOADED: &str = "loaded";

/// The stage of an interrupted clone of `db` (None: not one).
fn unfinished(db: &Path) -> Option<String> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT value FROM ZV_METADATA WHERE key = ?1", [UNFINISHED], |r| r.get(0)).ok()
}

/// Whether the replica on `conn` is a clone that did not finish (`status`).
pub fn is_unfinished(conn: &Connection) -> Result<bool> {
    Ok(crate::meta::get(conn, UNFINISHED)?.is_some())
}

/// A pull that went through finishes an interrupted clone as well as running
/// the clone again would: the catch-up takes what a snapshot not loaded covers.
/// Every pull asks: a read, and a write only when there is a mark.
pub(crate) fn finished(conn: &Connection) -> Result<()> {
    if is_unfinished(conn)? {
        crate::meta::delete(conn, UNFINISHED)?;
    }
    Ok(())
}

/// A step of the clone, for progress display.
pub type Progress<'a> = &'a dyn Fn(&str);

/// Creates replica `db` from the bucket at `url` (served by `store`).
pub async fn clone(
    url: &str,
    db: &Path,
    name: Option<&str>,
    opts: Options,
    store: &dyn Store,
    progress: Progress<'_>,
) -> Result<(Replica, CloneReport)> {
    clone_with_keys(url, db, name, opts, store, progress, None).await
}

/// [`clone`] of an encrypted group, with its keys (from [`crate::group::unlock`]).
/// Without keys, an encrypted bucket is refused before anything is created.
pub async fn clone_with_keys(
    url: &str,
    db: &Path,
    name: Option<&str>,
    opts: Options,
    store: &dyn Store,
    progress: Progress<'_>,
    keys: Option<crate::seal::Keyring>,
) -> Result<(Replica, CloneReport)> {
    let stage = unfinished(db);
    // Asked before anything is created (or again by a clone taken up again
    // that holds no keys yet).
    let encrypted_without_keys = "this bucket holds an encrypted group: clone with --passphrase-file FILE (or DIMPLE_PASSPHRASE), or `dimple init DB --bucket URL` and have a member grant this device";
    let mut r = match &stage {
        Some(_) => {
            let r = Replica::open(db, opts)?;
            if r.bucket()?.as_deref() != Some(url) {
                return Err(Error::Invalid(format!(
                    "{} is an interrupted clone of {}, not of {url}: run the clone again with that bucket",
                    db.display(),
                    r.bucket()?.unwrap_or_default()
                )));
            }
            r
        }
        None => {
            if keys.is_none() && crate::group::detect(store).await?.is_some() {
                return Err(Error::Invalid(encrypted_without_keys.to_owned()));
            }
            // A clone's database is dimple's: it follows the group's schema.
            let policy = crate::schema::Policy::Follow.as_str();
            Replica::init_with(
                db,
                Some(url),
                name,
                opts,
                &[(crate::schema::POLICY_META, policy), (UNFINISHED, STARTED)],
            )?
        }
    };
    if crate::group::group_of(&r)?.is_none() {
        match keys {
            Some(keys) => crate::group::adopt(&mut r, store, keys).await?,
            None if stage.is_some() && crate::group::detect(store).await?.is_some() => {
                return Err(Error::Invalid(encrypted_without_keys.to_owned()))
            }
            None => {}
        }
    }
    let codec = crate::group::prepare(&mut r, store, false).await?;
    let mut report = CloneReport {
        replica: r.id().to_owned(),
        snapshot: None,
        snapshot_rows: 0,
        snapshot_changes: 0,
        tracked: Vec::new(),
        pull: PullReport::default(),
        resumed: stage.is_some(),
    };
    if stage.as_deref() != Some(LOADED) {
        progress("reading snapshots/LATEST.json");
        let pointer = snapshot::latest(store, &codec).await?.map(|(p, _)| p);
        if let Some(p) = &pointer {
            p.verify_source(store, &codec, &crate::layout::snapshot_pointer_key()).await?;
        }
        report.snapshot = pointer.as_ref().map(|p| p.snapshot_id.clone());
        match pointer {
            Some(p) => {
                progress(&format!("downloading snapshot {} ({} bytes)", p.snapshot_id, p.size));
                let path = download(&r, store, &codec, &p).await?;
                progress("loading snapshot");
                let loaded = load(&mut r, &path);
                let _ = std::fs::remove_file(&path);
                (report.snapshot_rows, report.snapshot_changes, report.tracked) = loaded?;
            }
            None => {
                for table in user_tables(r.conn())? {
                    r.track(&table, true)?;
                    report.tracked.push(table);
                }
                crate::meta::set(&r.sync, UNFINISHED, LOADED)?;
            }
        }
    }
    progress("pulling batches");
    // The pull's end deletes the mark.
    report.pull = pull(&mut r, store).await?;
    Ok((r, report))
}

pub(crate) async fn download(
    r: &Replica,
    store: &dyn Store,
    codec: &crate::codec::Codec,
    p: &Pointer,
) -> Result<std::path::PathBuf> {
    // Streamed to disk and hashed from there: a snapshot is as big as the database.
    let path = r.side().file(&format!("clone-{}.db", p.snapshot_id));
    let size = match store.get_to_file(&p.key, &path).await {
        Ok(n) => n,
        Err(StoreError::NotFound(_)) => return Err(Error::bad(&p.key, "the snapshot LATEST.json names is missing")),
        Err(e) => return Err(e.into()),
    };
    let sha = crate::codec::file_sha256(&path).map_err(|e| Error::io(&path, e))?;
    if sha != p.sha256 || size != p.size {
        let _ = std::fs::remove_file(&path);
        return Err(Error::bad(
            &p.key,
            format!("snapshot sha256 is {sha}, but LATEST.json says {}: altered or replaced", p.sha256),
        ));
    }
    if let Err(e) = codec.decode_file(crate::codec::Kind::Snapshot, &p.key, &path) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

fn user_tables(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'ZV\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// What [`inspect`] found in a snapshot it accepted.
pub(crate) struct Inspected {
    /// Its tables' (name, CREATE TABLE).
    tables: Vec<(String, String)>,
    /// For a log of records: how many changes and the greatest id (what a
    /// clone otherwise reads every record again for, once copied).
    winners: Option<(u64, Option<[u8; 16]>)>,
    /// The cells of live rows whose winning value is stored out of line.
    references: Vec<Referenced>,
}

/// A cell of a live row whose winning change stores its value out of line.
struct Referenced {
    table: String,
    entity_id: String,
    column: String,
    r: crate::value::Ref,
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

/// A snapshot's log into the replica's. A snapshot in the replica's own form
/// (records per row, formats 2 to 4) or a row per change (format 1, since local schema
/// version 4) is checked, then copied into the empty log
/// ([`crate::log::copy_from_snapshot`]). An older snapshot (the text form of
/// schema/wire_log.sql, with or without an author number per change) is converted
/// change by change. Returns whether the log was the snapshot's copied whole.
fn copy_log(tx: &Connection, origin: &str) -> Result<bool> {
    let has = |table: &str| crate::sql::has_table(tx, "snap", table);
    if has("ZV_ROW")? || has("ZV_LOG")? {
        // Checked by `inspect` before the file was attached.
        if crate::log::copy_from_snapshot(tx)? {
            return Ok(true);
        }
    }
    // Numbers are private to each file: through the text (the snapshot's views,
    // or its tables when it is older), with the author by replica id. A snapshot
    // from before changes carried their author names none: ids were unique across
    // the group then, so the transaction names it.
    let author = if has("ZV_AUTHOR")? {
        "(SELECT id FROM snap.ZV_AUTHOR WHERE n = c.author_n)"
    } else {
        "(SELECT author FROM snap.ZV_TRANSACTION WHERE id = c.transaction_id)"
    };
    crate::log::import(
        tx,
        &format!(
            "SELECT c.id AS id, c.transaction_id AS transaction_id, c.entity_type AS entity_type,
                    c.entity_id AS entity_id, c.attribute AS attribute, c.old_value AS old_value,
                    c.new_value AS new_value, {author} AS author
             FROM snap.ZV_CHANGE c"
        ),
        origin,
    )?;
    Ok(false)
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
fn check_records(conn: &Connection, origin: &str) -> Result<(u64, Option<[u8; 16]>, Vec<Referenced>)> {
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

/// A snapshot's rows hold NULL where its source never fetched a large value (a
/// lazy replica): each such cell is marked missing here, as a pull that met
/// the value would have, so the pull that ends the clone fetches it (or, on a
/// lazy clone, `dimple fetch` does).
fn mark_unfetched(tx: &Connection, references: &[Referenced], now: &str) -> Result<()> {
    let mut tables = std::collections::HashMap::new();
    for c in references {
        if !tables.contains_key(&c.table) {
            tables.insert(c.table.clone(), track::inspect(tx, &c.table)?);
        }
        let Some(info) = &tables[&c.table] else { continue };
        if !info.columns.contains(&c.column) {
            continue;
        }
        let key = crate::merge::key_values(info, &c.entity_id)?;
        let sql = format!(
            "SELECT {} IS NULL FROM main.{} WHERE {}",
            ident(&c.column),
            ident(&c.table),
            crate::merge::key_where(info, 1)
        );
        let held_null: Option<bool> =
            tx.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(key.iter()), |r| r.get(0)).optional()?;
        if held_null == Some(true) {
            crate::blob::mark_missing(tx, &c.table, &c.entity_id, &c.column, &c.r, now)?;
        }
    }
    Ok(())
}

/// Loads a snapshot into the fresh replica `r`: tables, merge state, cursors.
/// Returns (rows, changes, tables tracked).
fn load(r: &mut Replica, path: &Path) -> Result<(u64, u64, Vec<String>)> {
    let origin = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let inspected = inspect(path, &origin)?;
    let now = clock::rfc3339(r.opts.clock.now_ms());
    r.sync.execute("ATTACH ?1 AS snap", [path.display().to_string()])?;
    let out = load_attached(r, &inspected, &now, &origin);
    r.sync.execute_batch("DETACH snap")?;
    out
}

fn load_attached(r: &mut Replica, inspected: &Inspected, now: &str, origin: &str) -> Result<(u64, u64, Vec<String>)> {
    let me = r.id().to_owned();
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rows = 0u64;
    let mut tracked = Vec::new();
    for (tbl, sql) in &inspected.tables {
        if track::inspect(&tx, tbl)?.is_none() {
            tx.execute(sql, []).map_err(|e| Error::bad(origin, format!("schema of {tbl:?}: {e}")))?;
        }
        let info = track::inspect(&tx, tbl)?
            .ok_or_else(|| Error::bad(origin, format!("schema of {tbl:?} does not create that table")))?;
        track::validate(&info, true)?;
        // Columns both sides have, named from the local schema.
        let snap_cols: Vec<String> = tx
            .prepare("SELECT name FROM pragma_table_info(?1, 'snap')")?
            .query_map([tbl], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let cols: Vec<String> =
            info.key_columns.iter().chain(&info.columns).filter(|c| snap_cols.contains(c)).map(|c| ident(c)).collect();
        let list = cols.join(", ");
        rows += tx
            .execute(&format!("INSERT OR REPLACE INTO main.{0} ({list}) SELECT {list} FROM snap.{0}", ident(tbl)), [])?
            as u64;
        track::install(&tx, &info, false, now)?;
        tracked.push(tbl.clone());
    }
    let whole = copy_log(&tx, origin)?;
    crate::peers::copy_from_snapshot(&tx, &me, now)?;
    mark_unfetched(&tx, &inspected.references, now)?;
    // A log copied whole holds the snapshot's records and nothing else: what
    // the check counted.
    let (changes, greatest) = match (whole, inspected.winners) {
        (true, Some((changes, greatest))) => {
            (changes, greatest.map(|id| uuid::Uuid::from_bytes(id).hyphenated().to_string()))
        }
        _ => {
            let (changes, greatest) = crate::log::count_and_greatest_id(&tx)?;
            (changes as u64, greatest)
        }
    };
    // Our ids must be greater than every id we now hold.
    if let Some(id) = greatest.as_deref().and_then(parse_id) {
        r.hlc.observe(&id);
    }
    changelog::save_clock(&tx, &r.hlc)?;
    crate::meta::set(&tx, UNFINISHED, LOADED)?;
    tx.commit()?;
    Ok((rows, changes, tracked))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes with generated text: ids in order, a few authors, transactions,
    /// tables, rows and columns, values NULL or arbitrary text.
    fn changes(seed: u64, n: usize) -> Vec<crate::merge::Change> {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|i| {
                let author = format!("0190{:04x}-0000-7000-8000-{:012x}", next() % 3, 7);
                let value = |v: u64| (!v.is_multiple_of(4)).then(|| format!("\"{}\u{e9}\\u0000{}\"", v, v % 97));
                crate::merge::Change {
                    // Few nodes: a row's cells often have ids of one node.
                    id: format!("0190{:04x}-{:04x}-7000-8000-{:012x}", i / 65536, i % 65536, next() % 3),
                    transaction_id: format!("0190{:04x}-0000-7000-8000-{:012x}", i / 7, 1),
                    entity_type: ["t", "u", "\u{1F600} table"][(next() % 3) as usize].to_owned(),
                    entity_id: format!("row {}", next() % 50),
                    attribute: ["*", "a", "b c", "\"d\""][(next() % 4) as usize].to_owned(),
                    old_value: value(next()),
                    new_value: value(next()),
                    author,
                }
            })
            .collect()
    }

    fn replica_tables() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::migrate::SCHEMA).unwrap();
        crate::log::register(&c).unwrap();
        c
    }

    /// Where the views over `schema`'s log are: a replica's are TEMP views
    /// (found unqualified), an attached snapshot's are stored in it.
    fn views_of(schema: &str) -> String {
        if schema == "main" {
            String::new()
        } else {
            format!("{schema}.")
        }
    }

    /// Every change of the seed's view, with its author's id, in a fixed order.
    fn seen(c: &Connection, schema: &str) -> Vec<Vec<Option<String>>> {
        let mut stmt = c
            .prepare(&format!(
                "SELECT c.id, c.transaction_id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value, a.id
                 FROM {v}ZV_CHANGE c JOIN {schema}.ZV_AUTHOR a ON a.n = c.author_n ORDER BY 1, 8",
                v = views_of(schema)
            ))
            .unwrap();
        stmt.query_map([], |r| (0..8).map(|i| r.get(i)).collect()).unwrap().map(Result::unwrap).collect()
    }

    /// A snapshot file holding `changes` in the compact form (as compaction writes
    /// it now) or in the text form of earlier builds.
    fn snapshot_file(dir: &Path, changes: &[crate::merge::Change], compact: bool) -> std::path::PathBuf {
        let path = dir.join(if compact { "compact.db" } else { "text.db" });
        let c = Connection::open(&path).unwrap();
        if compact {
            c.execute_batch(include_str!("../schema/snapshot_log.sql")).unwrap();
            // Numbered by a replica's log, then written a row per change.
            let scratch = replica_tables();
            let log = crate::log::Log::new(&scratch).unwrap();
            for ch in changes {
                log.merge(ch).unwrap();
            }
            scratch.execute("ATTACH ?1 AS snap", [path.display().to_string()]).unwrap();
            scratch
                .execute_batch(
                    "INSERT INTO snap.ZV_AUTHOR SELECT * FROM ZV_AUTHOR; INSERT INTO snap.ZV_NAME SELECT * FROM ZV_NAME;
                     INSERT INTO snap.ZV_TX SELECT * FROM ZV_TX; INSERT INTO snap.ZV_LOG SELECT * FROM ZV_LOG;",
                )
                .unwrap();
        } else {
            c.execute_batch(include_str!("../schema/wire_log.sql")).unwrap();
            for ch in changes {
                c.execute("INSERT OR IGNORE INTO ZV_AUTHOR(id) VALUES (?1)", [&ch.author]).unwrap();
                c.execute("INSERT OR IGNORE INTO ZV_TRANSACTION VALUES (?1, ?2)", [&ch.transaction_id, &ch.author])
                    .unwrap();
                let mut row = ch.as_row().to_vec();
                let n: i64 = c.query_row("SELECT n FROM ZV_AUTHOR WHERE id = ?1", [&ch.author], |r| r.get(0)).unwrap();
                row.push(&n);
                c.execute("INSERT INTO ZV_CHANGE VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", row.as_slice()).unwrap();
            }
        }
        path
    }

    /// A snapshot in either form gives the clone the same log, change for change,
    /// whether the clone's log is empty (copied page by page) or not (converted).
    #[test]
    fn both_snapshot_forms_load_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let all = changes(0x5eed, 3000);
        for compact in [true, false] {
            let path = snapshot_file(dir.path(), &all, compact);
            for already in [0, 10] {
                let c = replica_tables();
                {
                    let log = crate::log::Log::new(&c).unwrap();
                    for ch in &all[..already] {
                        log.merge(ch).unwrap();
                    }
                }
                c.execute("ATTACH ?1 AS snap", [path.display().to_string()]).unwrap();
                assert_eq!(seen(&c, "snap").len(), all.len(), "the file holds every change");
                copy_log(&c, "snapshots/x.db").unwrap();
                assert_eq!(seen(&c, "main"), seen(&c, "snap"), "compact {compact}, {already} already here");
                c.execute("DETACH snap", []).unwrap();
            }
        }
    }

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

    /// A snapshot in the replica's own form (format 4), written by compaction's
    /// [`crate::log::copy_winners`] from a log of `changes`; the source log's path
    /// too.
    fn records_file(dir: &Path, changes: &[crate::merge::Change]) -> (std::path::PathBuf, std::path::PathBuf) {
        let (source, path) = (dir.join("source.db"), dir.join("records.db"));
        let _ = std::fs::remove_file(&source);
        let _ = std::fs::remove_file(&path);
        let src = Connection::open(&source).unwrap();
        src.execute_batch(crate::migrate::SCHEMA).unwrap();
        let log = crate::log::Log::new(&src).unwrap();
        for ch in changes {
            log.merge(ch).unwrap();
        }
        let s = Connection::open(&path).unwrap();
        crate::log::register(&s).unwrap();
        s.execute_batch(crate::snapshot::SCHEMA).unwrap();
        s.execute("ATTACH ?1 AS src", [source.display().to_string()]).unwrap();
        crate::log::copy_winners(&s, "src").unwrap();
        s.execute(
            "INSERT INTO ZV_SNAPSHOT(format, snapshot_id, source_replica, created_at) VALUES (?1, 'x', 'y', 'z')",
            [crate::snapshot::SNAPSHOT_FORMAT],
        )
        .unwrap();
        (path, source)
    }

    /// Every winning change of `schema`'s log, with its value and author.
    fn winners(c: &Connection, schema: &str) -> Vec<Vec<Option<String>>> {
        let mut stmt = c
            .prepare(&format!(
                "SELECT c.id, c.transaction_id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value, a.id
                 FROM {v}ZV_CHANGE c JOIN {schema}.ZV_AUTHOR a ON a.n = c.author_n
                 JOIN {v}ZV_CLOCK k ON k.entity_type = c.entity_type AND k.entity_id = c.entity_id
                   AND k.attribute = c.attribute AND k.change_id = c.id AND k.author_n = c.author_n
                 ORDER BY 1, 8",
                v = views_of(schema)
            ))
            .unwrap();
        stmt.query_map([], |r| (0..8).map(|i| r.get(i)).collect()).unwrap().map(Result::unwrap).collect()
    }

    /// A snapshot of records gives a clone the winners of the log it was made
    /// from, copied page by page into an empty log or merged into one that holds
    /// changes already. Snapshots of formats 3 and 2 (records in forms 2 and
    /// 1) give the same, and the clone's records are in the current form.
    #[test]
    fn a_snapshot_of_records_loads_the_winners_of_its_source() {
        for format in [crate::snapshot::SNAPSHOT_FORMAT, 3, 2] {
            a_snapshot_of_format_loads_the_winners_of_its_source(format);
        }
    }

    fn a_snapshot_of_format_loads_the_winners_of_its_source(format: i64) {
        let dir = tempfile::tempdir().unwrap();
        let all = changes(0x0005_eed2, 3000);
        let (path, source) = records_file(dir.path(), &all);
        let src = Connection::open(&source).unwrap();
        crate::log::register(&src).unwrap();
        let expected = winners(&src, "main");
        assert!(expected.len() > 100 && expected.len() < all.len(), "some changes lost: {}", expected.len());
        let file = Connection::open(&path).unwrap();
        crate::log::register(&file).unwrap();
        // The older form, and how many records at least it writes otherwise
        // (few of these changes repeat the author and transaction before them).
        type Encode = fn(&[crate::record::Cell], &[crate::record::Cell]) -> Vec<u8>;
        let older_form: Option<(Encode, u64)> = match format {
            2 => Some((|cells, _| crate::record::encode_form_1(cells), 50)),
            3 => Some((crate::record::encode_form_2, 1)),
            _ => None,
        };
        if let Some((encode, at_least)) = older_form {
            let older = crate::log::rewrite_records(&file, encode).unwrap();
            assert!(older >= at_least, "{older} records differ in format {format}'s form");
            file.execute("UPDATE ZV_SNAPSHOT SET format = ?1", [format]).unwrap();
        }
        let (checked, greatest, _) = check_records(&file, "snapshots/x.db").expect("a good snapshot passes");
        for already in [0, 10] {
            let c = replica_tables();
            {
                let log = crate::log::Log::new(&c).unwrap();
                for ch in &all[..already] {
                    log.merge(ch).unwrap();
                }
            }
            c.execute("ATTACH ?1 AS snap", [path.display().to_string()]).unwrap();
            assert_eq!(winners(&c, "snap"), expected, "the file holds the winners");
            copy_log(&c, "snapshots/x.db").unwrap();
            assert_eq!(winners(&c, "main"), expected, "{already} already here");
            if already == 0 {
                assert_eq!(seen(&c, "main"), expected, "nothing but the winners");
                // What a clone then takes from the check instead of reading the log again.
                let greatest = greatest.map(|id| uuid::Uuid::from_bytes(id).hyphenated().to_string());
                assert_eq!(crate::log::count_and_greatest_id(&c).unwrap(), (checked as i64, greatest));
            }
            assert_eq!(crate::log::records_in_older_form(&c).unwrap(), 0, "every record in the current form");
            c.execute("DETACH snap", []).unwrap();
        }
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
