//! Schema evolution across replicas (SPEC 4), from the command line: a replica one
//! schema version behind keeps the newer columns' changes in its log and applies
//! them when it adds the column.

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
        dimple(&["init", db, "--bucket", &bucket]);
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
