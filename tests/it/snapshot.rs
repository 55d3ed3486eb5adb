//! Compaction and clone (SPEC 8): a clone equals its source with or without a
//! snapshot, downloads only the batches after the snapshot, and compaction is safe
//! while other replicas push.

use crate::support::*;
use dimple::clone::clone;
use dimple::store::Store;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn write(r: &mut dimple::Replica, key: &str, a: i64) {
    r.conn()
        .execute(
            "INSERT INTO t VALUES (?1, ?2, 'x', 0.5) ON CONFLICT(id) DO UPDATE SET a = excluded.a",
            rusqlite::params![key, a],
        )
        .unwrap();
}

fn clone_into(
    g: &Group,
    name: &str,
    store: &dyn Store,
) -> Result<(dimple::Replica, dimple::clone::CloneReport), dimple::Error> {
    block_on(clone(&g.bucket_url(), &g.db(name), Some(name), g.opts(), store, &|_| {}))
}

/// Two replicas that each pushed five batches; `a` has pulled everything.
fn two_writers(
    g: &Group,
    store: &dimple::store::Metered<dyn Store>,
) -> Result<(dimple::Replica, dimple::Replica), dimple::Error> {
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    for i in 0..5 {
        write(&mut a, &format!("a{i}"), i);
        write(&mut b, &format!("b{i}"), i);
        block_on(dimple::sync(&mut a, store))?;
        block_on(dimple::sync(&mut b, store))?;
    }
    block_on(dimple::sync(&mut a, store))?;
    Ok((a, b))
}

#[test]
fn a_clone_without_a_snapshot_replays_every_batch_and_equals_the_source() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (a, _b) = two_writers(&g, &store)?;
    // The schema comes from the database the clone is made in.
    open_plain(&g.db("c")).execute_batch(TABLE_SQL)?;
    let (c, report) = clone_into(&g, "c", &store)?;
    assert_eq!(report.snapshot, None);
    assert_eq!(report.tracked, vec!["t".to_owned()]);
    assert_eq!(report.pull.batches, 10);
    assert_eq!(rows(c.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(c.conn(), "t").len(), 10);
    assert_ne!(c.id(), a.id());
    Ok(())
}

#[test]
fn a_clone_from_a_snapshot_equals_the_source_and_pulls_only_the_tail() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut a, mut b) = two_writers(&g, &store)?;
    let snap = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    assert!(snap.published);
    assert_eq!(snap.rows, 10);
    // After the snapshot: one more batch from b, one delete from a.
    write(&mut b, "b0", 100);
    block_on(dimple::push(&mut b, &store))?;
    a.conn().execute("DELETE FROM t WHERE id = 'a1'", [])?;
    block_on(dimple::push(&mut a, &store))?;
    let (mut c, report) = clone_into(&g, "c", &store)?;
    assert_eq!(report.snapshot.as_deref(), Some(snap.snapshot_id.as_str()));
    assert_eq!(report.pull.batches, 2, "only the tail: {:?}", report.pull);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    block_on(dimple::sync(&mut a, &store))?;
    assert_eq!(rows(c.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(c.conn(), "t"), model_of_log(a.conn(), &["a", "b", "c"]));
    // The clone is a full member: its writes reach the others, theirs reach it.
    write(&mut c, "c0", 7);
    block_on(dimple::sync(&mut c, &store))?;
    write(&mut b, "b9", 9);
    block_on(dimple::sync(&mut b, &store))?;
    block_on(dimple::sync(&mut a, &store))?;
    block_on(dimple::sync(&mut c, &store))?;
    assert_eq!(rows(c.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(dimple::verify::check(&mut c)?, vec![]);
    Ok(())
}

#[test]
fn compaction_while_another_replica_pushes_loses_nothing() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    std::thread::scope(|s| {
        s.spawn(|| {
            let store = g.store();
            for i in 0..30 {
                write(&mut b, &format!("b{i}"), i);
                block_on(dimple::push(&mut b, &store)).unwrap();
            }
        });
        let store = g.store();
        for _ in 0..6 {
            block_on(dimple::sync(&mut a, &store)).unwrap();
            block_on(dimple::snapshot::compact(&mut a, &store, WEEK)).unwrap();
        }
    });
    let store = g.store();
    let (mut c, report) = clone_into(&g, "c", &store)?;
    assert!(report.snapshot.is_some());
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    block_on(dimple::sync(&mut c, &store))?;
    assert_eq!(rows(c.conn(), "t"), rows(b.conn(), "t"));
    assert_eq!(rows(c.conn(), "t").len(), 30);
    Ok(())
}

#[test]
fn superseded_snapshots_are_deleted_after_the_grace_period_but_never_the_latest() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    write(&mut a, "k", 1);
    block_on(dimple::sync(&mut a, &store))?;
    let first = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    let second = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    assert!(second.deleted.is_empty(), "within the grace period");
    g.clock.advance(8 * 24 * 3600 * 1000);
    let third = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    assert_eq!(third.deleted, vec![first.key.clone(), second.key.clone()]);
    let left: Vec<String> =
        block_on(dimple::store::list_all(&store, "snapshots/", None))?.into_iter().map(|m| m.key).collect();
    assert_eq!(left, vec![third.key.clone(), "snapshots/LATEST.json".to_owned()]);
    Ok(())
}

#[test]
fn a_snapshot_that_does_not_match_its_pointer_is_refused() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    write(&mut a, "k", 1);
    block_on(dimple::sync(&mut a, &store))?;
    let snap = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    let path = g.bucket().join(&snap.key);
    let mut bytes = std::fs::read(&path)?;
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&path, bytes)?;
    let Err(err) = clone_into(&g, "c", &store) else { panic!("a tampered snapshot was accepted") };
    assert_eq!(err.kind(), dimple::ErrorKind::Data, "{err}");
    Ok(())
}

/// Replica "a" of `g` writes, syncs and compacts: the pointer's path and the
/// pointer.
fn compacted(
    g: &Group,
    store: &dimple::store::Metered<dyn dimple::store::Store>,
) -> Result<(std::path::PathBuf, dimple::snapshot::Pointer), Box<dyn std::error::Error>> {
    let mut a = g.replica("a");
    write(&mut a, "k", 1);
    block_on(dimple::sync(&mut a, store))?;
    block_on(dimple::snapshot::compact(&mut a, store, WEEK))?;
    let pointer_path = g.bucket().join(dimple::layout::snapshot_pointer_key());
    let pointer = serde_json::from_slice(&std::fs::read(&pointer_path)?)?;
    Ok((pointer_path, pointer))
}

/// Someone who can write to the bucket replaces the snapshot and re-points
/// LATEST.json at it, signed with a key of their own (the only key they have).
#[test]
fn a_snapshot_pointer_not_signed_by_its_source_replica_is_refused() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (pointer_path, pointer) = compacted(&g, &store)?;
    let stranger = dimple::trust::generate(&g.dir.path().join("stranger.key"))?;
    let forged = dimple::snapshot::Pointer { public_key: dimple::trust::public_b64(&stranger), ..pointer.clone() }
        .sign(&stranger);
    std::fs::write(&pointer_path, serde_json::to_vec(&forged)?)?;
    let Err(err) = clone_into(&g, "c", &store) else { panic!("a forged snapshot pointer was accepted") };
    assert_eq!(err.kind(), dimple::ErrorKind::Data, "{err}");
    assert!(err.to_string().contains("not its source replica"), "{err}");
    // A pointer whose signature does not cover its fields is refused too.
    let tampered = dimple::snapshot::Pointer { size: pointer.size + 1, ..pointer };
    std::fs::write(&pointer_path, serde_json::to_vec(&tampered)?)?;
    let Err(err) = clone_into(&g, "d", &store) else { panic!("a tampered snapshot pointer was accepted") };
    assert!(err.to_string().contains("signature"), "{err}");
    Ok(())
}

/// A snapshot of a format newer than this build's is refused by its number
/// before anything of it is read, not misread (a build before format 3 says the
/// same of format 3).
#[test]
fn a_snapshot_pointer_of_a_newer_format_is_refused_by_its_number() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (pointer_path, pointer) = compacted(&g, &store)?;
    assert_eq!(pointer.format, dimple::snapshot::SNAPSHOT_FORMAT);
    let newer = dimple::snapshot::Pointer { format: pointer.format + 1, ..pointer };
    std::fs::write(&pointer_path, serde_json::to_vec(&newer)?)?;
    let Err(err) = clone_into(&g, "c", &store) else { panic!("a newer snapshot format was accepted") };
    assert_eq!(err.kind(), dimple::ErrorKind::Data, "{err}");
    let expected = format!("unknown snapshot format {}", newer.format);
    assert!(err.to_string().contains(&expected), "{err}");
    Ok(())
}

#[test]
fn compact_and_clone_work_from_the_command_line() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    write(&mut a, "k1", 1);
    block_on(dimple::sync(&mut a, &store))?;
    let bin = env!("CARGO_BIN_EXE_dimple");
    let out = std::process::Command::new(bin).args(["compact", g.db("a").to_str().unwrap(), "--json"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    write(&mut a, "k2", 2);
    block_on(dimple::sync(&mut a, &store))?;
    let out = std::process::Command::new(bin)
        .args(["clone", &g.bucket_url(), g.db("c").to_str().unwrap(), "--name", "c", "--json"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["clone"]["pull"]["batches"], 1);
    assert_eq!(rows(g.reopen("c").conn(), "t"), rows(a.conn(), "t"));
    let out = std::process::Command::new(bin).args(["clone", &g.bucket_url(), g.db("c").to_str().unwrap()]).output()?;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    Ok(())
}

/// A clone's clock moves past every id its snapshot holds, as it does past
/// every id it pulls: a write made on the clone after it was cloned wins over
/// the snapshot's, even from a device whose clock is an hour behind the one
/// that wrote them.
#[test]
fn a_write_on_a_clone_wins_over_everything_its_snapshot_holds() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let behind = dimple::clock::Clock::now_ms(&g.clock);
    g.clock.set(behind + 3_600_000);
    let mut a = g.replica("a");
    write(&mut a, "k", 1);
    block_on(dimple::sync(&mut a, &store))?;
    let snap = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    assert!(snap.published);
    g.clock.set(behind);
    let (mut c, report) = clone_into(&g, "c", &store)?;
    assert_eq!(report.snapshot.as_deref(), Some(snap.snapshot_id.as_str()));
    assert_eq!(report.pull.batches, 0, "everything came from the snapshot");
    // The row's insert, one change per cell: its winners are all a snapshot keeps.
    assert_eq!(report.snapshot_changes, dimple::log::count(c.conn())? as u64);
    assert_eq!(report.snapshot_changes, 4);
    write(&mut c, "k", 2);
    block_on(dimple::sync(&mut c, &store))?;
    block_on(dimple::sync(&mut a, &store))?;
    let a_of = |r: &dimple::Replica| -> i64 {
        r.conn().query_row("SELECT a FROM t WHERE id = 'k'", [], |r| r.get(0)).unwrap()
    };
    assert_eq!((a_of(&c), a_of(&a)), (2, 2), "the clone's write is the newest");
    Ok(())
}

/// A snapshot is named by an id of the replica's clock: the id is kept before
/// it names anything, so a replica opened again on a clock that has not moved
/// (or was set back) never names a second snapshot like the first.
#[test]
fn a_replica_opened_again_on_a_clock_set_back_names_its_next_snapshot_anew() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    write(&mut a, "k", 1);
    block_on(dimple::sync(&mut a, &store))?;
    let first = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    drop(a);
    g.clock.set(dimple::clock::Clock::now_ms(&g.clock) - 1_000);
    let mut a = g.reopen("a");
    let second = block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    assert!(second.snapshot_id > first.snapshot_id, "{} after {}", second.snapshot_id, first.snapshot_id);
    assert!(second.published);
    Ok(())
}

/// A store in which another compactor's pointer lands between a compaction's
/// check of the published snapshot and its own publication: the second read of
/// `LATEST.json` finds `lands` there.
struct Overtaken {
    inner: Box<dyn Store>,
    reads: std::sync::atomic::AtomicUsize,
    lands: Vec<u8>,
}

#[async_trait::async_trait]
impl Store for Overtaken {
    async fn list_page(
        &self,
        p: &str,
        a: Option<&str>,
    ) -> dimple::store::StoreResult<(Vec<dimple::store::ObjectMeta>, bool)> {
        self.inner.list_page(p, a).await
    }
    async fn get(&self, k: &str, i: Option<&str>) -> dimple::store::StoreResult<dimple::store::Got> {
        if k == "snapshots/LATEST.json" && self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.inner.put(k, self.lands.clone(), dimple::store::PutMode::Overwrite).await?;
        }
        self.inner.get(k, i).await
    }
    async fn put(&self, k: &str, b: Vec<u8>, m: dimple::store::PutMode) -> dimple::store::StoreResult<String> {
        self.inner.put(k, b, m).await
    }
    async fn delete(&self, k: &str) -> dimple::store::StoreResult<()> {
        self.inner.delete(k).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Two compactors: `c` published a snapshot covering more after `a` checked the
/// one it replaces, but with an older id (it started first). `a` leaves c's in
/// place rather than publish one that may cover less.
#[test]
fn a_compaction_overtaken_after_its_check_leaves_the_other_snapshot_published() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let pointer = || dimple::store::get_bytes(&store, "snapshots/LATEST.json");
    let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
    write(&mut b, "b0", 0);
    block_on(dimple::sync(&mut b, &store))?;
    for r in [&mut a, &mut c] {
        block_on(dimple::sync(r, &store))?;
    }
    block_on(dimple::snapshot::compact(&mut a, &store, WEEK))?;
    let checked = block_on(pointer())?.0;
    write(&mut b, "b1", 1);
    block_on(dimple::sync(&mut b, &store))?;
    block_on(dimple::sync(&mut c, &store))?;
    g.clock.advance(5);
    let ahead = block_on(dimple::snapshot::compact(&mut c, &store, WEEK))?;
    let lands = block_on(pointer())?.0;
    block_on(store.put("snapshots/LATEST.json", checked, dimple::store::PutMode::Overwrite))?;
    g.clock.advance(5);
    let overtaken = Overtaken { inner: g.raw_store(), reads: Default::default(), lands };
    let report = block_on(dimple::snapshot::compact(&mut a, &overtaken, WEEK))?;
    assert!(!report.published, "published over a snapshot it never checked");
    assert!(report.snapshot_id > ahead.snapshot_id, "the id alone would have let it publish");
    let now = dimple::snapshot::Pointer::parse(&block_on(pointer())?.0, "LATEST.json")?;
    assert_eq!(now.snapshot_id, ahead.snapshot_id);
    Ok(())
}

/// A snapshot speaks for its source up to the cursor it states. A write of the
/// source's own that no batch carries would reach the clones made from it
/// alone, and the rest of the group never, if the source stopped before it
/// pushed (a lost laptop): compaction pushes first.
#[test]
fn a_snapshot_holds_no_write_of_its_source_that_no_batch_carries() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = g.replica("a");
    let mut b = g.replica("b");
    write(&mut a, "pushed", 1);
    block_on(dimple::sync(&mut a, &store))?;
    write(&mut a, "captured", 2);
    a.capture()?;
    block_on(dimple::snapshot::compact(&mut a, &store, Duration::ZERO))?;
    drop(a);
    let (c, _) = block_on(clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &store, &|_| {}))?;
    block_on(dimple::sync(&mut b, &store))?;
    assert_eq!(rows(b.conn(), "t").len(), 2, "the write the snapshot holds is in a batch too");
    assert_eq!(rows(c.conn(), "t"), rows(b.conn(), "t"));
    Ok(())
}

/// A store in which the app writes a row (`INSERT ... ('late', ...)`) while the
/// first head is written, that is during a push.
struct WritesDuringPush {
    inner: Box<dyn Store>,
    db: std::path::PathBuf,
    written: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for WritesDuringPush {
    async fn list_page(
        &self,
        p: &str,
        a: Option<&str>,
    ) -> dimple::store::StoreResult<(Vec<dimple::store::ObjectMeta>, bool)> {
        self.inner.list_page(p, a).await
    }
    async fn get(&self, k: &str, i: Option<&str>) -> dimple::store::StoreResult<dimple::store::Got> {
        self.inner.get(k, i).await
    }
    async fn put(&self, k: &str, b: Vec<u8>, m: dimple::store::PutMode) -> dimple::store::StoreResult<String> {
        let put = self.inner.put(k, b, m).await;
        if k.starts_with("replicas/") && k.ends_with("/LATEST.json") && !self.written.swap(true, Ordering::SeqCst) {
            let app = open_plain(&self.db);
            app.execute("INSERT INTO t VALUES ('late', 3, 'z', 0.5)", []).unwrap();
        }
        put
    }
    async fn delete(&self, k: &str) -> dimple::store::StoreResult<()> {
        self.inner.delete(k).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The app writes while the compaction pushes: the snapshot is taken only once
/// a push carried that write too.
#[test]
fn a_write_made_while_a_compaction_pushes_is_in_a_batch_before_it_is_in_the_snapshot() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut b = g.replica("b");
    write(&mut a, "captured", 2);
    let store = WritesDuringPush { inner: g.raw_store(), db: g.db("a"), written: Default::default() };
    let report = block_on(dimple::snapshot::compact(&mut a, &store, Duration::ZERO))?;
    assert!(store.written.load(Ordering::SeqCst) && report.published);
    drop(a);
    let (c, _) = block_on(clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &g.store(), &|_| {}))?;
    block_on(dimple::sync(&mut b, &g.store()))?;
    let keys: Vec<String> = rows(b.conn(), "t").iter().map(|r| format!("{:?}", r[0])).collect();
    assert_eq!(keys, vec![r#"Text("captured")"#, r#"Text("late")"#]);
    assert_eq!(rows(c.conn(), "t"), rows(b.conn(), "t"));
    Ok(())
}
