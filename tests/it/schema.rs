//! Schema evolution across replicas (SPEC 4), from the command line: a replica one
//! schema version behind (in the manual schema policy: its app migrates) keeps the
//! newer columns' changes in its log and applies them when it adds the column.

use crate::support::*;
use rusqlite::types::Value;

fn dimple(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dimple")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_replica_on_an_older_schema_applies_new_columns_once_it_adds_them() -> TestResult {
    let g = Group::new();
    let bucket = g.bucket_url();
    let (a, b) = (g.db("a"), g.db("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    for (db, sql) in [
        (a, "CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT, tag TEXT)"),
        (b, "CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)"),
    ] {
        dimple(&["init", db, "--bucket", &bucket, "--schema", "manual"]);
        open_plain(std::path::Path::new(db)).execute_batch(sql)?;
        dimple(&["track", db, "notes"]);
    }
    open_plain(std::path::Path::new(a)).execute("INSERT INTO notes VALUES ('n1', 'hello', 'red')", [])?;
    dimple(&["sync", a]);
    dimple(&["sync", b]);
    let one = |db: &str| rows(&open_plain(std::path::Path::new(db)), "notes");
    assert_eq!(one(b), vec![vec![Value::Text("n1".into()), Value::Text("hello".into())]]);
    dimple(&["verify", b, "--local"]);
    open_plain(std::path::Path::new(b)).execute_batch("ALTER TABLE notes ADD COLUMN tag TEXT")?;
    dimple(&["sync", b]);
    assert_eq!(one(b), one(a));
    dimple(&["verify", b, "--local"]);
    Ok(())
}

/// Both replicas on the same schema, synced once, with rows n1..n3 on both.
fn notes_pair(g: &Group) -> Result<(dimple::Replica, dimple::Replica), Box<dyn std::error::Error>> {
    let mut rs = Vec::new();
    for name in ["a", "b"] {
        let r = dimple::Replica::init(&g.db(name), Some(&g.bucket_url()), Some(name), g.opts())?;
        r.conn().execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)")?;
        let mut r = r;
        r.track("notes", false)?;
        rs.push(r);
    }
    let (mut a, mut b) = (rs.remove(0), rs.remove(0));
    for i in 1..=3 {
        a.conn().execute("INSERT INTO notes VALUES (?1, 'body')", [format!("n{i}")])?;
    }
    let store = g.store();
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    Ok((a, b))
}

/// Issue 9: the app migrates and writes the new column at once, from a connection
/// that never loaded dimple, before dimple next runs: an UPDATE of an existing row
/// and an INSERT. Both reach the other replica; both sides verify clean.
#[test]
fn writes_to_a_column_added_before_dimple_runs_again_are_captured() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = notes_pair(&g)?;
    let app = open_plain(&g.db("a"));
    app.execute_batch(
        "ALTER TABLE notes ADD COLUMN tags TEXT;
         UPDATE notes SET tags = 'work' WHERE id = 'n1';
         INSERT INTO notes VALUES ('n4', 'new', 'home');
         UPDATE notes SET body = 'edited', tags = 'both' WHERE id = 'n2';",
    )?;
    open_plain(&g.db("b")).execute_batch("ALTER TABLE notes ADD COLUMN tags TEXT")?;
    let store = g.store();
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let want = rows(a.conn(), "notes");
    let tags: Vec<Cell> = want.iter().map(|r| r[2].clone()).collect();
    assert_eq!(
        tags,
        vec![Value::Text("work".into()), Value::Text("both".into()), Value::Null, Value::Text("home".into())]
    );
    assert_eq!(rows(b.conn(), "notes"), want);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    assert_eq!(dimple::verify::check(&mut b)?, vec![]);
    // Capture goes on for the new column without another `dimple track`.
    app.execute("UPDATE notes SET tags = 'later' WHERE id = 'n3'", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "notes"), rows(a.conn(), "notes"));
    Ok(())
}

/// The values of a column added before dimple runs again are read from the table
/// itself: TEXT whose bytes are not UTF-8 (random bytes, any SQLite client can
/// store them) arrives as itself, in updated rows and in new ones.
#[test]
fn text_that_is_not_utf8_in_a_column_added_before_dimple_runs_again_arrives_as_itself() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let (mut a, mut b) = notes_pair(&g)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xadd);
    let mut raw = || Cell::Text((0..rng.gen_range(1..40)).map(|_| rng.gen_range(0x80..=0xffu8)).collect());
    let app = open_plain(&g.db("a"));
    app.execute_batch("ALTER TABLE notes ADD COLUMN tags TEXT")?;
    for i in 1..=3 {
        app.execute("UPDATE notes SET tags = ?1 WHERE id = ?2", rusqlite::params![raw(), format!("n{i}")])?;
    }
    app.execute("INSERT INTO notes VALUES ('n4', ?1, ?2)", rusqlite::params![raw(), raw()])?;
    open_plain(&g.db("b")).execute_batch("ALTER TABLE notes ADD COLUMN tags TEXT")?;
    let store = g.store();
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let want = rows(a.conn(), "notes");
    assert_eq!(want.len(), 4);
    assert!(want.iter().all(|r| matches!(&r[2], Cell::Text(t) if std::str::from_utf8(t).is_err())), "{want:?}");
    assert_eq!(rows(b.conn(), "notes"), want);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    assert_eq!(dimple::verify::check(&mut b)?, vec![]);
    Ok(())
}

/// The same through the Rust API: migration and writes in one dimple transaction.
#[test]
fn writes_to_a_column_added_in_the_same_api_transaction_are_captured() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = notes_pair(&g)?;
    a.transaction(|tx| {
        tx.execute_batch(
            "ALTER TABLE notes ADD COLUMN tags TEXT DEFAULT 'none';
             UPDATE notes SET tags = 'work' WHERE id = 'n1';
             INSERT INTO notes(id, body) VALUES ('n4', 'default tag');
             INSERT INTO notes VALUES ('n5', 'x', 'home');",
        )?;
        Ok(())
    })?;
    open_plain(&g.db("b")).execute_batch("ALTER TABLE notes ADD COLUMN tags TEXT DEFAULT 'none'")?;
    let store = g.store();
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "notes"), rows(a.conn(), "notes"));
    assert_eq!(dimple::verify::check(&mut b)?, vec![]);
    Ok(())
}

/// A replica that adds the column after the values arrived applies them then, and
/// its own later writes to the column sync back.
#[test]
fn held_values_for_a_new_column_apply_when_the_app_adds_it_and_then_write_it() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = notes_pair(&g)?;
    let store = g.store();
    open_plain(&g.db("a")).execute_batch("ALTER TABLE notes ADD COLUMN tags TEXT; UPDATE notes SET tags = 'a';")?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    open_plain(&g.db("b"))
        .execute_batch("ALTER TABLE notes ADD COLUMN tags TEXT; UPDATE notes SET tags = 'b' WHERE id = 'n3';")?;
    block_on(dimple::sync(&mut b, &store))?;
    block_on(dimple::sync(&mut a, &store))?;
    let want = rows(a.conn(), "notes");
    assert_eq!(
        want.iter().map(|r| r[2].clone()).collect::<Vec<_>>(),
        vec![Value::Text("a".into()), Value::Text("a".into()), Value::Text("b".into())]
    );
    assert_eq!(rows(b.conn(), "notes"), want);
    Ok(())
}

/// An app that renames a tracked table keeps its capture triggers (SQLite moves
/// them with the table): its writes go on syncing under the old name, while
/// the other replicas' changes wait for a table of that name. That is a
/// visible problem of the replica, never a silent one, until the table has
/// its name again; the writes made meanwhile were not lost.
#[test]
fn a_tracked_table_the_app_renames_is_a_problem_until_it_has_its_name_again() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = notes_pair(&g)?;
    let store = g.store();
    let app = rusqlite::Connection::open(g.db("a"))?;
    app.execute_batch("ALTER TABLE notes RENAME TO notes_v2; INSERT INTO notes_v2 VALUES ('n4', 'while renamed');")?;
    block_on(dimple::sync(&mut a, &store))?;
    let problems = dimple::status::status(&a)?.problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].reason.contains("renamed tracked table notes to notes_v2"), "{}", problems[0].reason);
    app.execute_batch("ALTER TABLE notes_v2 RENAME TO notes")?;
    block_on(dimple::sync(&mut a, &store))?;
    let left = dimple::status::status(&a)?.problems;
    assert!(left.is_empty(), "{left:?}");
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "notes"), rows(a.conn(), "notes"));
    assert_eq!(rows(b.conn(), "notes").len(), 4);
    assert_eq!(dimple::verify::check(&mut a)?, vec![]);
    // The other way out: untrack the old name, track the new one.
    app.execute_batch("ALTER TABLE notes RENAME TO notes_v3")?;
    a.capture()?;
    assert_eq!(dimple::status::status(&a)?.problems.len(), 1);
    a.untrack("notes")?;
    let left = dimple::status::status(&a)?.problems;
    assert!(left.is_empty(), "{left:?}");
    a.track("notes_v3", false)?;
    Ok(())
}
