//! Replicas made by an older dimple are upgraded in place on first open, in one
//! transaction: nothing in the log is lost and sync goes on (issue 9's per-author ids).

use crate::support::*;

/// Turns a current replica's log back into the version-1 shape: no author columns,
/// ids unique across the group, no recorded version.
fn downgrade_to_v1(path: &std::path::Path) {
    open_plain(path)
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             BEGIN;
             CREATE TABLE v1_tx(id TEXT NOT NULL PRIMARY KEY, author TEXT NOT NULL);
             INSERT INTO v1_tx SELECT id, author FROM ZV_TRANSACTION;
             CREATE TABLE v1_change(id TEXT NOT NULL PRIMARY KEY, transaction_id TEXT NOT NULL, entity_type TEXT NOT NULL,
               entity_id TEXT NOT NULL, attribute TEXT NOT NULL, old_value TEXT, new_value TEXT,
               FOREIGN KEY (transaction_id) REFERENCES ZV_TRANSACTION(id)) WITHOUT ROWID;
             INSERT INTO v1_change SELECT id, transaction_id, entity_type, entity_id, attribute, old_value, new_value FROM ZV_CHANGE;
             CREATE TABLE v1_clock(entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, attribute TEXT NOT NULL,
               change_id TEXT NOT NULL, PRIMARY KEY (entity_type, entity_id, attribute)) WITHOUT ROWID;
             INSERT INTO v1_clock SELECT entity_type, entity_id, attribute, change_id FROM ZV_CLOCK;
             DROP TABLE ZV_CLOCK; DROP TABLE ZV_CHANGE; DROP TABLE ZV_TRANSACTION; DROP TABLE ZV_AUTHOR;
             ALTER TABLE v1_tx RENAME TO ZV_TRANSACTION;
             ALTER TABLE v1_change RENAME TO ZV_CHANGE;
             ALTER TABLE v1_clock RENAME TO ZV_CLOCK;
             DELETE FROM ZV_METADATA WHERE key = 'local_schema';
             COMMIT;",
        )
        .unwrap();
}

fn log_of(path: &std::path::Path) -> Vec<(String, String, Option<String>)> {
    open_plain(path)
        .prepare("SELECT c.id, t.author, c.new_value FROM ZV_CHANGE c JOIN ZV_TRANSACTION t ON t.id = c.transaction_id ORDER BY c.id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_version_1_replica_is_upgraded_on_open_and_keeps_syncing() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    a.conn().execute("INSERT INTO t VALUES ('a1', 1, 'x', 0.5)", [])?;
    b.conn().execute("INSERT INTO t VALUES ('b1', 1, 'y', 0.5)", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    block_on(dimple::sync(&mut a, &store))?;
    drop(a);
    downgrade_to_v1(&g.db("a"));
    let before = log_of(&g.db("a"));
    assert_eq!(before.len(), 8, "two rows of four changes: {before:?}");

    let mut a = g.reopen("a");
    let after: Vec<(String, String, Option<String>)> = a
        .conn()
        .prepare("SELECT c.id, a.id, c.new_value FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n ORDER BY c.id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(after, before, "every change kept, with its transaction's author");
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    let version: String =
        a.conn().query_row("SELECT value FROM ZV_METADATA WHERE key='local_schema'", [], |r| r.get(0))?;
    assert_eq!(version, dimple::migrate::CURRENT.to_string());

    a.conn().execute("UPDATE t SET a = 2 WHERE id = 'b1'", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"));
    Ok(())
}

#[test]
fn an_upgrade_that_fails_midway_leaves_the_replica_as_it_was() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('a1', 1, 'x', 0.5)", [])?;
    a.capture()?;
    drop(a);
    downgrade_to_v1(&g.db("a"));
    // A change whose transaction is missing: the upgrade cannot give it an author
    // and must stop with nothing changed (the same as a crash before COMMIT).
    let c = open_plain(&g.db("a"));
    c.execute_batch("PRAGMA foreign_keys = OFF")?;
    c.execute(
        "INSERT INTO ZV_CHANGE VALUES ('01900000-0000-7000-8000-000000000001', 'nope', 't', 'zz', '*', NULL, 'true')",
        [],
    )?;
    let before = open_plain(&g.db("a")).query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get::<_, i64>(0))?;
    let err = dimple::Replica::open(&g.db("a"), g.opts()).err().expect("upgrade refused");
    assert!(err.to_string().contains("cannot upgrade the change log"), "{err}");
    let c = open_plain(&g.db("a"));
    let cols: i64 =
        c.query_row("SELECT count(*) FROM pragma_table_info('ZV_CHANGE') WHERE name = 'author_n'", [], |r| r.get(0))?;
    assert_eq!(cols, 0, "still the version-1 tables");
    assert_eq!(c.query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get::<_, i64>(0))?, before);
    let leftovers: i64 =
        c.query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'ZV_OLD_%'", [], |r| r.get(0))?;
    assert_eq!(leftovers, 0);
    Ok(())
}
