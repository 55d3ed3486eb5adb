//! Quoting for the few SQL texts built at run time (trigger bodies, per-table
//! statements). Only names of local tables and columns, checked against the local
//! schema first, ever pass through here; values are always bound.

pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether database `schema` (`main`, or an attached file such as a snapshot) has
/// a table named `name`: how dimple tells the forms of its own files apart.
pub fn has_table(conn: &rusqlite::Connection, schema: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT count(*) > 0 FROM {}.sqlite_master WHERE type = 'table' AND name = ?1", ident(schema)),
        [name],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(text: &str) -> String {
        format!("'{}'", text.replace('\'', "''"))
    }

    #[test]
    fn quoting_survives_hostile_names() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let name = "t\"; DROP TABLE x; --'";
        conn.execute_batch(&format!("CREATE TABLE x(a); CREATE TABLE {}({} TEXT)", ident(name), ident(name))).unwrap();
        let got: String = conn.query_row(&format!("SELECT {}", literal(name)), [], |r| r.get(0)).unwrap();
        assert_eq!(got, name);
        let n: i64 = conn.query_row("SELECT count(*) FROM sqlite_master WHERE name='x'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }
}
