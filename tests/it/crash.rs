//! Crash safety (SPEC 4): a fault at any store call of a push or a pull, or the
//! process dying there, followed by a retry, loses nothing and applies nothing twice.

use crate::support::*;
use dimple::store::faulty::{Fault, FaultPlan, Faulty};
use dimple::store::Store;
use dimple::{Options, Replica};

const WRITES: i64 = 23;

const PASS: &str = "the crash tests' group passphrase";

/// A writer with enough changes for several small batches, in an encrypted
/// group when `sealed`.
fn writer(g: &Group, sealed: bool) -> Replica {
    let path = g.db("a");
    let opts = Options { batch_changes: 20, ..g.opts() };
    let mut r = Replica::init(&path, Some(&g.bucket_url()), Some("a"), opts).unwrap();
    r.conn().execute_batch(TABLE_SQL).unwrap();
    r.track("t", false).unwrap();
    if sealed {
        block_on(dimple::group::create(&mut r, &g.store(), Some(PASS))).unwrap();
    }
    for i in 0..WRITES {
        r.conn().execute("INSERT INTO t VALUES (?1, ?2, 'x', 0.5)", rusqlite::params![format!("k{i:03}"), i]).unwrap();
        if i % 4 == 0 {
            r.conn().execute("UPDATE t SET b = 'y' WHERE id = ?1", [format!("k{i:03}")]).unwrap();
        }
        // One dimple transaction per write, so the push needs several batches.
        r.capture().unwrap();
    }
    // The one-time look for an encrypted group in the bucket (a GET that finds
    // nothing, so an after-effect fault there would go unnoticed, harmlessly) is
    // done here: the faults below land on the push's own calls.
    block_on(dimple::group::prepare(&mut r, &g.store(), false)).unwrap();
    r
}

/// Runs an operation to its end, or until a store call hangs: then the operation
/// is dropped where it stands, as if the process had been killed.
pub fn run_or_die<T>(op: impl std::future::Future<Output = T>, plan: &FaultPlan) -> Option<T> {
    block_on(async {
        tokio::select! {
            out = op => Some(out),
            _ = plan.hung() => None,
        }
    })
}

fn reopen_writer(g: &Group) -> Replica {
    Replica::open(&g.db("a"), Options { batch_changes: 20, ..g.opts() }).unwrap()
}

/// After recovery, a fresh reader sees exactly the writer's log and table, and its
/// cursor counted every change once.
fn assert_delivered_once(g: &Group, a: &Replica, reader: &mut Replica) {
    let report = block_on(dimple::pull(reader, &g.store())).unwrap();
    let (got, want) = (rows(reader.conn(), "t"), rows(a.conn(), "t"));
    assert!(got == want, "reader has {} rows, writer {} ({report:?})", got.len(), want.len());
    let own: Vec<String> = change_ids(a.conn());
    assert!(change_ids(reader.conn()) == own, "the reader's log differs from the writer's");
    let counted: i64 =
        reader.conn().query_row("SELECT change_count FROM ZV_REPLICA WHERE id = ?1", [a.id()], |r| r.get(0)).unwrap();
    assert_eq!(counted, own.len() as i64, "a batch was applied twice");
    assert!(dimple::status::status(reader).unwrap().problems.is_empty());
}

fn push_with_fault_at(backend: Backend, sealed: bool, n: u64, fault: Fault) -> bool {
    let Some(g) = Group::on(backend, "push-fault") else { return false };
    let mut a = writer(&g, sealed);
    let (store, plan) = Faulty::new(g.raw_store());
    plan.fail_nth(n, fault);
    let first = run_or_die(dimple::push(&mut a, &store), &plan);
    let injected = plan.calls() > n;
    match (&first, injected) {
        (Some(Ok(_)), false) => {}
        (Some(Ok(_)), true) => assert_eq!(fault, Fault::Unavailable, "only a harmless fault may go unnoticed"),
        (Some(Err(e)), true) => assert!(fault != Fault::Hang, "{e}"),
        (None, true) => assert_eq!(fault, Fault::Hang),
        (other, false) => panic!("push failed without a fault: {other:?}"),
    }
    drop(first);
    // The process restarts: a new Replica from the file, and the store is healthy.
    drop(a);
    plan.heal();
    let mut a = reopen_writer(&g);
    block_on(dimple::push(&mut a, &store)).unwrap();
    assert_eq!(a.unpushed().unwrap(), 0);
    let mut reader = g.replica("reader");
    if sealed {
        let keys = block_on(dimple::group::unlock(&g.store(), PASS)).unwrap();
        block_on(dimple::group::adopt(&mut reader, &g.store(), keys)).unwrap();
    }
    assert_delivered_once(&g, &a, &mut reader);
    injected
}

fn push_faults(backend: Backend, sealed: bool) {
    for fault in [Fault::Unavailable, Fault::AfterEffect, Fault::Refused, Fault::Hang] {
        let mut n = 0;
        while push_with_fault_at(backend, sealed, n, fault) {
            n += 1;
        }
        assert!(n >= 5 || skipped(backend), "{fault:?}: only {n} calls were tried");
    }
}

fn skipped(backend: Backend) -> bool {
    backend == Backend::S3 && Group::on(Backend::S3, "probe").is_none()
}

#[test]
fn a_push_interrupted_at_any_store_call_is_finished_by_the_next_push() {
    push_faults(Backend::Local, false);
}

#[test]
fn a_push_interrupted_at_any_s3_call_is_finished_by_the_next_push() {
    push_faults(Backend::S3, false);
}

/// Sealed objects differ at every attempt (a new nonce): a head that landed
/// though its push never heard back is still recognised as this push's own.
#[test]
fn a_push_interrupted_at_any_store_call_in_an_encrypted_group_is_finished_by_the_next_push() {
    push_faults(Backend::Local, true);
}

fn pull_with_fault_at(backend: Backend, n: u64, fault: Fault) -> bool {
    let Some(g) = Group::on(backend, "pull-fault") else { return false };
    let mut a = writer(&g, false);
    block_on(dimple::push(&mut a, &g.store())).unwrap();
    let mut b = g.replica("b");
    let (store, plan) = Faulty::new(g.raw_store());
    plan.fail_nth(n, fault);
    let first = run_or_die(dimple::pull(&mut b, &store), &plan);
    let injected = plan.calls() > n;
    if !injected {
        assert!(matches!(first, Some(Ok(_))), "{first:?}");
    }
    drop(first);
    drop(b);
    plan.heal();
    let mut b = g.reopen("b");
    assert_delivered_once(&g, &a, &mut b);
    injected
}

fn pull_faults(backend: Backend) {
    for fault in [Fault::Unavailable, Fault::AfterEffect, Fault::Refused, Fault::Hang] {
        let mut n = 0;
        while pull_with_fault_at(backend, n, fault) {
            n += 1;
        }
        assert!(n >= 3 || skipped(backend), "{fault:?}: only {n} calls were tried");
    }
}

#[test]
fn a_pull_interrupted_at_any_store_call_is_finished_by_the_next_pull() {
    pull_faults(Backend::Local);
}

#[test]
fn a_pull_interrupted_at_any_s3_call_is_finished_by_the_next_pull() {
    pull_faults(Backend::S3);
}

/// `compact --prune` by `a` with a fault at store call `n`, over a snapshot `c`
/// published after pruning `a`'s first batches; `b` is behind all of it. Whatever
/// the fault left (a snapshot uploaded but not published, a pointer moved, some
/// batches deleted), the next compaction finishes, and both `b` and a clone end
/// equal to `a` with no problem.
fn compaction_with_fault_at(n: u64, fault: Fault) -> bool {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    let (mut b, mut c) = (g.replica("b"), g.replica("c"));
    let write = |r: &mut Replica, i: i64| {
        r.conn().execute("INSERT INTO t VALUES (?1, ?2, 'x', 0.5)", rusqlite::params![format!("k{i}"), i]).unwrap();
        block_on(dimple::sync(r, &store)).unwrap();
        g.clock.advance(2);
    };
    write(&mut a, 0);
    block_on(dimple::sync(&mut b, &store)).unwrap();
    (1..4).for_each(|i| write(&mut a, i));
    block_on(dimple::sync(&mut c, &store)).unwrap();
    block_on(dimple::snapshot::compact_with(&mut c, &store, std::time::Duration::ZERO, true)).unwrap();
    (4..7).for_each(|i| write(&mut a, i));
    g.clock.advance(2);
    let (faulty, plan) = Faulty::new(g.raw_store());
    plan.fail_nth(n, fault);
    let first = run_or_die(dimple::snapshot::compact_with(&mut a, &faulty, std::time::Duration::ZERO, true), &plan);
    let injected = plan.calls() > n;
    if !injected {
        assert!(matches!(first, Some(Ok(_))), "{first:?}");
    }
    drop(first);
    drop(a);
    plan.heal();
    g.clock.advance(2);
    let mut a = g.reopen("a");
    let want = rows(a.conn(), "t");
    assert_eq!(want.len(), 7);
    // As the fault left the bucket, and once the compaction is done again.
    let caught_up = |r: &mut Replica, when: &str| {
        let report = block_on(dimple::sync(r, &store)).unwrap();
        assert!(report.pull.problems.is_empty(), "{fault:?} at {n}, {when}: {:?}", report.pull.problems);
        assert_eq!(rows(r.conn(), "t"), want, "{fault:?} at {n}, {when}");
    };
    let clone = |name: &str| {
        block_on(dimple::clone::clone(&g.bucket_url(), &g.db(name), Some(name), g.opts(), &store, &|_| {})).unwrap().0
    };
    caught_up(&mut b, "left");
    caught_up(&mut clone("d"), "left");
    let again = block_on(dimple::snapshot::compact_with(&mut a, &store, std::time::Duration::ZERO, true)).unwrap();
    assert!(again.published, "{fault:?} at {n}");
    caught_up(&mut c, "done again");
    caught_up(&mut clone("e"), "done again");
    injected
}

#[test]
fn a_compaction_interrupted_at_any_store_call_leaves_every_replica_able_to_catch_up() {
    for fault in [Fault::Unavailable, Fault::AfterEffect, Fault::Refused, Fault::Hang] {
        let mut n = 0;
        while compaction_with_fault_at(n, fault) {
            n += 1;
        }
        assert!(n >= 8, "{fault:?}: only {n} calls were tried");
    }
}

#[test]
fn a_copied_database_pushing_under_the_same_replica_id_is_detected() -> TestResult {
    copied_database_is_detected(Backend::Local)
}

#[test]
fn a_copied_database_pushing_under_the_same_replica_id_is_detected_on_s3() -> TestResult {
    copied_database_is_detected(Backend::S3)
}

/// `a` pushes row `k`; its database and key are copied to `copy` (a second device now
/// claims the same id); then `a` pushes `from-a`. Returns (a, copy).
fn pushed_then_copied(
    g: &Group,
    store: &dimple::store::Metered<dyn dimple::store::Store>,
) -> Result<(dimple::Replica, dimple::Replica), Box<dyn std::error::Error>> {
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut a, store))?;
    drop(a);
    copy_database(g, "a", "copy");
    let mut a = g.reopen("a");
    let copy = g.reopen("copy");
    a.conn().execute("INSERT INTO t VALUES ('from-a', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut a, store))?;
    Ok((a, copy))
}

/// A copy with nothing left to push would never push again, and its pull skips
/// its own id: the other copy's writes under that id were left behind for good.
/// Its pull now tells it, as a push does, and after `dimple fork` it applies them.
#[test]
fn a_copy_with_nothing_to_push_learns_at_its_next_pull_that_another_device_writes_under_its_id() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (_a, copy) = pushed_then_copied(&g, &store)?;
    let old_id = copy.id().to_owned();
    drop(copy);
    let bin = env!("CARGO_BIN_EXE_dimple");
    let db = g.db("copy");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).arg(&db).output().unwrap();
    for command in ["pull", "sync"] {
        let out = run(&[command]);
        assert_eq!(out.status.code(), Some(4), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("dimple fork") && err.lines().count() == 1, "{err}");
    }
    let out = run(&["fork", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((report["old_replica"].as_str(), report["kept"].as_u64()), (Some(old_id.as_str()), Some(0)));
    let out = run(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut copy = g.reopen("copy");
    let a = g.reopen("a");
    assert_eq!(rows(copy.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(copy.conn(), "t").len(), 2, "the row the other copy wrote after the copy is here");
    assert_eq!(dimple::verify::check(&mut copy)?, vec![]);
    Ok(())
}

/// A write the copy made before the other copy's write of the same column keeps
/// its place in time through `dimple fork`: the later write wins everywhere, as it
/// would have if the database had never been copied.
#[test]
fn a_forked_write_keeps_its_place_in_time_against_the_other_copys_later_write() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut a, mut copy) = pushed_then_copied(&g, &store)?;
    g.clock.advance(5);
    copy.conn().execute("UPDATE t SET a = 2, b = 'copy' WHERE id = 'k'", [])?;
    copy.capture()?;
    g.clock.advance(5);
    a.conn().execute("UPDATE t SET a = 5 WHERE id = 'k'", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    g.clock.advance(5);
    let err = block_on(dimple::sync(&mut copy, &store)).unwrap_err();
    assert!(matches!(err, dimple::Error::ReplicaConflict(_)), "{err}");
    let (mut copy, report) = dimple::fork::fork(copy, None)?;
    assert_eq!((report.kept, report.superseded), (2, 0), "k.a and k.b: the copy has not seen a's k.a");
    for _ in 0..2 {
        for r in [&mut copy, &mut a] {
            block_on(dimple::sync(r, &store))?;
        }
    }
    let k = |r: &Replica| -> (i64, String) {
        r.conn().query_row("SELECT a, b FROM t WHERE id = 'k'", [], |row| Ok((row.get(0)?, row.get(1)?))).unwrap()
    };
    assert_eq!(k(&a), (5, "copy".to_owned()), "a's later k.a, the copy's k.b");
    assert_eq!(k(&copy), k(&a));
    for r in [&mut a, &mut copy] {
        assert_eq!(dimple::verify::check(r)?, vec![]);
    }
    Ok(())
}

/// The head this replica last wrote, put back with a new ETag (a bucket restored
/// from a backup, an object copied back by hand), is still its own: pulls go on.
#[test]
fn a_pull_that_finds_its_own_last_head_rewritten_goes_on() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    let mut b = g.replica("b");
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut a, &store))?;
    let head = format!("replicas/{}/LATEST.json", a.id());
    let (bytes, etag) = match block_on(store.get(&head, None))? {
        dimple::store::Got::Found { bytes, etag } => (bytes, etag),
        other => panic!("no head: {other:?}"),
    };
    assert_ne!(block_on(store.put(&head, bytes, dimple::store::PutMode::Overwrite))?, etag);
    b.conn().execute("INSERT INTO t VALUES ('from-b', 2, 'y', 0.5)", [])?;
    block_on(dimple::push(&mut b, &store))?;
    block_on(dimple::pull(&mut a, &store))?;
    assert_eq!(rows(a.conn(), "t").len(), 2);
    a.conn().execute("UPDATE t SET a = 3 WHERE id = 'k'", [])?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(a.conn(), "t"), rows(b.conn(), "t"));
    Ok(())
}

fn copied_database_is_detected(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "copied") else { return Ok(()) };
    let store = g.store();
    let (a, mut copy) = pushed_then_copied(&g, &store)?;
    g.clock.advance(5);
    copy.conn().execute("INSERT INTO t VALUES ('from-copy', 1, 'x', 0.5)", [])?;
    let err = block_on(dimple::push(&mut copy, &store)).unwrap_err();
    assert_eq!(err.kind(), dimple::ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("in use by another device"), "{err}");
    // The original's history is intact for readers.
    let mut reader = g.replica("reader");
    block_on(dimple::pull(&mut reader, &store))?;
    assert_eq!(rows(reader.conn(), "t"), rows(a.conn(), "t"));
    Ok(())
}

#[test]
fn a_cli_sync_killed_at_random_moments_then_rerun_delivers_everything_once() -> TestResult {
    let g = Group::new();
    let a = g.replica("a");
    a.conn().execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 24999)
         INSERT INTO t SELECT printf('k%05d', i), i, 'x', 0.5 FROM n",
    )?;
    drop(a);
    let bin = env!("CARGO_BIN_EXE_dimple");
    for delay_ms in [20u64, 300, 1200, 2500] {
        let mut child = std::process::Command::new(bin)
            .args(["sync", g.db("a").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(delay_ms)); // the kill moment, not a wait
        let _ = child.kill();
        child.wait()?;
    }
    let out = std::process::Command::new(bin).args(["sync", g.db("a").to_str().unwrap()]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = g.reopen("a");
    assert_eq!(a.unpushed()?, 0);
    let mut reader = g.replica("reader");
    assert_delivered_once(&g, &a, &mut reader);
    Ok(())
}

/// Issue 9: the copy that loses the replica-id conflict is told to run `dimple fork`,
/// which keeps and pushes its unpushed writes as a new replica; a write that a newer
/// change already replaced stays replaced. Afterwards every replica holds the same
/// rows: the original's writes, the copy's writes, the newer change.
#[test]
fn the_copy_that_loses_the_id_conflict_forks_and_keeps_its_unpushed_writes() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut other = g.replica("other");
    let (mut a, mut copy) = pushed_then_copied(&g, &store)?;
    let old_id = copy.id().to_owned();
    g.clock.advance(5);
    copy.conn()
        .execute_batch("INSERT INTO t VALUES ('from-copy', 7, 'y', 0.25); UPDATE t SET a = 2 WHERE id = 'k';")?;
    copy.capture()?;
    g.clock.advance(5);
    // A newer write of k.a elsewhere, pulled by the copy: its own k.a is replaced.
    block_on(dimple::sync(&mut other, &store))?;
    other.conn().execute("UPDATE t SET a = 9 WHERE id = 'k'", [])?;
    block_on(dimple::sync(&mut other, &store))?;
    drop(copy);

    let bin = env!("CARGO_BIN_EXE_dimple");
    let db = g.db("copy");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).arg(&db).output().unwrap();
    let out = run(&["sync"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dimple fork") && err.lines().count() == 1, "{err}");
    let out = run(&["fork", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["old_replica"], old_id.as_str());
    assert_eq!(report["kept"], 4, "the inserted row: its marker and three columns");
    assert_eq!(report["superseded"], 1, "k.a = 2, replaced by the newer k.a = 9");
    let out = run(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut copy = g.reopen("copy");
    assert_ne!(copy.id(), old_id);
    assert!(dimple::status::status(&copy)?.problems.is_empty());
    for _ in 0..2 {
        for r in [&mut a, &mut other, &mut copy] {
            block_on(dimple::sync(r, &store))?;
        }
    }
    let want = rows(a.conn(), "t");
    let ids: Vec<String> = want.iter().map(|r| format!("{:?}={:?}", r[0], r[1])).collect();
    assert_eq!(ids, vec![r#"Text("from-a")=Integer(1)"#, r#"Text("from-copy")=Integer(7)"#, r#"Text("k")=Integer(9)"#]);
    assert_eq!(rows(copy.conn(), "t"), want);
    assert_eq!(rows(other.conn(), "t"), want);
    let mut reader = g.replica("reader");
    block_on(dimple::pull(&mut reader, &store))?;
    assert_eq!(rows(reader.conn(), "t"), want);
    for r in [&mut a, &mut copy, &mut reader] {
        assert_eq!(dimple::verify::check(r)?, vec![]);
    }
    Ok(())
}

/// Two copies of one database share a clock and a replica id: snapshots both
/// write before either pushes again still get two names, so the second
/// compaction is not refused by the first one's snapshot under its name.
#[test]
fn two_copies_compacting_at_one_moment_name_their_snapshots_apart() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut a, &store))?;
    drop(a);
    copy_database(&g, "a", "copy");
    let (mut a, mut copy) = (g.reopen("a"), g.reopen("copy"));
    let first = block_on(dimple::snapshot::compact_with(&mut a, &store, std::time::Duration::ZERO, false))?;
    g.clock.advance(10);
    let second = block_on(dimple::snapshot::compact_with(&mut copy, &store, std::time::Duration::ZERO, false))?;
    assert_ne!(first.snapshot_id, second.snapshot_id);
    Ok(())
}

/// A snapshot published under our id may be a copy's of this database, which
/// applied authors this copy never saw and let their batches be pruned: a
/// compaction here takes what it covers first, as it would from any member's,
/// so its own snapshot covers no less and a new member still gets every write.
#[test]
fn a_copy_compacting_after_the_other_copy_pruned_takes_what_its_snapshot_covers() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut writer, mut a) = (g.replica("writer"), g.replica("a"));
    block_on(dimple::push(&mut a, &store))?;
    drop(a);
    copy_database(&g, "a", "copy");
    let (mut a, mut copy) = (g.reopen("a"), g.reopen("copy"));
    writer.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut writer, &store))?;
    g.clock.advance(10);
    block_on(dimple::sync(&mut a, &store))?;
    let first = block_on(dimple::snapshot::compact_with(&mut a, &store, std::time::Duration::ZERO, true))?;
    let writers = format!("batches/{}/", writer.id());
    assert!(first.pruned_batches.iter().any(|k| k.starts_with(&writers)), "{first:?}");
    g.clock.advance(10);
    let second = block_on(dimple::snapshot::compact_with(&mut copy, &store, std::time::Duration::ZERO, true))?;
    assert!(second.published);
    assert_eq!(second.caught_up, vec![writer.id().to_owned()]);
    assert_eq!(rows(copy.conn(), "t"), rows(writer.conn(), "t"));
    let (newcomer, _) = block_on(dimple::clone::clone(
        &g.bucket_url(),
        &g.db("newcomer"),
        Some("newcomer"),
        g.opts(),
        &store,
        &|_| {},
    ))?;
    assert_eq!(rows(newcomer.conn(), "t"), rows(writer.conn(), "t"), "a new member gets every write");
    Ok(())
}

/// Copies of one database publish their schema under one id, each counting its
/// own versions: a publish never goes below the version in the bucket, which
/// every reader would refuse as a replay.
#[test]
fn a_copy_publishing_its_schema_never_goes_below_the_version_the_other_copy_published() -> TestResult {
    let g = Group::new();
    let store = g.store();
    drop(g.replica("a"));
    copy_database(&g, "a", "copy");
    let (mut a, mut copy) = (g.reopen("a"), g.reopen("copy"));
    let mut reader = g.replica("reader");
    block_on(dimple::push(&mut copy, &store))?;
    copy.conn().execute_batch("ALTER TABLE t ADD COLUMN d")?;
    block_on(dimple::push(&mut copy, &store))?;
    let first = block_on(dimple::sync(&mut reader, &store))?;
    assert!(first.pull.problems.is_empty(), "{:?}", first.pull.problems);
    block_on(dimple::push(&mut a, &store))?;
    let then = block_on(dimple::sync(&mut reader, &store))?;
    assert!(then.pull.problems.is_empty(), "{:?}", then.pull.problems);
    Ok(())
}

/// A clone of a bucket whose first batches were pruned under a snapshot, cut
/// short at store call `n` (an error, or the process killed), then run again
/// as the user would: the second run takes up the first (or starts, if the
/// first created nothing) and ends equal to the source, with no problem, and
/// the clone then syncs as any member. Returns whether the fault was met.
fn clone_with_fault_at(n: u64, fault: Fault, encrypted: bool) -> bool {
    const PASS: &str = "the group's passphrase";
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    if encrypted {
        block_on(dimple::group::create(&mut a, &store, Some(PASS))).unwrap();
    }
    for i in 0..4 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'x', 0.5)", rusqlite::params![format!("k{i}"), i]).unwrap();
        block_on(dimple::sync(&mut a, &store)).unwrap();
        g.clock.advance(2);
        if i == 1 {
            block_on(dimple::snapshot::compact_with(&mut a, &store, std::time::Duration::ZERO, true)).unwrap();
        }
    }
    let keys = || encrypted.then(|| block_on(dimple::group::unlock(&store, PASS)).unwrap());
    let (url, db) = (g.bucket_url(), g.db("d"));
    let (faulty, plan) = Faulty::new(g.raw_store());
    plan.fail_nth(n, fault);
    let faulty = dimple::store::Metered::new(Box::new(faulty) as Box<dyn dimple::store::Store>);
    let first = run_or_die(clone_into(url.clone(), db.clone(), "d".into(), g.opts(), &faulty, keys()), &plan);
    let injected = plan.calls() > n;
    match &first {
        Some(Ok(_)) => assert!(!injected || fault == Fault::AfterEffect, "{fault:?} at {n}"),
        Some(Err(e)) => assert!(injected && e.to_string().contains("injected"), "{fault:?} at {n}: {e}"),
        None => assert!(injected),
    }
    let finished = matches!(first, Some(Ok(_)));
    drop(first);
    if finished {
        return injected;
    }
    let existed = db.exists();
    let (mut d, report) = block_on(clone_into(url, db, "d".into(), g.opts(), &store, keys()))
        .unwrap_or_else(|e| panic!("{fault:?} at {n}, run again: {e}"));
    assert_eq!(report.resumed, existed, "{fault:?} at {n}: the first run's database is taken up");
    assert!(report.pull.problems.is_empty(), "{fault:?} at {n}: {:?}", report.pull.problems);
    assert_eq!(rows(d.conn(), "t"), rows(a.conn(), "t"), "{fault:?} at {n}");
    assert!(dimple::verify::check(&mut d).unwrap().is_empty(), "{fault:?} at {n}");
    d.conn().execute("INSERT INTO t VALUES ('from-d', 9, 'd', 1.5)", []).unwrap();
    block_on(dimple::sync(&mut d, &store)).unwrap();
    let back = block_on(dimple::sync(&mut a, &store)).unwrap();
    assert!(back.pull.problems.is_empty(), "{fault:?} at {n}: {:?}", back.pull.problems);
    assert_eq!(rows(a.conn(), "t"), rows(d.conn(), "t"), "{fault:?} at {n}");
    injected
}

/// `dimple clone` of `url` into `db`, owning what it borrows, so that a test
/// can drop it midway (see [`run_or_die`]).
pub async fn clone_into(
    url: String,
    db: std::path::PathBuf,
    name: String,
    opts: Options,
    store: &dyn dimple::store::Store,
    keys: Option<dimple::seal::Keyring>,
) -> dimple::Result<(Replica, dimple::clone::CloneReport)> {
    dimple::clone::clone_with_keys(&url, &db, Some(&name), opts, store, &|_| {}, keys).await
}

fn clone_faults(encrypted: bool) {
    for fault in [Fault::Unavailable, Fault::AfterEffect, Fault::Hang] {
        let mut n = 0;
        while clone_with_fault_at(n, fault, encrypted) {
            n += 1;
        }
        assert!(n >= 8, "{fault:?}: only {n} calls were tried");
    }
}

/// An interrupted clone is taken up only from the bucket it was cloning.
#[test]
fn an_interrupted_clone_is_taken_up_only_from_its_own_bucket() {
    let (g, other) = (Group::new(), Group::new());
    let mut a = g.replica("a");
    block_on(dimple::push(&mut a, &g.store())).unwrap();
    let (faulty, plan) = Faulty::new(g.raw_store());
    plan.fail_nth(3, Fault::Unavailable);
    let faulty = dimple::store::Metered::new(Box::new(faulty) as Box<dyn dimple::store::Store>);
    let db = g.db("d");
    assert!(block_on(clone_into(g.bucket_url(), db.clone(), "d".into(), g.opts(), &faulty, None)).is_err());
    let Err(err) = block_on(clone_into(other.bucket_url(), db.clone(), "d".into(), g.opts(), &other.store(), None))
    else {
        panic!("an interrupted clone was taken up from another bucket")
    };
    assert!(err.to_string().contains("is an interrupted clone of"), "{err}");
    let (_, report) = block_on(clone_into(g.bucket_url(), db, "d".into(), g.opts(), &g.store(), None)).unwrap();
    assert!(report.resumed);
}

/// `status` says a clone was cut short until something finishes it; a sync
/// does, as well as the clone run again.
#[test]
fn an_interrupted_clone_shows_in_status_until_a_sync_finishes_it() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut a, &g.store()))?;
    let (faulty, plan) = Faulty::new(g.raw_store());
    plan.fail_nth(3, Fault::Unavailable);
    let faulty = dimple::store::Metered::new(Box::new(faulty) as Box<dyn dimple::store::Store>);
    assert!(block_on(clone_into(g.bucket_url(), g.db("d"), "d".into(), g.opts(), &faulty, None)).is_err());
    let mut d = g.reopen("d");
    assert!(dimple::status::status(&d)?.clone_unfinished);
    let synced = block_on(dimple::sync(&mut d, &g.store()))?;
    assert!(synced.pull.problems.is_empty(), "{:?}", synced.pull.problems);
    assert_eq!(rows(d.conn(), "t"), rows(a.conn(), "t"));
    assert!(!dimple::status::status(&d)?.clone_unfinished);
    drop(d);
    let again = block_on(clone_into(g.bucket_url(), g.db("d"), "d".into(), g.opts(), &g.store(), None));
    assert!(again.is_err(), "a finished replica is not cloned into again");
    Ok(())
}

#[test]
fn a_clone_cut_short_at_any_store_call_is_finished_by_running_it_again() {
    clone_faults(false);
}

#[test]
fn an_encrypted_clone_cut_short_at_any_store_call_is_finished_by_running_it_again() {
    clone_faults(true);
}
