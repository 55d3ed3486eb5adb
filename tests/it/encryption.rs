//! Encrypted groups (docs/trust.md, "Encrypted groups"): the bucket stores the
//! group's data and can neither read it nor forge it. One test per promise; the
//! attacks on sealed objects follow the hostile suite's pattern (refused as a
//! problem naming the object, nothing applied, the others sync on).

use crate::support::*;
use dimple::group;
use dimple::store::{get_bytes, list_all, Store};
use dimple::{layout, Error, ErrorKind, Replica};
use std::time::Duration;

const PASS: &str = "correct horse battery staple";

/// `name` starts an encrypted group with the passphrase.
fn start(g: &Group, name: &str) -> Replica {
    let mut r = g.replica(name);
    block_on(group::create(&mut r, &g.store(), Some(PASS))).unwrap();
    r
}

/// `name` joins with the passphrase.
fn join(g: &Group, name: &str) -> Replica {
    let keys = block_on(group::unlock(&g.store(), PASS)).unwrap();
    let mut r = g.replica(name);
    block_on(group::adopt(&mut r, &g.store(), keys)).unwrap();
    r
}

/// `name` asks to join without the passphrase.
fn request(g: &Group, name: &str) -> Replica {
    let store = g.store();
    let group_id = block_on(group::detect(&store)).unwrap().expect("an encrypted group");
    let mut r = g.replica(name);
    block_on(group::request(&mut r, &store, &group_id)).unwrap();
    r
}

fn sync(g: &Group, r: &mut Replica) -> dimple::SyncReport {
    let report = block_on(dimple::sync(r, &g.store())).unwrap();
    g.clock.advance(3);
    report
}

fn has(r: &Replica, id: &str) -> bool {
    r.conn().query_row("SELECT count(*) FROM t WHERE id = ?1", [id], |row| row.get::<_, i64>(0)).unwrap() == 1
}

fn write(r: &Replica, id: &str) {
    r.conn().execute("INSERT INTO t VALUES (?1, 1, 'x', 0.5)", [id]).unwrap();
}

fn objects(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
    block_on(list_all(store, "", None))
        .unwrap()
        .into_iter()
        .map(|m| {
            let bytes = block_on(get_bytes(store, &m.key)).unwrap().0;
            (m.key, bytes)
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every form in which `bytes` could be read by someone holding the bucket: as
/// they are, zstd-decoded, and, where either is a SQLite file, every row of every
/// table and the schema as text.
fn readable_forms(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![bytes.to_vec()];
    if let Ok(unpacked) = zstd::stream::decode_all(bytes) {
        forms.push(unpacked);
    }
    for form in forms.clone() {
        if !form.starts_with(b"SQLite format 3\0") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(&path, &form).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut dump = String::new();
        let tables: Vec<(String, String)> = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (name, sql) in tables {
            dump.push_str(&sql);
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{}\"", name.replace('"', "\"\""))).unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| match r.get::<_, rusqlite::types::Value>(i).unwrap() {
                            rusqlite::types::Value::Text(t) => t,
                            rusqlite::types::Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap();
            for row in rows {
                dump.push_str(&row.unwrap());
            }
        }
        forms.push(dump.into_bytes());
    }
    forms
}

/// A workload whose table names, column names, text and blob values and replica
/// names all carry `marker`; it syncs two replicas, takes a snapshot and publishes
/// digests, so every kind of object is in the bucket. Returns the bucket's objects.
fn marked_workload(g: &Group, marker: &str, encrypted: bool) -> Vec<(String, Vec<u8>)> {
    let store = g.store();
    let mut a = g.replica(&format!("laptop-{marker}"));
    if encrypted {
        block_on(group::create(&mut a, &store, Some(PASS))).unwrap();
    }
    let mut b = if encrypted { join(g, &format!("phone-{marker}")) } else { g.replica(&format!("phone-{marker}")) };
    let (table, column) = (format!("notes_{marker}"), format!("body_{marker}"));
    for r in [&mut a, &mut b] {
        r.conn()
            .execute_batch(&format!("CREATE TABLE \"{table}\"(id TEXT PRIMARY KEY, \"{column}\" TEXT, pic BLOB)"))
            .unwrap();
        r.track(&table, false).unwrap();
    }
    for i in 0..20 {
        let mut blob: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
        blob.splice(10..10, marker.bytes());
        a.conn()
            .execute(
                &format!("INSERT INTO \"{table}\" VALUES (?1, ?2, ?3)"),
                rusqlite::params![format!("row-{marker}-{i}"), format!("text {marker} {i}"), blob],
            )
            .unwrap();
    }
    write(&a, &format!("t-{marker}"));
    sync(g, &mut a);
    sync(g, &mut b);
    let n: i64 = b.conn().query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| r.get(0)).unwrap();
    assert_eq!(n, 20, "the second replica reads what the first wrote");
    b.conn().execute(&format!("UPDATE \"{table}\" SET \"{column}\" = 'edited {marker}'"), []).unwrap();
    sync(g, &mut b);
    sync(g, &mut a);
    block_on(dimple::snapshot::compact(&mut a, &store, Duration::ZERO)).unwrap();
    let digest = dimple::verify::snapshot_digest(&mut a).unwrap();
    block_on(dimple::verify::publish(&mut a, &store, &digest)).unwrap();
    objects(&store)
}

fn kinds_present(objects: &[(String, Vec<u8>)]) -> Vec<&'static str> {
    let kinds = [
        ("batches/", "batch"),
        ("/LATEST.json", "head"),
        ("/replica.json", "descriptor"),
        (".db", "snapshot"),
        ("snapshots/LATEST.json", "snapshot pointer"),
        ("digests/", "digest"),
    ];
    kinds.iter().filter(|(pat, _)| objects.iter().any(|(k, _)| k.contains(pat))).map(|(_, name)| *name).collect()
}

fn markers_found(objects: &[(String, Vec<u8>)], marker: &str) -> Vec<String> {
    objects
        .iter()
        .filter(|(_, bytes)| readable_forms(bytes).iter().any(|f| contains(f, marker.as_bytes())))
        .map(|(k, _)| k.clone())
        .collect()
}

fn nothing_readable_reaches_the_bucket(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "sealed") else { return Ok(()) };
    let marker = format!("MRK{:016x}", rand::random::<u64>());
    let objects = marked_workload(&g, &marker, true);
    assert_eq!(kinds_present(&objects).len(), 6, "every kind of object was written: {:?}", kinds_present(&objects));
    assert!(
        objects.iter().any(|(k, _)| k.starts_with("members/")) && objects.iter().any(|(k, _)| k.starts_with("grants/"))
    );
    assert_eq!(markers_found(&objects, &marker), Vec::<String>::new());
    Ok(())
}

#[test]
fn no_table_column_value_or_replica_name_is_readable_in_an_encrypted_bucket() -> TestResult {
    nothing_readable_reaches_the_bucket(Backend::Local)
}

#[test]
fn no_table_column_value_or_replica_name_is_readable_in_an_encrypted_bucket_on_s3() -> TestResult {
    nothing_readable_reaches_the_bucket(Backend::S3)
}

/// The scanner above is able to fail: in a group in the clear it finds the marker
/// in every kind of object that carries names or values.
#[test]
fn the_same_workload_in_the_clear_shows_its_markers_to_the_bucket() -> TestResult {
    let g = Group::new();
    let marker = format!("MRK{:016x}", rand::random::<u64>());
    let objects = marked_workload(&g, &marker, false);
    let found = markers_found(&objects, &marker);
    for kind in ["batches/", "/LATEST.json", "/replica.json", "snapshots/0", "digests/"] {
        assert!(found.iter().any(|k| k.contains(kind)), "marker not found in any {kind} object: {found:?}");
    }
    Ok(())
}

#[test]
fn a_device_with_the_passphrase_joins_and_reads_everything() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    write(&a, "a1");
    sync(&g, &mut a);
    let mut p = join(&g, "p");
    sync(&g, &mut p);
    assert!(has(&p, "a1"));
    write(&p, "p1");
    sync(&g, &mut p);
    sync(&g, &mut a);
    assert!(has(&a, "p1"));
    Ok(())
}

#[test]
fn a_wrong_passphrase_is_refused_and_no_database_is_created() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    sync(&g, &mut a);
    assert!(
        matches!(block_on(group::unlock(&g.store(), "not the passphrase")), Err(Error::Invalid(m)) if m.contains("wrong passphrase"))
    );
    let bad = g.dir.path().join("bad");
    std::fs::write(&bad, "not the passphrase\n")?;
    let db = g.db("x");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dimple"))
        .args(["init", db.to_str().unwrap(), "--bucket", &g.bucket_url(), "--passphrase-file", bad.to_str().unwrap()])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!db.exists(), "nothing local was created");
    Ok(())
}

#[test]
fn a_device_without_a_grant_waits_for_a_member_then_reads_once_granted() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    write(&a, "a1");
    sync(&g, &mut a);
    let mut t = request(&g, "t");
    write(&t, "t1");
    let err = block_on(dimple::sync(&mut t, &g.store())).unwrap_err();
    assert!(matches!(&err, Error::AwaitingKey(m) if m.contains("waiting for a member")), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "the agent retries until the grant arrives");
    assert!(dimple::status::status(&t)?.encryption.unwrap().waiting_for_member);
    assert!(!has(&t, "a1"));
    assert!(g.bucket().join(layout::join_key(t.id())).exists(), "the join request is in the bucket");
    let granted = block_on(group::grant(&mut a, &g.store(), &t.id()[..30]))?;
    assert_eq!(granted.replica, t.id());
    sync(&g, &mut t);
    assert!(has(&t, "a1"));
    assert!(!dimple::status::status(&t)?.encryption.unwrap().waiting_for_member);
    assert!(!g.bucket().join(layout::join_key(t.id())).exists(), "the request is gone once granted");
    sync(&g, &mut a);
    assert!(has(&a, "t1"), "the write made while waiting was kept and pushed");
    Ok(())
}

#[test]
fn rekey_with_revoke_shuts_the_revoked_device_out_of_everything_written_after() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let (mut b, mut c) = (join(&g, "b"), join(&g, "c"));
    write(&a, "before");
    for r in [&mut a, &mut b, &mut c] {
        sync(&g, r);
    }
    assert!(has(&c, "before"));
    let done = block_on(group::rekey(&mut a, &g.store(), &[c.id().to_owned()], None))?;
    assert_eq!((done.granted.clone(), done.revoked.clone()), (vec![b.id().to_owned()], vec![c.id().to_owned()]));
    write(&a, "after");
    sync(&g, &mut a);
    sync(&g, &mut b);
    assert!(has(&b, "after"), "a remaining member follows the new epoch");
    let report = sync(&g, &mut c);
    assert!(!has(&c, "after"), "the revoked device reads nothing written after the rekey");
    assert!(
        report.pull.problems.iter().any(|p| p.contains(a.id()) && p.contains("was not granted")),
        "and says why: {:?}",
        report.pull.problems
    );
    // What the revoked device still writes is applied by nobody.
    write(&c, "from-revoked");
    sync(&g, &mut c);
    write(&b, "b-after");
    sync(&g, &mut b);
    sync(&g, &mut a);
    assert!(!has(&a, "from-revoked") && !has(&b, "from-revoked"));
    assert!(has(&a, "b-after"));
    // A device granted after the rekey reads all history.
    let mut d = request(&g, "d");
    block_on(group::grant(&mut b, &g.store(), d.id()))?;
    sync(&g, &mut d);
    assert!(has(&d, "before") && has(&d, "after") && has(&d, "b-after"));
    Ok(())
}

/// A member that pushes without pulling first (the agent pushes as soon as the
/// app writes, and pulls on its interval) seals under the newest epoch all the
/// same: the revoked device reads nothing it writes after the rekey, though the
/// member's handle was open across it.
#[test]
fn a_member_that_pushes_or_compacts_without_pulling_after_a_rekey_seals_under_the_new_epoch() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let (mut b, mut c, mut d) = (join(&g, "b"), join(&g, "c"), join(&g, "d"));
    write(&b, "before");
    for r in [&mut a, &mut b, &mut c, &mut d] {
        sync(&g, r);
    }
    assert!(has(&c, "before"));
    block_on(group::rekey(&mut a, &g.store(), &[c.id().to_owned()], None))?;
    write(&b, "pushed-after");
    block_on(dimple::push(&mut b, &g.store()))?;
    let report = sync(&g, &mut c);
    assert!(!has(&c, "pushed-after"), "the revoked device read a push made after the rekey");
    assert!(report.pull.problems.iter().any(|p| p.contains(b.id()) && p.contains("was not granted")));
    sync(&g, &mut a);
    assert!(has(&a, "pushed-after"), "the members read it");
    // So does a push-only member's sync (its pull takes in nothing). The rekey
    // retired the passphrase: e joins by a member's grant.
    let mut e = request(&g, "e");
    block_on(group::grant(&mut a, &g.store(), e.id()))?;
    dimple::direction::set(e.conn(), dimple::direction::Direction::Push)?;
    block_on(dimple::sync(&mut e, &g.store()))?;
    block_on(group::rekey(&mut a, &g.store(), &[c.id().to_owned()], None))?;
    write(&e, "synced-push-only");
    block_on(dimple::sync(&mut e, &g.store()))?;
    sync(&g, &mut c);
    assert!(!has(&c, "synced-push-only"), "the revoked device read a push-only member's sync after a rekey");
    // Compaction follows the new epoch too (d has not pulled since the rekey).
    let snap = block_on(dimple::snapshot::compact(&mut d, &g.store(), Duration::ZERO))?;
    assert!(snap.published);
    let Err(err) = block_on(dimple::clone::clone_with_keys(
        &g.bucket_url(),
        &g.db("c2"),
        Some("c2"),
        g.opts(),
        &g.store(),
        &|_| {},
        Some(dimple::group::keyring(&c)?),
    )) else {
        panic!("the revoked device's keys opened a snapshot written after the rekey")
    };
    assert!(err.to_string().contains("was not granted"), "{err}");
    Ok(())
}

/// Devices seal under the epoch of greatest id they hold. A member whose clock
/// is behind the one that started the last epoch starts the next one above it
/// all the same: otherwise its epoch (revoking a device) would sort below one
/// the revoked device holds, and everyone would go on sealing under that.
#[test]
fn a_rekey_by_a_member_whose_clock_is_behind_shuts_the_revoked_device_out() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let (mut b, mut c) = (join(&g, "b"), join(&g, "c"));
    // b runs a minute behind a and c.
    let slow = dimple::clock::ManualClock::new(dimple::clock::Clock::now_ms(&g.clock) - 60_000);
    let opts = dimple::Options { clock: std::sync::Arc::new(slow), ..dimple::Options::default() };
    drop(b);
    b = Replica::open(&g.db("b"), opts)?;
    block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    for r in [&mut a, &mut b, &mut c] {
        sync(&g, r);
    }
    let done = block_on(group::rekey(&mut b, &g.store(), &[c.id().to_owned()], None))?;
    let newest = |r: &Replica| group::status(r).unwrap().unwrap().newest_epoch.unwrap();
    assert_eq!(newest(&b), done.epoch, "the new epoch is the newest where it was started");
    write(&a, "after");
    sync(&g, &mut a);
    assert_eq!(newest(&a), done.epoch, "and where it was taken in");
    sync(&g, &mut b);
    assert!(has(&b, "after"));
    sync(&g, &mut c);
    assert!(!has(&c, "after"), "the revoked device read a write made after the rekey");
    Ok(())
}

/// Runs `f` while `holder`'s grant of `epoch` is out of the bucket: the holder
/// acts as if the member that wrote it had not yet (two members at once).
fn without_grant<T>(g: &Group, holder: &str, epoch: &str, f: impl FnOnce() -> T) -> T {
    let path = g.bucket().join(layout::grant_key(holder, epoch));
    let away = path.with_extension("away");
    std::fs::rename(&path, &away).unwrap();
    let out = f();
    std::fs::rename(&away, &path).unwrap();
    out
}

fn epochs_held(r: &Replica) -> usize {
    group::keyring(r).unwrap().len()
}

/// Two members that start key epochs at the same moment (neither has seen the
/// other's) do not split the group: every member takes in both, and everyone
/// reads what each side sealed, members and devices joining later by passphrase
/// alike.
#[test]
fn two_members_starting_key_epochs_at_the_same_moment_split_nobody() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let (mut b, mut c) = (join(&g, "b"), join(&g, "c"));
    for r in [&mut a, &mut b, &mut c] {
        sync(&g, r);
    }
    let b_id = b.id().to_owned();
    let at_a = block_on(group::rekey(&mut a, &g.store(), &[], Some(PASS)))?;
    let at_b = without_grant(&g, &b_id, &at_a.epoch, || block_on(group::rekey(&mut b, &g.store(), &[], Some(PASS))))?;
    // Each pushes under its own epoch before it hears of the other's.
    write(&a, "a-under-its-epoch");
    block_on(dimple::push(&mut a, &g.store()))?;
    write(&b, "b-under-its-epoch");
    without_grant(&g, &b_id, &at_a.epoch, || block_on(dimple::push(&mut b, &g.store())))?;
    write(&c, "c-after-both");
    for _ in 0..2 {
        for r in [&mut a, &mut b, &mut c] {
            let report = sync(&g, r);
            assert!(report.pull.problems.is_empty(), "{}: {:?}", r.id(), report.pull.problems);
        }
    }
    for r in [&a, &b, &c] {
        assert_eq!(epochs_held(r), 3, "{} holds the first epoch and both new ones", r.id());
        for id in ["a-under-its-epoch", "b-under-its-epoch", "c-after-both"] {
            assert!(has(r, id), "{} lacks {id}", r.id());
        }
    }
    let newest = |r: &Replica| group::status(r).unwrap().unwrap().newest_epoch.unwrap();
    assert_eq!(newest(&a), newest(&b));
    assert_eq!(newest(&a), std::cmp::max(at_a.epoch, at_b.epoch), "everyone seals under the newer of the two");
    let mut d = join(&g, "d");
    let report = sync(&g, &mut d);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert!(has(&d, "a-under-its-epoch") && has(&d, "b-under-its-epoch") && has(&d, "c-after-both"));
    Ok(())
}

/// Two members revoking different devices at the same moment: no epoch either
/// started shuts out both, so members refuse to seal (pushes fail, saying what
/// to do; pulls go on) until one starts an epoch that does. Neither revoked
/// device reads anything written after.
#[test]
fn epochs_started_at_once_revoking_different_devices_seal_nothing_until_a_rekey_shuts_out_both() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let (mut b, mut c, mut x, mut y) = (join(&g, "b"), join(&g, "c"), join(&g, "x"), join(&g, "y"));
    for r in [&mut a, &mut b, &mut c, &mut x, &mut y] {
        sync(&g, r);
    }
    let b_id = b.id().to_owned();
    let at_a = block_on(group::rekey(&mut a, &g.store(), &[x.id().to_owned()], None))?;
    without_grant(&g, &b_id, &at_a.epoch, || block_on(group::rekey(&mut b, &g.store(), &[y.id().to_owned()], None)))?;
    write(&c, "written-while-split");
    let err = block_on(dimple::sync(&mut c, &g.store())).expect_err("c sealed under an epoch a revoked device holds");
    assert!(err.to_string().contains("dimple rekey"), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    let blocked = group::status(&c)?.unwrap().sealing_blocked.expect("status says why");
    assert!(blocked.contains(x.id()) || blocked.contains(y.id()), "{blocked}");
    for r in [&mut a, &mut b] {
        let pulled = block_on(dimple::pull(r, &g.store()))?;
        assert!(pulled.problems.is_empty(), "pulls go on: {:?}", pulled.problems);
        write(r, &format!("{}-while-split", r.id()));
        assert!(block_on(dimple::push(r, &g.store())).is_err(), "{} sealed while split", r.id());
    }
    block_on(group::rekey(&mut c, &g.store(), &[], None))?;
    assert_eq!(group::status(&c)?.unwrap().sealing_blocked, None);
    write(&a, "after-the-rekey");
    for _ in 0..2 {
        for r in [&mut a, &mut b, &mut c] {
            sync(&g, r);
        }
    }
    let (a_id, b_id) = (format!("{}-while-split", a.id()), format!("{}-while-split", b.id()));
    for r in [&a, &b, &c] {
        for id in ["written-while-split", "after-the-rekey", &a_id, &b_id] {
            assert!(has(r, id), "{} lacks {id}", r.id());
        }
    }
    for r in [&mut x, &mut y] {
        sync(&g, r);
        for id in ["written-while-split", "after-the-rekey", &a_id, &b_id] {
            assert!(!has(r, id), "{} read {id}, written after its revocation", r.id());
        }
    }
    Ok(())
}

/// A device about to be revoked starts an epoch of its own, and a member takes
/// that in before the epoch revoking the device: the member follows the
/// revocation all the same (it used to refuse it, for lacking the device's
/// epoch, and go on sealing under a key the device holds).
#[test]
fn a_revoked_device_that_started_an_epoch_of_its_own_reads_nothing_written_after() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let (mut c, mut r) = (join(&g, "c"), join(&g, "r"));
    for m in [&mut a, &mut c, &mut r] {
        sync(&g, m);
    }
    let own = block_on(group::rekey(&mut r, &g.store(), &[], None))?;
    sync(&g, &mut c);
    assert_eq!(epochs_held(&c), 2, "c took in r's epoch first");
    g.clock.advance(1000);
    let a_id = a.id().to_owned();
    without_grant(&g, &a_id, &own.epoch, || block_on(group::rekey(&mut a, &g.store(), &[r.id().to_owned()], None)))?;
    write(&c, "after-the-revocation");
    for _ in 0..2 {
        for m in [&mut c, &mut a] {
            // a refuses r's grant, now that r is revoked: that is the only problem.
            let report = sync(&g, m);
            let other: Vec<_> = report.pull.problems.iter().filter(|p| !p.contains("which is revoked here")).collect();
            assert!(other.is_empty(), "{}: {other:?}", m.id());
        }
    }
    assert!(has(&a, "after-the-revocation"));
    let report = sync(&g, &mut r);
    assert!(!has(&r, "after-the-revocation"), "the revoked device read a write made after its revocation");
    assert!(report.pull.problems.iter().any(|p| p.contains("was not granted")), "{:?}", report.pull.problems);
    Ok(())
}

type Later = Result<Replica, Box<dyn std::error::Error>>;

/// The scene of the two tests below: x is revoked by a rekey (with `passphrase`,
/// if any), then `joins` makes a new device; x and a member write, and the new
/// device applies the member's write and not x's. Returns it and x's id.
fn a_later_device_applies_nothing_the_revoked_device_writes(
    passphrase: Option<&str>,
    joins: impl FnOnce(&Group, &mut Replica) -> Later,
) -> Result<(Replica, String), Box<dyn std::error::Error>> {
    let g = Group::new();
    let mut a = start(&g, "a");
    let mut x = join(&g, "x");
    sync(&g, &mut a);
    sync(&g, &mut x);
    block_on(group::rekey(&mut a, &g.store(), &[x.id().to_owned()], passphrase))?;
    let mut z = joins(&g, &mut a)?;
    write(&x, "from-the-revoked-device");
    sync(&g, &mut x);
    write(&a, "from-a-member");
    sync(&g, &mut a);
    sync(&g, &mut z);
    assert!(has(&z, "from-a-member"));
    assert!(!has(&z, "from-the-revoked-device"), "a device joining later applied a revoked device's write");
    Ok((z, x.id().to_owned()))
}

/// A device granted after a revocation is told of it by its grant: what the
/// revoked device still writes is applied there by nobody either.
#[test]
fn a_device_granted_after_a_revocation_applies_nothing_the_revoked_device_writes() -> TestResult {
    a_later_device_applies_nothing_the_revoked_device_writes(None, |g, a| {
        let z = request(g, "z");
        block_on(group::grant(a, &g.store(), z.id()))?;
        Ok(z)
    })?;
    Ok(())
}

/// A device that joins by passphrase after a revocation learns it from the
/// new epoch's notice, as a device granted later learns it from its grant: it
/// applies nothing the revoked device writes, though it holds the epoch that
/// device seals under.
#[test]
fn a_device_joining_by_passphrase_after_a_revocation_applies_nothing_the_revoked_device_writes() -> TestResult {
    const NEW_PASS: &str = "a passphrase the revoked device never heard";
    let (z, x) = a_later_device_applies_nothing_the_revoked_device_writes(Some(NEW_PASS), |g, _| {
        let keys = block_on(group::unlock(&g.store(), NEW_PASS))?;
        let mut z = g.replica("z");
        block_on(group::adopt(&mut z, &g.store(), keys))?;
        Ok(z)
    })?;
    let held = dimple::status::replicas(&z)?.into_iter().find(|p| p.id == x).map(|p| p.trust);
    assert_eq!(held, Some(dimple::peers::Trust::Revoked), "the joiner holds the revocation itself");
    Ok(())
}

/// A rekey without a passphrase retires the old one: joining with it would give
/// only the epochs the members moved on from, those the revoked device holds.
/// It is refused with a message, before anything local is made.
#[test]
fn a_passphrase_a_rekey_left_behind_is_refused() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let mut x = join(&g, "x");
    sync(&g, &mut a);
    sync(&g, &mut x);
    assert!(block_on(group::unlock(&g.store(), PASS)).is_ok(), "the passphrase admits before the rekey");
    block_on(group::rekey(&mut a, &g.store(), &[x.id().to_owned()], None))?;
    let refused = block_on(group::unlock(&g.store(), PASS));
    assert!(matches!(&refused, Err(Error::Invalid(m)) if m.contains("passphrase was retired")), "{refused:?}");
    // A new passphrase with the next epoch admits again, to every epoch.
    block_on(group::rekey(&mut a, &g.store(), &[], Some("the new one")))?;
    let keys = block_on(group::unlock(&g.store(), "the new one"))?;
    assert_eq!(keys, group::keyring(&a)?);
    Ok(())
}

/// A key epoch far in the future would sort above every epoch a rekey could
/// start, so a member could never be revoked after it: a grant carrying one is
/// refused.
#[test]
fn a_grant_of_an_epoch_beyond_the_drift_limit_is_refused() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let mut b = join(&g, "b");
    sync(&g, &mut a);
    sync(&g, &mut b);
    let ahead = dimple::clock::ManualClock::new(dimple::clock::Clock::now_ms(&g.clock) + 365 * 24 * 3600 * 1000);
    drop(a);
    let mut a = Replica::open(&g.db("a"), dimple::Options { clock: std::sync::Arc::new(ahead), ..g.opts() })?;
    let before = group::keyring(&b)?;
    block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    sync(&g, &mut b);
    assert_eq!(group::keyring(&b)?, before, "the far epoch was not taken in");
    let problems = dimple::status::status(&b)?.problems;
    assert!(problems.iter().any(|p| p.reason.contains("beyond the drift limit")), "{problems:?}");
    Ok(())
}

/// A member passes on the keys it holds: one that has not pulled since another
/// started an epoch takes in its own grant of it before it grants a new device
/// (which would otherwise never read what is sealed under that epoch) or starts
/// an epoch itself (whose passphrase grant would otherwise lack it).
#[test]
fn a_member_behind_a_rekey_passes_on_every_epoch_when_it_grants_or_rekeys() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let mut b = join(&g, "b");
    sync(&g, &mut b);
    block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    write(&a, "sealed-under-the-new-epoch");
    sync(&g, &mut a);
    let mut d = request(&g, "d");
    block_on(group::grant(&mut b, &g.store(), d.id()))?;
    let report = sync(&g, &mut d);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert!(has(&d, "sealed-under-the-new-epoch"));
    // a starts another epoch, and b one with a passphrase grant before pulling:
    // a device joining by passphrase reads everything.
    block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    write(&a, "later");
    sync(&g, &mut a);
    block_on(group::rekey(&mut b, &g.store(), &[], Some(PASS)))?;
    let mut e = join(&g, "e");
    let report = sync(&g, &mut e);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert!(has(&e, "sealed-under-the-new-epoch") && has(&e, "later"));
    Ok(())
}

#[test]
fn a_clone_from_an_encrypted_snapshot_equals_the_source() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    for i in 0..300 {
        write(&a, &format!("k{i:03}"));
    }
    sync(&g, &mut a);
    block_on(dimple::snapshot::compact(&mut a, &g.store(), Duration::ZERO))?;
    let keys = block_on(group::unlock(&g.store(), PASS))?;
    let (c, report) = block_on(dimple::clone::clone_with_keys(
        &g.bucket_url(),
        &g.db("c"),
        Some("c"),
        g.opts(),
        &g.store(),
        &|_| {},
        Some(keys),
    ))?;
    assert!(report.snapshot.is_some());
    assert_eq!(rows(c.conn(), "t"), rows(a.conn(), "t"));
    // Without the keys, nothing is created.
    let plain = block_on(dimple::clone::clone(&g.bucket_url(), &g.db("d"), None, g.opts(), &g.store(), &|_| {}));
    assert!(matches!(plain, Err(Error::Invalid(m)) if m.contains("encrypted group")));
    assert!(!g.db("d").exists());
    Ok(())
}

#[test]
fn a_replica_in_the_clear_is_refused_a_bucket_that_holds_an_encrypted_group() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    sync(&g, &mut a);
    let mut x = g.replica("x");
    write(&x, "x1");
    let err = block_on(dimple::sync(&mut x, &g.store())).unwrap_err();
    assert!(matches!(&err, Error::Invalid(m) if m.contains("encrypted group")), "{err}");
    assert!(!g.bucket().join("replicas").join(x.id()).exists(), "it wrote nothing");
    Ok(())
}

/// The encrypted scene: members `a` (attacked) and `c` (a bystander) wrote `a2` and
/// `c2` after member `b` applied `a1` and `c1`.
struct Scene {
    g: Group,
    a: Replica,
    b: Replica,
    c: Replica,
}

impl Scene {
    fn new() -> Scene {
        let g = Group::new();
        let mut a = start(&g, "a");
        let (mut b, mut c) = (join(&g, "b"), join(&g, "c"));
        write(&a, "a1");
        write(&c, "c1");
        sync(&g, &mut a);
        sync(&g, &mut c);
        sync(&g, &mut b);
        write(&a, "a2");
        write(&c, "c2");
        sync(&g, &mut a);
        sync(&g, &mut c);
        let s = Scene { g, a, b, c };
        assert!(has(&s.b, "a1") && has(&s.b, "c1") && !has(&s.b, "a2") && !has(&s.b, "c2"));
        s
    }

    fn path(&self, key: &str) -> std::path::PathBuf {
        self.g.bucket().join(key)
    }

    /// `b` pulls: the attack on `origin` is refused as a problem naming it, `a2` is
    /// not applied, `c2` is.
    fn pull_refuses(&mut self, origin: &str, reason: &str) {
        let report = block_on(dimple::pull(&mut self.b, &self.g.store())).unwrap();
        assert!(
            report.problems.iter().any(|p| p.starts_with(origin) && p.contains(reason)),
            "expected a problem on {origin} saying {reason:?}: {:?}",
            report.problems
        );
        assert!(!has(&self.b, "a2"), "nothing of the attacked replica was applied");
        assert!(has(&self.b, "c2"), "the others sync on");
        let status = dimple::status::status(&self.b).unwrap();
        assert!(status.problems.iter().any(|p| p.object_key == origin));
    }

    fn flip(&self, key: &str, at: impl Fn(usize) -> usize) {
        let path = self.path(key);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = at(bytes.len());
        bytes[i] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
    }

    fn newest_batch(&self) -> String {
        let dir = self.g.bucket().join("batches").join(self.a.id());
        let newest = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).max().unwrap();
        format!("batches/{}/{}", self.a.id(), newest.to_string_lossy())
    }
}

#[test]
fn a_flipped_bit_anywhere_in_a_sealed_head_is_refused() -> TestResult {
    for at in [|_| 9usize, |_| 30, |n| n / 2, |n| n - 1] {
        let mut s = Scene::new();
        let key = layout::head_key(s.a.id());
        s.flip(&key, at);
        s.pull_refuses(&key, "");
    }
    Ok(())
}

#[test]
fn a_flipped_bit_in_a_sealed_batch_is_refused() -> TestResult {
    let mut s = Scene::new();
    let key = s.newest_batch();
    s.flip(&key, |n| n - 5);
    s.pull_refuses(&key, "batch altered or replaced");
    Ok(())
}

#[test]
fn a_sealed_object_copied_to_another_key_does_not_open() -> TestResult {
    let mut s = Scene::new();
    // c's head replaced by a copy of a's: sealed for another key.
    let (from, to) = (layout::head_key(s.a.id()), layout::head_key(s.c.id()));
    let saved = std::fs::read(s.path(&to))?;
    std::fs::copy(s.path(&from), s.path(&to))?;
    let report = block_on(dimple::pull(&mut s.b, &s.g.store()))?;
    assert!(
        report.problems.iter().any(|p| p.starts_with(&to) && p.contains("does not authenticate")),
        "{:?}",
        report.problems
    );
    assert!(!has(&s.b, "c2") && has(&s.b, "a2"), "the moved head applied nothing; a synced on");
    std::fs::write(s.path(&to), saved)?;
    block_on(dimple::pull(&mut s.b, &s.g.store()))?;
    assert!(has(&s.b, "c2"), "restored, c syncs again");
    Ok(())
}

#[test]
fn a_truncated_sealed_head_is_refused() -> TestResult {
    let mut s = Scene::new();
    let key = layout::head_key(s.a.id());
    let path = s.path(&key);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() - 1])?;
    s.pull_refuses(&key, "does not authenticate");
    std::fs::write(&path, &bytes[..30])?;
    s.pull_refuses(&key, "truncated");
    Ok(())
}

#[test]
fn a_head_from_an_older_epoch_put_back_is_refused_as_a_replay() -> TestResult {
    let mut s = Scene::new();
    let key = layout::head_key(s.a.id());
    block_on(dimple::pull(&mut s.b, &s.g.store()))?;
    let old = std::fs::read(s.path(&key))?;
    block_on(group::rekey(&mut s.a, &s.g.store(), &[], None))?;
    write(&s.a, "a3");
    sync(&s.g, &mut s.a);
    block_on(dimple::pull(&mut s.b, &s.g.store()))?;
    assert!(has(&s.b, "a3"));
    std::fs::write(s.path(&key), &old)?;
    let report = block_on(dimple::pull(&mut s.b, &s.g.store()))?;
    assert!(
        report.problems.iter().any(|p| p.starts_with(&key) && p.contains("older than the epoch")),
        "{:?}",
        report.problems
    );
    Ok(())
}

#[test]
fn a_replica_written_without_the_group_key_is_refused_and_the_others_sync_on() -> TestResult {
    let mut s = Scene::new();
    // An outsider with bucket access and a client that skips the group check.
    let mut x = s.g.replica("outsider");
    x.conn().execute("INSERT INTO ZV_METADATA(key, value) VALUES ('group.checked_plain', 'forced')", [])?;
    write(&x, "x1");
    sync(&s.g, &mut x);
    let key = layout::head_key(x.id());
    let report = block_on(dimple::pull(&mut s.b, &s.g.store()))?;
    assert!(
        report.problems.iter().any(|p| p.starts_with(&key) && p.contains("not sealed with the group key")),
        "{:?}",
        report.problems
    );
    assert!(!has(&s.b, "x1"));
    assert!(has(&s.b, "a2") && has(&s.b, "c2"));
    Ok(())
}

#[test]
fn a_tampered_snapshot_or_pointer_is_refused_by_a_clone() -> TestResult {
    for target in ["pointer", "snapshot"] {
        let s = Scene::new();
        let mut a = s.a;
        block_on(dimple::snapshot::compact(&mut a, &s.g.store(), Duration::ZERO))?;
        let store = s.g.store();
        let key = match target {
            "pointer" => layout::snapshot_pointer_key(),
            _ => {
                let listed = block_on(list_all(&store, layout::SNAPSHOTS_PREFIX, None))?;
                listed.into_iter().map(|m| m.key).find(|k| k.ends_with(".db")).unwrap()
            }
        };
        let path = s.g.bucket().join(&key);
        let mut bytes = std::fs::read(&path)?;
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        std::fs::write(&path, &bytes)?;
        let keys = block_on(group::unlock(&store, PASS))?;
        let cloned = block_on(dimple::clone::clone_with_keys(
            &s.g.bucket_url(),
            &s.g.db("clone"),
            None,
            s.g.opts(),
            &store,
            &|_| {},
            Some(keys),
        ));
        assert!(
            matches!(&cloned, Err(Error::BadData { origin, .. }) if *origin == key),
            "{target}: {:?}",
            cloned.err()
        );
    }
    Ok(())
}

#[test]
fn a_tampered_digest_is_refused_by_verify() -> TestResult {
    let mut s = Scene::new();
    let store = s.g.store();
    let mine = dimple::verify::snapshot_digest(&mut s.a)?;
    block_on(dimple::verify::publish(&mut s.a, &store, &mine))?;
    let key = layout::digest_key(s.a.id());
    s.flip(&key, |n| n - 1);
    let theirs = dimple::verify::snapshot_digest(&mut s.b)?;
    let cmp = block_on(dimple::verify::compare(&mut s.b, &store, &theirs));
    assert!(matches!(&cmp, Err(Error::BadData { origin, .. }) if *origin == key), "{:?}", cmp.err());
    Ok(())
}

#[test]
fn a_grant_from_outside_the_group_is_refused_and_the_device_keeps_waiting() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    sync(&g, &mut a);
    let mut t = request(&g, "t");
    // An outsider starts its own group elsewhere and wraps its key to t: t would
    // then seal its writes under a key the outsider knows.
    let other = Group::new();
    let mut o = other.replica("o");
    block_on(group::create(&mut o, &other.store(), None))?;
    std::fs::create_dir_all(other.bucket().join("join"))?;
    std::fs::copy(g.bucket().join(layout::join_key(t.id())), other.bucket().join(layout::join_key(t.id())))?;
    block_on(group::grant(&mut o, &other.store(), t.id()))?;
    let grants = other.bucket().join("grants").join(t.id());
    let forged = std::fs::read_dir(&grants)?.next().unwrap()?.path();
    std::fs::create_dir_all(g.bucket().join("grants").join(t.id()))?;
    std::fs::copy(&forged, g.bucket().join("grants").join(t.id()).join(forged.file_name().unwrap()))?;
    let err = block_on(dimple::sync(&mut t, &g.store())).unwrap_err();
    assert!(matches!(err, Error::AwaitingKey(_)), "{err}");
    let problems = dimple::status::status(&t)?.problems;
    assert!(
        problems.iter().any(|p| p.object_key.starts_with("grants/") && p.reason.contains("another group")),
        "{problems:?}"
    );
    // The real grant still works.
    block_on(group::grant(&mut a, &g.store(), t.id()))?;
    sync(&g, &mut t);
    assert!(!dimple::status::status(&t)?.encryption.unwrap().waiting_for_member);
    Ok(())
}

#[test]
fn a_new_epoch_granted_by_someone_without_the_old_keys_is_refused() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let mut b = join(&g, "b");
    sync(&g, &mut a);
    sync(&g, &mut b);
    let store = g.store();
    let group_id = group::keyring(&b)?.group;
    // An outsider with bucket access knows the group id, b's public keys and a
    // key of its own, but none of the group's keys. It grants b a "new epoch".
    let mut forged = dimple::seal::Keyring::new(group_id);
    forged.insert(uuid::Uuid::from_u128(u128::MAX >> 4), dimple::seal::GroupKey::random());
    let mut o = g.replica("outsider");
    block_on(group::adopt(&mut o, &store, forged))?;
    block_on(group::request(&mut b, &store, &group_id.to_string()))?;
    block_on(group::grant(&mut o, &store, b.id()))?;
    let before = group::keyring(&b)?;
    sync(&g, &mut b);
    assert_eq!(group::keyring(&b)?, before, "the forged epoch was not taken in");
    let problems = dimple::status::status(&b)?.problems;
    assert!(problems.iter().any(|p| p.reason.contains("not from a member")), "{problems:?}");
    // A member's rekey is followed.
    block_on(group::rekey(&mut a, &store, &[], None))?;
    sync(&g, &mut b);
    assert_eq!(group::keyring(&b)?.len(), before.len() + 1);
    Ok(())
}

#[test]
fn the_group_key_file_is_owner_only_and_never_uploaded() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    write(&a, "a1");
    sync(&g, &mut a);
    use std::os::unix::fs::PermissionsExt;
    let side = dimple::replica::side_dir(a.path());
    for f in ["group.keys", "exchange.key"] {
        let mode = std::fs::metadata(side.join(f))?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is owner-only");
    }
    let ring = group::keyring(&a)?;
    let (_, key) = ring.newest().unwrap();
    let raw = format!("{key:?}");
    assert_eq!(raw, "GroupKey(..)", "keys never print");
    let text = std::fs::read_to_string(side.join("group.keys"))?;
    let b64 = text.split('"').find(|s| s.len() == 44).unwrap().to_owned();
    for (k, bytes) in objects(&g.store()) {
        assert!(!contains(&bytes, b64.as_bytes()), "{k} holds the key unwrapped");
    }
    std::fs::set_permissions(side.join("group.keys"), std::fs::Permissions::from_mode(0o644))?;
    let mut again = g.reopen("a");
    let err = block_on(dimple::sync(&mut again, &g.store())).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    Ok(())
}

#[test]
fn a_group_in_the_clear_moves_to_encryption_through_a_seeded_snapshot() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (g.replica("a"), g.replica("b"));
    write(&a, "a1");
    write(&b, "b1");
    sync(&g, &mut a);
    sync(&g, &mut b);
    sync(&g, &mut a);
    // The new group lives under another prefix of the same bucket directory.
    let url = g.dir.path().join("sealed").display().to_string();
    let sealed = block_on(dimple::open_store(&url, None))?;
    let (_, report) = block_on(group::seed(&mut a, &sealed, PASS))?;
    assert_eq!(report.rows, 2);
    assert!(group::group_of(&a)?.is_none(), "the seeding replica stays in its group");
    for (key, bytes) in objects(&sealed) {
        let clear = ["group.json", "grants/"].iter().any(|p| key.starts_with(p));
        assert!(clear || dimple::seal::is_sealed(&bytes), "{key} is sealed");
    }
    // Seeding twice into the same place is refused: it is a group already.
    assert!(matches!(block_on(group::seed(&mut a, &sealed, PASS)), Err(Error::Invalid(_))));
    for name in ["a2", "b2"] {
        let keys = block_on(group::unlock(&sealed, PASS))?;
        let (mut r, _) = block_on(dimple::clone::clone_with_keys(
            &url,
            &g.db(name),
            Some(name),
            g.opts(),
            &sealed,
            &|_| {},
            Some(keys),
        ))?;
        assert!(has(&r, "a1") && has(&r, "b1"), "{name} holds the old group's state");
        write(&r, &format!("{name}-new"));
        block_on(dimple::sync(&mut r, &sealed))?;
    }
    let mut a2 = g.reopen("a2");
    block_on(dimple::sync(&mut a2, &sealed))?;
    assert!(has(&a2, "a2-new") && has(&a2, "b2-new"), "the moved devices sync in the new group");
    Ok(())
}

#[test]
fn a_forked_member_publishes_its_new_card_and_is_kept_by_a_rekey() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let b = join(&g, "b");
    sync(&g, &mut a);
    let old = b.id().to_owned();
    let (mut b, _) = dimple::fork::fork(b, None)?;
    write(&b, "b-forked");
    sync(&g, &mut b);
    assert!(g.bucket().join(layout::member_key(b.id())).exists(), "the new id has a card");
    let done = block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    assert!(done.granted.contains(&b.id().to_owned()) && done.granted.contains(&old), "{done:?}");
    write(&a, "after");
    sync(&g, &mut a);
    sync(&g, &mut b);
    assert!(has(&b, "after") && has(&a, "b-forked"));
    Ok(())
}

/// A forked device keeps the exchange key of the id it forked from: an epoch a
/// member starts before the new id's card is out reaches it through the grant
/// to that id.
#[test]
fn a_forked_device_reads_an_epoch_started_before_its_new_card_was_out() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let b = join(&g, "b");
    sync(&g, &mut a);
    let (mut b, _) = dimple::fork::fork(b, None)?;
    let done = block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    assert!(!done.granted.contains(&b.id().to_owned()), "the new id has no card yet: {done:?}");
    write(&a, "after");
    sync(&g, &mut a);
    let report = sync(&g, &mut b);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert!(has(&b, "after"));
    Ok(())
}

/// The copy that kept the id starts an epoch: it grants it to its own id too,
/// so the copy that forked away, holding the same exchange key, takes it in
/// before its new card is out.
#[test]
fn a_device_forked_from_a_copy_that_rekeys_reads_the_new_epoch() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    sync(&g, &mut a);
    drop(a);
    copy_database(&g, "a", "copy");
    let mut a = g.reopen("a");
    let copy = g.reopen("copy");
    block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    write(&a, "sealed-after");
    sync(&g, &mut a);
    let (mut copy, _) = dimple::fork::fork(copy, None)?;
    let report = sync(&g, &mut copy);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert!(has(&copy, "sealed-after"));
    Ok(())
}

/// Two copies of one database hold one clock and one replica id: epochs they
/// start at once before either pushes still get two ids, so each takes the
/// other's in (one id with two keys, each skipped by the other as an epoch it
/// held, split them for good).
#[test]
fn two_copies_of_a_device_starting_key_epochs_at_once_split_nobody() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    sync(&g, &mut a);
    drop(a);
    copy_database(&g, "a", "copy");
    let (mut a, mut copy) = (g.reopen("a"), g.reopen("copy"));
    let a_id = a.id().to_owned();
    let at_a = block_on(group::rekey(&mut a, &g.store(), &[], None))?;
    let at_copy = without_grant(&g, &a_id, &at_a.epoch, || block_on(group::rekey(&mut copy, &g.store(), &[], None)))?;
    assert_ne!(at_a.epoch, at_copy.epoch);
    write(&a, "from-a");
    sync(&g, &mut a);
    // The copy is told at its next sync that the id is in use, and forks.
    let (mut copy, _) = dimple::fork::fork(copy, None)?;
    write(&copy, "from-copy");
    for r in [&mut copy, &mut a] {
        let report = sync(&g, r);
        assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    }
    for r in [&a, &copy] {
        assert_eq!(epochs_held(r), 3, "{} holds the first epoch and both new ones", r.id());
        assert!(has(r, "from-a") && has(r, "from-copy"), "{}", r.id());
    }
    Ok(())
}

/// ... but not an epoch that shuts the new id out.
#[test]
fn a_forked_device_revoked_under_its_new_id_takes_no_epoch_through_the_id_it_forked_from() -> TestResult {
    let g = Group::new();
    let mut a = start(&g, "a");
    let b = join(&g, "b");
    sync(&g, &mut a);
    let (mut b, _) = dimple::fork::fork(b, None)?;
    sync(&g, &mut b);
    sync(&g, &mut a);
    let forked = b.id().to_owned();
    block_on(group::rekey(&mut a, &g.store(), &[forked], None))?;
    write(&a, "secret");
    sync(&g, &mut a);
    sync(&g, &mut b);
    assert!(!has(&b, "secret"), "the revoked new id read what was sealed after");
    Ok(())
}

/// The walkthrough of docs/trust.md, through the command line.
#[test]
fn the_command_line_creates_joins_grants_and_rekeys() -> TestResult {
    let g = Group::new();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dimple"))
            .args(args)
            .env_remove("DIMPLE_PASSPHRASE")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let pass = g.dir.path().join("pass");
    std::fs::write(&pass, format!("{PASS}\n"))?;
    let (bucket, pass) = (g.bucket_url(), pass.to_str().unwrap().to_owned());
    let db = |n: &str| g.db(n).to_str().unwrap().to_owned();
    for n in ["laptop", "phone", "tablet"] {
        open_plain(&g.db(n)).execute_batch(TABLE_SQL)?;
    }
    let (code, out, err) = run(&["init", &db("laptop"), "--bucket", &bucket, "--encrypt", "--passphrase-file", &pass]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("started an encrypted group"), "{out}");
    let (code, out, err) = run(&["init", &db("phone"), "--bucket", &bucket, "--passphrase-file", &pass]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("joined the encrypted group"), "{out}");
    let (code, out, _) = run(&["init", &db("tablet"), "--bucket", &bucket, "--json"]);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(info["encryption"], "waiting for a member");
    let tablet = info["replica"].as_str().unwrap().to_owned();
    for n in ["laptop", "phone", "tablet"] {
        assert_eq!(run(&["track", &db(n), "t"]).0, 0);
    }
    open_plain(&g.db("laptop")).execute("INSERT INTO t VALUES ('n1', 1, 'secret', 0.5)", [])?;
    assert_eq!(run(&["sync", &db("laptop")]).0, 0);
    let (code, _, err) = run(&["sync", &db("tablet")]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("waiting for a member") && err.lines().count() == 1, "{err}");
    let (_, out, _) = run(&["status", &db("tablet")]);
    assert!(out.contains("encrypted waiting for a member"), "{out}");
    let (code, out, err) = run(&["trust", &db("laptop"), &tablet]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("granted the group key"), "{out}");
    for n in ["tablet", "phone"] {
        let (code, _, err) = run(&["sync", &db(n)]);
        assert_eq!(code, 0, "{n}: {err}");
        assert!(has(&g.reopen(n), "n1"), "{n} reads the laptop's row");
    }
    let phone = Replica::open(&g.db("phone"), g.opts())?.id().to_owned();
    let (code, out, err) = run(&["rekey", &db("laptop"), "--revoke", &phone]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("granted to 1 other members") && out.contains(&phone), "{out}");
    Ok(())
}
