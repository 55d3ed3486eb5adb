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
use crate::snapshot::inspect::{inspect, Inspected, Referenced};
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
    use crate::snapshot::fixtures::{changes, records_file, replica_tables, snapshot_file};
    use crate::snapshot::inspect::check_records;

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
}
