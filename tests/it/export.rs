//! Export and import (issue "Bootstrap, compaction, verification and export"):
//! every storage class survives a round trip through either format, and imported
//! rows are ordinary captured changes.

use crate::support::*;
use dimple::export::{self, Format};
use rusqlite::types::Value;

/// One row per storage class (and the awkward corners of each), in untyped column `a`.
fn fill(r: &mut dimple::Replica) -> TestResult {
    let values = [
        Value::Null,
        Value::Integer(i64::MIN),
        Value::Integer(1),
        Value::Real(1.0),
        Value::Real(-0.0),
        Value::Real(0.1 + 0.2),
        Value::Real(f64::INFINITY),
        Value::Real(f64::NEG_INFINITY),
        Value::Text("1".into()),
        Value::Text("a,\"b\"\nc\u{0}é".into()),
        Value::Text(String::new()),
        Value::Blob(vec![]),
        Value::Blob(vec![0, 255, 10, 44]),
    ];
    r.transaction(|tx| {
        for (i, v) in values.iter().enumerate() {
            tx.execute(
                "INSERT INTO t(id, a, b, c) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![format!("k{i:02}"), v, format!("b{i}"), i as f64 / 3.0],
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

fn bits(rows: Vec<Row>) -> Vec<Vec<String>> {
    rows.into_iter().map(|r| r.iter().map(|c| dimple::value::encode_ref(c.as_ref())).collect()).collect()
}

fn round_trip(format: Format) -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    fill(&mut a)?;
    let dir = g.dir.path().join("out");
    let files = export::export(&a, &dir, format)?;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].rows, 13);
    let mut b = g.replica("b");
    let n = export::import(&mut b, "t", std::path::Path::new(&files[0].path), None)?;
    assert_eq!(n, 13);
    assert_eq!(bits(rows(b.conn(), "t")), bits(rows(a.conn(), "t")));
    // Imported rows are local changes waiting to be pushed.
    assert!(b.unpushed()? >= 13 * 4, "{}", b.unpushed()?);
    Ok(())
}

#[test]
fn json_export_then_import_round_trips_every_storage_class() -> TestResult {
    round_trip(Format::Json)
}

#[test]
fn csv_export_then_import_round_trips_every_storage_class() -> TestResult {
    round_trip(Format::Csv)
}

#[test]
fn import_updates_rows_whose_key_exists_and_captures_only_real_changes() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('k1', 1, 'old', 0.5)", [])?;
    a.capture()?;
    let file = g.dir.path().join("t.json");
    std::fs::write(&file, r#"[{"id":"k1","b":"new"},{"id":"k2","b":"x"}]"#)?;
    let before: i64 = a.conn().query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get(0))?;
    export::import(&mut a, "t", &file, None)?;
    assert_eq!(
        rows(a.conn(), "t"),
        vec![
            vec![Value::Text("k1".into()), Value::Integer(1), Value::Text("new".into()), Value::Real(0.5)],
            vec![Value::Text("k2".into()), Value::Null, Value::Text("x".into()), Value::Null],
        ]
    );
    let after: i64 = a.conn().query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get(0))?;
    // k1.b updated (1) + k2 inserted (row + 3 columns).
    assert_eq!(after - before, 5);
    Ok(())
}

#[test]
fn import_refuses_columns_the_table_does_not_have() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let file = g.dir.path().join("t.csv");
    std::fs::write(&file, "id,\"x\"\"; DROP TABLE t; --\"\n\"\"\"k1\"\"\",1\n")?;
    let err = export::import(&mut a, "t", &file, None).unwrap_err();
    assert!(err.to_string().contains("has no column"), "{err}");
    assert!(rows(a.conn(), "t").is_empty());
    Ok(())
}

#[test]
fn export_and_import_work_from_the_command_line() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    fill(&mut a)?;
    drop(g.replica("b"));
    let bin = env!("CARGO_BIN_EXE_dimple");
    let dir = g.dir.path().join("cli");
    let out = std::process::Command::new(bin)
        .args(["export", g.db("a").to_str().unwrap(), "--format", "csv", "--out", dir.to_str().unwrap(), "--json"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(bin)
        .args(["import", g.db("b").to_str().unwrap(), "t", dir.join("t.csv").to_str().unwrap()])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = g.reopen("b");
    assert_eq!(bits(rows(b.conn(), "t")), bits(rows(a.conn(), "t")));
    Ok(())
}
