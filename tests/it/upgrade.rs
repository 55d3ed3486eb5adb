//! Replicas made by an older dimple are upgraded in place on first open, in one
//! transaction: nothing in the log is lost and sync goes on (issue 9's per-author
//! ids; issue 13's compact log).

use crate::support::*;
use rusqlite::types::Value;

/// Turns a current replica's log back into the version-5 shape: a row of the
/// `ZV_LOG` table per change (the form snapshots still carry) instead of records
/// and history.
fn downgrade_to_v5(path: &std::path::Path) {
    let c = open_plain(path);
    c.execute_batch(
        "BEGIN;
         CREATE TEMP TABLE v5_log AS SELECT * FROM ZV_LOG;
         DROP VIEW ZV_CLOCK; DROP VIEW ZV_CHANGE; DROP VIEW ZV_LOG; DROP TABLE ZV_ROW; DROP TABLE ZV_HISTORY;",
    )
    .unwrap();
    c.execute_batch(include_str!("../../schema/snapshot_log.sql")).unwrap();
    c.execute_batch(
        "INSERT INTO ZV_LOG SELECT * FROM v5_log;
         UPDATE ZV_METADATA SET value = '5' WHERE key = 'local_schema';
         COMMIT;",
    )
    .unwrap();
}

/// Turns a current replica's log back into the version-3 shape: the text tables
/// of schema/wire_log.sql instead of the compact log and its views.
fn downgrade_to_v3(path: &std::path::Path) {
    downgrade_to_v5(path);
    let c = open_plain(path);
    c.execute_batch(
        "BEGIN;
         CREATE TEMP TABLE v3_tx AS SELECT id, author FROM ZV_TRANSACTION;
         CREATE TEMP TABLE v3_change AS SELECT * FROM ZV_CHANGE;
         CREATE TEMP TABLE v3_clock AS SELECT * FROM ZV_CLOCK;
         DROP VIEW ZV_CLOCK; DROP VIEW ZV_CHANGE; DROP VIEW ZV_TRANSACTION;
         DROP TABLE ZV_LOG; DROP TABLE ZV_TX; DROP TABLE ZV_NAME; DROP TABLE ZV_OUTBOX;",
    )
    .unwrap();
    c.execute_batch(include_str!("../../schema/wire_log.sql")).unwrap();
    c.execute_batch(
        "INSERT INTO ZV_TRANSACTION SELECT * FROM v3_tx;
         INSERT INTO ZV_CHANGE SELECT * FROM v3_change;
         INSERT INTO ZV_CLOCK SELECT * FROM v3_clock;
         UPDATE ZV_METADATA SET value = '3' WHERE key = 'local_schema';
         COMMIT;",
    )
    .unwrap();
}

/// Turns a current replica's outbox back into the version-4 shape: a row per
/// change of this replica after the push cursor, naming its place in the log.
fn downgrade_to_v4(path: &std::path::Path) {
    downgrade_to_v5(path);
    open_plain(path)
        .execute_batch(
            "BEGIN;
             DROP TABLE ZV_OUTBOX;
             CREATE TABLE ZV_OUTBOX (id BLOB NOT NULL PRIMARY KEY, type_n INTEGER NOT NULL,
                                     entity_id TEXT NOT NULL, attr_n INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO ZV_OUTBOX
               SELECT l.id, l.type_n, l.entity_id, l.attr_n FROM ZV_LOG l
               WHERE l.author_n = (SELECT a.n FROM ZV_AUTHOR a JOIN ZV_METADATA m ON m.value = a.id
                                   WHERE m.key = 'database_uuid')
                 AND l.id > coalesce((SELECT unhex(replace(value, '-', '')) FROM ZV_METADATA
                                      WHERE key = 'push.through' AND value <> ''), x'');
             UPDATE ZV_METADATA SET value = '4' WHERE key = 'local_schema';
             COMMIT;",
        )
        .unwrap();
}

/// The old outbox's rows, as they are.
fn v4_outbox(path: &std::path::Path) -> Vec<Vec<Value>> {
    let c = open_plain(path);
    let mut stmt = c.prepare("SELECT id, type_n, entity_id, attr_n FROM ZV_OUTBOX ORDER BY id").unwrap();
    stmt.query_map([], |r| (0..4).map(|i| r.get::<_, Value>(i)).collect()).unwrap().map(Result::unwrap).collect()
}

/// Turns a current replica's log back into the version-1 shape: no author columns,
/// ids unique across the group, no recorded version.
fn downgrade_to_v1(path: &std::path::Path) {
    downgrade_to_v3(path);
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
    sync_a_b_a(&store, &mut a, &mut b)?;
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
    sync_a_b_a(&store, &mut a, &mut b)?;
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "a and b converge");
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

/// Everything the seed's tables say, in one comparable value: every change with
/// its author, every clock entry, every transaction.
type LogDump = (Vec<Vec<Value>>, Vec<Vec<Value>>, Vec<Vec<Value>>);

fn dump(path: &std::path::Path) -> LogDump {
    let c = open_plain(path);
    let all = |sql: &str| -> Vec<Vec<Value>> {
        let mut stmt = c.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect()).unwrap().map(Result::unwrap).collect()
    };
    (
        all("SELECT c.id, c.transaction_id, c.entity_type, c.entity_id, c.attribute, c.old_value, c.new_value, a.id
             FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n ORDER BY 1, 8"),
        all("SELECT k.entity_type, k.entity_id, k.attribute, k.change_id, a.id
             FROM ZV_CLOCK k JOIN ZV_AUTHOR a ON a.n = k.author_n ORDER BY 1, 2, 3"),
        all("SELECT id, author FROM ZV_TRANSACTION ORDER BY 1, 2"),
    )
}

fn local_schema(path: &std::path::Path) -> String {
    open_plain(path).query_row("SELECT value FROM ZV_METADATA WHERE key='local_schema'", [], |r| r.get(0)).unwrap()
}

/// Generated writes on two replicas that sync, with some of `a`'s left unpushed:
/// the log holds remote changes, superseded ones, deletes and unpushed ones.
fn busy_group(g: &Group, seed: u64, rows: usize) -> (dimple::Replica, dimple::Replica) {
    let store = g.store();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..3 {
        for r in [&mut a, &mut b] {
            let tx = r.conn().unchecked_transaction().unwrap();
            for _ in 0..rows {
                let k = format!("k{}", next() % (rows as u64 * 2));
                let bits = f64::from_bits(next());
                let bits = if bits.is_nan() { 0.25 } else { bits };
                let blob: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
                match next() % 5 {
                    0 => tx.execute("DELETE FROM t WHERE id = ?1", [&k]).map(|_| ()),
                    _ => tx
                        .execute(
                            "INSERT INTO t VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET a = ?2, c = ?4",
                            rusqlite::params![k, blob, format!("r{round} {}", next()), bits],
                        )
                        .map(|_| ()),
                }
                .unwrap();
            }
            tx.commit().unwrap();
        }
        if round < 2 {
            block_on(dimple::sync(&mut a, &store)).unwrap();
            block_on(dimple::sync(&mut b, &store)).unwrap();
        }
    }
    a.capture().unwrap();
    b.capture().unwrap();
    (a, b)
}

#[test]
fn a_version_3_log_is_compacted_on_open_keeping_every_change_and_unpushed_write() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, b) = busy_group(&g, 0x5eed_cafe, 60);
    let unpushed = a.unpushed()?;
    assert!(unpushed > 0, "the last round is not pushed yet");
    drop(a);
    downgrade_to_v3(&g.db("a"));
    let before = dump(&g.db("a"));
    assert!(before.0.len() > before.1.len(), "superseded changes are in the log");

    let mut a = g.reopen("a");
    assert_eq!(local_schema(&g.db("a")), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&g.db("a")), before, "the seed's tables read the same through the views");
    assert_eq!(a.unpushed()?, unpushed, "every unpushed write still waits for the push");
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    assert_eq!(leftover_tables(&g.db("a"), "ZV_V3_"), 0);

    let mut b = b;
    sync_a_b_a(&store, &mut a, &mut b)?;
    assert_eq!(a.unpushed()?, 0);
    assert_eq!(rows(a.conn(), "t"), rows(b.conn(), "t"));
    assert_eq!(rows(a.conn(), "t"), model_of_log(a.conn(), &["a", "b", "c"]));
    Ok(())
}

#[test]
fn a_version_4_outbox_is_packed_on_open_and_every_unpushed_write_is_pushed() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, 0x0b0c_5eed, 60);
    let me = a.id().to_owned();
    let waiting = dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?;
    assert!(a.unpushed()? > 0 && waiting.len() as i64 == a.unpushed()?, "the last round is not pushed yet");
    drop(a);
    downgrade_to_v4(&g.db("a"));
    assert_eq!(v4_outbox(&g.db("a")).len(), waiting.len(), "the version-4 outbox names every unpushed change");
    let before = dump(&g.db("a"));

    let mut a = g.reopen("a");
    assert_eq!(local_schema(&g.db("a")), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&g.db("a")), before, "the log is untouched");
    assert_eq!(
        dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?,
        waiting,
        "every unpushed change waits, whole and in order"
    );
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    assert_eq!(leftover_tables(&g.db("a"), "ZV_V4_"), 0);

    sync_a_b_a(&store, &mut a, &mut b)?;
    assert_eq!(a.unpushed()?, 0);
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "a and b converge");
    assert!(rows(b.conn(), "t") == model_of_log(b.conn(), &["a", "b", "c"]), "b's table is its log");
    Ok(())
}

#[test]
fn a_version_5_log_becomes_records_on_open_keeping_every_change_and_unpushed_write() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, 0x0006_5eed, 60);
    let me = a.id().to_owned();
    let waiting = dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?;
    assert!(!waiting.is_empty(), "the last round is not pushed yet");
    drop(a);
    downgrade_to_v5(&g.db("a"));
    let before = dump(&g.db("a"));
    assert!(before.0.len() > before.1.len(), "superseded changes are in the log");
    let v5_rows: i64 = open_plain(&g.db("a")).query_row("SELECT count(*) FROM ZV_LOG", [], |r| r.get(0))?;
    assert_eq!(v5_rows as usize, before.0.len(), "a table row per change");

    let mut a = g.reopen("a");
    assert_eq!(local_schema(&g.db("a")), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&g.db("a")), before, "the seed's tables read the same through the views");
    let c = open_plain(&g.db("a"));
    let (records, history): (i64, i64) =
        c.query_row("SELECT (SELECT count(*) FROM ZV_ROW), (SELECT count(*) FROM ZV_HISTORY)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let distinct_rows: i64 =
        c.query_row("SELECT count(*) FROM (SELECT DISTINCT entity_type, entity_id FROM ZV_CLOCK)", [], |r| r.get(0))?;
    assert_eq!(records, distinct_rows, "one record per row");
    let kept = in_pasts(&g.db("a"));
    assert!(kept > 0, "records keep the changes superseded in their rows");
    assert_eq!(
        (history + kept) as usize,
        before.0.len() - before.1.len(),
        "the superseded changes are the history's rows and the records' pasts"
    );
    assert_eq!(dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?, waiting);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    assert_eq!(leftover_tables(&g.db("a"), "ZV_V5_"), 0);

    sync_a_b_a(&store, &mut a, &mut b)?;
    assert_eq!(a.unpushed()?, 0);
    converged(&a, &b);
    Ok(())
}

/// Turns a current replica's records back into form 1 (local schema 6), where
/// each id was a difference from the previous cell's only; returns how many
/// records that changed.
fn downgrade_to_v6(path: &std::path::Path) -> u64 {
    dimple::migrate::back_to_version_6(&mut open_plain(path)).unwrap()
}

/// How many of `db`'s records are not in the form this build writes.
fn records_not_current(db: &std::path::Path) -> u64 {
    dimple::log::records_in_older_form(&open_plain(db)).unwrap()
}

fn downgrade_to_v8(path: &std::path::Path) -> u64 {
    dimple::migrate::back_to_version_8(&mut open_plain(path)).unwrap()
}

#[test]
fn a_version_6_log_s_records_are_written_in_the_current_form_on_open_keeping_every_change() -> TestResult {
    records_of_an_older_form_are_written_again_on_open(0x0007_5eed, downgrade_to_v6)
}

/// Version 9 leaves out of a record the author and transaction numbers a
/// change repeats (form 3); a version-8 log's records, pasts and all, are
/// written again in it.
#[test]
fn a_version_8_log_s_records_are_written_in_form_3_on_open_keeping_every_change() -> TestResult {
    records_of_an_older_form_are_written_again_on_open(0x0009_5eed, downgrade_to_v8)
}

/// Takes a busy replica back to an older local schema with `downgrade` (which
/// says how many records changed form), then checks that the next open writes
/// its records in the current form, smaller, and that it reads the same, keeps
/// its unpushed changes, verifies and syncs.
fn records_of_an_older_form_are_written_again_on_open(seed: u64, downgrade: fn(&std::path::Path) -> u64) -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, seed, 60);
    let me = a.id().to_owned();
    let waiting = dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?;
    assert!(!waiting.is_empty(), "the last round is not pushed yet");
    drop(a);
    let db = g.db("a");
    let changed = downgrade(&db);
    assert!(changed > 10, "only {changed} records differ in the older form");
    // The last step back changed these; those before it, maybe more.
    assert!(records_not_current(&db) >= changed, "the older form is not the current one where they differ");
    assert_eq!(dimple::log::damaged_records(&open_plain(&db))?, vec![], "a record of the older form is readable");
    let before = dump(&db);
    let size = |db: &std::path::Path| -> i64 {
        open_plain(db).query_row("SELECT sum(length(cells)) FROM ZV_ROW", [], |r| r.get(0)).unwrap()
    };
    let bytes_before = size(&db);

    let mut a = g.reopen("a");
    assert_eq!(local_schema(&db), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&db), before, "the seed's tables read the same through the views");
    assert_eq!(records_not_current(&db), 0);
    assert!(size(&db) < bytes_before, "the current form is smaller: {} -> {} bytes", bytes_before, size(&db));
    assert_eq!(dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?, waiting);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    sync_a_b_a(&store, &mut a, &mut b)?;
    assert_eq!(a.unpushed()?, 0);
    converged(&a, &b);
    Ok(())
}

/// How many changes the records' pasts hold.
fn in_pasts(db: &std::path::Path) -> i64 {
    open_plain(db).query_row("SELECT count(*) FROM ZV_ROW r, dimple_past(r.cells)", [], |r| r.get(0)).unwrap()
}

/// How many changes the seed's `ZV_CHANGE` shows.
fn changes_shown(db: &std::path::Path) -> i64 {
    open_plain(db).query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get(0)).unwrap()
}

/// Version 8 lets a record keep the changes superseded in its row; a version-7
/// log (every superseded change a row of the history) opens with its history
/// where it is, reads the same, and what is superseded after the upgrade is
/// kept in the records and shown by the seed's views.
#[test]
fn a_version_7_log_keeps_its_history_and_shows_what_records_keep_after_the_upgrade() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, 0x0008_5eed, 60);
    drop(a);
    let db = g.db("a");
    let moved = dimple::migrate::back_to_version_7(&mut open_plain(&db))?;
    assert!(moved > 10, "only {moved} superseded changes were kept in records");
    assert_eq!(in_pasts(&db), 0);
    let before = dump(&db);

    let mut a = g.reopen("a");
    assert_eq!(local_schema(&db), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&db), before, "the seed's tables read the same through the views");
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    a.conn().execute("UPDATE t SET b = b || '+' WHERE id IN (SELECT id FROM t LIMIT 20)", [])?;
    a.capture()?;
    sync_a_b_a(&store, &mut a, &mut b)?;
    assert!(in_pasts(&db) >= 20, "each update's superseded change is kept in its record");
    assert_eq!(changes_shown(&db), dimple::log::count(a.conn())?, "ZV_CHANGE shows the records' pasts");
    converged(&a, &b);
    Ok(())
}

/// A process of the version-6 build that still had the file open when a newer
/// one upgraded it goes on writing its records in form 1: those rows stay
/// readable, `verify` finds nothing wrong, and sync goes on.
#[test]
fn records_written_in_form_1_after_the_upgrade_stay_readable_and_sync() -> TestResult {
    records_of_an_older_form_written_after_the_upgrade_stay_readable(0x0007_0001, downgrade_to_v6)
}

/// The same for a process of a version-7 or -8 build, writing form 2.
#[test]
fn records_written_in_form_2_after_the_upgrade_stay_readable_and_sync() -> TestResult {
    records_of_an_older_form_written_after_the_upgrade_stay_readable(0x0009_0001, downgrade_to_v8)
}

fn records_of_an_older_form_written_after_the_upgrade_stay_readable(
    seed: u64,
    downgrade: fn(&std::path::Path) -> u64,
) -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, seed, 60);
    drop(a);
    let db = g.db("a");
    assert!(downgrade(&db) > 10, "few records differ in the older form");
    let older = records_not_current(&db);
    // What the older process leaves: records of its form under the current version.
    open_plain(&db).execute(
        "UPDATE ZV_METADATA SET value = ?1 WHERE key = 'local_schema'",
        [dimple::migrate::CURRENT.to_string()],
    )?;
    let before = dump(&db);

    let mut a = g.reopen("a");
    assert_eq!(records_not_current(&db), older, "no upgrade ran: still the older form");
    assert_eq!(dump(&db), before, "the seed's tables read the same");
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    sync_a_b_a(&store, &mut a, &mut b)?;
    converged(&a, &b);
    Ok(())
}

/// A damaged record does not stop the upgrade (the replica would no longer
/// open): it stays as it is, `verify` names its row as before, and every other
/// record is written in form 2.
#[test]
fn a_version_6_log_with_damaged_records_upgrades_and_verify_names_them() -> TestResult {
    let g = Group::new();
    let (a, b) = busy_group(&g, 0x0007_bad0, 60);
    drop((a, b));
    let db = g.db("a");
    assert!(downgrade_to_v6(&db) > 10);
    let c = open_plain(&db);
    let ids: Vec<String> = c
        .prepare("SELECT entity_id FROM ZV_ROW ORDER BY entity_id LIMIT 2")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    c.execute("UPDATE ZV_ROW SET cells = CAST(cells || x'00' AS BLOB) WHERE entity_id = ?1", [&ids[0]])?;
    c.execute("UPDATE ZV_ROW SET cells = 'not a record' WHERE entity_id = ?1", [&ids[1]])?;
    drop(c);
    let damaged = |db: &std::path::Path| dimple::log::damaged_records(&open_plain(db)).unwrap();
    let expected: Vec<(String, String)> = ids.iter().map(|id| ("t".to_owned(), id.clone())).collect();
    assert_eq!(damaged(&db), expected);

    let mut a = g.reopen("a");
    assert_eq!(local_schema(&db), dimple::migrate::CURRENT.to_string());
    assert_eq!(damaged(&db), expected, "the damaged rows stay as they were");
    assert_eq!(records_not_current(&db), 0, "the others are in the current form");
    let problems = dimple::verify::check(&mut a)?;
    for id in &ids {
        assert!(problems.iter().any(|p| format!("{p:?}").contains(id.as_str())), "verify names {id}: {problems:?}");
    }
    Ok(())
}

/// Opens `db` with the dimple binary (which upgrades it) and kills the process
/// (SIGKILL) once the upgrade has written `grown` bytes to the WAL, long before it
/// can commit.
fn kill_upgrade_midway(db: &std::path::Path, grown: u64) -> TestResult {
    let wal = db.with_extension("db-wal");
    let wal_before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dimple"))
        .arg("status")
        .arg(db)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0).saturating_sub(wal_before);
        if now > grown {
            break;
        }
        assert!(child.try_wait()?.is_none(), "the upgrade finished before it could be killed");
        assert!(std::time::Instant::now() < deadline, "the upgrade never started writing");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// The upgrade runs in one transaction: a process killed in the middle of it
/// (SIGKILL, while it writes) leaves the version-3 tables whole, and the next open
/// upgrades them.
#[test]
fn an_upgrade_killed_midway_leaves_version_3_and_the_next_open_finishes_it() -> TestResult {
    let g = Group::new();
    let (a, b) = busy_group(&g, 0xdead_beef, 40);
    drop(b);
    // A log large enough that the upgrade takes a while: many changes on a few rows.
    let tx = a.conn().unchecked_transaction()?;
    for i in 0..150_000 {
        tx.execute(
            "UPDATE t SET b = ?1 WHERE id = (SELECT id FROM t ORDER BY id LIMIT 1 OFFSET ?2)",
            rusqlite::params![format!("v{i}"), i % 20],
        )?;
    }
    tx.commit()?;
    let mut a = a;
    a.capture()?;
    drop(a);
    killed_midway_then_finished(&g, downgrade_to_v3, "3", |_| {})
}

/// Turns `g`'s replica "a" back to `version` with `downgrade`, kills the
/// upgrade midway (once it has written a good part of the new log), then checks
/// the old tables are whole (and `after_kill` on them), and that the next open
/// upgrades them keeping the same log.
fn killed_midway_then_finished(
    g: &Group,
    downgrade: impl Fn(&std::path::Path),
    version: &str,
    after_kill: impl Fn(&std::path::Path),
) -> TestResult {
    let db = g.db("a");
    downgrade(&db);
    let before = dump(&db);

    kill_upgrade_midway(&db, 4 << 20)?;

    assert_eq!(local_schema(&db), version, "killed before its commit: still version {version}");
    after_kill(&db);
    assert_eq!(dump(&db), before, "the version-{version} log is whole");
    let mut a = g.reopen("a");
    assert_eq!(local_schema(&db), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&db), before);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    Ok(())
}

/// The same for the outbox's step: killed while it writes the packets, the
/// version-4 outbox is whole, and the next open packs it and pushes every change.
#[test]
fn an_outbox_upgrade_killed_midway_leaves_version_4_and_the_next_open_finishes_it() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, 0xfeed_f00d, 40);
    // Many unpushed changes whose values do not compress, so that the packets
    // take megabytes to write.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0ddba11);
    let tx = a.conn().unchecked_transaction()?;
    let keys: Vec<Cell> = rows(&tx, "t").into_iter().take(20).map(|r| r[0].clone()).collect();
    for i in 0..200_000 {
        tx.execute(
            "UPDATE t SET a = ?1 WHERE id = ?2",
            rusqlite::params![(0..40).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>(), keys[i % keys.len()]],
        )?;
    }
    tx.commit()?;
    let mut a = a;
    a.capture()?;
    let me = a.id().to_owned();
    let waiting = dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?;
    drop(a);
    let db = g.db("a");
    downgrade_to_v4(&db);
    let (log, outbox) = (dump(&db), v4_outbox(&db));

    kill_upgrade_midway(&db, 4 << 20)?;

    assert_eq!(local_schema(&db), "4", "killed before its commit: still version 4");
    assert_eq!((dump(&db), v4_outbox(&db)), (log.clone(), outbox), "the log and the version-4 outbox are whole");
    let mut a = g.reopen("a");
    assert_eq!(local_schema(&db), dimple::migrate::CURRENT.to_string());
    assert_eq!(dump(&db), log);
    assert_eq!(dimple::outbox::unpushed_after(a.conn(), &me, "", usize::MAX)?, waiting);
    sync_a_b_a(&store, &mut a, &mut b)?;
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "a and b converge");
    Ok(())
}

/// The same for the records' step: killed while it writes them, the version-5
/// log is whole, and the next open makes the records.
#[test]
fn an_upgrade_to_records_killed_midway_leaves_version_5_and_the_next_open_finishes_it() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let (a, b) = busy_group(&g, 0x0006_dead, 40);
    drop(b);
    // Many rows, each with values that do not compress, so that the records
    // take megabytes to write.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x05ec_04d5);
    let tx = a.conn().unchecked_transaction()?;
    for i in 0..60_000 {
        let blob: Vec<u8> = (0..60).map(|_| rng.gen::<u8>()).collect();
        tx.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", rusqlite::params![format!("bulk{i}"), blob, "x", 0.5])?;
    }
    tx.commit()?;
    let mut a = a;
    a.capture()?;
    drop(a);
    killed_midway_then_finished(&g, downgrade_to_v5, "5", |db| {
        assert!(tables_of(db).contains(&"ZV_LOG".to_owned()), "the version-5 log is a table still");
    })
}

/// The same for the records' second form: killed while it writes them, the
/// version-6 records are whole, and the next open writes them again.
#[test]
fn an_upgrade_to_form_2_killed_midway_leaves_version_6_and_the_next_open_finishes_it() -> TestResult {
    records_written_again_by_an_upgrade_killed_midway(0x0007_dead, downgrade_to_v6, "6")
}

/// The same for form 3: killed while it writes the records again, the
/// version-8 records are whole, and the next open writes them again.
#[test]
fn an_upgrade_to_form_3_killed_midway_leaves_version_8_and_the_next_open_finishes_it() -> TestResult {
    records_written_again_by_an_upgrade_killed_midway(0x0009_dead, downgrade_to_v8, "8")
}

/// Takes a replica holding many records back to `version` with `downgrade`,
/// kills the upgrade while it writes them again, then checks that they are
/// whole in the older form and that the next open writes them all again.
fn records_written_again_by_an_upgrade_killed_midway(
    seed: u64,
    downgrade: fn(&std::path::Path) -> u64,
    version: &str,
) -> TestResult {
    let g = Group::new();
    bulk_records(&g, seed)?;
    let db = g.db("a");
    killed_midway_then_finished(
        &g,
        |db| assert!(downgrade(db) >= 60_000, "every bulk record differs in the older form"),
        version,
        |db| assert!(records_not_current(db) >= 60_000, "the version-{version} records are in the older form still"),
    )?;
    assert_eq!(records_not_current(&db), 0);
    Ok(())
}

/// A busy group of which replica "a" also holds 60000 rows whose middle column
/// is updated in a later transaction (a millisecond or more later), so that
/// every record differs in forms 1 and 2 (a past, author and transaction
/// numbers repeated), with values that do not compress: an upgrade writing
/// them again takes megabytes to write.
fn bulk_records(g: &Group, seed: u64) -> TestResult {
    use rand::{Rng, SeedableRng};
    let (mut a, b) = busy_group(g, seed, 40);
    drop(b);
    // Many rows whose middle column is updated in a later transaction (a
    // millisecond or more later), so that every record differs in form 1, with
    // values that do not compress: the upgrade takes megabytes to write.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x0f0f_2222);
    let write = |a: &dimple::Replica, sql: &str, rng: &mut rand::rngs::StdRng| -> TestResult {
        let tx = a.conn().unchecked_transaction()?;
        for i in 0..60_000 {
            let blob: Vec<u8> = (0..60).map(|_| rng.gen::<u8>()).collect();
            tx.execute(sql, rusqlite::params![format!("bulk{i}"), blob])?;
        }
        tx.commit()?;
        Ok(())
    };
    write(&a, "INSERT INTO t VALUES (?1, ?2, 'x', 0.5)", &mut rng)?;
    a.capture()?;
    write(&a, "UPDATE t SET b = hex(?2) WHERE id = ?1", &mut rng)?;
    a.capture()?;
    Ok(())
}

/// The tables (not views) of `db`.
fn tables_of(db: &std::path::Path) -> Vec<String> {
    open_plain(db)
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// a and b hold the same rows, and a's are what its log says.
fn converged(a: &dimple::Replica, b: &dimple::Replica) {
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "a and b converge");
    assert!(rows(a.conn(), "t") == model_of_log(a.conn(), &["a", "b", "c"]), "a's table is its log");
}

/// Pull and push a, then b, then a again: each has the other's changes after.
fn sync_a_b_a(
    store: &dimple::store::Metered<dyn dimple::store::Store>,
    a: &mut dimple::Replica,
    b: &mut dimple::Replica,
) -> TestResult {
    block_on(dimple::sync(a, store))?;
    block_on(dimple::sync(b, store))?;
    block_on(dimple::sync(a, store))?;
    Ok(())
}

/// How many tables of `db` an upgrade step left under its `prefix`.
fn leftover_tables(db: &std::path::Path, prefix: &str) -> i64 {
    open_plain(db)
        .query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE ?1 || '%'", [prefix], |r| r.get(0))
        .unwrap()
}

/// The migrations an app runs on its own connection (Python, the sqlite3 shell,
/// an ORM: none has dimple's functions) that SQLite checks against every view
/// of the file: renaming a table or a column, dropping a column. Any view that
/// read the records through dimple's functions made each of them fail, for
/// every table of the database ("error in view ZV_LOG: no such table:
/// main.dimple_past").
fn an_apps_migrations(db: &std::path::Path) -> rusqlite::Result<()> {
    let app = rusqlite::Connection::open(db)?;
    app.execute_batch(
        "ALTER TABLE other RENAME TO other2;
         ALTER TABLE other2 RENAME COLUMN a TO a2;
         ALTER TABLE other2 DROP COLUMN x;
         ALTER TABLE other2 RENAME TO other;
         ALTER TABLE other RENAME COLUMN a2 TO a;
         ALTER TABLE other ADD COLUMN x;",
    )
}

/// A replica stores no view that needs dimple's functions: an app's own
/// connection renames and drops columns of its tables, and dimple's
/// connections still show the log through the seed's views.
#[test]
fn an_app_renames_tables_and_columns_on_its_own_connection() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute_batch("CREATE TABLE other(a, x); INSERT INTO t VALUES ('k', 1, 'x', 0.5);")?;
    a.capture()?;
    an_apps_migrations(&g.db("a"))?;
    assert_eq!(changes_shown(&g.db("a")), 4);
    let n: i64 = a.conn().query_row("SELECT count(*) FROM ZV_CLOCK", [], |r| r.get(0))?;
    assert_eq!(n, 4);
    block_on(dimple::sync(&mut a, &g.store()))?;
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    Ok(())
}

/// Version 10 takes those views out of the file: a replica whose file has
/// them (every replica before it) refuses an app's renames until dimple opens
/// it once, and after that upgrade the app's renames work and the log reads
/// the same.
#[test]
fn a_version_8_replica_loses_its_stored_views_on_open_and_the_apps_renames_work() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, mut b) = busy_group(&g, 0x0010_5eed, 20);
    drop(a);
    let db = g.db("a");
    rusqlite::Connection::open(&db)?.execute_batch("CREATE TABLE other(a, x)")?;
    downgrade_to_v8(&db);
    let before = dump(&db);
    let refused = an_apps_migrations(&db).expect_err("the stored views stop an app's rename");
    assert!(refused.to_string().contains("dimple_"), "{refused}");
    let mut a = g.reopen("a");
    assert_eq!(local_schema(&db), dimple::migrate::CURRENT.to_string());
    let stored: i64 = rusqlite::Connection::open(&db)?.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND sql LIKE '%dimple_%'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(stored, 0, "no stored view needs dimple's functions");
    an_apps_migrations(&db)?;
    assert_eq!(dump(&db), before, "the seed's tables read the same through the views");
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    sync_a_b_a(&store, &mut a, &mut b)?;
    converged(&a, &b);
    Ok(())
}
