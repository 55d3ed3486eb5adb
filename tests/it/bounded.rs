//! A bucket that stops growing: `compact --prune` deletes the batches the new
//! snapshot covers (after a grace period), and a replica behind them catches up
//! from the snapshot by itself, losing nothing (docs/bootstrap.md).

use crate::support::*;
use dimple::Replica;
use std::time::Duration;

fn sync(g: &Group, r: &mut Replica) -> dimple::SyncReport {
    let report = block_on(dimple::sync(r, &g.store())).unwrap();
    g.clock.advance(3);
    report
}

fn batches(g: &Group) -> usize {
    let dir = g.bucket().join("batches");
    std::fs::read_dir(&dir).map(|d| d.map(|e| std::fs::read_dir(e.unwrap().path()).unwrap().count()).sum()).unwrap_or(0)
}

fn compact_and_prune(g: &Group, r: &mut Replica, grace: Duration) -> dimple::snapshot::CompactReport {
    block_on(dimple::snapshot::compact_with(r, &g.store(), grace, true)).unwrap()
}

#[test]
fn a_replica_behind_pruned_batches_catches_up_from_the_snapshot_and_keeps_its_writes() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    for i in 0..3 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'x', 0.5)", rusqlite::params![format!("early{i}"), i])?;
        sync(&g, &mut a);
    }
    sync(&g, &mut b);
    // b goes offline with a write of its own; a goes on, then compacts and prunes.
    b.conn().execute("INSERT INTO t VALUES ('from-b', 7, 'offline', 1.5)", [])?;
    b.conn().execute("UPDATE t SET b = 'b was here' WHERE id = 'early0'", [])?;
    b.capture()?;
    for i in 0..5 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'y', 0.5)", rusqlite::params![format!("later{i}"), i])?;
        a.conn().execute("UPDATE t SET a = a + 100 WHERE id = 'early1'", [])?;
        sync(&g, &mut a);
    }
    let report = compact_and_prune(&g, &mut a, Duration::ZERO);
    assert_eq!(report.pruned_batches.len(), 8, "every batch a pushed is covered: {:?}", report.pruned_batches);
    assert_eq!(batches(&g), 0);
    // More after the snapshot: b needs these from the chain.
    a.conn().execute("INSERT INTO t VALUES ('after-snapshot', 1, 'z', 0.5)", [])?;
    sync(&g, &mut a);
    let back = sync(&g, &mut b);
    assert!(back.pull.problems.is_empty(), "{:?}", back.pull.problems);
    assert_eq!(back.pull.caught_up, vec![a.id().to_owned()]);
    sync(&g, &mut a);
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"), "b caught up and a got b's writes");
    let early0_b: String = a.conn().query_row("SELECT b FROM t WHERE id = 'early0'", [], |r| r.get(0))?;
    assert_eq!(early0_b, "b was here", "the offline write kept its place in last-writer-wins");
    assert!(dimple::verify::check(&mut b)?.is_empty());
    Ok(())
}

#[test]
fn batches_younger_than_the_grace_period_are_kept() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    a.conn().execute("INSERT INTO t VALUES ('k', 1, 'x', 0.5)", [])?;
    sync(&g, &mut a);
    let report = compact_and_prune(&g, &mut a, Duration::from_secs(7 * 86_400));
    assert!(report.pruned_batches.is_empty());
    assert_eq!(batches(&g), 1);
    g.clock.advance(8 * 86_400_000);
    let report = compact_and_prune(&g, &mut a, Duration::from_secs(7 * 86_400));
    assert_eq!(report.pruned_batches.len(), 1);
    Ok(())
}

/// 20 rounds of updates over a few rows, compaction every 5 rounds: the bucket
/// holds the newest snapshot and the batches after it, not the whole history, and
/// both a fresh clone and a replica last synced long ago end up equal.
#[test]
fn compaction_with_pruning_keeps_the_bucket_bounded() -> TestResult {
    let g = Group::new();
    let (mut a, mut w2) = (g.replica("a"), g.replica("w2"));
    let mut old = g.replica("old");
    for i in 0..10 {
        a.conn().execute("INSERT INTO t VALUES (?1, 0, 'x', 0.5)", [format!("k{i}")])?;
    }
    sync(&g, &mut a);
    sync(&g, &mut old);
    let mut most = 0;
    for round in 1..=20 {
        for (n, w) in [&mut a, &mut w2].into_iter().enumerate() {
            w.conn().execute(
                "UPDATE t SET a = ?1 WHERE id = ?2",
                rusqlite::params![round, format!("k{}", (round + n) % 10)],
            )?;
            sync(&g, w);
        }
        if round % 5 == 0 {
            sync(&g, &mut a);
            compact_and_prune(&g, &mut a, Duration::ZERO);
        }
        most = most.max(batches(&g));
    }
    assert!(most <= 2 * 5 + 2, "at most the batches of five rounds per writer between compactions: {most}");
    sync(&g, &mut w2);
    sync(&g, &mut a);
    let report = sync(&g, &mut old);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert_eq!(rows(old.conn(), "t"), rows(a.conn(), "t"));
    let (c, _) = block_on(dimple::clone::clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &g.store(), &|_| {}))?;
    assert_eq!(rows(c.conn(), "t"), rows(a.conn(), "t"));
    Ok(())
}

/// A member behind the published snapshot that compacts (here before it
/// pulled) must not publish a snapshot covering less: the batches pruned
/// under the newer one would be in no snapshot and no chain, and every replica
/// behind them, the compactor included, could never catch up.
#[test]
fn a_compaction_by_a_member_behind_the_published_snapshot_strands_no_batch() -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
    a.conn().execute("INSERT INTO t VALUES ('k0', 0, 'x', 0.5)", [])?;
    sync(&g, &mut a);
    sync(&g, &mut c);
    for i in 1..4 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'y', 1.5)", rusqlite::params![format!("k{i}"), i])?;
        a.conn().execute("UPDATE t SET a = a + 10 WHERE id = 'k0'", [])?;
        sync(&g, &mut a);
    }
    sync(&g, &mut b);
    let first = compact_and_prune(&g, &mut b, Duration::ZERO);
    assert_eq!(first.pruned_batches.len(), 4, "every batch of a: {:?}", first.pruned_batches);
    // c has a's first batch only, and compacts before it pulls.
    c.conn().execute("INSERT INTO t VALUES ('from-c', 7, 'c', 2.5)", [])?;
    let second = compact_and_prune(&g, &mut c, Duration::ZERO);
    assert_eq!(second.caught_up, vec![a.id().to_owned()], "c caught up from b's snapshot first");
    let back = sync(&g, &mut c);
    assert!(back.pull.problems.is_empty(), "{:?}", back.pull.problems);
    for r in [&mut a, &mut b] {
        let report = sync(&g, r);
        assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    }
    assert_eq!(rows(c.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(rows(a.conn(), "t").len(), 5);
    let (d, _) = block_on(dimple::clone::clone(&g.bucket_url(), &g.db("d"), Some("d"), g.opts(), &g.store(), &|_| {}))?;
    assert_eq!(rows(d.conn(), "t"), rows(a.conn(), "t"), "a new member gets every write");
    assert!(dimple::verify::check(&mut c)?.is_empty());
    Ok(())
}

/// The same, by a member that does not take the changes the published snapshot
/// covers further (here: it revoked their author). It could never cover them,
/// so it refuses to compact, says why, and the bucket stays as it was.
#[test]
fn a_member_that_does_not_take_what_the_published_snapshot_covers_refuses_to_compact() -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
    a.conn().execute("INSERT INTO t VALUES ('k0', 0, 'x', 0.5)", [])?;
    sync(&g, &mut a);
    sync(&g, &mut c);
    dimple::trust::set_replica(c.conn(), a.id(), dimple::trust::REVOKED)?;
    a.conn().execute("INSERT INTO t VALUES ('k1', 1, 'y', 1.5)", [])?;
    sync(&g, &mut a);
    sync(&g, &mut b);
    let published = compact_and_prune(&g, &mut b, Duration::ZERO);
    let before: Vec<String> =
        block_on(dimple::store::list_all(&g.store(), "", None))?.into_iter().map(|m| m.key).collect();
    let Err(err) = block_on(dimple::snapshot::compact_with(&mut c, &g.store(), Duration::ZERO, true)) else {
        panic!("compacted over a snapshot covering more")
    };
    let message = err.to_string();
    assert!(message.contains(a.id()) && message.contains("published snapshot"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    let after: Vec<String> =
        block_on(dimple::store::list_all(&g.store(), "", None))?.into_iter().map(|m| m.key).collect();
    let new: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    assert!(new.iter().all(|k| k.starts_with("replicas/")), "nothing but its descriptor written: {new:?}");
    assert_eq!(before.iter().filter(|k| !after.contains(k)).count(), 0, "nothing deleted");
    let (d, report) =
        block_on(dimple::clone::clone(&g.bucket_url(), &g.db("d"), Some("d"), g.opts(), &g.store(), &|_| {}))?;
    assert_eq!(report.snapshot.as_deref(), Some(published.snapshot_id.as_str()));
    assert_eq!(rows(d.conn(), "t"), rows(a.conn(), "t"));
    Ok(())
}

/// A snapshot vouches for the batches it covers, but not past an author's own
/// signed head: a source (here `s`, re-signing its snapshot) that states a
/// cursor beyond it is refused as a problem, the replica's cursor stays, and an
/// honest snapshot catches it up later. Taken in, the cursor would have left `b`
/// refusing every real batch of `a` after it ("older than one already applied").
#[test]
fn a_snapshot_stating_an_author_past_its_signed_head_is_not_caught_up_from() -> TestResult {
    let past = "UPDATE ZV_CURSOR SET last_change_id = '7fffffff-ffff-7fff-bfff-ffffffffffff' WHERE replica = ?1";
    a_forged_cursor_is_refused_until_an_honest_snapshot(past, "past its signed head")
}

/// Nor a cursor on a batch the author's chain never passes through: a source
/// naming, for `a`, a batch of `a`'s id that `a` never wrote (any hash, the
/// change id kept) is refused likewise. Taken in, the cursor would have left
/// `b` unable to walk `a`'s chain ("missing from the chain"), and a compaction
/// by `b` would have published it again.
#[test]
fn a_snapshot_naming_a_batch_outside_an_authors_chain_is_not_caught_up_from() -> TestResult {
    let elsewhere = "UPDATE ZV_CURSOR SET batch_id = '01900000-0000-7000-8000-00000000beef',
                     batch_sha256 = lower(hex(randomblob(32))) WHERE replica = ?1";
    a_forged_cursor_is_refused_until_an_honest_snapshot(elsewhere, "not in its signed chain")
}

/// `b` is behind pruned batches of `a`; `s` compacts, runs `forge` (?1: `a`'s
/// id) on its snapshot and signs the pointer again. `b`'s pull must refuse it
/// with a problem saying `why` and catch up nothing; after `a` writes on and
/// `s` compacts honestly, `b` catches up and holds what `a` holds.
fn a_forged_cursor_is_refused_until_an_honest_snapshot(forge: &str, why: &str) -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut s) = (g.replica("a"), g.replica("b"), g.replica("s"));
    a.conn().execute("INSERT INTO t VALUES ('k0', 0, 'x', 0.5)", [])?;
    sync(&g, &mut a);
    sync(&g, &mut b);
    for i in 1..4 {
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'y', 1.5)", rusqlite::params![format!("k{i}"), i])?;
        sync(&g, &mut a);
    }
    sync(&g, &mut s);
    let report = compact_and_prune(&g, &mut s, Duration::ZERO);
    assert!(!report.pruned_batches.is_empty());
    let file = g.bucket().join(&report.key);
    assert_eq!(rusqlite::Connection::open(&file)?.execute(forge, [a.id()])?, 1);
    resign(&g, &s, &file)?;
    let report = sync(&g, &mut b);
    assert!(report.pull.caught_up.is_empty(), "{:?}", report.pull.caught_up);
    assert!(report.pull.problems.iter().any(|p| p.contains(why)), "{:?}", report.pull.problems);
    a.conn().execute("INSERT INTO t VALUES ('k9', 9, 'z', 2.5)", [])?;
    sync(&g, &mut a);
    sync(&g, &mut s);
    compact_and_prune(&g, &mut s, Duration::ZERO);
    let report = sync(&g, &mut b);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"));
    Ok(())
}

/// Points `snapshots/LATEST.json` at `file` as altered, signed with `s`'s key.
fn resign(g: &Group, s: &Replica, file: &std::path::Path) -> TestResult {
    let store = g.store();
    let (bytes, _) = block_on(dimple::store::get_bytes(&store, "snapshots/LATEST.json"))?;
    let pointer = dimple::snapshot::Pointer::parse(&bytes, "LATEST.json")?;
    let forged = dimple::snapshot::Pointer {
        sha256: dimple::store::file_sha256(file)?,
        size: std::fs::metadata(file)?.len(),
        ..pointer
    }
    .sign(&dimple::trust::load(&dimple::replica::side_dir(s.path()).join("replica.key"))?);
    std::fs::write(g.bucket().join("snapshots/LATEST.json"), serde_json::to_vec_pretty(&forged)?)?;
    Ok(())
}
