//! The change log as a replica stores it (`schema/log.sql`): the one module that
//! knows its compact form. Everything else speaks [`Change`] (the seed's text
//! columns) and leaves the numbering of names, authors and transactions and the
//! byte form of ids to this module (the outbox of unpushed changes is
//! [`crate::outbox`]'s). Retention, snapshots, clones, `verify` and the blob
//! collector reach the replica's log through the functions here, so a change of
//! its layout (docs/design/log-per-row.md) is a change of this file, the schema
//! and an upgrade step. Outside it, only the read-only views of the seed's tables
//! and the snapshot format (a snapshot file carries these same tables, read by
//! [`crate::clone`] and [`crate::catchup`]) name them.
//!
//! Why this form: a change in the seed's form cost about 125 bytes (two 36-character
//! ids, the table and column names repeated) plus a clock row per cell with the same
//! text again. Here a change is one row of `ZV_LOG` keyed by its cell, then its id:
//! the changes of a cell lie together, and the newest is the winner, so no separate
//! clock is kept and finding the winner is one seek.

use crate::error::{Error, Result};
use crate::merge::Change;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Statement};
use std::cell::RefCell;
use std::collections::HashMap;

/// The SQL expression rendering the 16-byte id in column `col` as canonical text.
pub fn id_text_sql(col: &str) -> String {
    format!(
        "lower(substr(hex({col}), 1, 8) || '-' || substr(hex({col}), 9, 4) || '-' || substr(hex({col}), 13, 4) \
         || '-' || substr(hex({col}), 17, 4) || '-' || substr(hex({col}), 21))"
    )
}

/// The SQL condition "the change `l` of `schema`'s ZV_LOG is superseded": its cell
/// holds a greater id, or the same id from a greater author id (the merge rule,
/// also in the ZV_CLOCK view of schema/log.sql and in [`Log::wins`]).
fn superseded_sql(schema: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM {schema}.ZV_LOG g
                 WHERE g.type_n = l.type_n AND g.entity_id = l.entity_id AND g.attr_n = l.attr_n AND g.id >= l.id
                   AND (g.id > l.id OR (SELECT id FROM {schema}.ZV_AUTHOR WHERE n = g.author_n)
                                        > (SELECT id FROM {schema}.ZV_AUTHOR WHERE n = l.author_n)))"
    )
}

/// The SQL expression turning canonical id text in `col` into its 16 bytes.
pub fn id_blob_sql(col: &str) -> String {
    format!("unhex(replace({col}, '-', ''))")
}

/// The stored form of an id: its 16 bytes when it is a canonical UUID (bytewise
/// order is then the order of the text), else the text itself. Change ids are
/// always canonical (checked before anything is applied); a transaction id from a
/// batch is not checked, and is kept as it came.
pub fn id_value(id: &str) -> Value {
    if crate::layout::is_canonical_uuid(id) {
        if let Ok(u) = uuid::Uuid::parse_str(id) {
            return Value::Blob(u.as_bytes().to_vec());
        }
    }
    Value::Text(id.to_owned())
}

/// The canonical text of a stored id ([`id_value`] backwards).
pub fn id_string(v: Value) -> String {
    match v {
        Value::Blob(b) => blob_id_string(&b),
        Value::Text(t) => t,
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Null => String::new(),
    }
}

/// Stored id bytes as text: a UUID's canonical form, other bytes in hex.
fn blob_id_string(b: &[u8]) -> String {
    uuid::Uuid::from_slice(b).map(|u| u.to_string()).unwrap_or_else(|_| crate::codec::hex(b))
}

/// The id in column `i`: bytes rendered as text, text as it is (an error, never a
/// panic, when it is not UTF-8: batch files are remote input).
fn id_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Blob(b) => Ok(blob_id_string(b)),
        _ => r.get(i),
    }
}

/// Reads whole changes in the seed's columns, in the order [`row_to_change`]
/// expects: append joins or `WHERE`/`ORDER BY` on `l` (the log row).
pub const SELECT: &str = "SELECT l.id, x.id, t.name, l.entity_id, c.name, l.old_value, l.new_value, a.id
     FROM ZV_LOG l JOIN ZV_NAME t ON t.n = l.type_n JOIN ZV_NAME c ON c.n = l.attr_n
     JOIN ZV_TX x ON x.n = l.tx_n JOIN ZV_AUTHOR a ON a.n = l.author_n";

/// A change from a row of [`SELECT`], or from a batch file's text columns in the
/// same order.
pub fn row_to_change(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    Ok(Change {
        id: id_at(r, 0)?,
        transaction_id: id_at(r, 1)?,
        entity_type: r.get(2)?,
        entity_id: r.get(3)?,
        attribute: r.get(4)?,
        old_value: r.get(5)?,
        new_value: r.get(6)?,
        author: r.get(7)?,
    })
}

/// [`row_to_change`] into `c`, reusing its strings: a pull reads millions of
/// changes, and the merging thread freed each one's eight strings (4% of its time).
/// Anything but valid text is read as [`row_to_change`] reads it, errors included.
pub fn row_into_change(r: &rusqlite::Row<'_>, c: &mut Change) -> rusqlite::Result<()> {
    use rusqlite::types::ValueRef;
    fn text(r: &rusqlite::Row<'_>, i: usize, out: &mut String) -> rusqlite::Result<()> {
        match r.get_ref(i)? {
            ValueRef::Text(t) if let Ok(s) = std::str::from_utf8(t) => {
                out.clear();
                out.push_str(s);
            }
            _ => *out = r.get(i)?,
        }
        Ok(())
    }
    fn maybe(r: &rusqlite::Row<'_>, i: usize, out: &mut Option<String>) -> rusqlite::Result<()> {
        match r.get_ref(i)? {
            ValueRef::Null => *out = None,
            _ => text(r, i, out.get_or_insert_with(String::new))?,
        }
        Ok(())
    }
    fn id(r: &rusqlite::Row<'_>, i: usize, out: &mut String) -> rusqlite::Result<()> {
        match r.get_ref(i)? {
            ValueRef::Blob(_) => *out = id_at(r, i)?,
            _ => text(r, i, out)?,
        }
        Ok(())
    }
    id(r, 0, &mut c.id)?;
    id(r, 1, &mut c.transaction_id)?;
    text(r, 2, &mut c.entity_type)?;
    text(r, 3, &mut c.entity_id)?;
    text(r, 4, &mut c.attribute)?;
    maybe(r, 5, &mut c.old_value)?;
    maybe(r, 6, &mut c.new_value)?;
    text(r, 7, &mut c.author)
}

/// Where a stored change lies: its cell and its key.
#[derive(Debug, Clone)]
pub struct Stored {
    pub type_n: i64,
    pub attr_n: i64,
    pub author_n: i64,
    pub id: Value,
}

/// A change's columns, borrowed.
struct Parts<'a> {
    id: &'a str,
    transaction_id: &'a str,
    entity_type: &'a str,
    entity_id: &'a str,
    attribute: &'a str,
    old_value: Option<&'a str>,
    new_value: Option<&'a str>,
    author: &'a str,
}

impl<'a> Parts<'a> {
    fn of(c: &'a Change) -> Self {
        Parts {
            id: &c.id,
            transaction_id: &c.transaction_id,
            entity_type: &c.entity_type,
            entity_id: &c.entity_id,
            attribute: &c.attribute,
            old_value: c.old_value.as_deref(),
            new_value: c.new_value.as_deref(),
            author: &c.author,
        }
    }
}

/// Writes changes into the log on one connection, with names, authors and
/// transactions numbered once and remembered: this is the hot path of capture and
/// of every pull.
pub struct Log<'c> {
    conn: &'c Connection,
    names: RefCell<HashMap<String, i64>>,
    authors: RefCell<HashMap<String, i64>>,
    txs: RefCell<HashMap<(String, i64), i64>>,
    /// The last transaction asked for: a transaction's changes come one after another.
    last_tx: RefCell<Option<(String, i64, i64)>>,
    insert: RefCell<Statement<'c>>,
    newer: RefCell<Statement<'c>>,
    known: RefCell<Statement<'c>>,
    /// [`Log::insert_all`]'s statement for [`ROWS_PER_INSERT`] rows, prepared on first use.
    insert_many: RefCell<Option<Statement<'c>>>,
}

/// Changes stored by one statement in [`Log::insert_all`].
const ROWS_PER_INSERT: usize = 32;

impl<'c> Log<'c> {
    pub fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Log {
            conn,
            names: RefCell::default(),
            authors: RefCell::default(),
            txs: RefCell::default(),
            last_tx: RefCell::default(),
            insert: RefCell::new(conn.prepare(
                "INSERT INTO ZV_LOG(type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?),
            // A greater id in the cell, or the same id from a greater author (only a
            // member copying another's ids makes that): then the change does not win.
            newer: RefCell::new(conn.prepare(
                "SELECT EXISTS (SELECT 1 FROM ZV_LOG g
                   WHERE g.type_n = ?1 AND g.entity_id = ?2 AND g.attr_n = ?3 AND g.id >= ?4
                     AND (g.id > ?4 OR (g.author_n <> ?5 AND (SELECT id FROM ZV_AUTHOR WHERE n = g.author_n)
                                                           > (SELECT id FROM ZV_AUTHOR WHERE n = ?5))))",
            )?),
            known: RefCell::new(
                conn.prepare("SELECT EXISTS (SELECT 1 FROM ZV_LOG WHERE type_n = ?1 AND entity_id = ?2)")?,
            ),
            insert_many: RefCell::default(),
        })
    }

    /// The number of a table or column name, numbered on first sight.
    pub fn name_n(&self, name: &str) -> Result<i64> {
        remembered(&self.names, name, || intern(self.conn, "ZV_NAME", "name", name))
    }

    /// The `ZV_AUTHOR` number of replica `id`, numbered on first sight.
    pub fn author_n(&self, id: &str) -> Result<i64> {
        remembered(&self.authors, id, || intern(self.conn, "ZV_AUTHOR", "id", id))
    }

    /// The `ZV_TX` number of transaction `id` of author `author_n`, recorded on
    /// first sight.
    pub fn tx_n(&self, id: &str, author_n: i64) -> Result<i64> {
        if let Some((last, a, n)) = &*self.last_tx.borrow() {
            if last == id && *a == author_n {
                return Ok(*n);
            }
        }
        let key = (id.to_owned(), author_n);
        if let Some(n) = self.txs.borrow().get(&key).copied() {
            *self.last_tx.borrow_mut() = Some((key.0, author_n, n));
            return Ok(n);
        }
        let v = id_value(id);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO ZV_TX(id, author_n) VALUES (?1, ?2)")?
            .execute(params![v, author_n])?;
        let n: i64 = self
            .conn
            .prepare_cached("SELECT n FROM ZV_TX WHERE id = ?1 AND author_n = ?2")?
            .query_row(params![v, author_n], |r| r.get(0))?;
        self.txs.borrow_mut().insert(key, n);
        *self.last_tx.borrow_mut() = Some((id.to_owned(), author_n, n));
        Ok(n)
    }

    /// Stores `c`; None when the log already holds it.
    pub fn insert(&self, c: &Change) -> Result<Option<Stored>> {
        self.insert_parts(&Parts::of(c))
    }

    /// [`Log::insert`] of a change whose text is borrowed.
    fn insert_parts(&self, c: &Parts<'_>) -> Result<Option<Stored>> {
        let (s, tx_n) = self.numbered(c)?;
        let new = self.insert.borrow_mut().execute(params![
            s.type_n,
            c.entity_id,
            s.attr_n,
            s.id,
            s.author_n,
            tx_n,
            c.old_value,
            c.new_value
        ])? == 1;
        Ok(new.then_some(s))
    }

    /// Where change `c` is stored (its names, author and id in their stored form),
    /// and the number of its transaction: numbered on first sight.
    fn numbered(&self, c: &Parts<'_>) -> Result<(Stored, i64)> {
        let author_n = self.author_n(c.author)?;
        let s = Stored {
            type_n: self.name_n(c.entity_type)?,
            attr_n: self.name_n(c.attribute)?,
            author_n,
            id: id_value(c.id),
        };
        let tx_n = self.tx_n(c.transaction_id, author_n)?;
        Ok((s, tx_n))
    }

    /// Stores `changes`, skipping any the log holds, [`ROWS_PER_INSERT`] to a
    /// statement: for changes whose outcome the caller already knows (rows new to
    /// the log, changes this replica just made), which need no answer per change.
    ///
    /// `OR IGNORE` rather than `ON CONFLICT DO NOTHING`: with the latter a statement
    /// of many rows can abort halfway (a NOT NULL column), so SQLite keeps a
    /// statement journal of every page it touches (760k writes for 500k captured
    /// changes). Every NOT NULL column is bound here with a value.
    pub fn insert_all<C: std::borrow::Borrow<Change>>(&self, changes: &[C]) -> Result<()> {
        let mut pieces = changes.chunks_exact(ROWS_PER_INSERT);
        for piece in &mut pieces {
            let mut slot = self.insert_many.borrow_mut();
            let stmt = match &mut *slot {
                Some(stmt) => stmt,
                None => {
                    let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; ROWS_PER_INSERT].join(", ");
                    slot.insert(self.conn.prepare(&format!(
                        "INSERT OR IGNORE INTO ZV_LOG(type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value)
                         VALUES {rows}"
                    ))?)
                }
            };
            for (i, c) in piece.iter().enumerate() {
                let c = Parts::of(c.borrow());
                let (s, tx_n) = self.numbered(&c)?;
                let at = i * 8;
                stmt.raw_bind_parameter(at + 1, s.type_n)?;
                stmt.raw_bind_parameter(at + 2, c.entity_id)?;
                stmt.raw_bind_parameter(at + 3, s.attr_n)?;
                stmt.raw_bind_parameter(at + 4, s.id)?;
                stmt.raw_bind_parameter(at + 5, s.author_n)?;
                stmt.raw_bind_parameter(at + 6, tx_n)?;
                stmt.raw_bind_parameter(at + 7, c.old_value)?;
                stmt.raw_bind_parameter(at + 8, c.new_value)?;
            }
            stmt.raw_execute()?;
        }
        for c in pieces.remainder() {
            self.insert(c.borrow())?;
        }
        Ok(())
    }

    /// Whether the log holds any change of row `entity_id` of table number `type_n`.
    /// A pull asks once per row: when it holds none, the winner of each of the
    /// row's cells is found among the pulled changes alone, without a seek per change.
    pub fn knows_entity(&self, type_n: i64, entity_id: &str) -> Result<bool> {
        Ok(self.known.borrow_mut().query_row(params![type_n, entity_id], |r| r.get(0))?)
    }

    /// Whether the stored change `s` of `entity_id` is its cell's winner.
    pub fn wins(&self, s: &Stored, entity_id: &str) -> Result<bool> {
        let newer: bool = self
            .newer
            .borrow_mut()
            .query_row(params![s.type_n, entity_id, s.attr_n, s.id, s.author_n], |r| r.get(0))?;
        Ok(!newer)
    }
}

/// The merge order of two changes of one cell, (`id`, `author`) against
/// (`other_id`, `other_author`): the id as the log stores and compares it (a
/// canonical UUID's 16 bytes sort after any id kept as text, each kind bytewise),
/// then the author's id text. The same rule as [`Log::wins`] and
/// [`superseded_sql`], for a cell whose changes the caller holds in memory.
pub fn merge_order(id: &str, author: &str, other_id: &str, other_author: &str) -> std::cmp::Ordering {
    let stored = |id: &str| crate::layout::is_canonical_uuid(id);
    (stored(id), id, author).cmp(&(stored(other_id), other_id, other_author))
}

/// `key`'s number from `memo`, or from `look` the first time.
fn remembered(memo: &RefCell<HashMap<String, i64>>, key: &str, look: impl FnOnce() -> Result<i64>) -> Result<i64> {
    if let Some(n) = memo.borrow().get(key) {
        return Ok(*n);
    }
    let n = look()?;
    memo.borrow_mut().insert(key.to_owned(), n);
    Ok(n)
}

/// The number of `value` in an interning table (`n INTEGER PRIMARY KEY`, `col`
/// UNIQUE), added when absent.
fn intern(conn: &Connection, table: &str, col: &str, value: &str) -> Result<i64> {
    if let Some(n) = conn
        .prepare_cached(&format!("SELECT n FROM {table} WHERE {col} = ?1"))?
        .query_row([value], |r| r.get(0))
        .optional()?
    {
        return Ok(n);
    }
    conn.prepare_cached(&format!("INSERT INTO {table}({col}) VALUES (?1)"))?.execute([value])?;
    Ok(conn.last_insert_rowid())
}

/// The number of a name already in the log, if any (lookups never add one).
pub fn known_name(conn: &Connection, name: &str) -> Result<Option<i64>> {
    Ok(conn.prepare_cached("SELECT n FROM ZV_NAME WHERE name = ?1")?.query_row([name], |r| r.get(0)).optional()?)
}

/// The winning change of a cell: its id, its author's replica id and its new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    pub id: String,
    pub author: String,
    pub new_value: Option<String>,
}

/// Picks the winner among a cell's changes given as (id, author, value) in id
/// order: the greatest id, and for one id the greatest author id.
fn best(rows: Vec<(Value, String, Option<String>)>) -> Option<Winner> {
    let mut best: Option<(Value, String, Option<String>)> = None;
    for row in rows {
        let better = match &best {
            None => true,
            Some(b) => match cmp_id(&row.0, &b.0) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => row.1 > b.1,
                std::cmp::Ordering::Less => false,
            },
        };
        if better {
            best = Some(row);
        }
    }
    best.map(|(id, author, new_value)| Winner { id: id_string(id), author, new_value })
}

/// SQLite's order of stored ids (text before blob, each bytewise).
fn cmp_id(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Text(_), Value::Blob(_)) => std::cmp::Ordering::Less,
        (Value::Blob(_), Value::Text(_)) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}

/// The winner of (`table`, `entity_id`, `attribute`), if the log has the cell.
pub fn winner(conn: &Connection, table: &str, entity_id: &str, attribute: &str) -> Result<Option<Winner>> {
    let (Some(t), Some(c)) = (known_name(conn, table)?, known_name(conn, attribute)?) else { return Ok(None) };
    // The last id of the cell, with every change that shares it (one, unless a
    // member copied another's id).
    let rows = conn
        .prepare_cached(
            "SELECT l.id, a.id, l.new_value FROM ZV_LOG l JOIN ZV_AUTHOR a ON a.n = l.author_n
             WHERE l.type_n = ?1 AND l.entity_id = ?2 AND l.attr_n = ?3
               AND l.id = (SELECT max(id) FROM ZV_LOG WHERE type_n = ?1 AND entity_id = ?2 AND attr_n = ?3)",
        )?
        .query_map(params![t, entity_id, c], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(best(rows))
}

/// The winning value of every attribute of a row that the log has.
pub fn winners(conn: &Connection, table: &str, entity_id: &str) -> Result<HashMap<String, Option<String>>> {
    let Some(t) = known_name(conn, table)? else { return Ok(HashMap::new()) };
    let mut stmt = conn.prepare_cached(
        "SELECT c.name, l.id, a.id, l.new_value FROM ZV_LOG l JOIN ZV_NAME c ON c.n = l.attr_n
         JOIN ZV_AUTHOR a ON a.n = l.author_n
         WHERE l.type_n = ?1 AND l.entity_id = ?2 ORDER BY l.attr_n",
    )?;
    let mut cells: HashMap<String, Vec<(Value, String, Option<String>)>> = HashMap::new();
    let rows =
        stmt.query_map(params![t, entity_id], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    for row in rows {
        let (attr, id, author, value) = row?;
        cells.entry(attr).or_default().push((id, author, value));
    }
    Ok(cells.into_iter().filter_map(|(attr, rows)| best(rows).map(|w| (attr, w.new_value))).collect())
}

/// Every row id of `table` the log has a change for.
pub fn entities(conn: &Connection, table: &str) -> Result<Vec<String>> {
    let Some(t) = known_name(conn, table)? else { return Ok(Vec::new()) };
    Ok(conn
        .prepare("SELECT DISTINCT entity_id FROM ZV_LOG WHERE type_n = ?1")?
        .query_map([t], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// How many changes the log holds.
pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT count(*) FROM ZV_LOG", [], |r| r.get(0))?)
}

/// Takes `c` (a change of this replica, not pushed) out of the log; the caller
/// empties the outbox ([`crate::outbox::clear`]).
pub fn remove_own(conn: &Connection, c: &Change) -> Result<()> {
    let id = id_value(&c.id);
    conn.prepare_cached(
        "DELETE FROM ZV_LOG WHERE type_n = (SELECT n FROM ZV_NAME WHERE name = ?1) AND entity_id = ?2
           AND attr_n = (SELECT n FROM ZV_NAME WHERE name = ?3) AND id = ?4
           AND author_n = (SELECT n FROM ZV_AUTHOR WHERE id = ?5)",
    )?
    .execute(params![c.entity_type, c.entity_id, c.attribute, id, c.author])?;
    Ok(())
}

/// The greatest id of a change by `author`.
pub fn last_id_of(conn: &Connection, author: &str) -> Result<Option<String>> {
    let v: Option<Value> = conn.query_row(
        "SELECT max(id) FROM ZV_LOG WHERE author_n = (SELECT n FROM ZV_AUTHOR WHERE id = ?1)",
        [author],
        |r| r.get(0),
    )?;
    Ok(some_id(v))
}

/// The greatest change id the log holds, of any author.
pub fn greatest_id(conn: &Connection) -> Result<Option<String>> {
    let v: Option<Value> = conn.query_row("SELECT max(id) FROM ZV_LOG", [], |r| r.get(0))?;
    Ok(some_id(v))
}

/// The text of a `max(id)`, None when there was none.
fn some_id(v: Option<Value>) -> Option<String> {
    v.filter(|v| *v != Value::Null).map(id_string)
}

/// How many changes by `author` the log holds after id `after` (in its stored
/// form, [`crate::outbox::after_value`]).
pub fn count_by_after(conn: &Connection, author: &str, after: &Value) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM ZV_LOG WHERE author_n IS (SELECT n FROM ZV_AUTHOR WHERE id = ?1) AND id > ?2",
        params![author, after],
        |r| r.get(0),
    )?)
}

/// The filter, appended to [`SELECT`], for this replica's changes after a cursor,
/// in id order: binds the replica id as ?1 and the cursor's stored form as ?2.
pub const OWN_AFTER: &str = "WHERE l.author_n = (SELECT n FROM ZV_AUTHOR WHERE id = ?1) AND l.id > ?2 ORDER BY l.id";

/// Every distinct new value in the log that starts with one of `prefixes`: how
/// the blob collector finds the references the log still holds.
pub fn new_values_starting_with(conn: &Connection, prefixes: &[&str]) -> Result<Vec<String>> {
    if prefixes.is_empty() {
        return Ok(Vec::new());
    }
    // One scan of the log, whatever the number of prefixes.
    let any = (1..=prefixes.len()).map(|i| format!("substr(new_value, 1, length(?{i})) = ?{i}")).collect::<Vec<_>>();
    let mut stmt = conn.prepare(&format!("SELECT DISTINCT new_value FROM ZV_LOG WHERE {}", any.join(" OR ")))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(prefixes), |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes the changes that are superseded (a greater id in the cell, or the
/// same id from a greater author), older than id `before` (stored form), of a
/// tracked table and column, and not waiting in the outbox (a change of replica
/// `me` after `through`, the push cursor's stored form). Returns how many; the
/// caller drops the transactions left empty ([`drop_empty_transactions`]).
pub fn prune_superseded(conn: &Connection, before: &Value, me: &str, through: &Value) -> Result<usize> {
    Ok(conn.execute(
        &format!(
            "DELETE FROM ZV_LOG AS l
         WHERE l.id < ?1
           AND {}
           AND EXISTS (SELECT 1 FROM ZV_TRACKED t
                       WHERE t.tbl = (SELECT name FROM ZV_NAME WHERE n = l.type_n)
                         AND ((SELECT name FROM ZV_NAME WHERE n = l.attr_n) = '*'
                              OR (SELECT name FROM ZV_NAME WHERE n = l.attr_n) IN (SELECT value FROM json_each(t.columns))))
           AND NOT (l.author_n IS (SELECT n FROM ZV_AUTHOR WHERE id = ?2) AND l.id > ?3)",
            superseded_sql("main")
        ),
        params![before, me, through],
    )?)
}

/// Writes the winning change of every cell of the log of schema `from` into the
/// snapshot being built (schema `main`, whose log tables are empty), with the
/// names, authors and transactions they use. Returns how many changes.
pub fn copy_winners(s: &Connection, from: &str) -> Result<u64> {
    s.execute_batch(&format!(
        "INSERT INTO main.ZV_AUTHOR SELECT * FROM {from}.ZV_AUTHOR;
         INSERT INTO main.ZV_NAME SELECT * FROM {from}.ZV_NAME;
         INSERT INTO main.ZV_LOG SELECT * FROM {from}.ZV_LOG l WHERE NOT {};
         INSERT INTO main.ZV_TX SELECT * FROM {from}.ZV_TX WHERE n IN (SELECT tx_n FROM main.ZV_LOG);",
        superseded_sql(from)
    ))?;
    Ok(s.query_row("SELECT count(*) FROM main.ZV_LOG", [], |r| r.get(0))?)
}

/// Copies the checked log of a snapshot in the compact form (attached as `snap`)
/// into this log when it is empty, page by page (SQLite's transfer optimization:
/// the bulk of a clone's time otherwise). Returns false, copying nothing, when
/// this log holds anything: the caller then imports change by change.
pub fn copy_from_snapshot(conn: &Connection) -> Result<bool> {
    let empty: bool = conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM main.ZV_LOG) AND NOT EXISTS (SELECT 1 FROM main.ZV_AUTHOR)
            AND NOT EXISTS (SELECT 1 FROM main.ZV_NAME) AND NOT EXISTS (SELECT 1 FROM main.ZV_TX)",
        [],
        |r| r.get(0),
    )?;
    if empty {
        conn.execute_batch(
            "INSERT INTO main.ZV_AUTHOR SELECT * FROM snap.ZV_AUTHOR;
             INSERT INTO main.ZV_NAME SELECT * FROM snap.ZV_NAME;
             INSERT INTO main.ZV_TX SELECT * FROM snap.ZV_TX;
             INSERT INTO main.ZV_LOG SELECT * FROM snap.ZV_LOG;",
        )?;
    }
    Ok(empty)
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
        if log.insert_parts(&parts)?.is_some() {
            added += 1;
        }
    }
    Ok(added)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An id as remote input may hold it: canonical UUIDs (stored as bytes) from a
    /// few values, so that ties happen, and text that is not one.
    pub(crate) fn any_id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4).prop_map(|i| format!("0190a000-0000-7000-8000-00000000000{i}")),
            (0u8..4).prop_map(|i| format!("0190A000-0000-7000-8000-00000000000{i}")),
            "[0-9a-z-]{0,6}",
        ]
    }

    /// A change of cell (t, k, a) with id `id`, by `author`, setting `value`.
    pub(crate) fn cell_change(id: &str, author: &str, value: Option<String>) -> Change {
        Change {
            id: id.to_owned(),
            transaction_id: "tx".into(),
            entity_type: "t".into(),
            entity_id: "k".into(),
            attribute: "a".into(),
            old_value: None,
            new_value: value,
            author: author.to_owned(),
        }
    }

    fn log_rows(conn: &Connection) -> Vec<Vec<Value>> {
        let mut stmt = conn.prepare("SELECT * FROM ZV_LOG ORDER BY 1, 2, 3, 4, 5").unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect()).unwrap().map(Result::unwrap).collect()
    }

    /// A cell of a batch's row as remote input may hold it: mostly text, as a
    /// good batch does (so that most rows read as changes), else any type, and
    /// text that is not UTF-8 (`Err`: those bytes cast to TEXT).
    fn any_cell() -> impl Strategy<Value = std::result::Result<Value, Vec<u8>>> {
        prop_oneof![
            30 => ".{0,12}".prop_map(|t| Ok(Value::Text(t))),
            1 => Just(Ok(Value::Null)),
            1 => any::<i64>().prop_map(|i| Ok(Value::Integer(i))),
            1 => any::<f64>().prop_map(|f| Ok(Value::Real(f))),
            1 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| Ok(Value::Blob(b))),
            1 => proptest::collection::vec(0x80u8..=0xff, 1..8).prop_map(Err),
        ]
    }

    proptest! {
        /// Reading a row into a change that held another one gives what reading it
        /// afresh gives: the same change, or an error where that is one.
        #[test]
        fn a_row_read_into_a_used_change_is_the_row_read_afresh(
            cells in proptest::collection::vec(any_cell(), 8),
            before in proptest::collection::vec(proptest::option::of(".{0,6}"), 8),
        ) {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch("CREATE TABLE r(a, b, c, d, e, f, g, h)").unwrap();
            let slots: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| if c.is_err() { format!("CAST(?{} AS TEXT)", i + 1) } else { format!("?{}", i + 1) })
                .collect();
            let values: Vec<Value> = cells.into_iter().map(|c| c.unwrap_or_else(Value::Blob)).collect();
            conn.execute(&format!("INSERT INTO r VALUES ({})", slots.join(", ")), rusqlite::params_from_iter(&values))
                .unwrap();
            let text = |i: usize| before[i].clone().unwrap_or_default();
            let mut used = Change {
                id: text(0),
                transaction_id: text(1),
                entity_type: text(2),
                entity_id: text(3),
                attribute: text(4),
                old_value: before[5].clone(),
                new_value: before[6].clone(),
                author: text(7),
            };
            let (afresh, into) = conn
                .query_row("SELECT * FROM r", [], |r| {
                    Ok((row_to_change(r).map_err(|e| e.to_string()), row_into_change(r, &mut used).map_err(|e| e.to_string())))
                })
                .unwrap();
            match afresh {
                Ok(c) => prop_assert_eq!((into, used), (Ok(()), c)),
                Err(e) => prop_assert_eq!(into, Err(e)),
            }
        }

        /// Storing many changes a statement at a time leaves the log that storing
        /// them one by one leaves, repeats included (each is stored once).
        #[test]
        fn insert_all_stores_what_insert_stores(
            changes in proptest::collection::vec(
                (0u8..40, "[a-c]", "[xy*]", proptest::option::of("[ -~]{0,8}"), 0u8..3),
                0..100,
            )
        ) {
            let changes: Vec<Change> = changes
                .into_iter()
                .map(|(id, entity, attribute, value, tx)| Change {
                    id: format!("0190a000-0000-7000-8000-0000000000{id:02x}"),
                    transaction_id: format!("0190a000-0000-7000-8000-00000000ff{tx:02x}"),
                    entity_type: "t".into(),
                    entity_id: entity,
                    attribute,
                    old_value: None,
                    new_value: value,
                    author: "me".into(),
                })
                .collect();
            let (one, all) = (Connection::open_in_memory().unwrap(), Connection::open_in_memory().unwrap());
            for conn in [&one, &all] {
                conn.execute_batch(crate::migrate::SCHEMA).unwrap();
            }
            let log = Log::new(&one).unwrap();
            for c in &changes {
                log.insert(c).unwrap();
            }
            Log::new(&all).unwrap().insert_all(&changes).unwrap();
            prop_assert_eq!(log_rows(&one), log_rows(&all));
        }

        /// The winner a batch finds in memory is the one the log's seek finds.
        #[test]
        fn merge_order_picks_the_winner_the_log_picks(
            changes in proptest::collection::vec((any_id(), "[a-c]{1,2}"), 1..12)
        ) {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(crate::migrate::SCHEMA).unwrap();
            let log = Log::new(&conn).unwrap();
            let mut stored = Vec::new();
            for (id, author) in &changes {
                if let Some(s) = log.insert(&cell_change(id, author, Some("1".into()))).unwrap() {
                    stored.push((s, id.as_str(), author.as_str()));
                }
            }
            for (s, id, author) in &stored {
                let greatest = stored.iter().all(|(_, i, a)| merge_order(id, author, i, a).is_ge());
                prop_assert_eq!(log.wins(s, "k").unwrap(), greatest, "{} by {}", id, author);
            }
        }
    }
}
