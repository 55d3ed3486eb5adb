//! Reads and writes of the change log: turning captured writes into changes with
//! ids, and reading changes back for push and for `dimple log`.

use crate::clock::Hlc;
use crate::error::{Error, Result};
use crate::merge::{entity_id_of, key_values, Change, Merger, ALIVE, DEAD};
use crate::sql::ident;
use crate::track::{self, TableInfo, ROW};
use crate::value;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, BTreeSet};

/// Gives ids to everything the triggers captured since the last call and records it
/// as one transaction authored by `me`. Runs inside the caller's write transaction:
/// the app's writes and their ids then become visible together, and pending rows
/// are always turned into changes before any remote change is applied (otherwise a
/// remote change could overwrite a local write that later gets a newer id).
///
/// Column positions in pending rows refer to the column list recorded in
/// `ZV_TRACKED` when the triggers that wrote them were installed, so pending rows
/// are read first, with that list. Then each tracked table's schema is compared
/// with the recorded one: columns added since (`ALTER TABLE .. ADD COLUMN`) had no
/// trigger, so the values the app wrote to them are read from the table itself
/// (every row whose value is not the column's default) before the triggers are
/// reinstalled. No write to a tracked table is lost, whatever the order of
/// migration, write and dimple's next run (issue 9).
pub fn ingest(conn: &Connection, hlc: &mut Hlc, me: &str) -> Result<usize> {
    let tracked: Vec<(String, String)> = conn
        .prepare_cached("SELECT tbl, columns FROM ZV_TRACKED ORDER BY tbl")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut w = Recorder {
        conn,
        merger: Merger::new(conn)?,
        capture: crate::blob::Capture::load(conn)?,
        hlc,
        me,
        txn: None,
        outbox: crate::outbox::Packer::new(),
        unstored: Vec::with_capacity(STORE_AT_ONCE),
        used: 0,
        n: 0,
        bad_keys: BTreeSet::new(),
        rekeyed: BTreeMap::new(),
    };
    let mut recorded = Vec::with_capacity(tracked.len());
    for (tbl, columns) in tracked {
        let columns: Vec<String> = serde_json::from_str(&columns)
            .map_err(|e| Error::Invalid(format!("ZV_TRACKED columns of {tbl} are corrupt: {e}")))?;
        // The merger has just read every tracked table's schema: no second look.
        let info = w.merger.table(&tbl).cloned();
        w.pending(&tbl, info.as_ref(), &columns)?;
        w.store()?;
        recorded.push((tbl, info, columns));
    }
    let stale_triggers =
        crate::meta::get(conn, CAPTURE_KEY)?.as_deref() != Some(track::CAPTURE_VERSION.to_string().as_str());
    let mut rebuild = Vec::new();
    for (tbl, info, columns) in &recorded {
        let Some(info) = info else { continue }; // dropped: its triggers went with it
        let added: Vec<usize> = (0..info.columns.len()).filter(|&i| !columns.contains(&info.columns[i])).collect();
        if !added.is_empty() {
            w.added_columns(info, &added)?;
            w.store()?;
            rebuild.push(tbl.clone());
        }
        if stale_triggers || &info.columns != columns {
            track::install(conn, info, false, &crate::clock::rfc3339(w.hlc.now_ms()))?;
        }
    }
    if stale_triggers {
        crate::meta::set(conn, CAPTURE_KEY, &track::CAPTURE_VERSION.to_string())?;
    }
    if !rebuild.is_empty() {
        let mut all: Vec<String> =
            crate::meta::get(conn, REBUILD_KEY)?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
        all.extend(rebuild);
        all.sort();
        all.dedup();
        crate::meta::set(conn, REBUILD_KEY, &serde_json::to_string(&all).expect("strings serialize"))?;
    }
    w.store()?;
    w.merger.finish_local()?;
    w.report_local_problems(&recorded)?;
    std::mem::take(&mut w.outbox).finish(conn)?;
    let n = w.n;
    if n > 0 {
        save_clock(conn, w.hlc)?;
    }
    Ok(n)
}

/// Changes stored in the log by one statement when captured writes get their ids
/// (`dimple push` of 500k captured changes, ids included: 2.03 -> 1.93 s).
const STORE_AT_ONCE: usize = 32;

/// Captured writes read, turned into changes and deleted at a time.
const PENDING_CHUNK: usize = 4096;

/// `ZV_METADATA` key: the [`track::CAPTURE_VERSION`] of the installed triggers.
const CAPTURE_KEY: &str = "capture_version";
/// `ZV_METADATA` key: tables that gained columns, whose held remote values for
/// them are applied by the next [`crate::Replica::refresh_schema`] (on the
/// trigger-less connection, so applying them is not captured again).
pub(crate) const REBUILD_KEY: &str = "schema.rebuild";

/// Where the problem about rows whose key cannot sync is recorded: one per table.
pub fn bad_key_origin(table: &str) -> String {
    format!("local table {table}")
}

/// Where the problem about a tracked table the app renamed is recorded.
pub fn renamed_origin(table: &str) -> String {
    format!("local table {table} renamed")
}

/// Records captured writes as changes of one transaction.
struct Recorder<'a, 'c> {
    conn: &'c Connection,
    merger: Merger<'c>,
    /// Values at or above its threshold become references (docs/attachments.md).
    capture: crate::blob::Capture,
    hlc: &'a mut Hlc,
    me: &'a str,
    txn: Option<String>,
    /// The changes recorded, waiting for the push.
    outbox: crate::outbox::Packer,
    /// Changes made and not stored yet: they go into the log [`STORE_AT_ONCE`] to
    /// a statement.
    unstored: Vec<Change>,
    /// How many of `unstored` wait: the rest are stored changes whose strings the
    /// next ones reuse (a capture of 500k changes otherwise made and freed 3M).
    used: usize,
    n: usize,
    /// Tables where a captured write had a key that cannot sync.
    bad_keys: BTreeSet<String>,
    /// The cells missing in the row whose key just changed, by column: their
    /// references, which the insert of the new key carries (see [`track::REKEY`]).
    rekeyed: BTreeMap<String, String>,
}

impl Recorder<'_, '_> {
    fn record(&mut self, tbl: &str, entity_id: &str, attribute: &str, old: Option<String>, new: String) -> Result<()> {
        let txn_id = &*self.txn.get_or_insert_with(|| self.hlc.tick().to_string());
        self.n += 1;
        let mut buf = uuid::Uuid::encode_buffer();
        let id: &str = self.hlc.tick().hyphenated().encode_lower(&mut buf);
        if let Some(c) = self.unstored.get_mut(self.used) {
            // The strings of a change stored before take this one's text in place.
            c.id.clear();
            c.id.push_str(id);
            c.transaction_id.clone_from(txn_id);
            c.entity_type.clear();
            c.entity_type.push_str(tbl);
            c.entity_id.clear();
            c.entity_id.push_str(entity_id);
            c.attribute.clear();
            c.attribute.push_str(attribute);
            c.old_value = old;
            c.new_value = Some(new);
        } else {
            self.unstored.push(Change {
                id: id.to_owned(),
                transaction_id: txn_id.clone(),
                entity_type: tbl.to_owned(),
                entity_id: entity_id.to_owned(),
                attribute: attribute.to_owned(),
                old_value: old,
                new_value: Some(new),
                author: self.me.to_owned(),
            });
        }
        self.used += 1;
        if self.used >= STORE_AT_ONCE {
            self.store()?;
        }
        Ok(())
    }

    /// Stores the changes made so far in the log and the outbox.
    fn store(&mut self) -> Result<()> {
        self.merger.record_local_all(&self.unstored[..self.used], &mut self.outbox)?;
        self.used = 0;
        Ok(())
    }

    /// The entity id of a captured key, or None (counted) when it cannot sync.
    fn entity_id(&mut self, tbl: &str, info: Option<&TableInfo>, raw: ValueRef<'_>) -> Option<String> {
        let id = entity_id_of(raw).filter(|id| info.is_none_or(|info| key_values(info, id).is_ok()));
        if id.is_none() {
            self.bad_keys.insert(tbl.to_owned());
        }
        id
    }

    /// Turns `tbl`'s pending rows (written with the column list `columns`) into changes.
    ///
    /// A value at or above the capture threshold is not selected: SQLite would
    /// load it whole. The query selects an empty blob in its place, and
    /// [`crate::blob::Capture::stream`] reads it from the pending row in pieces.
    fn pending(&mut self, tbl: &str, info: Option<&TableInfo>, columns: &[String]) -> Result<()> {
        let pending_name = track::pending_table(tbl);
        let pending = ident(&pending_name);
        let names: Vec<String> = ["old".to_owned(), "new".to_owned()]
            .into_iter()
            .chain((0..columns.len()).map(|i| format!("c{i}")))
            .collect();
        // A value at or above the threshold is selected as an empty blob, which
        // a real empty blob also is: only then is its pending row asked which.
        // Numbers are never measured: octet_length would print each one as text
        // (a fifth of the time ids took), and no number is as long as a threshold.
        // (One CASE per value for "is it big" and another for the value took
        // 172 ms of the 500k captured changes' ids, this 88 ms; the plain
        // columns, 46 ms.)
        let small: String = names
            .iter()
            .map(|c| format!(", iif(typeof({c}) IN ('text', 'blob') AND octet_length({c}) >= ?1, x'', {c})"))
            .collect();
        let conn = self.conn;
        // Read and deleted a chunk at a time: the pages each chunk frees take the
        // log's and the outbox's next rows, instead of the file growing by both
        // (`cargo bench --bench dimple capture`, the file after a burst of 500k
        // changes and a push: 80 MB -> 69.5 MB).
        let mut stmt = conn.prepare(&format!(
            "SELECT seq, op, pk, col{small} FROM {pending} WHERE seq > ?2 ORDER BY seq LIMIT {PENDING_CHUNK}"
        ))?;
        let mut delete = conn.prepare(&format!("DELETE FROM {pending} WHERE seq <= ?1"))?;
        let threshold = i64::try_from(self.capture.threshold).unwrap_or(i64::MAX);
        // Whether value `j` of the pending row `seq` is big, and then whether TEXT.
        let big = |j: usize, seq: i64| -> Result<Option<bool>> {
            let c = &names[j];
            let sql = format!(
                "SELECT CASE WHEN octet_length({c}) >= ?1 THEN typeof({c}) = 'text' END FROM {pending} WHERE seq = ?2"
            );
            Ok(conn.prepare_cached(&sql)?.query_row(params![threshold, seq], |r| r.get(0))?)
        };
        // The stored form of value `j` of `names` (0 old, 1 new, 2.. columns).
        let stored = |w: &Self, r: &rusqlite::Row<'_>, j: usize, seq: i64, keep: bool| -> Result<String> {
            // The column is asked for once: its value is read from what that gives.
            let v = r.get_ref(4 + j)?;
            let text = match v {
                rusqlite::types::ValueRef::Blob([]) => big(j, seq)?,
                _ => None,
            };
            match text {
                None => Ok(value::encode_ref(v)),
                Some(text) => Ok(w.capture.stream(conn, &pending_name, &names[j], seq, text, keep)?.encode()),
            }
        };
        // The column a captured update or clear names, by its place in `columns`.
        let column_of = |r: &rusqlite::Row<'_>| -> Result<&String> {
            let i: usize = r.get::<_, i64>(3)?.try_into().unwrap_or(usize::MAX);
            columns.get(i).ok_or_else(|| {
                Error::Invalid(format!("captured update of column #{i} of {tbl}, which has {} columns", columns.len()))
            })
        };
        let mut last_seq = None;
        loop {
            let chunk_start = last_seq;
            let mut rows = stmt.query(rusqlite::params![threshold, last_seq.unwrap_or(i64::MIN)])?;
            while let Some(r) = rows.next()? {
                let seq = r.get::<_, i64>(0)?;
                last_seq = Some(seq);
                let op: i64 = r.get(1)?;
                // Only the insert right after a new key's delete carries its cells.
                let carried = std::mem::take(&mut self.rekeyed);
                let Some(entity_id) = self.entity_id(tbl, info, r.get_ref(2)?) else { continue };
                match op {
                    track::OP_INSERT => {
                        self.record(tbl, &entity_id, ROW, None, ALIVE.to_owned())?;
                        // An insert's columns have no old value (SQL NULL, unlike JSON null).
                        for (i, c) in columns.iter().enumerate() {
                            let mut v = stored(self, r, 2 + i, seq, true)?;
                            if let Some(reference) = carried.get(c).filter(|_| v == "null") {
                                self.carry(tbl, &entity_id, c, reference)?;
                                v.clone_from(reference);
                            }
                            self.record(tbl, &entity_id, c, None, v)?;
                        }
                    }
                    track::OP_DELETE => {
                        self.record(tbl, &entity_id, ROW, None, DEAD.to_owned())?;
                        if r.get::<_, Option<i64>>(3)? == Some(track::REKEY) {
                            self.rekeyed = self.missing_cells(tbl, &entity_id)?;
                        }
                    }
                    track::OP_UPDATE => {
                        let c = column_of(r)?;
                        // The old value is history, never sent on its own: only hashed.
                        let (old, new) = (stored(self, r, 0, seq, false)?, stored(self, r, 1, seq, true)?);
                        // A real zero written over the same zero (the trigger cannot
                        // tell -0.0 from 0.0): no change.
                        if old != new {
                            self.record(tbl, &entity_id, c, Some(old), new)?;
                        }
                    }
                    track::OP_CLEAR => {
                        // NULL over the value the cell waits for, if it still does.
                        let c = column_of(r)?;
                        if let Some(reference) = self.missing_cells(tbl, &entity_id)?.remove(c) {
                            self.record(tbl, &entity_id, c, Some(reference), "null".to_owned())?;
                        }
                    }
                    _ => {
                        return Err(Error::Invalid(format!("captured write {last_seq:?} of {tbl} has unknown op {op}")))
                    }
                }
            }
            drop(rows);
            match last_seq {
                Some(seq) if last_seq != chunk_start => delete.execute([seq])?,
                _ => return Ok(()),
            };
        }
    }

    /// The cells of a row that wait for a value stored out of line (a lazy
    /// replica's), by column: the reference each waits for.
    fn missing_cells(&mut self, tbl: &str, entity_id: &str) -> Result<BTreeMap<String, String>> {
        // The winners read must include every change captured before.
        self.store()?;
        crate::blob::waiting_in_row(self.conn, tbl, entity_id)
    }

    /// The new key's cell waits for the value its old row waited for.
    fn carry(&self, tbl: &str, entity_id: &str, attribute: &str, reference: &str) -> Result<()> {
        if let Ok(crate::value::Stored::Ref(r)) = crate::value::decode_stored(reference) {
            let now = crate::clock::rfc3339(self.hlc.now_ms());
            crate::blob::mark_missing(self.conn, tbl, entity_id, attribute, &r, &now)?;
        }
        Ok(())
    }

    /// Columns `added` (indexes into `info.columns`) had no trigger until now: what
    /// the app wrote to them is whatever differs from the column's default.
    fn added_columns(&mut self, info: &TableInfo, added: &[usize]) -> Result<()> {
        let conn = self.conn;
        let mut defaults = Vec::with_capacity(added.len());
        for &i in added {
            let dflt: Option<String> = conn.query_row(
                "SELECT dflt_value FROM pragma_table_info(?1) WHERE name = ?2",
                [&info.name, &info.columns[i]],
                |r| r.get(0),
            )?;
            // The default is SQL from this database's own schema, not remote input.
            let v = match dflt {
                Some(expr) => {
                    conn.query_row(&format!("SELECT {expr}"), [], |r| Ok(value::encode_ref(r.get_ref(0)?)))?
                }
                None => "null".to_owned(),
            };
            defaults.push(v);
        }
        let cols: String = added.iter().map(|&i| format!(", r.{}", ident(&info.columns[i]))).collect();
        let sql = format!("SELECT {}{cols} FROM {} AS r", track::captured_key(info, "r"), ident(&info.name));
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let Some(entity_id) = self.entity_id(&info.name, Some(info), r.get_ref(0)?) else { continue };
            for (j, &i) in added.iter().enumerate() {
                let v = self.stored(r.get_ref(1 + j)?)?;
                if v != defaults[j] {
                    self.record(&info.name, &entity_id, &info.columns[i], None, v)?;
                }
            }
        }
        Ok(())
    }

    /// The stored form of a value already in memory: a reference when it is big.
    fn stored(&self, v: ValueRef<'_>) -> Result<String> {
        match v {
            ValueRef::Blob(b) if b.len() as u64 >= self.capture.threshold => {
                Ok(self.capture.bytes(b, false, true)?.encode())
            }
            ValueRef::Text(t) if t.len() as u64 >= self.capture.threshold => {
                Ok(self.capture.bytes(t, true, true)?.encode())
            }
            _ => Ok(value::encode_ref(v)),
        }
    }

    /// A row whose key cannot sync is never left out silently: it becomes a problem
    /// of this replica (shown by `status`, found by `verify`), cleared once no such
    /// row is left in the table. So does a tracked table the app renamed.
    fn report_local_problems(&self, tables: &[(String, Option<TableInfo>, Vec<String>)]) -> Result<()> {
        let conn = self.conn;
        let now = crate::clock::rfc3339(self.hlc.now_ms());
        for tbl in &self.bad_keys {
            let reason = "rows whose key is NULL, a blob, text that is not UTF-8, or not of the key column's type cannot sync; give them a proper key (the count says how many times dimple met one)";
            crate::problems::record_local(conn, self.me, &bad_key_origin(tbl), reason, &now)?;
        }
        let open: Vec<String> = conn
            .prepare_cached("SELECT object_key FROM ZV_PROBLEM WHERE replica = ?1")?
            .query_map([self.me], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for (tbl, info, _) in tables {
            self.report_renamed(tbl, info.is_some(), &open, &now)?;
            let origin = bad_key_origin(tbl);
            if !open.contains(&origin) || self.bad_keys.contains(tbl) {
                continue;
            }
            let left = match info {
                Some(info) => track::count_unsyncable_keys(conn, info)?,
                None => 0,
            };
            if left == 0 {
                crate::problems::clear_local(conn, self.me, &origin)?;
            }
        }
        Ok(())
    }

    /// A tracked table the app renamed keeps its capture triggers (SQLite
    /// moves them with it): its writes go on syncing under the old name, and
    /// changes from other replicas for that name wait, unapplied, for a table
    /// of that name. Never silently: a problem of this replica until the
    /// table has its name again (or is untracked, which drops the triggers).
    fn report_renamed(&self, tbl: &str, exists: bool, open: &[String], now: &str) -> Result<()> {
        let origin = renamed_origin(tbl);
        let renamed_to: Option<String> = if exists {
            None
        } else {
            self.conn
                .prepare_cached("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger' AND name = ?1")?
                .query_row([track::insert_trigger(tbl)], |r| r.get(0))
                .optional()?
        };
        match renamed_to {
            Some(to) => {
                let reason = format!(
                    "the app renamed tracked table {tbl} to {to}: its writes still sync as {tbl}, and changes from other replicas for {tbl} wait unapplied; rename it back, or untrack {tbl} and track {to}"
                );
                crate::problems::record_local(self.conn, self.me, &origin, &reason, now)?;
            }
            None if open.contains(&origin) => crate::problems::clear_local(self.conn, self.me, &origin)?,
            None => {}
        }
        Ok(())
    }
}

pub fn save_clock(conn: &Connection, hlc: &Hlc) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO ZV_METADATA(key, value) VALUES ('clock', ?1)")?
        .execute([hlc.state().to_string()])?;
    Ok(())
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
    let sql = "SELECT c.id, c.transaction_id, a.id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value,
                      EXISTS (SELECT 1 FROM ZV_CLOCK k WHERE k.entity_type = c.entity_type AND k.entity_id = c.entity_id
                              AND k.attribute = c.attribute AND k.change_id = c.id AND k.author_n = c.author_n)
               FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n
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
