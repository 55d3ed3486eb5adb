//! Sync direction (seed 000/001: per-remote push/pull/both): a pull-only replica
//! writes nothing to the bucket, a push-only one applies nothing from it.

use crate::support::*;
use dimple::direction::Direction;

/// `a` wrote one row and synced; `b` only pulls and wrote a row of its own.
fn a_writer_and_a_pull_only_replica_that_wrote(
    g: &Group,
    store: &dimple::store::Metered<dyn dimple::store::Store>,
) -> Result<(dimple::Replica, dimple::Replica), Box<dyn std::error::Error>> {
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('from-a', 1, 'x', 0.5)", [])?;
    block_on(dimple::sync(&mut a, store))?;
    let b = g.replica("b");
    b.set_direction(Direction::Pull)?;
    b.conn().execute("INSERT INTO t VALUES ('from-b', 2, 'y', 0.5)", [])?;
    Ok((a, b))
}

#[test]
fn a_pull_only_replica_never_uploads() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (_a, mut b) = a_writer_and_a_pull_only_replica_that_wrote(&g, &store)?;
    let report = block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(report.requests.put, 0, "{:?}", report.requests);
    let report = block_on(dimple::push(&mut b, &store))?;
    assert_eq!(report.changes, 0);
    assert_eq!(rows(b.conn(), "t").len(), 2, "b still pulls");
    let keys = block_on(dimple::store::list_all(&store, "", None))?;
    assert!(keys.iter().all(|k| !k.key.contains(b.id())), "{keys:?}");
    Ok(())
}

/// A snapshot carries the log and the tables as they are here: one from a
/// replica that only pulls would hand its local writes, which the group never
/// gets, to every clone made from it.
#[test]
fn a_pull_only_replica_refuses_to_compact_and_no_clone_gets_its_local_writes() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = a_writer_and_a_pull_only_replica_that_wrote(&g, &store)?;
    block_on(dimple::sync(&mut b, &store))?;
    drop(b);
    let bin = env!("CARGO_BIN_EXE_dimple");
    let out = std::process::Command::new(bin).args(["compact", g.db("b").to_str().unwrap()]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1 && err.contains("only pulls"), "{err}");
    let keys = block_on(dimple::store::list_all(&store, "", None))?;
    assert!(keys.iter().all(|k| !k.key.starts_with("snapshots/")), "{keys:?}");
    block_on(dimple::snapshot::compact(&mut a, &store, std::time::Duration::ZERO))?;
    let (clone, _) = block_on(dimple::clone::clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &store, &|_| {}))?;
    let ids: Vec<String> = rows(clone.conn(), "t").iter().map(|r| format!("{:?}", r[0])).collect();
    assert_eq!(ids, vec![r#"Text("from-a")"#]);
    Ok(())
}

#[test]
fn a_push_only_replica_never_applies_remote_changes() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('from-a', 1, 'x', 0.5)", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    let mut b = g.replica("b");
    b.set_direction(Direction::Push)?;
    b.conn().execute("INSERT INTO t VALUES ('from-b', 2, 'y', 0.5)", [])?;
    let report = block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(report.push.changes, 4);
    assert_eq!(report.pull.changes, 0);
    assert_eq!(rows(b.conn(), "t").len(), 1, "only b's own row");
    block_on(dimple::sync(&mut a, &store))?;
    assert_eq!(rows(a.conn(), "t").len(), 2, "a received b's push");
    Ok(())
}

#[test]
fn direction_is_set_at_init_and_changed_from_the_command_line() -> TestResult {
    let g = Group::new();
    let bin = env!("CARGO_BIN_EXE_dimple");
    let db = g.db("c");
    let run = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let out = std::process::Command::new(bin).args(args).output()?;
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    run(&["init", db.to_str().unwrap(), "--direction", "pull"])?;
    assert_eq!(run(&["direction", db.to_str().unwrap()])?, "pull");
    run(&["direction", db.to_str().unwrap(), "both"])?;
    assert_eq!(g.reopen("c").direction()?, Direction::Both);
    let out = std::process::Command::new(bin).args(["direction", db.to_str().unwrap(), "sideways"]).output()?;
    assert!(!out.status.success());
    Ok(())
}
