//! Last-writer-wins per (entity, attribute), and writing the winners into the
//! tracked tables.
//!
//! The rules (SPEC 4), which the property test checks against a model:
//! - per (entity_type, entity_id, attribute) the change with the greatest id wins;
//!   a change is identified by (id, author), so two changes can share an id only
//!   when a member copied another's ids: then the greater author wins, the same on
//!   every replica, and neither change displaces the other from the log;
//! - attribute `*` is the row: `true` alive, `false` deleted. A delete therefore
//!   beats every concurrent column update (updates never touch `*`), and a later
//!   insert (a greater `*` = true) brings the row back with the winning columns;
//! - a change already in the log is ignored, so applying twice changes nothing, and
//!   since each step only moves a winner forward, arrival order does not matter;
//! - changes for tables or columns not tracked here are kept in the log and in
//!   `ZV_CLOCK`, and reach the table when it is tracked ([`Merger::rebuild`]).

mod blobs;
mod many;

pub use many::RowIndex;

use crate::error::{Error, Result};
use crate::log::Log;
use crate::sql::ident;
use crate::track::{self, Affinity, TableInfo, ROW};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Statement};
use std::cell::RefCell;
use std::collections::HashMap;

/// One change: the seed's seven `ZV_CHANGE` columns and the replica id of its
/// author (in a batch, always the replica that signed it; in the log, stored as
/// its `ZV_AUTHOR` number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: String,
    pub transaction_id: String,
    pub entity_type: String,
    pub entity_id: String,
    pub attribute: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub author: String,
}

/// The seed's seven `ZV_CHANGE` columns in table order; [`Change::as_row`] binds
/// in the same order.
pub const CHANGE_COLUMNS: &str = "id, transaction_id, entity_type, entity_id, attribute, old_value, new_value";

impl Change {
    /// The seed's seven columns, for binding to `VALUES (?1..?7)`.
    pub fn as_row(&self) -> [&dyn rusqlite::ToSql; 7] {
        [
            &self.id,
            &self.transaction_id,
            &self.entity_type,
            &self.entity_id,
            &self.attribute,
            &self.old_value,
            &self.new_value,
        ]
    }
}

pub const ALIVE: &str = "true";
pub const DEAD: &str = "false";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Already in the log.
    Duplicate,
    /// Stored; an existing change for the same attribute is newer.
    Lost,
    /// Stored and now the winner (applied to the table when tracked).
    Won,
}

/// A statement the merger prepares once per table and reuses: built from local
/// names only, so preparing it per change would only cost time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    /// `UPDATE t SET <column i> = ? WHERE key`
    Update(usize),
    Delete,
    Exists,
    /// `INSERT .. ON CONFLICT DO UPDATE` of the key and the columns in the mask.
    Upsert(u64),
    /// The same, of [`Rows::MAX`] rows at once.
    UpsertRows(u64),
}

/// Applies changes on one connection, with the tracked schema loaded and the
/// statements prepared once: applying is the hot path of a pull.
pub struct Merger<'c> {
    conn: &'c Connection,
    tables: HashMap<String, TableInfo>,
    log: Log<'c>,
    /// By table name, then operation: looked up with the name borrowed (a pull
    /// writes a row per call, and a key owning its name cloned it each time).
    per_table: RefCell<HashMap<String, HashMap<Op, Statement<'c>>>>,
    /// Where the bytes of values stored out of line wait ([`crate::blob`]); None
    /// in memory, where every such value is missing.
    side: Option<crate::sidedir::SideDir>,
}

impl<'c> Merger<'c> {
    pub fn new(conn: &'c Connection) -> Result<Self> {
        let mut tables = HashMap::new();
        for name in track::tracked_names(conn)? {
            if let Some(info) = track::inspect(conn, &name)? {
                tables.insert(name, info);
            }
        }
        Ok(Merger {
            conn,
            tables,
            log: Log::new(conn)?,
            per_table: RefCell::default(),
            side: crate::blob::side_of(conn),
        })
    }

    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name)
    }

    /// Records a change this replica made: it is newer than everything applied, and
    /// its effect is already in the table. It waits for the push in `outbox`, which
    /// the caller finishes before it commits.
    pub fn record_local(&self, c: &Change, outbox: &mut crate::outbox::Packer) -> Result<()> {
        if self.log.merge(c)? != Outcome::Duplicate {
            outbox.add(self.conn, c)?;
        }
        Ok(())
    }

    /// [`Merger::record_local`] of several changes, their rows' records held
    /// until [`Merger::finish_local`], which the caller must call before it
    /// commits. Each id was just issued by this replica's clock, greater than
    /// every id it issued or applied before, so none is in the log yet.
    pub fn record_local_all(&self, cs: &[Change], outbox: &mut crate::outbox::Packer) -> Result<()> {
        self.log.merge_all_unread(cs)?;
        for c in cs {
            outbox.add(self.conn, c)?;
        }
        Ok(())
    }

    /// Writes the records [`Merger::record_local_all`] holds.
    pub fn finish_local(&self) -> Result<()> {
        self.log.flush()
    }

    /// Merges a change from another replica. The caller has checked its encoding.
    pub fn apply_remote(&self, c: &Change) -> Result<Outcome> {
        let outcome = self.merge_log(c)?;
        if outcome == Outcome::Won {
            if let Some(info) = self.tables.get(&c.entity_type) {
                self.write_winner(info, c)?;
            }
        }
        Ok(outcome)
    }

    /// Stores a remote change in the log and says whether it is now its cell's
    /// winner; the table is left to the caller.
    fn merge_log(&self, c: &Change) -> Result<Outcome> {
        self.log.merge(c)
    }

    /// Runs `f` on the statement for (`info`, `op`), preparing it the first time.
    fn with_stmt<T>(
        &self,
        info: &TableInfo,
        op: Op,
        sql: impl FnOnce() -> String,
        f: impl FnOnce(&mut Statement<'c>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut tables = self.per_table.borrow_mut();
        let map = match tables.get_mut(info.name.as_str()) {
            Some(map) => map,
            None => tables.entry(info.name.clone()).or_default(),
        };
        let stmt = match map.entry(op) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.conn.prepare(&sql())?),
        };
        Ok(f(stmt)?)
    }

    fn write_winner(&self, info: &TableInfo, c: &Change) -> Result<()> {
        let key = key_values(info, &c.entity_id)?;
        if c.attribute == ROW {
            if c.new_value.as_deref() == Some(ALIVE) {
                if !self.row_exists(info, &key)? {
                    self.materialize(info, &c.entity_id, &key)?;
                }
            } else {
                self.delete(info, &key)?;
            }
        } else if let Some(i) = info.columns.iter().position(|col| *col == c.attribute) {
            self.update_column(info, &c.entity_id, &key, i, c.new_value.as_deref())?;
        }
        Ok(())
    }

    /// Sets column `i` of the row (nothing when there is no such row).
    fn update_column(
        &self,
        info: &TableInfo,
        entity_id: &str,
        key: &[Value],
        i: usize,
        value: Option<&str>,
    ) -> Result<()> {
        let mut fills = Vec::new();
        let v = self.bind(i, value, &mut fills)?;
        let sql = || {
            format!("UPDATE {} SET {} = ?1 WHERE {}", ident(&info.name), ident(&info.columns[i]), key_where(info, 2))
        };
        self.with_stmt(info, Op::Update(i), sql, |stmt| {
            stmt.raw_bind_parameter(1, &v)?;
            for (i, k) in key.iter().enumerate() {
                stmt.raw_bind_parameter(i + 2, k)?;
            }
            stmt.raw_execute()
        })?;
        self.fill(info, entity_id, key, fills)
    }

    fn delete(&self, info: &TableInfo, key: &[Value]) -> Result<()> {
        let sql = || format!("DELETE FROM {} WHERE {}", ident(&info.name), key_where(info, 1));
        self.with_stmt(info, Op::Delete, sql, |stmt| stmt.execute(rusqlite::params_from_iter(key)))?;
        Ok(())
    }

    fn row_exists(&self, info: &TableInfo, key: &[Value]) -> Result<bool> {
        let sql = || format!("SELECT 1 FROM {} WHERE {}", ident(&info.name), key_where(info, 1));
        self.with_stmt(info, Op::Exists, sql, |stmt| stmt.exists(rusqlite::params_from_iter(key)))
    }

    /// Writes the row as the log's winners say: inserted or updated when alive,
    /// deleted when not (or never inserted).
    fn materialize(&self, info: &TableInfo, entity_id: &str, key: &[Value]) -> Result<()> {
        let winners = crate::log::winners(self.conn, &info.name, entity_id)?;
        let alive = winners.get(ROW).is_some_and(|v| v.as_deref() == Some(ALIVE));
        self.write_row(info, entity_id, key, alive, |i| winners.get(info.columns[i].as_str()).map(|v| v.as_deref()))
    }

    /// Writes a row from its winners: `column(i)` is the winning value of column i,
    /// None when the column has no winner (it then keeps its value or default).
    fn write_row<'v>(
        &self,
        info: &TableInfo,
        entity_id: &str,
        key: &[Value],
        alive: bool,
        column: impl Fn(usize) -> Option<Option<&'v str>>,
    ) -> Result<()> {
        if !alive {
            return self.delete(info, key);
        }
        let (values, present, fills) = self.row_binds(key, info, column)?;
        self.write_one(info, &values, &present)?;
        self.fill(info, entity_id, key, fills)
    }

    /// One row's upsert of `values` ([`Merger::row_binds`]).
    fn write_one(&self, info: &TableInfo, values: &[blobs::Bind<'_>], present: &[bool]) -> Result<()> {
        let sql = || upsert_sql(info, present, 1);
        match mask_of(present) {
            Some(mask) => {
                self.with_stmt(info, Op::Upsert(mask), sql, |stmt| stmt.execute(rusqlite::params_from_iter(values)))?;
            }
            None => {
                self.conn.prepare(&sql())?.execute(rusqlite::params_from_iter(values))?;
            }
        }
        Ok(())
    }

    /// The values [`Merger::write_row`] binds (the key's, then those of the
    /// columns with a winner), which columns those are, and the values to
    /// finish once the row is written.
    fn row_binds<'v>(
        &self,
        key: &[Value],
        info: &TableInfo,
        column: impl Fn(usize) -> Option<Option<&'v str>>,
    ) -> Result<(Vec<blobs::Bind<'v>>, Vec<bool>, Vec<blobs::Fill>)> {
        let mut values: Vec<blobs::Bind> = Vec::with_capacity(key.len() + info.columns.len());
        values.extend(key.iter().cloned().map(blobs::Bind::Value));
        let mut present = Vec::with_capacity(info.columns.len());
        let mut fills = Vec::new();
        for i in 0..info.columns.len() {
            let v = column(i);
            present.push(v.is_some());
            if let Some(v) = v {
                values.push(self.bind(i, v, &mut fills)?);
            }
        }
        Ok((values, present, fills))
    }

    /// [`Merger::write_row`] of a live row whose winners the batch holds, held
    /// in `rows` to be written with others of its table ([`Rows`]); a row with
    /// values stored out of line is written at once, after those held.
    fn write_row_held<'v>(
        &self,
        rows: &mut Rows<'v>,
        info: &'v TableInfo,
        entity_id: &str,
        key: &[Value],
        column: impl Fn(usize) -> Option<Option<&'v str>>,
    ) -> Result<()> {
        let (values, present, fills) = self.row_binds(key, info, column)?;
        match mask_of(&present) {
            Some(mask) if fills.is_empty() => {
                if rows.count > 0 && (!rows.table.is_some_and(|t| std::ptr::eq(t, info)) || rows.mask != mask) {
                    self.write_rows(rows)?;
                }
                if rows.count == 0 {
                    (rows.table, rows.mask, rows.present) = (Some(info), mask, present);
                }
                rows.values.extend(values);
                rows.count += 1;
                if rows.count == Rows::MAX {
                    self.write_rows(rows)?;
                }
                Ok(())
            }
            _ => {
                self.write_rows(rows)?;
                self.write_one(info, &values, &present)?;
                self.fill(info, entity_id, key, fills)
            }
        }
    }

    /// Writes the rows `rows` holds: [`Rows::MAX`] by one statement, fewer one
    /// by one.
    fn write_rows(&self, rows: &mut Rows<'_>) -> Result<()> {
        let Some(info) = rows.table else { return Ok(()) };
        if rows.count == Rows::MAX {
            let sql = || upsert_sql(info, &rows.present, Rows::MAX);
            self.with_stmt(info, Op::UpsertRows(rows.mask), sql, |stmt| {
                stmt.execute(rusqlite::params_from_iter(&rows.values))
            })?;
        } else if let Some(per_row) = rows.values.len().checked_div(rows.count) {
            for row in rows.values.chunks(per_row) {
                self.write_one(info, row, &rows.present)?;
            }
        }
        rows.values.clear();
        rows.count = 0;
        Ok(())
    }

    /// Makes a table equal to what the log says, for every entity the log knows:
    /// used when a table or column starts being tracked, so changes that arrived
    /// before are applied now.
    pub fn rebuild(&self, table: &str) -> Result<usize> {
        let Some(info) = self.tables.get(table) else { return Ok(0) };
        let ids = crate::log::entities(self.conn, table)?;
        for id in &ids {
            let key = key_values(info, id)?;
            self.materialize(info, id, &key)?;
        }
        Ok(ids.len())
    }
}

/// Rows of one table, all with winners for the same columns, waiting to be
/// written by one statement: a fresh pull wrote a row per statement, and
/// SQLite's work per statement was about a third of the row's (callgrind).
/// Written in the order held; any other write goes after them.
#[derive(Default)]
struct Rows<'v> {
    table: Option<&'v TableInfo>,
    mask: u64,
    present: Vec<bool>,
    /// Each row's values in turn, as [`Merger::row_binds`] gives them.
    values: Vec<blobs::Bind<'v>>,
    count: usize,
}

impl Rows<'_> {
    const MAX: usize = 32;
}

/// The columns present as a mask, when the table has at most 64.
fn mask_of(present: &[bool]) -> Option<u64> {
    (present.len() <= 64).then(|| present.iter().enumerate().fold(0u64, |m, (i, p)| if *p { m | 1 << i } else { m }))
}

/// `INSERT` of `rows` rows of the key and the columns that have a winner,
/// updating them on conflict.
fn upsert_sql(info: &TableInfo, present: &[bool], rows: usize) -> String {
    let mut names: Vec<String> = info.key_columns.iter().map(|c| ident(c)).collect();
    let mut sets = Vec::new();
    for (col, _) in info.columns.iter().zip(present).filter(|(_, p)| **p) {
        sets.push(format!("{0} = excluded.{0}", ident(col)));
        names.push(ident(col));
    }
    let width = names.len();
    let values = (0..rows)
        .map(|r| {
            let row = (1..=width).map(|i| format!("?{}", r * width + i)).collect::<Vec<_>>().join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let on_conflict =
        if sets.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", sets.join(", ")) };
    format!("INSERT INTO {} ({}) VALUES {values} ON CONFLICT {on_conflict}", ident(&info.name), names.join(", "))
}

pub(crate) fn key_where(info: &TableInfo, first_param: usize) -> String {
    info.key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", ident(c), first_param + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The text form of a key (SPEC 1): a single key as its text, a composite one as a
/// JSON array.
pub fn entity_id_of(raw: ValueRef<'_>) -> Option<String> {
    match raw {
        // An entity id is text: a key whose bytes are not UTF-8 cannot be one.
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
        ValueRef::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Turns an entity id back into key values typed for the key columns.
pub fn key_values(info: &TableInfo, entity_id: &str) -> Result<Vec<Value>> {
    let bad = || Error::bad("change log", format!("entity id {entity_id:?} does not fit the key of {}", info.name));
    let typed = |aff: Affinity, v: Value| -> Option<Value> {
        match (aff, v) {
            (Affinity::Integer, Value::Integer(i)) => Some(Value::Integer(i)),
            (Affinity::Integer, Value::Text(t)) => t.parse().ok().map(Value::Integer),
            (Affinity::Text, Value::Text(t)) => Some(Value::Text(t)),
            (Affinity::Text, Value::Integer(i)) => Some(Value::Text(i.to_string())),
            _ => None,
        }
    };
    if info.key_columns.len() == 1 {
        return typed(info.key_affinity[0], Value::Text(entity_id.to_owned())).map(|v| vec![v]).ok_or_else(bad);
    }
    let parts: Vec<serde_json::Value> = serde_json::from_str(entity_id).map_err(|_| bad())?;
    if parts.len() != info.key_columns.len() {
        return Err(bad());
    }
    parts
        .into_iter()
        .zip(&info.key_affinity)
        .map(|(p, aff)| {
            let v = match p {
                serde_json::Value::String(s) => Value::Text(s),
                serde_json::Value::Number(n) if n.is_i64() => Value::Integer(n.as_i64().unwrap_or_default()),
                _ => return None,
            };
            typed(*aff, v)
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)
}
