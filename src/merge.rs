//! Last-writer-wins per (entity, attribute), and writing the winners into the
//! tracked tables.
//!
//! The rules (SPEC 4), which the property test checks against a model:
//! - per (entity_type, entity_id, attribute) the change with the greatest id wins;
//! - attribute `*` is the row: `true` alive, `false` deleted. A delete therefore
//!   beats every concurrent column update (updates never touch `*`), and a later
//!   insert (a greater `*` = true) brings the row back with the winning columns;
//! - a change already in the log is ignored, so applying twice changes nothing, and
//!   since each step only moves a winner forward, arrival order does not matter;
//! - changes for tables or columns not tracked here are kept in the log and in
//!   `ZV_CLOCK`, and reach the table when it is tracked ([`Merger::rebuild`]).

use crate::error::{Error, Result};
use crate::sql::ident;
use crate::track::{self, Affinity, TableInfo, ROW};
use crate::value;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// One row of `ZV_CHANGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: String,
    pub transaction_id: String,
    pub entity_type: String,
    pub entity_id: String,
    pub attribute: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

pub const ALIVE: &str = "true";
pub const DEAD: &str = "false";

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already in the log.
    Duplicate,
    /// Stored; an existing change for the same attribute is newer.
    Lost,
    /// Stored and now the winner (applied to the table when tracked).
    Won,
}

/// Applies changes on one connection, with the tracked schema loaded once.
pub struct Merger<'c> {
    conn: &'c Connection,
    tables: HashMap<String, TableInfo>,
}

impl<'c> Merger<'c> {
    pub fn new(conn: &'c Connection) -> Result<Self> {
        let mut tables = HashMap::new();
        for name in track::tracked_names(conn)? {
            if let Some(info) = track::inspect(conn, &name)? {
                tables.insert(name, info);
            }
        }
        Ok(Merger { conn, tables })
    }

    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name)
    }

    /// Records a change this replica made: it is newer than everything applied, and
    /// its effect is already in the table.
    pub fn record_local(&self, c: &Change) -> Result<()> {
        self.insert_log(c)?;
        self.conn
            .prepare_cached(
                "INSERT INTO ZV_CLOCK(entity_type, entity_id, attribute, change_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET change_id = excluded.change_id",
            )?
            .execute(params![c.entity_type, c.entity_id, c.attribute, c.id])?;
        Ok(())
    }

    /// Merges a change from another replica. The caller has checked its encoding.
    pub fn apply_remote(&self, c: &Change) -> Result<Outcome> {
        if !self.insert_log(c)? {
            return Ok(Outcome::Duplicate);
        }
        let current: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT change_id FROM ZV_CLOCK WHERE entity_type=?1 AND entity_id=?2 AND attribute=?3",
            )?
            .query_row(params![c.entity_type, c.entity_id, c.attribute], |r| r.get(0))
            .optional()?;
        if current.as_deref().is_some_and(|cur| cur > c.id.as_str()) {
            return Ok(Outcome::Lost);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO ZV_CLOCK(entity_type, entity_id, attribute, change_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET change_id = excluded.change_id",
            )?
            .execute(params![c.entity_type, c.entity_id, c.attribute, c.id])?;
        if let Some(info) = self.tables.get(&c.entity_type) {
            self.write_winner(info, c)?;
        }
        Ok(Outcome::Won)
    }

    fn insert_log(&self, c: &Change) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO ZV_CHANGE(id, transaction_id, entity_type, entity_id, attribute, old_value, new_value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING",
            )?
            .execute(params![
                c.id,
                c.transaction_id,
                c.entity_type,
                c.entity_id,
                c.attribute,
                c.old_value,
                c.new_value
            ])?
            == 1)
    }

    fn write_winner(&self, info: &TableInfo, c: &Change) -> Result<()> {
        let key = key_values(info, &c.entity_id)?;
        if c.attribute == ROW {
            if c.new_value.as_deref() == Some(ALIVE) {
                if !self.row_exists(info, &key)? {
                    self.materialize(info, &c.entity_id, &key)?;
                }
            } else {
                let sql = format!("DELETE FROM {} WHERE {}", ident(&info.name), key_where(info, 1));
                self.conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(&key))?;
            }
        } else if info.has_column(&c.attribute) {
            let v = decode(c.new_value.as_deref())?;
            let sql = format!(
                "UPDATE {} SET {} = ?1 WHERE {}",
                ident(&info.name),
                ident(&c.attribute),
                key_where(info, 2)
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            stmt.raw_bind_parameter(1, &v)?;
            for (i, k) in key.iter().enumerate() {
                stmt.raw_bind_parameter(i + 2, k)?;
            }
            stmt.raw_execute()?;
        }
        Ok(())
    }

    fn row_exists(&self, info: &TableInfo, key: &[Value]) -> Result<bool> {
        let sql = format!("SELECT 1 FROM {} WHERE {}", ident(&info.name), key_where(info, 1));
        Ok(self.conn.prepare_cached(&sql)?.exists(rusqlite::params_from_iter(key))?)
    }

    /// Writes the row as the log's winners say: inserted or updated when alive,
    /// deleted when not (or never inserted).
    fn materialize(&self, info: &TableInfo, entity_id: &str, key: &[Value]) -> Result<()> {
        let winners = self.winners(&info.name, entity_id)?;
        let alive = winners.get(ROW).map(|v| v.as_deref() == Some(ALIVE)).unwrap_or(false);
        let t = ident(&info.name);
        if !alive {
            let sql = format!("DELETE FROM {t} WHERE {}", key_where(info, 1));
            self.conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(key))?;
            return Ok(());
        }
        let mut names: Vec<String> = info.key_columns.iter().map(|c| ident(c)).collect();
        let mut values: Vec<Value> = key.to_vec();
        let mut sets = Vec::new();
        for col in &info.columns {
            if let Some(v) = winners.get(col.as_str()) {
                sets.push(format!("{0} = excluded.{0}", ident(col)));
                names.push(ident(col));
                values.push(decode(v.as_deref())?);
            }
        }
        let placeholders = (1..=values.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let on_conflict =
            if sets.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", sets.join(", ")) };
        let sql = format!("INSERT INTO {t} ({}) VALUES ({placeholders}) ON CONFLICT {on_conflict}", names.join(", "));
        self.conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(&values))?;
        Ok(())
    }

    fn winners(&self, table: &str, entity_id: &str) -> Result<HashMap<String, Option<String>>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT k.attribute, c.new_value FROM ZV_CLOCK k JOIN ZV_CHANGE c ON c.id = k.change_id
             WHERE k.entity_type = ?1 AND k.entity_id = ?2",
        )?;
        let rows = stmt.query_map(params![table, entity_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Makes a table equal to what the log says, for every entity the log knows:
    /// used when a table or column starts being tracked, so changes that arrived
    /// before are applied now.
    pub fn rebuild(&self, table: &str) -> Result<usize> {
        let Some(info) = self.tables.get(table) else { return Ok(0) };
        let ids: Vec<String> = self
            .conn
            .prepare("SELECT DISTINCT entity_id FROM ZV_CLOCK WHERE entity_type = ?1")?
            .query_map([table], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &ids {
            let key = key_values(info, id)?;
            self.materialize(info, id, &key)?;
        }
        Ok(ids.len())
    }
}

fn decode(v: Option<&str>) -> Result<Value> {
    match v {
        None => Ok(Value::Null),
        Some(s) => value::decode(s).map_err(|e| Error::bad("change log", e)),
    }
}

fn key_where(info: &TableInfo, first_param: usize) -> String {
    info.key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", ident(c), first_param + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The text form of a key (SPEC 1): a single key as its text, a composite one as a
/// JSON array.
pub fn entity_id_of(raw: &Value) -> Option<String> {
    match raw {
        Value::Text(t) => Some(t.clone()),
        Value::Integer(i) => Some(i.to_string()),
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
