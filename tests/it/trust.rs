//! SPEC 6, trust: explicit trust mode, revoking, and key hygiene. One test per rule.

use crate::support::*;
use dimple::trust::{self, TrustMode};
use dimple::Replica;
use std::os::unix::fs::PermissionsExt;

fn has(r: &Replica, id: &str) -> bool {
    rows(r.conn(), "t").iter().any(|row| row[0] == rusqlite::types::Value::Text(id.into()))
}

fn write_and_push(g: &Group, r: &mut Replica, id: &str) {
    r.conn().execute("INSERT INTO t VALUES (?1, 1, 'x', 0.5)", [id]).unwrap();
    block_on(dimple::push(r, &g.store())).unwrap();
}

fn trust_state(r: &Replica, id: &str) -> String {
    r.conn().query_row("SELECT trust FROM ZV_REPLICA WHERE id = ?1", [id], |row| row.get(0)).unwrap()
}

#[test]
fn explicit_mode_holds_a_new_replica_until_it_is_trusted() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    trust::set_mode(b.conn(), TrustMode::Explicit)?;
    write_and_push(&g, &mut a, "a1");
    let report = block_on(dimple::pull(&mut b, &g.store()))?;
    assert_eq!(report.waiting_for_trust, vec![a.id().to_owned()]);
    assert!(report.problems.is_empty() && report.changes == 0 && !has(&b, "a1"));
    let held = dimple::status::replicas(&b)?;
    assert_eq!(held[0].key_fingerprint.as_deref(), Some(trust::fingerprint(&a.public_key()?).as_str()), "key pinned");
    assert_eq!(held[0].cursor, None, "cursor did not move");
    assert_eq!(dimple::status::status(&b)?.waiting_for_trust, vec![a.id().to_owned()]);
    // Still held on the next pull: holding is not a one-off.
    assert_eq!(block_on(dimple::pull(&mut b, &g.store()))?.waiting_for_trust.len(), 1);
    trust::set_replica(b.conn(), &a.id()[..20], trust::TRUSTED)?;
    let report = block_on(dimple::pull(&mut b, &g.store()))?;
    assert!(report.waiting_for_trust.is_empty() && has(&b, "a1"));
    assert!(dimple::status::status(&b)?.waiting_for_trust.is_empty());
    write_and_push(&g, &mut a, "a2");
    block_on(dimple::pull(&mut b, &g.store()))?;
    assert!(has(&b, "a2"));
    Ok(())
}

#[test]
fn revoking_a_replica_stops_its_further_changes_and_keeps_the_applied_ones() -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
    write_and_push(&g, &mut a, "a1");
    block_on(dimple::pull(&mut b, &g.store()))?;
    trust::set_replica(b.conn(), a.id(), trust::REVOKED)?;
    write_and_push(&g, &mut a, "a2");
    write_and_push(&g, &mut c, "c1");
    let report = block_on(dimple::pull(&mut b, &g.store()))?;
    assert!(has(&b, "a1"), "already applied changes stay");
    assert!(!has(&b, "a2"), "no further changes");
    assert!(has(&b, "c1") && report.problems.is_empty());
    assert_eq!(trust_state(&b, a.id()), "revoked");
    // Trusting it again picks up where its cursor stopped.
    trust::set_replica(b.conn(), a.id(), trust::TRUSTED)?;
    block_on(dimple::pull(&mut b, &g.store()))?;
    assert!(has(&b, "a2"));
    Ok(())
}

#[test]
fn switching_to_explicit_mode_trusts_the_replicas_already_applied() -> TestResult {
    let g = Group::new();
    let (mut a, mut b, mut c) = (g.replica("a"), g.replica("b"), g.replica("c"));
    write_and_push(&g, &mut a, "a1");
    block_on(dimple::pull(&mut b, &g.store()))?;
    assert_eq!(trust::set_mode(b.conn(), TrustMode::Explicit)?, 1);
    assert_eq!(trust_state(&b, a.id()), "trusted");
    write_and_push(&g, &mut a, "a2");
    write_and_push(&g, &mut c, "c1");
    let report = block_on(dimple::pull(&mut b, &g.store()))?;
    assert!(has(&b, "a2") && !has(&b, "c1"));
    assert_eq!(report.waiting_for_trust, vec![c.id().to_owned()]);
    Ok(())
}

#[test]
fn trusting_an_unknown_replica_is_refused() -> TestResult {
    let g = Group::new();
    let b = g.replica("b");
    let err = trust::set_replica(b.conn(), "0190a4c2", trust::TRUSTED).unwrap_err();
    assert!(err.to_string().contains("has been seen in the bucket yet"), "{err}");
    Ok(())
}

#[test]
fn the_key_file_is_owner_only_in_an_owner_only_directory() -> TestResult {
    let g = Group::new();
    let a = g.replica("a");
    let side = dimple::replica::side_dir(a.path());
    assert_eq!(std::fs::metadata(&side)?.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(side.join("replica.key"))?.permissions().mode() & 0o777, 0o600);
    Ok(())
}

#[test]
fn a_key_readable_by_others_is_refused_with_the_fix() -> TestResult {
    let g = Group::new();
    let a = g.replica("a");
    let key = dimple::replica::side_dir(a.path()).join("replica.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let err = trust::load(&key).unwrap_err();
    assert!(err.to_string().contains("readable by others; run `chmod 600"), "{err}");
    let mut a = g.reopen("a");
    assert!(block_on(dimple::push(&mut a, &g.store())).is_err(), "no push with an exposed key");
    Ok(())
}

/// The private key as stored, and its raw bytes.
fn secrets(r: &Replica) -> (String, Vec<u8>) {
    let key = trust::load(&dimple::replica::side_dir(r.path()).join("replica.key")).unwrap();
    use base64::Engine;
    (base64::engine::general_purpose::STANDARD.encode(key.to_bytes()), key.to_bytes().to_vec())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_private_key_never_reaches_the_bucket() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    write_and_push(&g, &mut a, "a1");
    let (b64, raw) = secrets(&a);
    let mut files = 0;
    let mut stack = vec![g.bucket()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path)?;
                assert!(
                    !contains(&bytes, b64.as_bytes()) && !contains(&bytes, &raw),
                    "{} holds the key",
                    path.display()
                );
                files += 1;
            }
        }
    }
    assert!(files >= 3, "descriptor, head and batch were checked");
    Ok(())
}

#[test]
fn the_private_key_never_appears_in_status_json() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    write_and_push(&g, &mut a, "a1");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_dimple")).args(["status", "--json"]).arg(a.path()).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (b64, raw) = secrets(&a);
    assert!(String::from_utf8(out.stdout.clone())?.contains("\"replica\""));
    assert!(!contains(&out.stdout, b64.as_bytes()) && !contains(&out.stdout, &raw));
    Ok(())
}

/// A snapshot speaks for every author it covers, so a replica catches up from
/// one (after batches were pruned, or before it compacts) only if its source is
/// a replica it applies. Here `c` holds the stranger `s` in explicit mode: `s`'s
/// snapshot is not taken for `a`'s pruned batches until `c` trusts `s`, and `c`
/// compacting replaces it rather than taking it in.
#[test]
fn a_snapshot_is_caught_up_from_only_when_its_source_is_applied_here() -> TestResult {
    let g = Group::new();
    let (mut a, mut c, mut s) = (g.replica("a"), g.replica("c"), g.replica("s"));
    trust::set_mode(c.conn(), TrustMode::Explicit)?;
    write_and_push(&g, &mut a, "a1");
    block_on(dimple::pull(&mut c, &g.store()))?;
    trust::set_replica(c.conn(), a.id(), trust::TRUSTED)?;
    block_on(dimple::pull(&mut c, &g.store()))?;
    assert!(has(&c, "a1"));
    write_and_push(&g, &mut a, "a2");
    write_and_push(&g, &mut a, "a3");
    block_on(dimple::sync(&mut s, &g.store()))?;
    g.clock.advance(10);
    block_on(dimple::snapshot::compact_with(&mut s, &g.store(), std::time::Duration::ZERO, true))?;
    let report = block_on(dimple::pull(&mut c, &g.store()))?;
    assert!(!has(&c, "a2"), "taken from a snapshot of a replica held here");
    assert!(report.caught_up.is_empty());
    assert!(report.problems.iter().any(|p| p.contains(s.id())), "{:?}", report.problems);
    // Compacting here does not take it in either: it is replaced.
    g.clock.advance(10);
    let mine = block_on(dimple::snapshot::compact(&mut c, &g.store(), std::time::Duration::ZERO))?;
    assert!(mine.published && !has(&c, "a2"));
    // The pruned batches are lost to c until it trusts a source covering them.
    g.clock.advance(10);
    block_on(dimple::snapshot::compact(&mut s, &g.store(), std::time::Duration::ZERO))?;
    trust::set_replica(c.conn(), s.id(), trust::TRUSTED)?;
    let report = block_on(dimple::pull(&mut c, &g.store()))?;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.caught_up, vec![a.id().to_owned()]);
    assert!(has(&c, "a2") && has(&c, "a3"));
    Ok(())
}
