//! SPEC 4, one test per rule, through two replicas and a directory bucket.

use crate::support::*;
use rusqlite::types::Value;

fn sync_all(g: &Group, replicas: &mut [&mut dimple::Replica]) {
    let store = g.store();
    for _ in 0..2 {
        for r in replicas.iter_mut() {
            block_on(dimple::sync(r, &store)).unwrap();
        }
    }
}

fn get(r: &dimple::Replica, id: &str) -> Option<Row> {
    rows(r.conn(), "t").into_iter().find(|row| row[0] == Value::Text(id.into()))
}

#[test]
fn greatest_change_id_wins_per_attribute() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    // Concurrent edits: a sets `a` then b sets `a` and `b` later; each column is
    // merged on its own.
    a.conn().execute("UPDATE t SET a = 2, c = 9.5 WHERE id = 'k'", [])?;
    a.capture()?;
    g.clock.advance(10);
    b.conn().execute("UPDATE t SET a = 3, b = 'y' WHERE id = 'k'", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    let expected = vec![Value::Text("k".into()), Value::Integer(3), Value::Text("y".into()), Value::Real(9.5)];
    assert_eq!(get(&a, "k").unwrap(), expected);
    assert_eq!(get(&b, "k").unwrap(), expected);
    Ok(())
}

#[test]
fn a_delete_beats_a_concurrent_update_even_a_later_one() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    a.conn().execute("DELETE FROM t WHERE id = 'k'", [])?;
    a.capture()?;
    g.clock.advance(10);
    b.conn().execute("UPDATE t SET a = 99 WHERE id = 'k'", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    assert_eq!(get(&a, "k"), None);
    assert_eq!(get(&b, "k"), None);
    Ok(())
}

#[test]
fn a_later_insert_brings_a_deleted_row_back() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    a.conn().execute("DELETE FROM t WHERE id = 'k'", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    assert_eq!(get(&b, "k"), None);
    g.clock.advance(10);
    b.conn().execute("INSERT INTO t VALUES ('k', 2, 'again', NULL)", [])?;
    sync_all(&g, &mut [&mut a, &mut b]);
    let expected = vec![Value::Text("k".into()), Value::Integer(2), Value::Text("again".into()), Value::Null];
    assert_eq!(get(&a, "k").unwrap(), expected);
    assert_eq!(get(&b, "k").unwrap(), expected);
    Ok(())
}

#[test]
fn an_update_that_arrives_before_its_insert_is_applied_when_the_insert_arrives() -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
    let store = g.store();
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 1.5)", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    b.conn().execute("UPDATE t SET b = 'from b' WHERE id = 'k'", [])?;
    block_on(dimple::push(&mut b, &store))?;
    // c sees only b's update first: a's head is hidden by pulling from a copy of
    // the bucket without a's objects.
    let partial = g.dir.path().join("partial");
    copy_dir(&g.bucket(), &partial, a.id());
    let partial_store = dimple::store::LocalStore::open(&partial)?;
    block_on(dimple::pull(&mut c, &partial_store))?;
    assert_eq!(get(&c, "k"), None, "an update alone does not create a row");
    block_on(dimple::pull(&mut c, &store))?;
    assert_eq!(get(&c, "k"), get(&b, "k"));
    assert_eq!(get(&c, "k").unwrap()[2], Value::Text("from b".into()));
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path, skip: &str) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.contains(skip) {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&entry.path(), &dest, skip);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
fn applying_the_same_batches_twice_changes_nothing() -> TestResult {
    same_batches_twice(Backend::Local)
}

#[test]
fn applying_the_same_batches_twice_changes_nothing_on_s3() -> TestResult {
    same_batches_twice(Backend::S3)
}

fn same_batches_twice(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "twice") else { return Ok(()) };
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    for i in 0..20 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'x', 0.5)", rusqlite::params![format!("k{i}"), i])?;
    }
    sync_all(&g, &mut [&mut a, &mut b]);
    let before = (rows(b.conn(), "t"), change_ids(b.conn()));
    // Forget the cursor: the next pull downloads and applies every batch again.
    b.conn().execute(
        "UPDATE ZV_REPLICA SET head_etag = NULL, batch_id = NULL, batch_sha256 = NULL, last_change_id = NULL",
        [],
    )?;
    let report = block_on(dimple::pull(&mut b, &g.store()))?;
    assert!(report.changes > 0, "the batches were applied again");
    assert_eq!((rows(b.conn(), "t"), change_ids(b.conn())), before);
    Ok(())
}

#[test]
fn remote_ids_beyond_the_drift_limit_are_refused_as_a_problem() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let store = g.store();
    let start = dimple::clock::Clock::now_ms(&g.clock);
    g.clock.advance(2 * 24 * 3600 * 1000);
    a.conn().execute("INSERT INTO t VALUES ('future', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut a, &store))?;
    g.clock.set(start);
    let report = block_on(dimple::pull(&mut b, &store))?;
    assert_eq!(report.changes, 0);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("in the future"), "{:?}", report.problems);
    assert_eq!(get(&b, "future"), None);
    let st = dimple::status::status(&b)?;
    assert_eq!(st.problems.len(), 1);
    // The clock was not dragged forward: b's next id is still near its own time.
    b.conn().execute("INSERT INTO t VALUES ('now', 1, 'x', 0.5)", [])?;
    b.capture()?;
    let newest: String = b.conn().query_row("SELECT max(id) FROM ZV_CHANGE", [], |r| r.get(0))?;
    let ms = dimple::clock::stamp_of(&uuid::Uuid::parse_str(&newest)?).ms;
    assert!(ms < start + 1000, "clock moved to {ms}");
    // Once the time comes, the changes apply and the problem clears.
    g.clock.advance(2 * 24 * 3600 * 1000);
    let report = block_on(dimple::pull(&mut b, &store))?;
    assert!(report.changes > 0);
    assert!(dimple::status::status(&b)?.problems.is_empty());
    assert!(get(&b, "future").is_some());
    Ok(())
}

#[test]
fn changes_for_an_untracked_table_are_kept_and_applied_once_it_is_tracked() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let store = g.store();
    a.conn().execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)")?;
    a.track("notes", false)?;
    a.conn().execute("INSERT INTO notes VALUES ('n1', 'hello')", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let logged: i64 =
        b.conn().query_row("SELECT count(*) FROM ZV_CHANGE WHERE entity_type='notes'", [], |r| r.get(0))?;
    assert_eq!(logged, 2);
    // b adds the table later, with a column a does not have yet.
    b.conn().execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT, tag TEXT)")?;
    b.track("notes", false)?;
    assert_eq!(rows(b.conn(), "notes"), vec![vec![Value::Text("n1".into()), Value::Text("hello".into()), Value::Null]]);
    // b writes the new column; a adds it afterwards and receives the value.
    b.conn().execute("UPDATE notes SET tag = 'red' WHERE id = 'n1'", [])?;
    block_on(dimple::sync(&mut b, &store))?;
    block_on(dimple::sync(&mut a, &store))?;
    a.conn().execute_batch("ALTER TABLE notes ADD COLUMN tag TEXT")?;
    block_on(dimple::sync(&mut a, &store))?;
    assert_eq!(rows(a.conn(), "notes"), rows(b.conn(), "notes"));
    assert_eq!(rows(a.conn(), "notes")[0][2], Value::Text("red".into()));
    Ok(())
}

/// An entity is a table and a key. Rows with the same key in two tables, written
/// in one transaction (their changes follow each other in the batch), stay two
/// entities on every replica.
#[test]
fn rows_of_two_tables_sharing_a_key_are_different_entities() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    for r in [&mut a, &mut b] {
        r.conn().execute_batch("CREATE TABLE u(id TEXT PRIMARY KEY, a, b TEXT, c REAL)")?;
        r.track("u", false)?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let text = |rng: &mut rand::rngs::StdRng| -> String {
        (0..rng.gen_range(0..12)).map(|_| rng.gen_range('\u{1}'..='\u{10ffff}')).collect()
    };
    for i in 0..rng.gen_range(3..20) {
        let key = format!("k{}", rng.gen_range(0..8) + 10 * i);
        let rows: Vec<(i64, String, f64)> =
            (0..2).map(|_| (rng.gen(), text(&mut rng), f64::from(rng.gen::<i32>()) / 8.0)).collect();
        let update = rng.gen_bool(0.5).then(|| (rng.gen_range(0..2), rng.gen::<i64>()));
        a.transaction(|tx| {
            for (table, (x, y, z)) in ["t", "u"].iter().zip(&rows) {
                tx.execute(&format!("INSERT INTO {table} VALUES (?1, ?2, ?3, ?4)"), rusqlite::params![key, x, y, z])?;
            }
            if let Some((which, v)) = update {
                tx.execute(
                    &format!("UPDATE {} SET a = ?2 WHERE id = ?1", ["t", "u"][which]),
                    rusqlite::params![key, v],
                )?;
            }
            Ok(())
        })?;
    }
    sync_all(&g, &mut [&mut a, &mut b]);
    for table in ["t", "u"] {
        assert_eq!(rows(b.conn(), table), rows(a.conn(), table), "{table}");
    }
    assert_ne!(rows(a.conn(), "t"), rows(a.conn(), "u"), "the two tables were given different values");
    Ok(())
}
