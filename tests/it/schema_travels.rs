//! The schema travels with the data (docs/schema.md): each replica publishes the
//! shape of its tracked tables; `follow` replicas create what the group adds,
//! `manual` ones report it; incompatible differences and hostile DDL are never
//! applied.

use crate::support::*;
use dimple::schema::{self, Policy, Published};
use dimple::{layout, Replica};
use rusqlite::types::Value;

fn sync(g: &Group, r: &mut Replica) -> dimple::SyncReport {
    let report = block_on(dimple::sync(r, &g.store())).unwrap();
    g.clock.advance(3);
    report
}

/// A column as `pragma_table_info` shows it: name, type, default, not null, key.
type ColumnInfo = (String, String, Option<String>, i64, i64);

/// The definition and contents of `table` as a person would compare them.
fn table_as_is(conn: &rusqlite::Connection, table: &str) -> (String, Vec<ColumnInfo>, Vec<Row>) {
    let sql: String = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))
        .unwrap();
    let cols = conn
        .prepare("SELECT name, type, dflt_value, \"notnull\", pk FROM pragma_table_info(?1)")
        .unwrap()
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (sql, cols, rows(conn, &format!("\"{}\"", table.replace('"', "\"\""))))
}

fn random_value(i: usize) -> Value {
    match rand::random::<u8>() % 5 {
        0 => Value::Null,
        1 => Value::Integer(rand::random()),
        2 => Value::Real(f64::from_bits(rand::random::<u64>() & !(0x7ff << 52) | (0x3ff << 52))),
        3 => Value::Text(format!("t{i}-{}", rand::random::<u32>())),
        _ => Value::Blob((0..(rand::random::<u8>() % 40)).map(|_| rand::random()).collect()),
    }
}

#[test]
fn a_clone_into_an_empty_file_without_a_snapshot_equals_the_source() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute_batch(
        "CREATE TABLE \"odd \"\"name\"(k TEXT NOT NULL, n INTEGER NOT NULL, v VARCHAR(20) DEFAULT 'x', w, r REAL DEFAULT -1.5, b BLOB, PRIMARY KEY (k, n));
         CREATE TABLE plain(id TEXT PRIMARY KEY, body TEXT NOT NULL DEFAULT '', at TEXT DEFAULT CURRENT_TIMESTAMP)",
    )?;
    a.track("odd \"name", false)?;
    a.track("plain", false)?;
    for i in 0..60 {
        a.conn().execute(
            "INSERT INTO \"odd \"\"name\" VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                format!("k{i}"),
                i as i64,
                random_value(i),
                random_value(i),
                random_value(i),
                random_value(i)
            ],
        )?;
        a.conn().execute("INSERT INTO plain(id, body) VALUES (?1, ?2)", [format!("p{i}"), format!("body {i}")])?;
    }
    write_t(&a, "t1");
    sync(&g, &mut a);
    let (c, report) =
        block_on(dimple::clone::clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &g.store(), &|_| {}))?;
    assert!(report.snapshot.is_none(), "no snapshot: the tables come from the published schema");
    for t in ["odd \"name", "plain", "t"] {
        assert_eq!(table_as_is(c.conn(), t), table_as_is(a.conn(), t), "table {t}");
    }
    Ok(())
}

fn write_t(r: &Replica, id: &str) {
    r.conn().execute("INSERT INTO t(id, a, b, c) VALUES (?1, 1, 'x', 0.5)", [id]).unwrap();
}

#[test]
fn a_follow_replica_takes_new_columns_and_tables_and_a_manual_one_reports_them_until_the_app_migrates() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut f = g.replica("f");
    schema::set_policy(f.conn(), Policy::Follow)?;
    let mut m = g.replica("m");
    for r in [&mut a, &mut f, &mut m] {
        sync(&g, r);
    }
    // The app on `a` migrates with plain SQL, and writes.
    a.conn().execute_batch(
        "ALTER TABLE t ADD COLUMN tags TEXT DEFAULT 'none';
         UPDATE t SET tags = 'x';
         CREATE TABLE labels(id TEXT PRIMARY KEY, label TEXT, weight REAL DEFAULT 1.0);
         INSERT INTO labels VALUES ('l1', 'work', 2.0);",
    )?;
    write_t(&a, "k1");
    a.conn().execute("UPDATE t SET tags = 'new' WHERE id = 'k1'", [])?;
    a.track("labels", false)?;
    sync(&g, &mut a);

    sync(&g, &mut f);
    // Columns, declared types, defaults, keys and rows (the added column's name
    // is quoted in the stored CREATE TABLE text).
    let (_, f_cols, f_rows) = table_as_is(f.conn(), "t");
    let (_, a_cols, a_rows) = table_as_is(a.conn(), "t");
    assert_eq!((f_cols, f_rows), (a_cols, a_rows));
    assert_eq!(table_as_is(f.conn(), "labels"), table_as_is(a.conn(), "labels"));
    assert!(schema::diff(f.conn())?.is_empty());

    let report = sync(&g, &mut m);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    let d = schema::diff(m.conn())?;
    let tables: Vec<&str> = d.missing_tables.iter().map(|t| t.table.as_str()).collect();
    let columns: Vec<String> = d.missing_columns.iter().map(|c| format!("{}.{}", c.table, c.column.name)).collect();
    assert_eq!((tables, columns), (vec!["labels"], vec!["t.tags".to_owned()]));
    assert!(d.conflicts.is_empty(), "{:?}", d.conflicts);
    let n: i64 = m.conn().query_row("SELECT count(*) FROM sqlite_master WHERE name = 'labels'", [], |r| r.get(0))?;
    assert_eq!(n, 0, "manual mode ran no DDL");
    assert_eq!(dimple::status::status(&m)?.schema_missing, 2);
    // Meanwhile the columns it has keep syncing.
    assert!(rows(m.conn(), "t").iter().any(|row| row[0] == Value::Text("k1".into())));
    // The app migrates with the statements `dimple schema` shows.
    let column_ddl = d.missing_columns[0].ddl.clone().unwrap();
    open_plain(&g.db("m")).execute_batch(&format!("{column_ddl}; {};", d.missing_tables[0].ddl))?;
    sync(&g, &mut m);
    assert_eq!(table_as_is(m.conn(), "t").2, table_as_is(a.conn(), "t").2, "held values applied");
    assert_eq!(table_as_is(m.conn(), "labels").2, table_as_is(a.conn(), "labels").2);
    assert!(schema::diff(m.conn())?.is_empty());
    // And the migrated replicas' writes to the new column reach everyone.
    m.conn().execute("UPDATE t SET tags = 'from m' WHERE id = 'k1'", [])?;
    sync(&g, &mut m);
    sync(&g, &mut a);
    sync(&g, &mut f);
    assert_eq!(rows(a.conn(), "t"), rows(f.conn(), "t"));
    assert_eq!(rows(a.conn(), "t"), rows(m.conn(), "t"));
    Ok(())
}

#[test]
fn the_same_column_with_another_declared_type_is_reported_and_never_applied() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let mut f = g.replica("f");
    schema::set_policy(f.conn(), Policy::Follow)?;
    a.conn().execute_batch("ALTER TABLE t ADD COLUMN x INTEGER")?;
    b.conn().execute_batch("ALTER TABLE t ADD COLUMN x TEXT")?;
    for _ in 0..2 {
        for r in [&mut a, &mut b, &mut f] {
            sync(&g, r);
        }
    }
    let d = schema::diff(f.conn())?;
    assert!(d.conflicts.iter().any(|c| c.what == "t.x"), "{:?}", d.conflicts);
    assert!(d.missing_columns.is_empty(), "a conflicted column is not offered");
    let cols: Vec<String> = f
        .conn()
        .prepare("SELECT name FROM pragma_table_info('t')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert!(!cols.contains(&"x".to_owned()), "never added");
    let problems = dimple::status::status(&a)?.problems;
    assert!(
        problems.iter().any(|p| p.reason.contains("t.x") && p.reason.contains("INTEGER") && p.reason.contains("TEXT")),
        "both sides shown: {problems:?}"
    );
    Ok(())
}

/// A member's key signs whatever schema it likes: `publish` writes `tables` as
/// `r`'s published schema, version `version`.
fn publish_as(g: &Group, r: &Replica, version: i64, tables: Vec<schema::TableShape>) {
    let key = dimple::trust::load(&dimple::replica::side_dir(r.path()).join("replica.key")).unwrap();
    let public_key = dimple::trust::public_b64(&key);
    let body = Published { format: dimple::FORMAT, replica: r.id().to_owned(), public_key, version, tables };
    let signature = dimple::trust::sign(&key, &serde_json::to_vec(&body).unwrap());
    let path = g.bucket().join(layout::descriptor_key(r.id()));
    let mut descriptor: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    descriptor["schema"] = serde_json::json!({"body": body, "signature": signature});
    std::fs::write(path, serde_json::to_vec(&descriptor).unwrap()).unwrap();
}

fn shape(name: &str, sql: &str) -> schema::TableShape {
    schema::TableShape {
        name: name.to_owned(),
        sql: sql.to_owned(),
        key: vec!["id".to_owned()],
        columns: vec![dimple::ddl::Column {
            name: "id".into(),
            declared_type: "TEXT".into(),
            default: None,
            not_null: false,
            collation: None,
        }],
    }
}

fn user_objects(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare("SELECT type || ' ' || name FROM sqlite_master WHERE name NOT LIKE 'ZV%' AND name NOT LIKE 'zv%' AND name NOT LIKE 'sqlite%' ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn each_hostile_ddl_shape_is_refused_with_nothing_executed() -> TestResult {
    let shapes = [
        ("evil", "CREATE TABLE evil AS SELECT 'x' AS id"),
        ("evil", "CREATE TABLE evil(id TEXT PRIMARY KEY); CREATE TABLE other(x)"),
        ("evil", "CREATE TABLE evil(id TEXT PRIMARY KEY, g TEXT GENERATED ALWAYS AS (id || '!'))"),
        ("evil", "CREATE TABLE evil(id TEXT PRIMARY KEY, d TEXT DEFAULT (hex(randomblob(4))))"),
        ("evil", "CREATE VIEW evil AS SELECT 1 AS id"),
        ("evil", "CREATE TRIGGER evil AFTER INSERT ON t BEGIN DELETE FROM t; END"),
        ("evil", "CREATE VIRTUAL TABLE evil USING fts5(id)"),
        ("evil", "CREATE TABLE temp.evil(id TEXT PRIMARY KEY)"),
        ("ZV_METADATA", "CREATE TABLE ZV_METADATA(id TEXT PRIMARY KEY)"),
        ("evil", "CREATE TABLE innocent(id TEXT PRIMARY KEY)"),
    ];
    for (name, sql) in shapes {
        let g = Group::new();
        let mut a = g.replica("a");
        let mut f = g.replica("f");
        schema::set_policy(f.conn(), Policy::Follow)?;
        sync(&g, &mut a);
        publish_as(&g, &a, 99, vec![shape(name, sql)]);
        let before = user_objects(f.conn());
        sync(&g, &mut f);
        assert_eq!(user_objects(f.conn()), before, "{sql}: nothing was created");
        let problems = dimple::status::status(&f)?.problems;
        assert!(
            problems.iter().any(|p| p.replica == a.id() && p.object_key == layout::descriptor_key(a.id())),
            "{sql}: refused as a problem of the publisher: {problems:?}"
        );
        let d = schema::diff(f.conn())?;
        assert!(d.missing_tables.is_empty(), "{sql}: never offered as DDL to run");
    }
    Ok(())
}

#[test]
fn a_schema_signed_by_another_key_or_an_older_version_is_refused() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let mut f = g.replica("f");
    schema::set_policy(f.conn(), Policy::Follow)?;
    for r in [&mut a, &mut b, &mut f] {
        sync(&g, r);
    }
    // b signs a schema and puts it under a's name.
    let forged = std::fs::read(g.bucket().join(layout::descriptor_key(b.id())))?;
    let saved = std::fs::read(g.bucket().join(layout::descriptor_key(a.id())))?;
    std::fs::write(g.bucket().join(layout::descriptor_key(a.id())), &forged)?;
    let report = sync(&g, &mut f);
    assert!(
        report.pull.problems.iter().any(|p| p.contains(&layout::descriptor_key(a.id()))),
        "{:?}",
        report.pull.problems
    );
    std::fs::write(g.bucket().join(layout::descriptor_key(a.id())), &saved)?;
    a.conn().execute_batch("ALTER TABLE t ADD COLUMN late TEXT")?;
    sync(&g, &mut a);
    sync(&g, &mut f);
    // The version before the new column, put back: a replay.
    std::fs::write(g.bucket().join(layout::descriptor_key(a.id())), &saved)?;
    let report = sync(&g, &mut f);
    assert!(report.pull.problems.iter().any(|p| p.contains("replayed")), "{:?}", report.pull.problems);
    Ok(())
}

#[test]
fn a_column_that_disappears_from_a_replicas_schema_is_reported_not_dropped() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut f = g.replica("f");
    schema::set_policy(f.conn(), Policy::Follow)?;
    sync(&g, &mut a);
    sync(&g, &mut f);
    let mut tables = schema::local(a.conn())?;
    tables[0].columns.retain(|c| c.name != "b");
    publish_as(&g, &a, 50, tables);
    sync(&g, &mut f);
    let d = schema::diff(f.conn())?;
    assert!(d.conflicts.iter().any(|c| c.what == "t.b" && c.there.contains("dropped")), "{:?}", d.conflicts);
    let cols: Vec<String> = f
        .conn()
        .prepare("SELECT name FROM pragma_table_info('t')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert!(cols.contains(&"b".to_owned()), "nothing is dropped here");
    Ok(())
}

#[test]
fn an_old_replica_that_never_migrates_keeps_syncing_the_columns_it_has() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut old = g.replica("old");
    for r in [&mut a, &mut old] {
        sync(&g, r);
    }
    a.conn().execute_batch("ALTER TABLE t ADD COLUMN extra TEXT")?;
    for i in 0..20 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'x', 0.5, 'more')", rusqlite::params![format!("r{i}"), i])?;
    }
    sync(&g, &mut a);
    for i in 0..10 {
        old.conn().execute("INSERT INTO t VALUES (?1, ?2, 'y', 1.5)", rusqlite::params![format!("o{i}"), i])?;
    }
    let report = sync(&g, &mut old);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    sync(&g, &mut a);
    let n = |r: &Replica| -> i64 { r.conn().query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap() };
    assert_eq!((n(&a), n(&old)), (30, 30));
    let theirs: Vec<Row> = rows(old.conn(), "t");
    let ours: Vec<Row> = rows(a.conn(), "t")
        .into_iter()
        .map(|mut r| {
            r.truncate(4);
            r
        })
        .collect();
    assert_eq!(theirs, ours, "every column the old replica has is in step");
    Ok(())
}

#[test]
fn a_table_the_app_creates_alone_is_tracked_by_the_next_pull() -> TestResult {
    let g = Group::new();
    let (mut a, mut m) = (g.replica("a"), g.replica("m"));
    a.conn().execute_batch(
        "CREATE TABLE labels(id TEXT PRIMARY KEY, label TEXT); INSERT INTO labels VALUES ('l1', 'x');",
    )?;
    a.track("labels", false)?;
    sync(&g, &mut a);
    sync(&g, &mut m);
    sync(&g, &mut m); // nothing new: the settle is skipped
    open_plain(&g.db("m")).execute_batch("CREATE TABLE labels(id TEXT PRIMARY KEY, label TEXT)")?;
    sync(&g, &mut m);
    assert_eq!(rows(m.conn(), "labels"), rows(a.conn(), "labels"));
    Ok(())
}
