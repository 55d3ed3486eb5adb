//! SPEC 3: writes from any SQLite client are captured, exactly and only once.

use crate::support::*;
use rusqlite::types::Value;

/// (attribute, old_value, new_value) of the newest transaction's changes.
fn last_txn(r: &mut dimple::Replica) -> Vec<(String, Option<String>, Option<String>)> {
    r.capture().unwrap();
    let mut stmt = r
        .conn()
        .prepare(
            "SELECT attribute, old_value, new_value FROM ZV_CHANGE
             WHERE transaction_id = (SELECT max(id) FROM ZV_TRANSACTION) ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

fn ch(attr: &str, old: Option<&str>, new: Option<&str>) -> (String, Option<String>, Option<String>) {
    (attr.to_owned(), old.map(str::to_owned), new.map(str::to_owned))
}

#[test]
fn an_insert_records_the_row_and_every_column_without_old_values() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    open_plain(&g.db("a")).execute("INSERT INTO t(id, a) VALUES ('k', 7)", [])?;
    assert_eq!(
        last_txn(&mut r),
        vec![
            ch("*", None, Some("true")),
            ch("a", None, Some("7")),
            ch("b", None, Some("null")),
            ch("c", None, Some("null"))
        ]
    );
    Ok(())
}

#[test]
fn an_update_records_only_the_columns_that_changed_with_old_and_new_values() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    r.capture()?;
    app.execute("UPDATE t SET a = 2, b = 'x', c = 1.5 WHERE id = 'k'", [])?;
    assert_eq!(last_txn(&mut r), vec![ch("a", Some("1"), Some("2"))]);
    app.execute("UPDATE t SET a = 2 WHERE id = 'k'", [])?;
    assert_eq!(r.pending_captured()?, 0, "an update to the same value is no change");
    Ok(())
}

#[test]
fn a_change_of_storage_class_or_letter_case_is_a_change() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute_batch("CREATE TABLE n(id TEXT PRIMARY KEY, v TEXT COLLATE NOCASE)")?;
    r.track("n", false)?;
    app.execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    app.execute("INSERT INTO n VALUES ('k', 'abc')", [])?;
    r.capture()?;
    app.execute("UPDATE t SET a = 1.0 WHERE id = 'k'", [])?;
    assert_eq!(last_txn(&mut r), vec![ch("a", Some("1"), Some("1.0"))]);
    app.execute("UPDATE n SET v = 'ABC' WHERE id = 'k'", [])?;
    assert_eq!(last_txn(&mut r), vec![ch("v", Some("\"abc\""), Some("\"ABC\""))]);
    Ok(())
}

#[test]
fn a_delete_records_the_row_as_deleted() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    r.capture()?;
    app.execute("DELETE FROM t WHERE id = 'k'", [])?;
    assert_eq!(last_txn(&mut r), vec![ch("*", None, Some("false"))]);
    Ok(())
}

#[test]
fn insert_or_replace_and_upsert_are_captured() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    r.capture()?;
    app.execute("INSERT OR REPLACE INTO t VALUES ('k', 2, 'y', NULL)", [])?;
    let txn = last_txn(&mut r);
    assert_eq!(txn[0], ch("*", None, Some("true")));
    assert!(txn.contains(&ch("a", None, Some("2"))) && txn.contains(&ch("b", None, Some("\"y\""))), "{txn:?}");
    app.execute("INSERT INTO t VALUES ('k', 3, 'y', NULL) ON CONFLICT(id) DO UPDATE SET a = excluded.a", [])?;
    assert_eq!(last_txn(&mut r), vec![ch("a", Some("2"), Some("3"))]);
    assert_eq!(model_of_log(r.conn(), &["a", "b", "c"]), rows(r.conn(), "t"));
    Ok(())
}

#[test]
fn changing_a_key_deletes_the_old_row_and_inserts_the_new_one() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    r.capture()?;
    app.execute("UPDATE t SET id = 'k2', a = 5 WHERE id = 'k'", [])?;
    r.capture()?;
    assert_eq!(model_of_log(r.conn(), &["a", "b", "c"]), rows(r.conn(), "t"));
    Ok(())
}

#[test]
fn writes_from_python_sqlite3_which_never_loaded_dimple_are_captured() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let script = "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.execute(\"insert into t values('py', 1, 'from python', 2.5)\")\nc.execute(\"update t set a = x'00ff' where id = 'py'\")\nc.commit()\n";
    let status = std::process::Command::new("python3").arg("-c").arg(script).arg(g.db("a")).status()?;
    assert!(status.success());
    r.capture()?;
    assert_eq!(r.unpushed()?, 5);
    assert_eq!(model_of_log(r.conn(), &["a", "b", "c"]), rows(r.conn(), "t"));
    assert_eq!(rows(r.conn(), "t")[0][1], Value::Blob(vec![0, 255]));
    Ok(())
}

#[test]
fn the_transaction_api_records_one_transaction_with_old_and_new_values() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    r.transaction(|tx| {
        tx.execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
        tx.execute("UPDATE t SET a = 2 WHERE id = 'k'", [])?;
        Ok(())
    })?;
    assert_eq!(r.pending_captured()?, 0, "ids are given at commit");
    let txns: i64 = r.conn().query_row("SELECT count(*) FROM ZV_TRANSACTION", [], |r| r.get(0))?;
    assert_eq!(txns, 1);
    assert_eq!(last_txn(&mut r).last(), Some(&ch("a", Some("1"), Some("2"))));
    Ok(())
}

#[test]
fn track_refuses_tables_without_a_primary_key_or_with_an_integer_key() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    r.conn().execute_batch(
        "CREATE TABLE nokey(a TEXT); CREATE TABLE intkey(id INTEGER PRIMARY KEY, a TEXT);
         CREATE TABLE realkey(id REAL PRIMARY KEY); CREATE TABLE star(id TEXT PRIMARY KEY, \"*\" TEXT);",
    )?;
    let mut msg = |t: &str, allow: bool| r_track(&mut r, t, allow);
    assert!(msg("nokey", false).contains("has no primary key"));
    assert!(msg("intkey", false).contains("integer key"));
    assert!(msg("realkey", false).contains("TEXT or INTEGER"));
    assert!(msg("star", false).contains("reserves"));
    assert!(msg("missing", false).contains("no table named"));
    assert_eq!(msg("intkey", true), "ok");
    Ok(())
}

/// Under a key collation other than BINARY, 'A' and 'a' are one row of the
/// table but two rows of the group: two replicas that wrote both kept each a
/// different row, silently (only `verify` saw it). Such a table is refused,
/// in a single or composite key, rowid or WITHOUT ROWID; collations of other
/// columns, and BINARY said aloud, are fine.
#[test]
fn track_refuses_a_key_that_compares_by_a_collation_other_than_binary() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    r.conn().execute_batch(
        "CREATE TABLE nocase(id TEXT COLLATE NOCASE PRIMARY KEY, v);
         CREATE TABLE pair(k TEXT, n INTEGER, v, PRIMARY KEY (n, k COLLATE RTRIM));
         CREATE TABLE wr(id TEXT PRIMARY KEY COLLATE nocase, v) WITHOUT ROWID;
         CREATE TABLE plain(id TEXT COLLATE BINARY PRIMARY KEY, name TEXT COLLATE NOCASE);
         CREATE TABLE counted(id INTEGER PRIMARY KEY, v);",
    )?;
    for (t, column, coll) in [("nocase", "id", "NOCASE"), ("pair", "k", "RTRIM"), ("wr", "id", "nocase")] {
        let msg = r_track(&mut r, t, false);
        assert!(msg.contains(&format!("key column {column} compares with COLLATE {coll}")), "{t}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    assert_eq!(r_track(&mut r, "plain", false), "ok");
    assert_eq!(r_track(&mut r, "counted", true), "ok");
    assert_eq!(dimple::track::tracked_names(r.conn())?, vec!["counted".to_owned(), "plain".to_owned(), "t".to_owned()]);
    Ok(())
}

fn r_track(r: &mut dimple::Replica, t: &str, allow: bool) -> String {
    match r.track(t, allow) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_storage_class_round_trips_through_a_sync_unchanged() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let values = [
        Value::Null,
        Value::Integer(0),
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Real(0.1 + 0.2),
        Value::Real(-0.0),
        Value::Real(1e308),
        Value::Real(f64::INFINITY),
        Value::Text(String::new()),
        Value::Text("1".into()),
        Value::Text("ünïcødé \"quoted\" \n\0 nul".into()),
        Value::Blob(vec![]),
        Value::Blob((0..=255).collect()),
    ];
    for (i, v) in values.iter().enumerate() {
        a.conn().execute("INSERT INTO t(id, a) VALUES (?1, ?2)", rusqlite::params![format!("k{i:02}"), v])?;
    }
    let store = g.store();
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let got: Vec<(Value, String)> = b
        .conn()
        .prepare("SELECT a, typeof(a) FROM t ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(got.len(), values.len());
    for (v, (back, _)) in values.iter().zip(&got) {
        match (v, back) {
            (Value::Real(x), Value::Real(y)) => assert_eq!(x.to_bits(), y.to_bits()),
            _ => assert_eq!(v, back),
        }
    }
    Ok(())
}

/// Issue 9: SQLite lets a TEXT key hold NULL, a blob or bytes that are not UTF-8
/// (no entity id, which is text, can name those). The app's write must not
/// fail because of dimple's tables, and the row, which cannot sync, must not be left
/// out silently: `status` shows a problem and `verify` a finding, until the row gets
/// a proper key; then it syncs and the problem clears.
#[test]
fn a_row_whose_key_cannot_sync_is_a_visible_problem_and_never_fails_the_apps_write() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute("INSERT INTO t(id, a) VALUES (NULL, 1)", [])?;
    app.execute("INSERT INTO t(id, a) VALUES (?1, 2)", [Value::Blob(vec![0xff, 0, 1])])?;
    app.execute("INSERT INTO t(id, a) VALUES (CAST(x'ff41' AS TEXT), 4)", [])?;
    app.execute("INSERT INTO t(id, a) VALUES ('fine', 3)", [])?;
    let store = g.store();
    block_on(dimple::sync(&mut a, &store))?;
    let st = dimple::status::status(&a)?;
    assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
    assert_eq!(st.problems[0].object_key, "local table t");
    assert!(st.problems[0].reason.contains("cannot sync"), "{}", st.problems[0].reason);
    let findings = dimple::verify::check(&mut a)?;
    assert_eq!(findings.len(), 3, "{findings:?}");
    assert!(findings.iter().all(|d| matches!(d, dimple::verify::Difference::KeyCannotSync { .. })), "{findings:?}");
    // A composite key with a blob in it: json_array would have failed the insert.
    app.execute_batch("CREATE TABLE pair(x TEXT, y TEXT, v, PRIMARY KEY (x, y))")?;
    a.track("pair", false)?;
    app.execute("INSERT INTO pair VALUES ('x', ?1, 1)", [Value::Blob(vec![1])])?;
    app.execute("INSERT INTO pair VALUES ('x', CAST(x'c3' AS TEXT), 2)", [])?;
    a.capture()?;

    // The app fixes its rows: they sync, and the problem goes away once none is
    // left (a sync that meets no new such write keeps it while one is).
    app.execute_batch(
        "UPDATE t SET id = 'was-null' WHERE id IS NULL; UPDATE t SET id = 'was-blob' WHERE typeof(id) = 'blob';",
    )?;
    app.execute_batch("UPDATE pair SET y = 'y' WHERE typeof(y) = 'blob'")?;
    block_on(dimple::sync(&mut a, &store))?;
    assert_eq!(dimple::status::status(&a)?.problems.len(), 2, "the rows whose key is not UTF-8 are left");
    assert_eq!(dimple::verify::check(&mut a)?.len(), 2);
    app.execute_batch(
        "UPDATE t SET id = 'was-bytes' WHERE id = CAST(x'ff41' AS TEXT);
         UPDATE pair SET y = 'z' WHERE y = CAST(x'c3' AS TEXT);",
    )?;
    block_on(dimple::sync(&mut a, &store))?;
    assert_eq!(dimple::status::status(&a)?.problems.len(), 0);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    let mut b = g.replica("b");
    b.conn().execute_batch("CREATE TABLE pair(x TEXT, y TEXT, v, PRIMARY KEY (x, y))")?;
    b.track("pair", false)?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(b.conn(), "t").len(), 4);
    assert_eq!(rows(b.conn(), "pair"), rows(a.conn(), "pair"));
    assert_eq!(rows(b.conn(), "pair").len(), 2);
    Ok(())
}

/// The pending tables and the outbox empty after a burst of writes; in a database
/// the app set to incremental auto-vacuum, dimple gives those pages back to the
/// file system instead of leaving them free in the file. The values are random
/// blobs of a few hundred bytes: the outbox keeps them, compressed, until the
/// push, and random bytes do not compress.
#[test]
fn a_burst_of_writes_leaves_no_free_pages_when_the_app_chose_auto_vacuum() -> TestResult {
    use rand::{Rng, SeedableRng};
    let free_after_burst = |auto_vacuum: bool| -> Result<(i64, i64), Box<dyn std::error::Error>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xfee1);
        let g = Group::new();
        let path = g.db("a");
        {
            let c = rusqlite::Connection::open(&path)?;
            if auto_vacuum {
                c.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
            }
            c.execute_batch(TABLE_SQL)?;
        }
        let mut r = dimple::Replica::init(&path, Some(&g.bucket_url()), Some("a"), g.opts())?;
        r.track("t", false)?;
        let tx = r.conn().unchecked_transaction()?;
        for i in 0..40_000 {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    format!("row-{i:08}"),
                    i,
                    (0..300).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>(),
                    i as f64
                ],
            )?;
        }
        tx.commit()?;
        r.capture()?;
        block_on(dimple::push(&mut r, &g.store()))?;
        let q = |p: &str| r.conn().query_row(&format!("PRAGMA {p}"), [], |row| row.get::<_, i64>(0));
        Ok((q("freelist_count")?, q("page_count")?))
    };
    let (free, pages) = free_after_burst(false)?;
    assert!(free * 4 >= pages, "the burst leaves free pages without auto-vacuum: {free} of {pages}");
    let (free, pages) = free_after_burst(true)?;
    assert!(free * 20 < pages, "given back with incremental auto-vacuum: {free} of {pages} pages free");
    Ok(())
}

/// Captured writes are read, recorded and deleted a chunk at a time (4096), so
/// that the pages a chunk frees take the log's next rows. A burst of several
/// chunks, with inserts, updates and deletes falling on their edges in a random
/// order, is recorded whole: one change per column written, nothing left pending,
/// and the log's winners are the table.
#[test]
fn a_burst_of_many_chunks_of_writes_is_recorded_whole() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let mut r = g.replica("a");
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let app = open_plain(&g.db("a"));
    let tx = app.unchecked_transaction()?;
    let (mut expected, mut writes) = (0usize, 0usize);
    let mut live = std::collections::BTreeSet::new();
    for i in 0..15_000 {
        let k = format!("k{}", rng.gen_range(0..4000));
        writes += 1;
        if !live.contains(&k) {
            let (a, c): (i64, f64) = (rng.gen(), f64::from_bits(rng.gen::<u64>() & !(0x7ff << 52)));
            tx.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", rusqlite::params![k, a, format!("t{i}"), c])?;
            live.insert(k);
            expected += 4; // the row and its three columns
        } else if rng.gen_range(0..4) == 0 {
            tx.execute("DELETE FROM t WHERE id = ?1", [&k])?;
            live.remove(&k);
            expected += 1;
        } else {
            tx.execute("UPDATE t SET b = ?2 WHERE id = ?1", rusqlite::params![k, format!("u{i}")])?;
            expected += 1;
        }
    }
    tx.commit()?;
    assert!(writes > 3 * 4096, "the burst spans several chunks");
    assert_eq!(r.pending_captured()?, writes as i64);
    assert_eq!(r.capture()?, expected);
    assert_eq!(r.pending_captured()?, 0);
    let logged: i64 = r.conn().query_row("SELECT count(*) FROM ZV_CHANGE", [], |row| row.get(0))?;
    assert_eq!(logged as usize, expected);
    assert_eq!(model_of_log(r.conn(), &["a", "b", "c"]), rows(r.conn(), "t"));
    assert_eq!(rows(r.conn(), "t").len(), live.len());
    Ok(())
}

/// SQL holds -0.0 and 0.0 equal, but they are different values: an update from
/// one to the other is a change (values travel bit for bit), and writing a zero
/// over the very same zero is none.
#[test]
fn an_update_between_negative_and_positive_zero_is_a_change_and_a_zero_over_itself_is_none() -> TestResult {
    let g = Group::new();
    let mut r = g.replica("a");
    let app = open_plain(&g.db("a"));
    app.execute("INSERT INTO t(id, a) VALUES ('k', ?1)", [-0.0f64])?;
    r.capture()?;
    let count = |r: &dimple::Replica| -> i64 {
        r.conn().query_row("SELECT count(*) FROM ZV_CHANGE", [], |row| row.get(0)).unwrap()
    };
    let before = count(&r);
    app.execute("UPDATE t SET a = ?1 WHERE id = 'k'", [0.0f64])?;
    r.capture()?;
    assert_eq!(count(&r), before + 1, "-0.0 to 0.0 is a change");
    app.execute("UPDATE t SET a = ?1 WHERE id = 'k'", [0.0f64])?;
    r.capture()?;
    assert_eq!(count(&r), before + 1, "0.0 over 0.0 is none");
    let a: f64 = r.conn().query_row("SELECT a FROM t WHERE id = 'k'", [], |row| row.get(0))?;
    assert!(a == 0.0 && a.is_sign_positive());
    let mut b = g.replica("b");
    block_on(dimple::sync(&mut r, &g.store()))?;
    block_on(dimple::sync(&mut b, &g.store()))?;
    let a: f64 = b.conn().query_row("SELECT a FROM t WHERE id = 'k'", [], |row| row.get(0))?;
    assert!(a == 0.0 && a.is_sign_positive(), "the other replica holds 0.0, not -0.0");
    Ok(())
}
