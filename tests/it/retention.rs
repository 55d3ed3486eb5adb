//! History retention (src/retention.rs): superseded changes older than the horizon
//! leave the log; winners, newer changes, held changes and unpushed writes stay;
//! merging stays exact.

use crate::support::*;
use dimple::retention::{self, Retention};
use dimple::Replica;

const DAY: u64 = 86_400_000;

fn sync(g: &Group, r: &mut Replica) {
    block_on(dimple::sync(r, &g.store())).unwrap();
    g.clock.advance(3);
}

fn log_len(r: &Replica) -> i64 {
    r.conn().query_row("SELECT count(*) FROM ZV_CHANGE", [], |row| row.get(0)).unwrap()
}

/// Every change of the log that is not the winner of its (row, column).
fn superseded(r: &Replica) -> i64 {
    r.conn()
        .query_row(
            "SELECT count(*) FROM ZV_CHANGE c WHERE NOT EXISTS (SELECT 1 FROM ZV_CLOCK k
               WHERE k.entity_type = c.entity_type AND k.entity_id = c.entity_id AND k.attribute = c.attribute
                 AND k.change_id = c.id AND k.author_n = c.author_n)",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

#[test]
fn superseded_changes_older_than_the_horizon_are_pruned_and_winners_and_newer_ones_stay() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    for i in 0..20 {
        a.conn().execute("INSERT INTO t VALUES (?1, 1, 'old', 0.5)", [format!("k{i}")])?;
        a.conn().execute("UPDATE t SET b = 'new' WHERE id = ?1", [format!("k{i}")])?;
    }
    sync(&g, &mut a);
    let table_before = rows(a.conn(), "t");
    assert_eq!(superseded(&a), 20, "each row's first b is superseded");
    // Younger than the horizon: nothing goes.
    assert_eq!(retention::prune(&mut a)?.changes, 0);
    g.clock.advance(31 * DAY);
    // A newer superseded change, inside the horizon, stays.
    a.conn().execute("UPDATE t SET a = 2 WHERE id = 'k0'", [])?;
    a.conn().execute("UPDATE t SET a = 3 WHERE id = 'k0'", [])?;
    block_on(dimple::push(&mut a, &g.store()))?; // a push alone does not prune
    let before = log_len(&a);
    let pruned = retention::prune(&mut a)?;
    // The 20 first values of b, and k0's first value of a (old, and superseded
    // by a = 2 and a = 3).
    assert_eq!(pruned.changes, 21);
    assert_eq!(log_len(&a), before - 21);
    assert_eq!(superseded(&a), 1, "the recent superseded change (a = 2) stays");
    assert_eq!(rows(a.conn(), "t")[1..], table_before[1..], "the tables do not change");
    assert!(pruned.complete_from.is_some());
    assert_eq!(retention::complete_from(a.conn())?, pruned.complete_from);
    assert!(dimple::verify::check(&mut a)?.is_empty(), "the tables still match the log");
    Ok(())
}

#[test]
fn merging_stays_exact_after_pruning() -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut keeper) = (g.replica("a"), g.replica("b"), g.replica("keeper"));
    retention::set(keeper.conn(), Retention::All)?;
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'v1', 0.5)", [])?;
    sync(&g, &mut a);
    sync(&g, &mut b);
    // b goes offline and writes; a writes later (the winner), then time passes.
    b.conn().execute("UPDATE t SET b = 'from b, older' WHERE id = 'k'", [])?;
    b.capture()?;
    g.clock.advance(10);
    a.conn().execute("UPDATE t SET b = 'v2' WHERE id = 'k'", [])?;
    sync(&g, &mut a);
    g.clock.advance(40 * DAY);
    a.conn().execute("UPDATE t SET c = 9.5 WHERE id = 'k'", [])?;
    block_on(dimple::push(&mut a, &g.store()))?;
    assert!(retention::prune(&mut a)?.changes > 0, "the superseded v1 is pruned on a");
    // b comes back: its older write still loses to the kept winner; a newer one wins.
    sync(&g, &mut b);
    b.conn().execute("UPDATE t SET a = 42 WHERE id = 'k'", [])?;
    sync(&g, &mut b);
    for r in [&mut a, &mut keeper] {
        sync(&g, r);
    }
    assert_eq!(
        rows(a.conn(), "t"),
        rows(keeper.conn(), "t"),
        "the pruned replica agrees with one that kept everything"
    );
    assert_eq!(rows(a.conn(), "t"), rows(b.conn(), "t"));
    assert_eq!(rows(a.conn(), "t")[0][2], rusqlite::types::Value::Text("v2".into()));
    assert_eq!(rows(a.conn(), "t")[0][1], rusqlite::types::Value::Integer(42));
    Ok(())
}

#[test]
fn unpushed_own_changes_and_changes_held_for_a_missing_column_are_never_pruned() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut b = g.replica("b");
    // b's own superseded write, never pushed (b is push-less for a while).
    b.conn().execute("INSERT INTO t VALUES ('kb', 1, 'first', 0.5)", [])?;
    b.conn().execute("UPDATE t SET b = 'second' WHERE id = 'kb'", [])?;
    b.capture()?;
    // a adds a column b does not have, and writes it twice in a row ('kc':
    // b pulls both at once, the first arrives superseded) and twice with a
    // pull between ('ka': the second supersedes the first in b's record).
    a.conn().execute_batch("ALTER TABLE t ADD COLUMN extra TEXT")?;
    a.conn().execute("INSERT INTO t(id, extra) VALUES ('ka', 'x1'), ('kc', 'y1')", [])?;
    a.conn().execute("UPDATE t SET extra = 'y2' WHERE id = 'kc'", [])?;
    sync(&g, &mut a);
    block_on(dimple::pull(&mut b, &g.store()))?;
    a.conn().execute("UPDATE t SET extra = 'x2' WHERE id = 'ka'", [])?;
    sync(&g, &mut a);
    block_on(dimple::pull(&mut b, &g.store()))?;
    g.clock.advance(60 * DAY);
    let held_before: i64 =
        b.conn().query_row("SELECT count(*) FROM ZV_CHANGE WHERE attribute = 'extra'", [], |r| r.get(0))?;
    let own = |r: &Replica| -> i64 {
        r.conn()
            .query_row("SELECT count(*) FROM ZV_CHANGE WHERE entity_id = 'kb' AND attribute = 'b'", [], |row| {
                row.get(0)
            })
            .unwrap()
    };
    assert_eq!(own(&b), 2);
    retention::prune(&mut b)?;
    assert_eq!(own(&b), 2, "not pushed yet: kept");
    let held: i64 = b.conn().query_row("SELECT count(*) FROM ZV_CHANGE WHERE attribute = 'extra'", [], |r| r.get(0))?;
    assert_eq!(held, held_before, "held for a column b lacks: kept");
    block_on(dimple::push(&mut b, &g.store()))?;
    retention::prune(&mut b)?;
    assert_eq!(own(&b), 1, "pushed, superseded, old: pruned");
    // The held values still apply once b adds the column.
    open_plain(&g.db("b")).execute_batch("ALTER TABLE t ADD COLUMN extra TEXT")?;
    sync(&g, &mut b);
    let extra: String = b.conn().query_row("SELECT extra FROM t WHERE id = 'ka'", [], |r| r.get(0))?;
    assert_eq!(extra, "x2");
    Ok(())
}

#[test]
fn keeping_everything_prunes_nothing() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    retention::set(a.conn(), "all".parse()?)?;
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'v1', 0.5)", [])?;
    a.conn().execute("UPDATE t SET b = 'v2' WHERE id = 'k'", [])?;
    sync(&g, &mut a);
    g.clock.advance(400 * DAY);
    let before = log_len(&a);
    assert_eq!(retention::prune(&mut a)?.changes, 0);
    assert_eq!(log_len(&a), before);
    assert_eq!(retention::complete_from(a.conn())?, None);
    Ok(())
}

#[test]
fn a_sync_prunes_by_itself_and_the_log_says_from_when_history_is_complete() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'v1', 0.5)", [])?;
    a.conn().execute("UPDATE t SET b = 'v2' WHERE id = 'k'", [])?;
    sync(&g, &mut a);
    g.clock.advance(31 * DAY);
    sync(&g, &mut a);
    assert_eq!(superseded(&a), 0, "the sync pruned");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dimple")).args(["log"]).arg(a.path()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("(history complete from "), "{text}");
    Ok(())
}
