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

/// Page cache, in KiB, for a job that writes all over the change log: giving ids
/// to a burst of captured writes (at most: see `Replica::capture`), importing a
/// log. SQLite's default (2 MiB) made most of those inserts read their page again
/// (`cargo bench --bench dimple capture`: ids for 500k changes 3.5 s -> 1.8-2.2 s).
/// Kept for the job only, so the memory goes back. An apply sizes its own, smaller
/// (`sync::apply`).
pub const BIG_CACHE_KIB: i64 = 65536;

/// SQLite's own default page cache, in KiB.
pub const DEFAULT_CACHE_KIB: i64 = 2000;

/// Runs `job` with SQLite's page cache set to `kib`, then sets it back, which
/// frees the pages over the old size.
pub fn with_cache<T, E: From<rusqlite::Error>>(
    conn: &rusqlite::Connection,
    kib: i64,
    job: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let before: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", -kib)?;
    let result = job();
    conn.pragma_update(None, "cache_size", before)?;
    result
}

/// Sets how many WAL pages a commit on `conn` may leave before it checkpoints
/// them into the database file (`PRAGMA wal_autocheckpoint`); returns the setting
/// it replaced.
pub fn checkpoint_every(conn: &rusqlite::Connection, pages: i64) -> rusqlite::Result<i64> {
    let before: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", pages)?;
    Ok(before)
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

    #[test]
    fn a_job_with_a_big_cache_gives_the_old_size_back_even_when_it_fails() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "cache_size", -1234).unwrap();
        let size = |c: &rusqlite::Connection| c.query_row("PRAGMA cache_size", [], |r| r.get::<_, i64>(0)).unwrap();
        let seen = with_cache(&conn, 4096, || Ok::<_, rusqlite::Error>(size(&conn))).unwrap();
        assert_eq!(seen, -4096);
        assert_eq!(size(&conn), -1234);
        let failed = with_cache(&conn, 4096, || conn.execute_batch("SELECT * FROM no_such_table"));
        assert!(failed.is_err());
        assert_eq!(size(&conn), -1234);
    }
}
