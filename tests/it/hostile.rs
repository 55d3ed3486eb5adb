//! SPEC 6, hostile input from the bucket: one test per attack.
//!
//! Every test builds the same scene: replicas `a` (attacked), `b` (the reader) and
//! `c` (an honest bystander). `b` has applied `a1` and `c1`; then `a` writes `a2` and
//! `c` writes `c2`, both pushed. The attack tampers with `a`'s objects, `b` pulls, and
//! the test checks that the refusal is reported with the object's key and a reason
//! (in the pull report and in `status`), that nothing of `a2` reached `b`, and that
//! `c2` arrived in the same pull. Then the attack is undone as its doc comment says,
//! and `a2` plus a later honest change of `a` must arrive, with the problem gone.
//!
//! Attacks that need a validly signed head (a malicious replica forging its own
//! history) are in `hostile/forged.rs`. Change ids far in the future are covered by
//! `merge_rules::remote_ids_beyond_the_drift_limit_are_refused_as_a_problem`.

mod forged;

use crate::support::*;
use dimple::head::{Descriptor, Head, HeadBody};
use dimple::store::{get_bytes, LocalStore, PutMode, Store};
use dimple::{layout, PullReport, Replica};

pub struct Scene {
    pub g: Group,
    /// The attacked replica (in `forged`: the malicious one).
    pub a: Replica,
    pub b: Replica,
    pub c: Replica,
    /// `a`'s head as `b` last applied it (after `a1`).
    pub a_base: HeadBody,
}

impl Scene {
    /// The standard scene: `a2` is an ordinary row, pushed.
    pub fn new() -> Scene {
        Scene::with("INSERT INTO t VALUES ('a2', 2, 'x', 0.5)", true)
    }

    /// `a2_sql` writes `a2` on `a`; `push` says whether `a` uploads it (the forged
    /// attacks publish it themselves).
    pub fn with(a2_sql: &str, push: bool) -> Scene {
        let g = Group::new();
        let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
        let store = g.store();
        a.conn().execute("INSERT INTO t VALUES ('a1', 1, 'x', 0.5)", []).unwrap();
        c.conn().execute("INSERT INTO t VALUES ('c1', 1, 'x', 0.5)", []).unwrap();
        block_on(dimple::push(&mut a, &store)).unwrap();
        block_on(dimple::push(&mut c, &store)).unwrap();
        let report = block_on(dimple::pull(&mut b, &store)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        g.clock.advance(5);
        let a_base = Scene::head_of(&g, a.id());
        a.conn().execute(a2_sql, []).unwrap();
        a.capture().unwrap();
        if push {
            block_on(dimple::push(&mut a, &store)).unwrap();
        }
        c.conn().execute("INSERT INTO t VALUES ('c2', 2, 'x', 0.5)", []).unwrap();
        block_on(dimple::push(&mut c, &store)).unwrap();
        g.clock.advance(5);
        let s = Scene { g, a, b, c, a_base };
        assert!(s.has("a1") && s.has("c1") && !s.has("a2") && !s.has("c2"));
        s
    }

    fn head_of(g: &Group, id: &str) -> HeadBody {
        let store = LocalStore::open(g.bucket()).unwrap();
        let key = layout::head_key(id);
        let (bytes, _) = block_on(get_bytes(&store, &key)).unwrap();
        Head::parse(&bytes, &key, id, None).unwrap().body
    }

    /// `a`'s newest head in the bucket.
    pub fn a_head(&self) -> HeadBody {
        Scene::head_of(&self.g, self.a.id())
    }

    pub fn raw(&self) -> LocalStore {
        LocalStore::open(self.g.bucket()).unwrap()
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        block_on(get_bytes(&self.raw(), key)).unwrap().0
    }

    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        block_on(self.raw().put(key, bytes, PutMode::Overwrite)).unwrap();
    }

    pub fn pull(&mut self) -> PullReport {
        block_on(dimple::pull(&mut self.b, &self.g.store())).unwrap()
    }

    /// Whether row `id` is in `b`'s table.
    pub fn has(&self, id: &str) -> bool {
        rows(self.b.conn(), "t").iter().any(|r| r[0] == rusqlite::types::Value::Text(id.into()))
    }

    /// What a third party with write access to the bucket can read: the files.
    pub fn a_batch_key(&self) -> String {
        self.a_head().batch_key
    }

    /// The refusal as `b` reports it: one problem, for `key` of `a`, saying `phrase`;
    /// nothing of `a2` applied or even logged; `c2` arrived in the same pull.
    pub fn assert_refused(&self, report: &PullReport, key: &str, phrase: &str) {
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].starts_with(&format!("{key}: ")), "{:?} is not about {key}", report.problems);
        assert!(report.problems[0].contains(phrase), "{:?} does not say {phrase:?}", report.problems);
        let st = dimple::status::status(&self.b).unwrap();
        assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
        let p = &st.problems[0];
        assert_eq!((p.replica.as_str(), p.object_key.as_str()), (self.a.id(), key));
        assert!(p.reason.contains(phrase), "{:?}", p.reason);
        assert!(!self.has("a2"), "the attacked batch was applied");
        let logged: i64 =
            self.b.conn().query_row("SELECT count(*) FROM ZV_CHANGE WHERE entity_id = 'a2'", [], |r| r.get(0)).unwrap();
        assert_eq!(logged, 0, "the attacked batch reached the log");
        assert!(self.has("a1") && self.has("c2"), "the honest replica did not sync in the same pull");
    }

    /// After the attack is undone: `a2` arrives and the problem clears; then `a`
    /// writes again, pushes, and that arrives too.
    pub fn assert_recovers(&mut self) {
        let report = self.pull();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(self.has("a2"));
        assert!(dimple::status::status(&self.b).unwrap().problems.is_empty());
        self.later_change_syncs(true);
    }

    /// A later honest change (of `a` when it can still push, else of `c`) arrives.
    pub fn later_change_syncs(&mut self, from_a: bool) {
        let store = self.g.store();
        let w = if from_a { &mut self.a } else { &mut self.c };
        w.conn().execute("INSERT INTO t VALUES ('later', 3, 'x', 0.5)", []).unwrap();
        block_on(dimple::push(w, &store)).unwrap();
        let report = self.pull();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(self.has("later"));
    }
}

/// Bit flips in a stored batch. Recovery: the original object is put back.
#[test]
fn flipped_bytes_in_a_batch_are_refused() -> TestResult {
    let mut s = Scene::new();
    let key = s.a_batch_key();
    let good = s.get(&key);
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x40;
    s.put(&key, bad);
    let report = s.pull();
    s.assert_refused(&report, &key, "batch altered or replaced");
    s.put(&key, good);
    s.assert_recovers();
    Ok(())
}

/// A batch cut short (a torn upload, a full disk). Recovery: the whole object again.
#[test]
fn a_truncated_batch_is_refused() -> TestResult {
    let mut s = Scene::new();
    let key = s.a_batch_key();
    let good = s.get(&key);
    s.put(&key, good[..good.len() / 3].to_vec());
    let report = s.pull();
    s.assert_refused(&report, &key, "batch altered or replaced");
    s.put(&key, good);
    s.assert_recovers();
    Ok(())
}

/// Another replica's batch copied over this one's (a valid SQLite batch, validly
/// chained in its own replica). Recovery: the original object is put back.
#[test]
fn a_batch_swapped_with_another_replicas_is_refused() -> TestResult {
    let mut s = Scene::new();
    let key = s.a_batch_key();
    let good = s.get(&key);
    let theirs = s.get(&Scene::head_of(&s.g, s.c.id()).batch_key);
    s.put(&key, theirs);
    let report = s.pull();
    s.assert_refused(&report, &key, "batch altered or replaced");
    s.put(&key, good);
    s.assert_recovers();
    Ok(())
}

/// A batch deleted from the middle of a chain of three new ones: nothing after the
/// gap may be applied either, or the log would have a hole. Recovery: the object is
/// put back.
#[test]
fn a_batch_deleted_from_the_middle_of_a_chain_is_refused() -> TestResult {
    let mut s = Scene::new();
    let store = s.g.store();
    let middle = s.a_batch_key();
    for id in ["a3", "a4"] {
        s.a.conn().execute("INSERT INTO t VALUES (?1, 1, 'x', 0.5)", [id])?;
        block_on(dimple::push(&mut s.a, &store))?;
    }
    // The middle of a1 (applied) -> a2 -> a3 -> a4 is a2's batch.
    let good = s.get(&middle);
    block_on(s.raw().delete(&middle))?;
    let report = s.pull();
    s.assert_refused(&report, &middle, "batch is missing from the chain");
    assert!(!s.has("a3") && !s.has("a4"));
    s.put(&middle, good);
    s.assert_recovers();
    assert!(s.has("a3") && s.has("a4"));
    Ok(())
}

/// A head from before, put back after the reader applied a newer one (a rollback
/// that would hide later changes, or make the reader re-walk a forked history).
/// Recovery: the newest head is put back; `a` recognises it as its own and pushes on.
#[test]
fn a_replayed_older_head_is_refused() -> TestResult {
    let mut s = Scene::new();
    let head_key = layout::head_key(s.a.id());
    let old = s.get(&head_key);
    s.a.conn().execute("INSERT INTO t VALUES ('a3', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut s.a, &s.g.store()))?;
    s.pull();
    assert!(s.has("a3"));
    let newest = s.get(&head_key);
    s.put(&head_key, old);
    s.c.conn().execute("INSERT INTO t VALUES ('c3', 1, 'x', 0.5)", [])?;
    block_on(dimple::push(&mut s.c, &s.g.store()))?;
    let report = s.pull();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].starts_with(&head_key)
            && report.problems[0].contains("head is older than one already applied")
    );
    assert!(s.has("c3"), "the honest replica did not sync in the same pull");
    s.put(&head_key, newest);
    let report = s.pull();
    assert!(report.problems.is_empty() && dimple::status::status(&s.b)?.problems.is_empty());
    s.later_change_syncs(true);
    Ok(())
}

/// Tampers with `a`'s head through `edit` (which re-encodes it) and checks the
/// refusal, then puts the original back and checks recovery.
fn head_attack(edit: impl FnOnce(&Scene, Vec<u8>) -> Vec<u8>, phrase: &str) {
    let mut s = Scene::new();
    let key = layout::head_key(s.a.id());
    let good = s.get(&key);
    let bad = edit(&s, good.clone());
    s.put(&key, bad);
    let report = s.pull();
    s.assert_refused(&report, &key, phrase);
    s.put(&key, good);
    s.assert_recovers();
}

fn signed_by(body: HeadBody, r: &Replica) -> Vec<u8> {
    let key = dimple::trust::load(&dimple::replica::side_dir(r.path()).join("replica.key")).unwrap();
    Head::sign(body, &key).to_bytes()
}

/// A head whose body was changed after signing (here: a count), signature kept.
/// Recovery for this and every head attack: the original head is put back.
#[test]
fn a_head_with_a_bad_signature_is_refused() {
    head_attack(
        |s, _| {
            let mut body = s.a_head();
            let sig = Head::sign(
                body.clone(),
                &dimple::trust::load(&dimple::replica::side_dir(s.a.path()).join("replica.key")).unwrap(),
            )
            .signature;
            body.change_count += 1;
            Head { body, signature: sig }.to_bytes()
        },
        "signature does not verify",
    );
}

/// `a`'s head re-signed by `c`, a member of the group that wants to speak for `a`.
#[test]
fn a_head_signed_by_another_replicas_key_is_refused() {
    head_attack(|s, _| signed_by(s.a_head(), &s.c), "signature does not verify");
}

/// A head carrying a new public key and signed with it: someone who cannot sign as
/// `a` claims `a`'s id with their own key. Pinning refuses it.
#[test]
fn a_replica_whose_public_key_changes_is_refused() {
    head_attack(
        |s, _| {
            let stranger = s.g.replica("stranger");
            let mut body = s.a_head();
            body.public_key = dimple::trust::public_b64(
                &dimple::trust::load(&dimple::replica::side_dir(stranger.path()).join("replica.key")).unwrap(),
            );
            signed_by(body, &stranger)
        },
        "was pinned for this replica",
    );
}

#[test]
fn a_malformed_head_is_refused() {
    head_attack(|_, good| good[..good.len() - 5].to_vec(), "head is not JSON");
}

#[test]
fn an_empty_head_is_refused() {
    head_attack(|_, _| Vec::new(), "head is not JSON");
}

/// Refused from the listing's size alone, without downloading it.
#[test]
fn a_huge_head_is_refused() {
    head_attack(|_, _| vec![b' '; 100 * 1024], "more than the 65536 allowed");
}

/// A head of a future format (here signed validly by `a` itself: a newer dimple).
#[test]
fn a_head_of_an_unknown_format_is_refused() {
    head_attack(
        |s, _| {
            let mut body = s.a_head();
            body.format = 2;
            signed_by(body, &s.a)
        },
        "unknown head format 2",
    );
}

/// `replica.json` is for people, and carries the replica's signed schema
/// (docs/schema.md). A malformed, empty or huge one is a problem of that replica
/// (its schema cannot be read), and harms nothing else: `a2` and `c2` still
/// arrive, and `Descriptor::parse` says why.
fn descriptor_attack(bytes: Vec<u8>, phrase: &str) {
    let mut s = Scene::new();
    let key = layout::descriptor_key(s.a.id());
    let good = s.get(&key);
    s.put(&key, bytes.clone());
    let report = s.pull();
    assert!(
        report.problems.iter().all(|p| p.starts_with(&key) && p.contains(phrase)) && report.problems.len() == 1,
        "{:?}",
        report.problems
    );
    assert!(s.has("a2") && s.has("c2"));
    match Descriptor::parse(&bytes, &key, s.a.id()) {
        Err(dimple::Error::BadData { origin, reason }) => {
            assert_eq!(origin, key);
            assert!(reason.contains(phrase), "{reason:?}");
        }
        other => panic!("{other:?}"),
    }
    // Recovery: the descriptor is put back.
    s.put(&key, good);
    s.later_change_syncs(true);
}

#[test]
fn a_malformed_replica_json_is_a_problem_and_harms_nothing_else() {
    descriptor_attack(b"{\"format\": 1, \"replica\": ".to_vec(), "malformed replica.json");
}

#[test]
fn an_empty_replica_json_is_a_problem_and_harms_nothing_else() {
    descriptor_attack(Vec::new(), "malformed replica.json");
}

#[test]
fn a_huge_replica_json_is_a_problem_and_harms_nothing_else() {
    descriptor_attack(vec![b'{'; 2 << 20], "more than the 1048576 allowed");
}
