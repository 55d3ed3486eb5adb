//! Bounded fuzzing of the parsers that read the bucket (SPEC 6): whatever the bytes,
//! `Head::parse`, `Descriptor::parse` and `batch::open` + `Batch::changes` return
//! either a value or a `BadData` error, never panic and never another error kind.
//!
//! Inputs are random bytes and mutations (bit flips, truncation, splices) of valid
//! objects pushed by a real replica, so that most cases get past the first check.
//! `DIMPLE_FUZZ_CASES` sets the cases per target (default 256, enough for CI; raise
//! it for a longer local run).

use crate::support::*;
use dimple::head::{Descriptor, Head};
use dimple::{batch, layout};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use std::sync::OnceLock;

fn config() -> Config {
    let cases = std::env::var("DIMPLE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Valid objects from one push: (replica id, public key, head, descriptor, batch).
struct Valid {
    id: String,
    public_key: String,
    head: Vec<u8>,
    descriptor: Vec<u8>,
    batch: Vec<u8>,
    stored_batch: Vec<u8>,
}

fn valid() -> &'static Valid {
    static VALID: OnceLock<Valid> = OnceLock::new();
    VALID.get_or_init(|| {
        let g = Group::new();
        let mut a = g.replica("a");
        for i in 0..5 {
            a.conn()
                .execute("INSERT INTO t VALUES (?1, ?2, 'text', 1.5)", rusqlite::params![format!("k{i}"), i])
                .unwrap();
        }
        a.conn().execute("UPDATE t SET a = x'00ff' WHERE id = 'k1'", []).unwrap();
        block_on(dimple::push(&mut a, &g.store())).unwrap();
        let read = |k: &str| std::fs::read(g.bucket().join(k)).unwrap();
        let head = read(&layout::head_key(a.id()));
        let body = Head::parse(&head, "valid", a.id(), None).unwrap().body;
        Valid {
            id: a.id().to_owned(),
            public_key: a.public_key().unwrap(),
            descriptor: read(&layout::descriptor_key(a.id())),
            // The SQLite file inside the stored (compressed) batch: mutations then
            // reach SQLite's parsing, not only the decompressor.
            batch: batch::unpack(&read(&body.batch_key), "valid").unwrap().into_owned(),
            stored_batch: read(&body.batch_key),
            head,
        }
    })
}

/// Bit flips, a truncation, or a splice of random bytes over a range.
fn mutations(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len();
    prop_oneof![
        prop::collection::vec((0..n, 0u8..8), 1..16).prop_map(move |flips| {
            let mut v = base.to_vec();
            for (i, bit) in flips {
                v[i] ^= 1 << bit;
            }
            v
        }),
        (0..n).prop_map(move |len| base[..len].to_vec()),
        (0..n, 0..n, prop::collection::vec(any::<u8>(), 0..256)).prop_map(move |(x, y, bytes)| {
            let (from, to) = (x.min(y), x.max(y));
            let mut v = base[..from].to_vec();
            v.extend_from_slice(&bytes);
            v.extend_from_slice(&base[to..]);
            v
        }),
    ]
}

fn ok_or_bad<T>(what: &str, r: dimple::Result<T>) -> Result<(), TestCaseError> {
    match r {
        Ok(_) | Err(dimple::Error::BadData { .. }) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("{what}: not a BadData error: {e:?}"))),
    }
}

fn check_head(bytes: &[u8]) -> Result<(), TestCaseError> {
    let v = valid();
    ok_or_bad("head", Head::parse(bytes, "fuzz", &v.id, None))?;
    ok_or_bad("pinned head", Head::parse(bytes, "fuzz", &v.id, Some(&v.public_key)))
}

/// The pull path: unpack (when compressed), then open and read every change.
fn check_batch(dir: &std::path::Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("batch.db");
    let opened = batch::unpack(bytes, "fuzz").and_then(|sqlite| {
        std::fs::write(&path, &*sqlite).unwrap();
        batch::open(&path, "fuzz", &valid().id).and_then(|b| b.changes())
    });
    ok_or_bad("batch", opened)
}

#[test]
fn the_valid_objects_parse() {
    let v = valid();
    Head::parse(&v.head, "valid", &v.id, Some(&v.public_key)).unwrap();
    Descriptor::parse(&v.descriptor, "valid", &v.id).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.db"), &v.batch).unwrap();
    assert_eq!(batch::open(&dir.path().join("b.db"), "valid", &v.id).unwrap().changes().unwrap().len(), 5 * 4 + 1);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn head_parse_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_head(&bytes)?;
    }

    #[test]
    fn head_parse_never_panics_on_a_mutated_head(bytes in mutations(&valid().head)) {
        check_head(&bytes)?;
    }

    #[test]
    fn descriptor_parse_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        ok_or_bad("descriptor", Descriptor::parse(&bytes, "fuzz", &valid().id))?;
    }

    #[test]
    fn descriptor_parse_never_panics_on_a_mutated_descriptor(bytes in mutations(&valid().descriptor)) {
        ok_or_bad("descriptor", Descriptor::parse(&bytes, "fuzz", &valid().id))?;
    }

    #[test]
    fn batch_open_never_panics_on_random_bytes(tail in prop::collection::vec(any::<u8>(), 0..8192), sqlite in any::<bool>()) {
        // Half the cases start like a SQLite file, to get past the first check.
        let mut bytes = if sqlite { b"SQLite format 3\0".to_vec() } else { Vec::new() };
        bytes.extend(tail);
        let dir = tempfile::tempdir().unwrap();
        check_batch(dir.path(), &bytes)?;
    }

    #[test]
    fn batch_unpack_never_panics_on_a_mutated_stored_batch(bytes in mutations(&valid().stored_batch)) {
        let dir = tempfile::tempdir().unwrap();
        check_batch(dir.path(), &bytes)?;
    }

    #[test]
    fn batch_open_never_panics_on_a_mutated_batch(bytes in mutations(&valid().batch)) {
        let dir = tempfile::tempdir().unwrap();
        check_batch(dir.path(), &bytes)?;
    }
}
