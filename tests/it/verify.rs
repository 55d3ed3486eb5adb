//! `verify`: tables are checked against the change log, and digests against other
//! replicas at the same cursor vector.

use crate::support::*;
use dimple::verify::{self, Difference};
use rusqlite::config::DbConfig;

/// A connection that writes behind dimple's back: capture triggers do not fire.
fn behind_the_back(g: &Group, name: &str) -> rusqlite::Connection {
    let c = open_plain(&g.db(name));
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false).unwrap();
    c
}

fn seeded(g: &Group, name: &str) -> dimple::Replica {
    let mut r = g.replica(name);
    r.conn()
        .execute_batch("INSERT INTO t VALUES ('k1', 1, 'x', 0.5); INSERT INTO t VALUES ('k2', 2, 'y', 1.5); INSERT INTO t VALUES ('k3', 3, 'z', 2.5)")
        .unwrap();
    r.capture().unwrap();
    r
}

#[test]
fn verify_detects_rows_edited_behind_dimples_back_and_repair_restores_the_log() -> TestResult {
    let g = Group::new();
    let mut a = seeded(&g, "a");
    assert_eq!(verify::check(&mut a)?, vec![]);
    let unpushed = a.unpushed()?;
    let c = behind_the_back(&g, "a");
    c.execute_batch("UPDATE t SET b = 'edited' WHERE id = 'k1'; DELETE FROM t WHERE id = 'k2'; INSERT INTO t VALUES ('k9', 9, 'new', 0.0)")?;
    drop(c);
    let diffs = verify::check(&mut a)?;
    assert_eq!(
        diffs,
        vec![
            Difference::Column {
                table: "t".into(),
                entity_id: "k1".into(),
                column: "b".into(),
                expected: "\"x\"".into(),
                found: "\"edited\"".into()
            },
            Difference::MissingRow { table: "t".into(), entity_id: "k2".into() },
            Difference::ExtraRow { table: "t".into(), entity_id: "k9".into() },
        ]
    );
    assert_eq!(verify::repair(&mut a, &diffs)?, 3);
    assert_eq!(verify::check(&mut a)?, vec![]);
    assert_eq!(rows(a.conn(), "t"), model_of_log(a.conn(), &["a", "b", "c"]));
    // The repair is not a new local change.
    assert_eq!(a.unpushed()?, unpushed);
    assert_eq!(a.pending_captured()?, 0);
    Ok(())
}

#[test]
fn verify_accepts_values_the_column_affinity_converted() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let store = g.store();
    // a stores an integer in untyped column a; b declares it TEXT.
    let b_path = g.db("b");
    drop(b);
    {
        let c = open_plain(&b_path);
        c.execute_batch("DROP TABLE t; CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT, b TEXT, c REAL)")?;
    }
    b = g.reopen("b");
    b.refresh_schema()?;
    a.conn().execute("INSERT INTO t VALUES ('k1', 7, 'x', 0.5)", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "t")[0][1], rusqlite::types::Value::Text("7".into()));
    assert_eq!(verify::check(&mut b)?, vec![]);
    Ok(())
}

#[test]
fn digests_match_at_equal_cursors_and_are_not_compared_at_different_ones() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = (seeded(&g, "a"), g.replica("b"));
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let da = verify::snapshot_digest(&mut a)?;
    let db = verify::snapshot_digest(&mut b)?;
    assert_eq!(da.cursors, db.cursors);
    assert_eq!(da.tables, db.tables);
    block_on(verify::publish(&mut a, &store, &da))?;
    let cmp = block_on(verify::compare(&mut b, &store, &db))?;
    assert_eq!(cmp.len(), 1);
    assert_eq!(cmp[0].verdict, "same");
    // A row changed behind b's back: same cursors, different digest.
    behind_the_back(&g, "b").execute("UPDATE t SET a = 99 WHERE id = 'k3'", [])?;
    let db = verify::snapshot_digest(&mut b)?;
    let cmp = block_on(verify::compare(&mut b, &store, &db))?;
    assert_eq!((cmp[0].verdict.as_str(), cmp[0].tables.clone()), ("different", vec!["t".to_owned()]));
    // A new local change moves b's cursors: nothing to compare with.
    b.conn().execute("INSERT INTO t VALUES ('k4', 4, 'w', 0.5)", [])?;
    let db = verify::snapshot_digest(&mut b)?;
    let cmp = block_on(verify::compare(&mut b, &store, &db))?;
    assert_eq!(cmp[0].verdict, "not comparable (different cursors)");
    Ok(())
}

#[test]
fn verify_on_the_command_line_fails_on_divergence_and_repair_fixes_it() -> TestResult {
    let g = Group::new();
    drop(seeded(&g, "a"));
    behind_the_back(&g, "a").execute("DELETE FROM t WHERE id = 'k1'", [])?;
    let bin = env!("CARGO_BIN_EXE_dimple");
    let db = g.db("a");
    let out = std::process::Command::new(bin).args(["verify", db.to_str().unwrap(), "--local"]).output()?;
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("t/k1: missing row"));
    let out = std::process::Command::new(bin).args(["verify", db.to_str().unwrap(), "--repair", "--json"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(bin).args(["verify", db.to_str().unwrap()]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(g.reopen("a").conn(), "t").len(), 3);
    Ok(())
}

/// Issue 9, item 8: a child added on one replica while another deletes its parent
/// (ON DELETE CASCADE) converges, to an orphan on both: per-row last-writer-wins
/// cannot see the constraint. `verify` reports it as a finding of its own.
#[test]
fn an_orphan_left_by_concurrent_delete_and_insert_is_reported_by_verify() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let schema = "CREATE TABLE parent(id TEXT PRIMARY KEY);
                  CREATE TABLE child(id TEXT PRIMARY KEY, parent TEXT REFERENCES parent(id) ON DELETE CASCADE);";
    let mut rs = Vec::new();
    for name in ["a", "b"] {
        let r = dimple::Replica::init(&g.db(name), Some(&g.bucket_url()), Some(name), g.opts())?;
        r.conn().execute_batch(schema)?;
        let mut r = r;
        r.track("parent", false)?;
        r.track("child", false)?;
        rs.push(r);
    }
    let (mut a, mut b) = (rs.remove(0), rs.remove(0));
    a.conn().execute("INSERT INTO parent VALUES ('p')", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    let (app_a, app_b) = (open_plain(&g.db("a")), open_plain(&g.db("b")));
    app_a.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM parent WHERE id = 'p';")?;
    app_b.execute_batch("PRAGMA foreign_keys = ON; INSERT INTO child VALUES ('c', 'p');")?;
    for _ in 0..2 {
        block_on(dimple::sync(&mut a, &store))?;
        block_on(dimple::sync(&mut b, &store))?;
    }
    assert_eq!(rows(a.conn(), "child"), rows(b.conn(), "child"), "converged");
    assert_eq!(rows(a.conn(), "parent"), rows(b.conn(), "parent"));
    for r in [&mut a, &mut b] {
        let findings = dimple::verify::check(r)?;
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            matches!(&findings[0], dimple::verify::Difference::ForeignKey { table, parent, .. } if table == "child" && parent == "parent"),
            "{findings:?}"
        );
    }
    Ok(())
}

/// No write left behind: an outbox that lost a packet (or holds one too many) is
/// a difference, and `--repair` rebuilds it from the log, so the next push sends
/// every change the other replica needs.
#[test]
fn an_outbox_that_lost_changes_is_found_by_verify_and_rebuilt_by_repair() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0b0c);
    let write = |r: &dimple::Replica, rng: &mut rand::rngs::StdRng, n: usize| -> TestResult {
        let tx = r.conn().unchecked_transaction()?;
        for _ in 0..n {
            let bytes: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET a = ?2, b = ?3",
                rusqlite::params![
                    format!("k{}", rng.gen_range(0..3000)),
                    bytes,
                    rng.gen::<i64>().to_string(),
                    rng.gen::<f64>()
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    };
    write(&a, &mut rng, 500)?;
    block_on(dimple::sync(&mut a, &store))?;
    // Enough unpushed changes for several packets, so that one can go missing.
    write(&a, &mut rng, 3000)?;
    a.capture()?;
    let waiting = a.unpushed()?;
    assert!(verify::check(&mut a)?.is_empty());
    let packets: i64 = a.conn().query_row("SELECT count(*) FROM ZV_OUTBOX", [], |r| r.get(0))?;
    assert!(packets > 1, "{packets} packets");
    a.conn().execute("DELETE FROM ZV_OUTBOX WHERE n = (SELECT max(n) FROM ZV_OUTBOX)", [])?;
    let lost = waiting - a.unpushed()?;
    assert!(lost > 0);

    let diffs = verify::check(&mut a)?;
    assert_eq!(diffs, vec![Difference::Outbox { in_log: waiting, waiting: waiting - lost }]);
    assert!(diffs[0].repairable());
    verify::repair(&mut a, &diffs)?;
    assert_eq!(verify::check(&mut a)?, vec![]);
    assert_eq!(a.unpushed()?, waiting, "every unpushed change waits again");

    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "b has every write of a");
    Ok(())
}

/// A packet of the outbox that cannot be read (a damaged file): the push stops with
/// a message that says what mends it, uploads nothing and leaves no batch file
/// behind; `verify` finds the changes it would leave behind, and `--repair`
/// rebuilds the outbox so the next push sends every one of them.
#[test]
fn an_outbox_packet_that_cannot_be_read_stops_the_push_until_repair_rebuilds_it() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    block_on(dimple::sync(&mut a, &store))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad0);
    {
        let tx = a.conn().unchecked_transaction()?;
        for i in 0..500 {
            let bytes: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![format!("k{i}"), bytes, rng.gen::<i64>().to_string(), rng.gen::<f64>()],
            )?;
        }
        tx.commit()?;
    }
    a.capture()?;
    let waiting = a.unpushed()?;
    let packed: Vec<u8> = a.conn().query_row("SELECT packed FROM ZV_OUTBOX ORDER BY n LIMIT 1", [], |r| r.get(0))?;
    let mut damaged = packed.clone();
    let at = rng.gen_range(0..damaged.len());
    damaged[at] ^= 1 << rng.gen_range(0..8);
    damaged.truncate(damaged.len() - 1);
    a.conn().execute("UPDATE ZV_OUTBOX SET packed = ?1 WHERE n = (SELECT min(n) FROM ZV_OUTBOX)", [damaged])?;
    let objects = || -> Vec<String> {
        let all = block_on(dimple::store::list_all(&*g.raw_store(), "", None)).unwrap();
        all.into_iter().map(|m| format!("{} {}", m.key, m.etag)).collect()
    };
    let before = objects();

    let err = block_on(dimple::push(&mut a, &store)).unwrap_err().to_string();
    assert!(err.contains("outbox") && err.contains("verify --repair"), "{err}");
    assert_eq!(objects(), before, "nothing was uploaded");
    let outbox = dimple::replica::side_dir(a.path()).join("outbox");
    let left: Vec<_> = std::fs::read_dir(&outbox)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "files left behind: {left:?}");

    let diffs = verify::check(&mut a)?;
    assert!(
        matches!(diffs.as_slice(), [Difference::Outbox { in_log, waiting: readable }] if *in_log == waiting && *readable < waiting),
        "{diffs:?}"
    );
    verify::repair(&mut a, &diffs)?;
    assert_eq!(verify::check(&mut a)?, vec![]);
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "b has every write of a");
    assert_eq!(rows(b.conn(), "t").len(), 500);
    Ok(())
}

/// A damaged record in the log (a broken file) is named row by row by `verify`,
/// which compares nothing else until it is dealt with, and is not something
/// `--repair` claims to fix: the command fails, naming the row, instead of
/// failing on the first read of the record.
#[test]
fn a_damaged_record_of_the_log_is_named_by_verify_and_not_repaired() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    drop(seeded(&g, "a"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdead_0bad);
    let c = open_plain(&g.db("a"));
    let keys: Vec<String> =
        c.prepare("SELECT entity_id FROM ZV_ROW")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    assert_eq!(keys.len(), 3);
    let victim = &keys[rng.gen_range(0..keys.len())];
    // Bytes that are not a record's one form: an extra byte at a random place.
    let cells: Vec<u8> = c.query_row("SELECT cells FROM ZV_ROW WHERE entity_id = ?1", [victim], |r| r.get(0))?;
    let mut broken = cells.clone();
    broken.insert(rng.gen_range(0..=cells.len()), rng.gen());
    while dimple_record_reads(&c, &broken) {
        broken.insert(rng.gen_range(0..=broken.len()), rng.gen());
    }
    c.execute("UPDATE ZV_ROW SET cells = ?1 WHERE entity_id = ?2", rusqlite::params![broken, victim])?;
    drop(c);

    let mut a = g.reopen("a");
    let diffs = verify::check(&mut a)?;
    assert_eq!(diffs, vec![Difference::DamagedRecord { table: "t".into(), entity_id: victim.clone() }]);
    assert!(!diffs[0].repairable());
    drop(a);
    let bin = env!("CARGO_BIN_EXE_dimple");
    let db = g.db("a");
    let out = std::process::Command::new(bin).args(["verify", db.to_str().unwrap(), "--local", "--repair"]).output()?;
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("t/{victim}: the log's record of this row is damaged"))
    );
    Ok(())
}

/// Whether the log's views can read `record`.
fn dimple_record_reads(c: &rusqlite::Connection, record: &[u8]) -> bool {
    c.query_row("SELECT count(*) FROM dimple_cells(?1)", [record], |r| r.get::<_, i64>(0)).is_ok()
}

/// A table tracked before `track` refused keys that compare by a collation
/// (an older build tracked it) is a finding: 'A' and 'a' are one row here and
/// two in the group, and replicas that wrote both disagree.
#[test]
fn a_tracked_key_that_compares_by_a_collation_is_a_finding() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute_batch("CREATE TABLE tags(id TEXT COLLATE NOCASE PRIMARY KEY, v)")?;
    assert!(a.track("tags", false).is_err(), "this build refuses it");
    // As an older build tracked it.
    let info = dimple::track::inspect(a.conn(), "tags")?.expect("the table is there");
    dimple::track::install(a.conn(), &info, true, "2026-11-01T00:00:00Z")?;
    a.conn().execute("INSERT INTO tags VALUES ('A', 1)", [])?;
    let findings = dimple::verify::check(&mut a)?;
    assert_eq!(
        findings,
        vec![dimple::verify::Difference::KeyCollation {
            table: "tags".into(),
            column: "id".into(),
            collation: "NOCASE".into()
        }]
    );
    assert!(findings[0].to_string().contains("untrack tags"), "{}", findings[0]);
    Ok(())
}
