//! Property: replicas that write through both capture paths and sync in any order
//! end with identical tables, equal to the merge rules applied to the union of
//! their logs; and at every step each replica's table equals the rules applied to
//! its own log (so capture loses nothing and apply writes exactly the winners).

use crate::support::*;
use dimple::clock::ManualClock;
use dimple::{Options, Replica};
use proptest::prelude::*;
use rusqlite::types::Value;
use std::sync::Arc;

/// One write of an app to table `t`, through SQL (shared with `lifecycle`).
#[derive(Debug, Clone)]
pub enum Write {
    Insert(Value, Value),
    Replace(Value, Value),
    SetA(Value),
    SetB(Value),
    Upsert(Value),
    Delete,
    ChangeKey(u8),
}

#[derive(Debug, Clone)]
enum Op {
    Write { replica: usize, key: u8, write: Write, via_api: bool },
    Sync(usize),
    Push(usize),
    Pull(usize),
    Tick(u64),
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (0i64..3).prop_map(Value::Integer),
        Just(Value::Real(0.5)),
        prop_oneof![Just("x"), Just("y"), Just("1")].prop_map(|s| Value::Text(s.into())),
        Just(Value::Blob(vec![1, 0])),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    write_of(value)
}

/// The writes, with values drawn from `value`.
pub fn write_of<S: Strategy<Value = Value> + 'static>(value: fn() -> S) -> impl Strategy<Value = Write> {
    prop_oneof![
        (value(), value()).prop_map(|(a, c)| Write::Insert(a, c)),
        (value(), value()).prop_map(|(a, c)| Write::Replace(a, c)),
        value().prop_map(Write::SetA),
        value().prop_map(Write::SetB),
        value().prop_map(Write::Upsert),
        Just(Write::Delete),
        (0u8..4).prop_map(Write::ChangeKey),
    ]
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..n, 0u8..4, write(), any::<bool>())
            .prop_map(|(replica, key, write, via_api)| Op::Write { replica, key, write, via_api }),
        1 => (0..n).prop_map(Op::Sync),
        1 => (0..n).prop_map(Op::Push),
        1 => (0..n).prop_map(Op::Pull),
        1 => (0u64..50).prop_map(Op::Tick),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<i64>, Vec<Op>, Vec<usize>)> {
    (3usize..=5).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::vec(-500i64..500, n),
            proptest::collection::vec(op(n), 5..45),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        )
    })
}

pub fn run_write(conn: &rusqlite::Connection, key: u8, w: &Write) {
    let k = format!("k{key}");
    // Constraint failures (inserting a key that exists) are the app's business:
    // they write nothing, and nothing must be captured.
    let _ = match w {
        Write::Insert(a, c) => conn.execute("INSERT INTO t(id, a, c) VALUES (?1, ?2, ?3)", rusqlite::params![k, a, c]),
        Write::Replace(a, c) => {
            conn.execute("INSERT OR REPLACE INTO t(id, a, c) VALUES (?1, ?2, ?3)", rusqlite::params![k, a, c])
        }
        Write::SetA(a) => conn.execute("UPDATE t SET a = ?2 WHERE id = ?1", rusqlite::params![k, a]),
        Write::SetB(b) => conn.execute("UPDATE t SET b = ?2 WHERE id = ?1", rusqlite::params![k, b]),
        Write::Upsert(b) => conn.execute(
            "INSERT INTO t(id, b) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET b = excluded.b",
            rusqlite::params![k, b],
        ),
        Write::Delete => conn.execute("DELETE FROM t WHERE id = ?1", [k]),
        Write::ChangeKey(to) => {
            conn.execute("UPDATE t SET id = ?2 WHERE id = ?1", rusqlite::params![k, format!("k{to}")])
        }
    };
}

fn check_own_log(r: &mut Replica) -> Result<(), TestCaseError> {
    r.capture().unwrap();
    prop_assert_eq!(model_of_log(r.conn(), &["a", "b", "c"]), rows(r.conn(), "t"), "replica {}", r.name().unwrap());
    Ok(())
}

fn converge(backend: Backend, n: usize, skews: Vec<i64>, ops: Vec<Op>, order: Vec<usize>) -> Result<(), TestCaseError> {
    let Some(g) = Group::on(backend, "converge") else { return Ok(()) };
    let store = g.store();
    let base = 1_750_000_000_000i64;
    let clocks: Vec<ManualClock> = skews.iter().map(|s| ManualClock::new((base + s) as u64)).collect();
    let mut replicas: Vec<Replica> = (0..n)
        .map(|i| {
            let opts = Options { clock: Arc::new(clocks[i].clone()), ..Options::default() };
            let path = g.db(&format!("r{i}"));
            let mut r = Replica::init(&path, Some(&g.bucket_url()), Some(&format!("r{i}")), opts).unwrap();
            r.conn().execute_batch(TABLE_SQL).unwrap();
            r.track("t", false).unwrap();
            r
        })
        .collect();
    let apps: Vec<rusqlite::Connection> = (0..n).map(|i| open_plain(&g.db(&format!("r{i}")))).collect();
    for op in ops {
        match op {
            Op::Write { replica, key, write, via_api } => {
                if via_api {
                    replicas[replica]
                        .transaction(|tx| {
                            run_write(tx, key, &write);
                            Ok(())
                        })
                        .unwrap();
                } else {
                    run_write(&apps[replica], key, &write);
                }
                check_own_log(&mut replicas[replica])?;
            }
            Op::Sync(i) => {
                block_on(dimple::sync(&mut replicas[i], &store)).unwrap();
                check_own_log(&mut replicas[i])?;
            }
            Op::Push(i) => {
                block_on(dimple::push(&mut replicas[i], &store)).unwrap();
            }
            Op::Pull(i) => {
                block_on(dimple::pull(&mut replicas[i], &store)).unwrap();
                check_own_log(&mut replicas[i])?;
            }
            Op::Tick(ms) => clocks.iter().for_each(|c| c.advance(ms)),
        }
    }
    // Everyone pushes, then everyone pulls: in the shuffled order, twice over.
    for _ in 0..2 {
        for &i in &order {
            block_on(dimple::sync(&mut replicas[i], &store)).unwrap();
        }
    }
    let first = &replicas[order[0]];
    let expected = model_of_log(first.conn(), &["a", "b", "c"]);
    for r in &replicas {
        prop_assert_eq!(change_ids(r.conn()), change_ids(first.conn()), "logs differ");
        prop_assert_eq!(rows(r.conn(), "t"), expected.clone(), "replica {} differs", r.name().unwrap());
        prop_assert!(dimple::status::status(r).unwrap().problems.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_to_the_merge_of_all_their_changes((n, skews, ops, order) in scenario()) {
        converge(Backend::Local, n, skews, ops, order)?;
    }
}

proptest! {
    // Each case creates a bucket and makes real requests: fewer cases.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_S3_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_through_s3((n, skews, ops, order) in scenario()) {
        converge(Backend::S3, n, skews, ops, order)?;
    }
}

/// Order independence at the merge level: the union of several replicas' logs,
/// applied to a fresh database in any order and any number of times, gives the
/// same table.
#[test]
fn applying_changes_in_any_order_or_twice_gives_the_same_table() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut rs: Vec<Replica> = (0..3).map(|i| g.replica(&format!("w{i}"))).collect();
    for round in 0..6i64 {
        for (i, r) in rs.iter_mut().enumerate() {
            let k = format!("k{}", (round + i as i64) % 4);
            r.conn().execute("INSERT OR REPLACE INTO t VALUES (?1, ?2, 'x', 0.5)", rusqlite::params![k, round])?;
            if round % 3 == i as i64 {
                r.conn().execute("DELETE FROM t WHERE id = ?1", [format!("k{}", round % 4)])?;
            }
            r.conn()
                .execute("UPDATE t SET b = ?2 WHERE id = ?1", rusqlite::params![format!("k{}", round % 4), round])?;
            block_on(dimple::sync(r, &store))?;
            g.clock.advance(3);
        }
    }
    for r in rs.iter_mut() {
        block_on(dimple::sync(r, &store))?;
    }
    let all: Vec<dimple::merge::Change> = {
        let mut stmt = rs[0].conn().prepare(dimple::log::SELECT)?;
        let all = stmt.query_map([], dimple::log::row_to_change)?.collect::<Result<_, _>>()?;
        all
    };
    let expected = rows(rs[0].conn(), "t");
    assert!(!expected.is_empty());
    let mut orders: Vec<Vec<dimple::merge::Change>> = vec![all.clone(), all.iter().rev().cloned().collect()];
    for seed in 0..4u64 {
        let mut v = all.clone();
        // A fixed pseudo-random shuffle (xorshift), so a failure reproduces.
        let mut x = seed * 7919 + 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        orders.push(v);
    }
    for (n, order) in orders.iter().enumerate() {
        let fresh = g.replica(&format!("fresh{n}"));
        let conn = open_plain(fresh.path());
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let merger = dimple::merge::Merger::new(&conn)?;
        for _ in 0..2 {
            for c in order {
                merger.apply_remote(c)?;
            }
        }
        assert_eq!(rows(&conn, "t"), expected, "order {n}");
    }
    Ok(())
}

/// A burst captured at once is one transaction, and so one batch, however large:
/// the puller reads it from the batch file and merges it 10,000 changes at a
/// time. Random inserts, updates and deletes of few rows, so that one row's
/// changes fall on both sides of those boundaries (and on the writer's side, on
/// the outbox's packet ends), give the same table on both replicas, equal to the
/// merge rules applied to the log.
#[test]
fn a_burst_larger_than_a_batch_arrives_whole_in_one_batch() -> TestResult {
    use rand::{Rng, SeedableRng};
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xb0257);
    let tx = a.conn().unchecked_transaction()?;
    for i in 0..14_000 {
        let k = format!("k{}", rng.gen_range(0..2500));
        match rng.gen_range(0..6) {
            0 => tx.execute("DELETE FROM t WHERE id = ?1", [&k])?,
            1 => tx.execute("UPDATE t SET c = ?2 WHERE id = ?1", rusqlite::params![k, rng.gen::<f64>()])?,
            _ => tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET a = ?2, b = ?3",
                rusqlite::params![k, i, format!("v{}", rng.gen::<u32>()), rng.gen::<f64>()],
            )?,
        };
    }
    tx.commit()?;
    let changes = a.capture()?;
    assert!(changes > 25_000, "{changes} changes: more than two apply chunks");
    let pushed = block_on(dimple::push(&mut a, &store))?;
    assert_eq!((pushed.changes, pushed.batches), (changes, 1), "one transaction, one batch");
    let pulled = block_on(dimple::pull(&mut b, &store))?;
    assert_eq!(pulled.changes, changes);
    assert!(rows(b.conn(), "t") == rows(a.conn(), "t"), "b has a's table");
    assert!(rows(b.conn(), "t") == model_of_log(b.conn(), &["a", "b", "c"]), "b's table is its log's winners");
    assert_eq!(dimple::verify::check(&mut b)?, vec![]);
    Ok(())
}
