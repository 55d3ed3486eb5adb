//! Remote DDL: the only SQL text dimple ever runs that another device wrote (a
//! table's `CREATE TABLE` from a published schema or a snapshot), and the
//! `ALTER TABLE .. ADD COLUMN` it builds to follow a group's new columns.
//!
//! Published DDL is hostile input. Before anything touches a replica, the
//! statement runs on a scratch in-memory database and must turn out to be exactly
//! one plain table of the expected name: SQLite stores a plain `CREATE TABLE` as it
//! was written, so the stored text must equal the statement (which rules out
//! `AS SELECT`, other schemas and `TEMP`), and nothing else may appear in the
//! scratch schema (no view, trigger or index besides a constraint's own). Virtual
//! tables, generated columns, and defaults that are expressions rather than
//! literals (a function call runs on every insert) are refused. Identifiers in the
//! statements dimple builds are always quoted.

use crate::sql::ident;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// One column as a table's definition gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    /// The declared type as written (`TEXT`, `VARCHAR(20)`, or empty).
    pub declared_type: String,
    /// The default as SQL text (`'x'`, `0`, `NULL`), None when there is none.
    pub default: Option<String>,
    pub not_null: bool,
    /// How the column compares (`NOCASE`, `RTRIM`), None for BINARY. Left out of
    /// the JSON when None, so a schema without collations reads as before; a
    /// build older than 2026-11-28 refuses a schema that names one (as a problem)
    /// rather than add the column without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
}

/// A name dimple keeps for itself, or SQLite does.
pub fn is_reserved(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("zv_") || n.starts_with("sqlite_")
}

/// The columns of `table` in `conn` (every column, key columns included), or why
/// they are not plain ones.
pub fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(Column, i64)>> {
    let mut cols: Vec<(Column, i64)> = conn
        .prepare("SELECT name, type, dflt_value, \"notnull\", hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?
        .query_map([table], |r| {
            Ok((
                Column {
                    name: r.get(0)?,
                    declared_type: r.get(1)?,
                    default: r.get(2)?,
                    not_null: r.get::<_, i64>(3)? != 0,
                    collation: None,
                },
                r.get(4)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let collations = collations(conn, table, &cols)?;
    for (c, _) in &mut cols {
        c.collation = collations.get(&c.name).cloned();
    }
    Ok(cols)
}

/// The collation of each plain column of `table` that does not compare by its
/// bytes. SQLite names a column's collation nowhere but in an index on it, so
/// the table's definition is run on a scratch database with one index over
/// every column. A definition naming a collation that only the app registers
/// does not run there: its columns count as BINARY (docs/schema.md).
fn collations(
    conn: &Connection,
    table: &str,
    cols: &[(Column, i64)],
) -> rusqlite::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let sql: Option<String> = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))
        .optional()?;
    let plain: Vec<String> = cols.iter().filter(|(_, hidden)| *hidden == 0).map(|(c, _)| ident(&c.name)).collect();
    let (Some(sql), false) = (sql, plain.is_empty()) else { return Ok(out) };
    let scratch = Connection::open_in_memory()?;
    // The local definition (the app's, or one `check_create_table` let through).
    let made = scratch.prepare(&sql).and_then(|mut s| s.raw_execute()).and_then(|_| {
        scratch.execute_batch(&format!("CREATE INDEX every_column ON {}({})", ident(table), plain.join(", ")))
    });
    if made.is_err() {
        return Ok(out);
    }
    let mut stmt = scratch.prepare(
        "SELECT name, coll FROM pragma_index_xinfo('every_column') WHERE key = 1 AND upper(coll) <> 'BINARY'",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (name, coll) = row?;
        out.insert(name, coll.to_ascii_uppercase());
    }
    Ok(out)
}

/// Checks that `sql` is a single plain `CREATE TABLE` of `name`, on a scratch
/// database; returns its columns. Nothing is run anywhere else.
pub fn check_create_table(name: &str, sql: &str) -> Result<Vec<Column>, String> {
    if is_reserved(name) {
        return Err(format!("{name:?} is a name dimple or SQLite keeps for itself"));
    }
    if !sql.starts_with("CREATE TABLE ") {
        return Err(format!("the schema of {name:?} is not a plain CREATE TABLE statement"));
    }
    let scratch = Connection::open_in_memory().map_err(|e| e.to_string())?;
    // One statement: rusqlite refuses text with a second statement after the first.
    let mut stmt = scratch.prepare(sql).map_err(|e| format!("the schema of {name:?} does not parse: {e}"))?;
    stmt.raw_execute().map_err(|e| format!("the schema of {name:?} does not run: {e}"))?;
    drop(stmt);
    let objects: Vec<(String, String, Option<String>)> = scratch
        .prepare("SELECT type, name, sql FROM sqlite_master")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(|e| e.to_string())?;
    for (kind, object, text) in &objects {
        let own_index = kind == "index" && text.is_none();
        let the_table = kind == "table" && object == name && text.as_deref() == Some(sql);
        if !own_index && !the_table {
            return Err(format!(
                "the schema of {name:?} is not a plain CREATE TABLE of that name (it made the {kind} {object:?})"
            ));
        }
    }
    if !objects.iter().any(|(kind, _, _)| kind == "table") {
        return Err(format!("the schema of {name:?} does not create a table of that name"));
    }
    let cols = columns(&scratch, name).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (c, hidden) in cols {
        if hidden != 0 {
            return Err(format!("column {name}.{} is generated or hidden", c.name));
        }
        check_column(name, &c)?;
        out.push(c);
    }
    Ok(out)
}

fn check_column(table: &str, c: &Column) -> Result<(), String> {
    if let Some(d) = &c.default {
        if !is_literal(d) {
            return Err(format!("column {table}.{} has a default that is not a literal value: {d}", c.name));
        }
    }
    if !c.declared_type.chars().all(|ch| ch.is_ascii_alphanumeric() || " _(),+-".contains(ch)) {
        return Err(format!("column {table}.{} has an unusual declared type {:?}", c.name, c.declared_type));
    }
    if let Some(coll) = &c.collation {
        if coll.is_empty() || !coll.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            return Err(format!("column {table}.{} has an unusual collation {coll:?}", c.name));
        }
    }
    Ok(())
}

/// The statement that adds `col` to `table` (whose definition here is
/// `local_sql`), checked on a scratch copy: the column it makes must be `col`.
pub fn add_column(table: &str, local_sql: &str, col: &Column) -> Result<String, String> {
    check_column(table, col)?;
    // Collation names compare without case; SQLite gives them back as written.
    let col = &Column { collation: col.collation.as_ref().map(|c| c.to_ascii_uppercase()), ..col.clone() };
    if col.not_null && col.default.as_deref().is_none_or(|d| d.eq_ignore_ascii_case("null")) {
        return Err(format!("column {table}.{} is NOT NULL without a default: SQLite cannot add it", col.name));
    }
    let mut sql = format!("ALTER TABLE {} ADD COLUMN {}", ident(table), ident(&col.name));
    if !col.declared_type.is_empty() {
        sql.push(' ');
        sql.push_str(&col.declared_type);
    }
    if col.not_null {
        sql.push_str(" NOT NULL");
    }
    if let Some(d) = &col.default {
        sql.push_str(" DEFAULT ");
        sql.push_str(d);
    }
    if let Some(coll) = &col.collation {
        sql.push_str(" COLLATE ");
        sql.push_str(&ident(coll));
    }
    let scratch = Connection::open_in_memory().map_err(|e| e.to_string())?;
    scratch.prepare(local_sql).and_then(|mut s| s.raw_execute()).map_err(|e| format!("{table}: {e}"))?;
    scratch
        .prepare(&sql)
        .and_then(|mut s| s.raw_execute())
        .map_err(|e| format!("column {table}.{} cannot be added: {e}", col.name))?;
    let made = columns(&scratch, table).map_err(|e| e.to_string())?;
    match made.iter().find(|(c, _)| c.name == col.name) {
        Some((c, 0)) if c == col => Ok(sql),
        _ => Err(format!("column {table}.{} would not be added as published", col.name)),
    }
}

/// A literal SQL value: NULL, TRUE, FALSE, a number, a string, a blob, the
/// CURRENT_* keywords, optionally signed or in parentheses. Anything else (a
/// function call, an operator, a subquery) is an expression.
pub fn is_literal(expr: &str) -> bool {
    let mut e = expr.trim();
    while let Some(inner) = e.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        e = inner.trim();
    }
    let upper = e.to_ascii_uppercase();
    if ["NULL", "TRUE", "FALSE", "CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP"].contains(&upper.as_str()) {
        return true;
    }
    if let Some(s) = e.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return !s.replace("''", "").contains('\'');
    }
    if let Some(h) = upper.strip_prefix("X'").and_then(|x| x.strip_suffix('\'')) {
        return h.len() % 2 == 0 && h.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let n = e.strip_prefix(['+', '-']).unwrap_or(e);
    if let Some(h) = n.strip_prefix("0x").or_else(|| n.strip_prefix("0X")) {
        return !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !n.is_empty() && n.parse::<f64>().is_ok() && n.bytes().all(|b| b.is_ascii_digit() || b"._eE+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_create_table_passes_with_its_columns() {
        let cols = check_create_table(
            "notes",
            "CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT NOT NULL DEFAULT '', n INTEGER DEFAULT -1, u TEXT UNIQUE, CHECK (n > -5))",
        )
        .unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "body", "n", "u"]);
        assert_eq!(cols[2].default.as_deref(), Some("-1"));
    }

    #[test]
    fn every_hostile_shape_is_refused() {
        for (name, sql) in [
            ("t", "CREATE TABLE t AS SELECT 1 AS id"),
            ("t", "CREATE TABLE t(id TEXT PRIMARY KEY); DROP TABLE x"),
            ("t", "CREATE TABLE t(id TEXT PRIMARY KEY); CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END"),
            ("t", "CREATE VIEW t AS SELECT 1"),
            ("t", "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END"),
            ("t", "CREATE VIRTUAL TABLE t USING fts5(body)"),
            ("t", "CREATE TEMP TABLE t(id TEXT PRIMARY KEY)"),
            ("t", "CREATE TABLE temp.t(id TEXT PRIMARY KEY)"),
            ("t", "CREATE TABLE t(id TEXT PRIMARY KEY, g TEXT GENERATED ALWAYS AS (id || 'x'))"),
            ("t", "CREATE TABLE t(id TEXT PRIMARY KEY, g TEXT AS (upper(id)) STORED)"),
            ("t", "CREATE TABLE t(id TEXT PRIMARY KEY, d TEXT DEFAULT (hex(randomblob(16))))"),
            ("t", "CREATE TABLE t(id TEXT PRIMARY KEY, d INTEGER DEFAULT (1 + 2))"),
            ("t", "CREATE TABLE other(id TEXT PRIMARY KEY)"),
            ("ZV_CHANGE", "CREATE TABLE ZV_CHANGE(id TEXT PRIMARY KEY)"),
            ("sqlite_x", "CREATE TABLE sqlite_x(id TEXT PRIMARY KEY)"),
            ("t", "create table t(id TEXT PRIMARY KEY)  -- not as SQLite stores it\n"),
        ] {
            assert!(check_create_table(name, sql).is_err(), "accepted {sql:?}");
        }
    }

    #[test]
    fn literals_are_told_from_expressions() {
        for lit in ["NULL", "0", "-1.5e3", "'it''s'", "X'00ff'", "(0)", "CURRENT_TIMESTAMP", "true", "0x1F"] {
            assert!(is_literal(lit), "{lit}");
        }
        for expr in ["abs(1)", "1 + 2", "'a' || 'b'", "(SELECT 1)", "random()", "x", "'unclosed", "''')"] {
            assert!(!is_literal(expr), "{expr}");
        }
    }

    #[test]
    fn an_added_column_is_built_quoted_and_checked() {
        let col = Column {
            name: "we\"ird".into(),
            declared_type: "TEXT".into(),
            default: Some("'x'".into()),
            not_null: true,
            collation: None,
        };
        let sql = add_column("my table", "CREATE TABLE \"my table\"(id TEXT PRIMARY KEY)", &col).unwrap();
        assert_eq!(sql, "ALTER TABLE \"my table\" ADD COLUMN \"we\"\"ird\" TEXT NOT NULL DEFAULT 'x'");
        let bad = Column { default: Some("random()".into()), ..col.clone() };
        assert!(add_column("my table", "CREATE TABLE \"my table\"(id TEXT PRIMARY KEY)", &bad).is_err());
        let no_default = Column { default: None, ..col };
        assert!(add_column("my table", "CREATE TABLE \"my table\"(id TEXT PRIMARY KEY)", &no_default).is_err());
    }

    #[test]
    fn an_added_column_keeps_its_collation() {
        let table = "CREATE TABLE t(id TEXT PRIMARY KEY)";
        let col = Column {
            name: "tag".into(),
            declared_type: "TEXT".into(),
            default: None,
            not_null: false,
            collation: Some("nocase".into()),
        };
        let sql = add_column("t", table, &col).unwrap();
        assert_eq!(sql, "ALTER TABLE \"t\" ADD COLUMN \"tag\" TEXT COLLATE \"NOCASE\"");
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(&format!("{table}; {sql}; INSERT INTO t VALUES ('k', 'Tag')")).unwrap();
        let n: i64 = c.query_row("SELECT count(*) FROM t WHERE tag = 'TAG'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "the column compares without case");
        let read = columns(&c, "t").unwrap();
        assert_eq!(read[1].0.collation.as_deref(), Some("NOCASE"));
        assert_eq!(read[0].0.collation, None, "BINARY is no collation");
        // Only what dimple's own connection has: an app's own collation, or a name
        // that is not one, is refused, never spliced.
        for bad in ["my_collation", "NOCASE\" DEFAULT 1", ""] {
            let col = Column { collation: Some(bad.into()), ..col.clone() };
            assert!(add_column("t", table, &col).is_err(), "{bad}");
        }
    }
}
