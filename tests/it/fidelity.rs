//! Values arrive bit for bit (issue 9): arbitrary 64-bit REAL patterns, arbitrary
//! TEXT and BLOB, arbitrary keys, through every path a value can take: capture by
//! trigger and by the API (insert and update), batch, apply, snapshot, clone,
//! export and import.

use crate::support::*;
use dimple::export::{self, Format};
use proptest::prelude::*;
use std::time::Duration;

/// Any SQLite value: every finite f64 bit pattern (SQLite turns NaN into NULL),
/// any Unicode text, text of any bytes (SQLite stores what it is given as TEXT,
/// UTF-8 or not), any bytes, any integer.
fn any_value() -> impl Strategy<Value = Cell> {
    prop_oneof![
        Just(Cell::Null),
        any::<i64>().prop_map(Cell::Integer),
        any::<u64>().prop_map(f64::from_bits).prop_filter("SQLite has no NaN", |f| !f.is_nan()).prop_map(Cell::Real),
        "(?s).{0,40}".prop_map(|t| Cell::Text(t.into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Cell::Text),
        ("(?s).{0,20}", any::<u8>(), "(?s).{0,20}")
            .prop_map(|(a, b, c)| Cell::Text([a.as_bytes(), &[b], c.as_bytes()].concat())),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Cell::Blob),
    ]
}

/// Rows as comparable text: the exact encoding tells 0.0 from -0.0 and every bit of
/// a REAL, which `Value`'s `==` does not.
fn exact(rows: Vec<Row>) -> Vec<Vec<String>> {
    rows.into_iter().map(|r| r.iter().map(|c| dimple::value::encode_ref(c.as_ref())).collect()).collect()
}

const UNTYPED: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, a, b)";

fn untyped(g: &Group, name: &str) -> dimple::Replica {
    let r = dimple::Replica::init(&g.db(name), Some(&g.bucket_url()), Some(name), g.opts()).unwrap();
    r.conn().execute_batch(UNTYPED).unwrap();
    let mut r = r;
    r.track("t", false).unwrap();
    r
}

/// Keys are arbitrary text too, deduplicated (a key is a row).
fn rows_strategy() -> impl Strategy<Value = Vec<(String, Cell, Cell, Cell)>> {
    proptest::collection::btree_map(".{1,12}", (any_value(), any_value(), any_value()), 1..24)
        .prop_map(|m| m.into_iter().map(|(k, (a, b, u))| (k, a, b, u)).collect())
}

fn check_paths(rows_in: Vec<(String, Cell, Cell, Cell)>) -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = untyped(&g, "a");
    // Half through the triggers (plain SQL on any connection), half through the API.
    let plain = open_plain(&g.db("a"));
    let (by_sql, by_api) = rows_in.split_at(rows_in.len() / 2);
    for (k, va, vb, _) in by_sql {
        plain.execute("INSERT INTO t VALUES (?1, ?2, ?3)", rusqlite::params![k, va, vb])?;
    }
    a.transaction(|tx| {
        for (k, va, vb, _) in by_api {
            tx.execute("INSERT INTO t VALUES (?1, ?2, ?3)", rusqlite::params![k, va, vb])?;
        }
        Ok(())
    })?;
    block_on(dimple::sync(&mut a, &store))?;
    // Updates carry old and new values: each row's `a` takes a third arbitrary value.
    for (i, (k, _, _, vu)) in rows_in.iter().enumerate() {
        if i % 2 == 0 {
            plain.execute("UPDATE t SET a = ?2 WHERE id = ?1", rusqlite::params![k, vu])?;
        } else {
            a.transaction(|tx| Ok(tx.execute("UPDATE t SET a = ?2 WHERE id = ?1", rusqlite::params![k, vu])?))?;
        }
    }
    block_on(dimple::sync(&mut a, &store))?;
    let want = exact(rows(a.conn(), "t"));
    assert_eq!(want.len(), rows_in.len());
    for (row, (_, _, vb, vu)) in want.iter().zip(&rows_in) {
        assert_eq!(row[1], dimple::value::encode_ref(vu.as_ref()), "a's table holds what was written");
        assert_eq!(row[2], dimple::value::encode_ref(vb.as_ref()));
    }

    // Batch and apply.
    let mut b = untyped(&g, "b");
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(exact(rows(b.conn(), "t")), want, "pulled through batches");

    assert_eq!(dimple::verify::check(&mut a)?, vec![], "a's table matches its own log");
    assert_eq!(dimple::verify::check(&mut b)?, vec![], "b's table matches its log");

    // Snapshot and clone.
    block_on(dimple::snapshot::compact(&mut a, &store, Duration::from_secs(3600)))?;
    open_plain(&g.db("c")).execute_batch(UNTYPED)?;
    let (c, report) =
        block_on(dimple::clone::clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &store, &|_| {}))?;
    assert!(report.snapshot.is_some());
    assert_eq!(exact(rows(c.conn(), "t")), want, "cloned from a snapshot");

    // Export and import, both formats.
    for format in [Format::Json, Format::Csv] {
        let dir = g.dir.path().join(format!("out-{}", format.extension()));
        let files = export::export(&b, &dir, format)?;
        let name = format!("imp-{}", format.extension());
        let mut d = untyped(&g, &name);
        export::import(&mut d, "t", std::path::Path::new(&files[0].path), None)?;
        assert_eq!(exact(rows(d.conn(), "t")), want, "export and import as {}", format.extension());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn every_value_arrives_bit_for_bit_through_every_path(rows_in in rows_strategy()) {
        check_paths(rows_in).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

/// The case from the report: a REAL whose 17-digit text the default JSON parser
/// reads one ulp off.
#[test]
fn a_real_that_needs_all_17_digits_arrives_with_the_same_bits() -> TestResult {
    let f = f64::from_bits(0x2bf666cfcc56e1af);
    check_paths(vec![("k".into(), Cell::Real(f), Cell::Real(-f), Cell::Real(f))])
}

/// The report: an app wrote TEXT whose bytes are not UTF-8 (any SQLite client
/// can) and `dimple push` panicked, every time after too. Each such value, in
/// every column and as an update's old and new value, arrives as itself.
#[test]
fn text_that_is_not_utf8_arrives_as_itself_through_every_path() -> TestResult {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e47);
    let mut text = || {
        let mut t: Vec<u8> = (0..rng.gen_range(1..30)).map(|_| rng.gen()).collect();
        // At least one byte that no UTF-8 text holds.
        let at = rng.gen_range(0..t.len());
        t[at] = rng.gen_range(0xf8..=0xff);
        Cell::Text(t)
    };
    let rows_in = (0..12).map(|i| (format!("k{i:02}"), text(), text(), text())).collect();
    check_paths(rows_in)
}
