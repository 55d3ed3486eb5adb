//! Choosing tables to sync: key validation and the capture triggers.
//!
//! Triggers are the capture path that works for every SQLite client, so they may use
//! nothing but built-in SQL: they copy raw OLD/NEW values into `ZV_PENDING`, and
//! dimple assigns ids, encodes values and groups transactions when it next runs.
//! An app's write therefore never fails because dimple is absent.

use crate::error::{Error, Result};
use crate::sql::ident;
use rusqlite::{params, Connection, OptionalExtension};

/// The attribute that stands for the row itself (insert = alive, delete = dead).
pub const ROW: &str = "*";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Real,
    Numeric,
    Blob,
}

/// SQLite's rules for the affinity of a declared column type (section 3.1 of its docs).
pub fn affinity(decl: &str) -> Affinity {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        Affinity::Integer
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Affinity::Text
    } else if d.contains("BLOB") || d.is_empty() {
        Affinity::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// A tracked table as this replica's schema has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub key_columns: Vec<String>,
    pub key_affinity: Vec<Affinity>,
    /// Non-key columns, in table order.
    pub columns: Vec<String>,
}

impl TableInfo {
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c == name)
    }
}

/// Reads a table's shape from the schema; None when there is no such table.
pub fn inspect(conn: &Connection, table: &str) -> Result<Option<TableInfo>> {
    let exists: Option<String> = conn
        .query_row("SELECT name FROM sqlite_master WHERE type='table' AND name=?1", [table], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let cols: Vec<(String, String, i64)> =
        stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    let mut keys: Vec<(i64, String, Affinity)> =
        cols.iter().filter(|c| c.2 > 0).map(|c| (c.2, c.0.clone(), affinity(&c.1))).collect();
    keys.sort_by_key(|k| k.0);
    Ok(Some(TableInfo {
        name: table.to_owned(),
        key_affinity: keys.iter().map(|k| k.2).collect(),
        key_columns: keys.into_iter().map(|k| k.1).collect(),
        columns: cols.into_iter().filter(|c| c.2 == 0).map(|c| c.0).collect(),
    }))
}

/// Why a table cannot be tracked, in words a user can act on.
pub fn validate(info: &TableInfo, allow_integer_key: bool) -> Result<()> {
    let t = &info.name;
    if t.starts_with("ZV_") || t.starts_with("sqlite_") {
        return Err(Error::Invalid(format!("table {t} is internal and cannot be tracked")));
    }
    if info.key_columns.is_empty() {
        return Err(Error::Invalid(format!(
            "table {t} has no primary key: dimple identifies rows by their key; add a TEXT PRIMARY KEY (a UUID, say)"
        )));
    }
    if info.columns.iter().chain(&info.key_columns).any(|c| c == ROW) {
        return Err(Error::Invalid(format!("table {t} has a column named {ROW:?}, which dimple reserves")));
    }
    for (col, aff) in info.key_columns.iter().zip(&info.key_affinity) {
        if !matches!(aff, Affinity::Integer | Affinity::Text) {
            return Err(Error::Invalid(format!(
                "table {t}: key column {col} must be declared TEXT or INTEGER so that every replica reads the same key"
            )));
        }
    }
    if info.key_columns.len() == 1 && info.key_affinity[0] == Affinity::Integer && !allow_integer_key {
        return Err(Error::Invalid(format!(
            "table {t} has an integer key ({}): two devices would both create row 1 and overwrite each other; use a TEXT key such as a UUID, or pass --allow-integer-key if keys are assigned globally",
            info.key_columns[0]
        )));
    }
    Ok(())
}

/// Refuses a table whose key compares by a collation other than BINARY
/// (`id TEXT COLLATE NOCASE PRIMARY KEY`): 'A' and 'a' are then one row of the
/// table but two rows of the group (a row's id in the log is its key's bytes),
/// and two replicas that wrote both would each keep a different one, silently.
pub fn validate_key_collation(conn: &Connection, table: &str) -> Result<()> {
    match key_collation(conn, table)? {
        None => Ok(()),
        Some((column, coll)) => Err(Error::Invalid(format!(
            "{}; declare the key without a collation (BINARY) and normalize keys in the app if it wants them case-insensitive",
            key_collation_risk(table, &column, &coll)
        ))),
    }
}

/// What a key collation other than BINARY does, as `track` and `verify` say it.
pub fn key_collation_risk(table: &str, column: &str, collation: &str) -> String {
    format!(
        "table {table}: key column {column} compares with COLLATE {collation}, under which two different keys can be one row here and two rows on other devices, which would then disagree"
    )
}

/// The first key column of `table` that compares by a collation other than
/// BINARY, and that collation.
pub fn key_collation(conn: &Connection, table: &str) -> Result<Option<(String, String)>> {
    // The primary key's index says how its columns compare; a rowid alias
    // (INTEGER PRIMARY KEY) has none and compares as numbers.
    let index: Option<String> = conn
        .query_row("SELECT name FROM pragma_index_list(?1) WHERE origin = 'pk'", [table], |r| r.get(0))
        .optional()?;
    let Some(index) = index else { return Ok(None) };
    Ok(conn
        .query_row(
            "SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 AND upper(coll) <> 'BINARY' ORDER BY seqno",
            [&index],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

pub(crate) fn key_expr(info: &TableInfo, row: &str) -> String {
    match info.key_columns.as_slice() {
        [one] => format!("{row}.{}", ident(one)),
        many => {
            format!("json_array({})", many.iter().map(|c| format!("{row}.{}", ident(c))).collect::<Vec<_>>().join(", "))
        }
    }
}

/// True when `row`'s key can travel: each key column holds the storage class its
/// declared type gives (SQLite lets a TEXT key hold a BLOB or NULL, an INTEGER one
/// text that is not a number), so every replica writes back the very same key.
pub(crate) fn key_syncs(info: &TableInfo, row: &str) -> String {
    let parts: Vec<String> = info
        .key_columns
        .iter()
        .zip(&info.key_affinity)
        .map(|(c, aff)| {
            let class = if *aff == Affinity::Integer { "integer" } else { "text" };
            format!("typeof({row}.{}) = '{class}'", ident(c))
        })
        .collect();
    parts.join(" AND ")
}

/// The key as the capture triggers record it. A key that cannot sync is recorded
/// as an empty blob instead of failing the app's write (`json_array` refuses blobs,
/// and a NULL would break the pending table's NOT NULL): dimple then reports the
/// row as a problem when it next runs.
pub(crate) fn captured_key(info: &TableInfo, row: &str) -> String {
    format!("CASE WHEN {} THEN {} ELSE x'' END", key_syncs(info, row), key_expr(info, row))
}

/// Rows of the table whose key cannot sync.
pub fn count_unsyncable_keys(conn: &Connection, info: &TableInfo) -> Result<usize> {
    Ok(unsyncable_keys(conn, info)?.len())
}

/// The keys of the rows whose key cannot sync, each as its values encoded and
/// joined by ", ": a key not of its column's type (see `key_syncs`), or TEXT whose
/// bytes are not UTF-8, which no entity id (text) can name. SQL cannot tell
/// UTF-8 from other bytes, so every key is read: this runs only while such a
/// problem is open, and for `dimple verify`.
pub fn unsyncable_keys(conn: &Connection, info: &TableInfo) -> Result<Vec<String>> {
    let keys = info.key_columns.iter().map(|c| format!("r.{}", ident(c))).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {}, {keys} FROM {} AS r", key_syncs(info, "r"), ident(&info.name));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let n = info.key_columns.len();
    while let Some(r) = rows.next()? {
        let utf8 = (1..=n).all(|i| match r.get_ref(i) {
            Ok(rusqlite::types::ValueRef::Text(t)) => std::str::from_utf8(t).is_ok(),
            _ => true,
        });
        if !r.get::<_, bool>(0)? || !utf8 {
            let key: Vec<String> =
                (1..=n).map(|i| r.get_ref(i).map(crate::value::encode_ref)).collect::<rusqlite::Result<_>>()?;
            out.push(key.join(", "));
        }
    }
    Ok(out)
}

/// Bumped when the trigger SQL changes: `ingest` reinstalls older triggers.
/// 4: the key trigger marks its delete as a new key ([`REKEY`]).
pub const CAPTURE_VERSION: i64 = 4;

/// `col` of the delete the key trigger captures: the insert of the new key
/// follows it. A value the old row lacked (stored out of line and not fetched
/// on a lazy replica, NULL in the row) moves to the new row as its reference,
/// instead of the NULL the app never wrote.
pub const REKEY: i64 = -1;

/// `a.k IS b.k` for every key column, compared byte for byte (a NOCASE key that
/// changes case is a new key).
fn keys_equal(info: &TableInfo, negate: bool) -> String {
    let parts: Vec<String> = info
        .key_columns
        .iter()
        .map(|c| format!("OLD.{0} IS NEW.{0} COLLATE BINARY AND typeof(OLD.{0}) = typeof(NEW.{0})", ident(c)))
        .collect();
    let all = parts.join(" AND ");
    if negate {
        format!("NOT ({all})")
    } else {
        all
    }
}

/// The table where `table`'s triggers leave captured writes: one row per write,
/// with a column per tracked column (`c0`, `c1`, ...), so an insert costs one
/// appended row however wide the table is.
pub fn pending_table(table: &str) -> String {
    format!("ZV_PENDING_{table}")
}

/// `INSERT` of one captured row: op, key, and every column value from `row`.
fn insert_row(info: &TableInfo, row: &str) -> String {
    let cols: String = (0..info.columns.len()).map(|i| format!(", c{i}")).collect();
    let vals: String = info.columns.iter().map(|c| format!(", {row}.{}", ident(c))).collect();
    format!(
        "INSERT INTO {}(op, pk{cols}) VALUES ({OP_INSERT}, {}{vals});",
        ident(&pending_table(&info.name)),
        captured_key(info, row)
    )
}

pub const OP_INSERT: i64 = 1;
pub const OP_UPDATE: i64 = 2;
pub const OP_DELETE: i64 = 3;
/// Written by [`crate::blob::clear`], never by a trigger: the app clears a cell
/// whose value this replica has not fetched (NULL over the NULL it holds, which
/// a trigger cannot tell from the app writing back what it read).
pub const OP_CLEAR: i64 = 4;

/// The name of the trigger capturing inserts into `table`: a renamed table keeps
/// it (SQLite moves triggers with their table).
pub fn insert_trigger(table: &str) -> String {
    format!("zv_ins_{table}")
}

fn trigger_sql(info: &TableInfo) -> Vec<String> {
    let t = ident(&info.name);
    let pending = ident(&pending_table(&info.name));
    let name = |kind: &str| ident(&format!("zv_{kind}_{}", info.name));
    let delete = format!("INSERT INTO {pending}(op, pk) VALUES ({OP_DELETE}, {});", captured_key(info, "OLD"));
    let rekey_delete =
        format!("INSERT INTO {pending}(op, pk, col) VALUES ({OP_DELETE}, {}, {REKEY});", captured_key(info, "OLD"));
    let mut out = vec![
        format!("CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN {} END", name("ins"), insert_row(info, "NEW")),
        format!("CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN {delete} END", name("del")),
        // A new key is a new entity: the old one is deleted, the new one inserted whole.
        format!(
            "CREATE TRIGGER {} AFTER UPDATE OF {} ON {t} WHEN {} BEGIN {rekey_delete} {} END",
            name("key"),
            info.key_columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "),
            keys_equal(info, true),
            insert_row(info, "NEW")
        ),
    ];
    // One trigger per column, so an UPDATE that sets one column runs one trigger, and
    // only a real change (value or storage class, byte for byte) is recorded. SQL
    // holds -0.0 and 0.0 equal, and no SQL function tells them apart: a real zero
    // over a real zero is captured, and `ingest` drops it if the bits are the same.
    for (i, c) in info.columns.iter().enumerate() {
        let col = ident(c);
        out.push(format!(
            "CREATE TRIGGER {} AFTER UPDATE OF {col} ON {t} WHEN {} AND (OLD.{col} IS NOT NEW.{col} COLLATE BINARY OR typeof(OLD.{col}) <> typeof(NEW.{col}) OR (typeof(NEW.{col}) = 'real' AND NEW.{col} = 0.0)) \
             BEGIN INSERT INTO {pending}(op, pk, col, old, new) VALUES ({OP_UPDATE}, {}, {i}, OLD.{col}, NEW.{col}); END",
            ident(&format!("zv_upd_{i}_{}", info.name)),
            keys_equal(info, false),
            captured_key(info, "NEW"),
        ));
    }
    out
}

/// Creates the pending table, or widens it when columns were added. Columns without
/// a declared type keep every storage class exactly.
fn ensure_pending_table(conn: &Connection, info: &TableInfo) -> Result<()> {
    let name = pending_table(&info.name);
    let have: i64 =
        conn.query_row("SELECT count(*) FROM pragma_table_info(?1) WHERE name GLOB 'c[0-9]*'", [&name], |r| r.get(0))?;
    let exists: bool =
        conn.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type='table' AND name=?1", [&name], |r| r.get(0))?;
    if !exists {
        conn.execute_batch(&format!(
            "CREATE TABLE {}(seq INTEGER PRIMARY KEY, op INTEGER NOT NULL, pk NOT NULL, col INTEGER, old, new)",
            ident(&name)
        ))?;
    }
    for i in have as usize..info.columns.len() {
        conn.execute_batch(&format!("ALTER TABLE {} ADD COLUMN c{i}", ident(&name)))?;
    }
    Ok(())
}

pub fn drop_triggers(conn: &Connection, table: &str) -> Result<()> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name=?1 AND name LIKE 'zv\\_%' ESCAPE '\\'",
        )?
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for n in names {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", ident(&n)))?;
    }
    Ok(())
}

/// Installs (or refreshes) capture for `info`; the caller holds a write transaction.
/// With `capture_existing`, rows already in the table are recorded as inserts so
/// they reach the other replicas.
pub fn install(conn: &Connection, info: &TableInfo, capture_existing: bool, now: &str) -> Result<()> {
    drop_triggers(conn, &info.name)?;
    ensure_pending_table(conn, info)?;
    for sql in trigger_sql(info) {
        conn.execute_batch(&sql)?;
    }
    conn.execute(
        "INSERT INTO ZV_TRACKED(tbl, key_columns, columns, tracked_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(tbl) DO UPDATE SET key_columns=excluded.key_columns, columns=excluded.columns",
        params![
            info.name,
            serde_json::to_string(&info.key_columns).expect("strings serialize"),
            serde_json::to_string(&info.columns).expect("strings serialize"),
            now
        ],
    )?;
    if capture_existing {
        let cols: String = (0..info.columns.len()).map(|i| format!(", c{i}")).collect();
        let vals: String = info.columns.iter().map(|c| format!(", r.{}", ident(c))).collect();
        conn.execute_batch(&format!(
            "INSERT INTO {}(op, pk{cols}) SELECT {OP_INSERT}, {}{vals} FROM {} AS r",
            ident(&pending_table(&info.name)),
            captured_key(info, "r"),
            ident(&info.name)
        ))?;
    }
    Ok(())
}

/// Stops capture; the caller has turned pending writes into changes first.
pub fn untrack(conn: &Connection, table: &str) -> Result<bool> {
    drop_triggers(conn, table)?;
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", ident(&pending_table(table))))?;
    Ok(conn.execute("DELETE FROM ZV_TRACKED WHERE tbl=?1", [table])? > 0)
}

/// Names of tracked tables.
pub fn tracked_names(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare("SELECT tbl FROM ZV_TRACKED ORDER BY tbl")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Captured writes of every tracked table still waiting for ids, in the database
/// `schema` ("main", or an attached one).
pub fn pending_count(conn: &Connection, schema: &str) -> Result<i64> {
    sum_over_pending(conn, schema, "count(*)")
}

/// At least as many captured writes as wait in the pending tables, found without
/// reading them: each table's span of sequence numbers.
pub fn pending_span(conn: &Connection) -> Result<i64> {
    sum_over_pending(conn, "main", "coalesce(max(seq) - min(seq) + 1, 0)")
}

/// The sum of `aggregate` over every tracked table's pending table in `schema`
/// (one missing counts 0).
fn sum_over_pending(conn: &Connection, schema: &str, aggregate: &str) -> Result<i64> {
    let tables: Vec<String> = conn
        .prepare_cached(&format!("SELECT tbl FROM {}.ZV_TRACKED", ident(schema)))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for t in tables {
        let sql = format!("SELECT {aggregate} FROM {}.{}", ident(schema), ident(&pending_table(&t)));
        n += conn.query_row(&sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    }
    Ok(n)
}

/// The column list recorded when the table was last (re)tracked.
pub fn recorded_columns(conn: &Connection, table: &str) -> Result<Option<Vec<String>>> {
    let cols: Option<String> =
        conn.query_row("SELECT columns FROM ZV_TRACKED WHERE tbl=?1", [table], |r| r.get(0)).optional()?;
    Ok(cols.and_then(|c| serde_json::from_str(&c).ok()))
}
