//! Attachments (docs/attachments.md): values at or above the threshold travel out
//! of line, once per content, streamed, checked, fetched lazily on request and
//! collected when nothing references them. One test per promise.

use crate::support::*;
use dimple::store::{list_all, Store};
use dimple::{layout, Replica};
use rand::{Rng, RngCore, SeedableRng};
use rusqlite::types::Value;

const FILES_SQL: &str = "CREATE TABLE f(id TEXT PRIMARY KEY, name TEXT, note TEXT, data BLOB)";

fn files(g: &Group, name: &str) -> Replica {
    let path = g.db(name);
    let mut r = Replica::init(&path, Some(&g.bucket_url()), Some(name), g.opts()).unwrap();
    r.conn().execute_batch(FILES_SQL).unwrap();
    r.track("f", false).unwrap();
    r
}

fn sync(g: &Group, r: &mut Replica) -> dimple::SyncReport {
    let report = block_on(dimple::sync(r, &g.store())).unwrap();
    g.clock.advance(3);
    report
}

fn random_bytes(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rng.fill_bytes(&mut b);
    b
}

/// Text of about `n` bytes mixing one- to four-byte characters.
fn random_text(rng: &mut rand::rngs::StdRng, n: usize) -> String {
    let mut s = String::with_capacity(n + 4);
    while s.len() < n {
        s.push(match rng.gen_range(0..4) {
            0 => rng.gen_range('a'..='z'),
            1 => rng.gen_range('\u{e0}'..='\u{ff}'),
            2 => rng.gen_range('\u{4e00}'..='\u{4fff}'),
            _ => rng.gen_range('\u{1f600}'..='\u{1f64f}'),
        });
    }
    s
}

/// Every row of `f`, values as SQLite holds them (storage class included).
fn rows(r: &Replica) -> Vec<Vec<Value>> {
    let mut stmt =
        r.conn().prepare("SELECT id, name, note, data, typeof(data), typeof(note) FROM f ORDER BY id").unwrap();
    stmt.query_map([], |row| (0..6).map(|i| row.get::<_, Value>(i)).collect()).unwrap().map(Result::unwrap).collect()
}

fn blob_keys(store: &dyn Store) -> Vec<String> {
    block_on(list_all(store, layout::BLOBS_PREFIX, None)).unwrap().into_iter().map(|m| m.key).collect()
}

fn sha(bytes: &[u8]) -> String {
    dimple::hash::sha256_hex(bytes)
}

fn large_values_arrive_bit_for_bit(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "blobs-bits") else { return Ok(()) };
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let threshold = dimple::blob::DEFAULT_THRESHOLD as usize;
    let mut expected_blobs = Vec::new();
    let (mut inline, mut out_of_line) = (0, 0);
    // Around the threshold, and well above it; TEXT and BLOB.
    for (i, n) in [threshold - 1, threshold, threshold + 1, 3 * threshold + 17, 1 << 20].into_iter().enumerate() {
        let data = random_bytes(&mut rng, n);
        let note = random_text(&mut rng, n);
        a.conn()
            .execute("INSERT INTO f VALUES (?1, ?2, ?3, ?4)", rusqlite::params![format!("r{i}"), "x", note, data])?;
        for v in [data.as_slice(), note.as_bytes()] {
            if v.len() >= threshold {
                expected_blobs.push(layout::blob_key(&sha(v)));
                out_of_line += v.len();
            } else {
                inline += v.len();
            }
        }
    }
    let pushed = sync(&g, &mut a);
    let pulled = sync(&g, &mut b);
    assert_eq!(rows(&a), rows(&b));
    expected_blobs.sort();
    assert_eq!(blob_keys(&g.store()), expected_blobs, "one object per value at or above the threshold");
    assert_eq!(pushed.push.blobs.count as usize, expected_blobs.len());
    assert_eq!(pulled.pull.blobs.count as usize, expected_blobs.len());
    // The batches carry the small values and references, not the large bytes.
    let batches = block_on(list_all(&g.store(), "batches/", None))?;
    let batch_bytes: usize = batches.iter().map(|m| m.size as usize).sum();
    assert!(out_of_line > 10 * inline);
    assert!(batch_bytes < inline + 16_384, "batches hold {batch_bytes} bytes for {inline} bytes held inline");
    Ok(())
}

#[test]
fn large_values_travel_out_of_line_and_arrive_bit_for_bit() -> TestResult {
    large_values_arrive_bit_for_bit(Backend::Local)
}

#[test]
fn large_values_travel_out_of_line_and_arrive_bit_for_bit_on_s3() -> TestResult {
    large_values_arrive_bit_for_bit(Backend::S3)
}

#[test]
fn the_same_file_in_two_rows_and_on_two_replicas_is_stored_once() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let file = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(1), 300_000);
    a.conn().execute("INSERT INTO f VALUES ('a1', 'x', NULL, ?1), ('a2', 'y', NULL, ?1)", [&file])?;
    let first = sync(&g, &mut a);
    assert_eq!(first.push.blobs.count, 1, "two rows, one upload");
    b.conn().execute("INSERT INTO f VALUES ('b1', 'z', NULL, ?1)", [&file])?;
    let second = sync(&g, &mut b);
    assert_eq!(second.push.blobs.count, 0, "the bucket had it already");
    assert!(second.requests.bytes_up < 100_000, "{} bytes sent", second.requests.bytes_up);
    sync(&g, &mut a);
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(blob_keys(&g.store()), vec![layout::blob_key(&sha(&file))]);
    Ok(())
}

#[test]
fn editing_another_column_of_the_row_uploads_no_blob_bytes() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let file = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(2), 500_000);
    a.conn().execute("INSERT INTO f VALUES ('k', 'old name', NULL, ?1)", [&file])?;
    sync(&g, &mut a);
    sync(&g, &mut b);
    a.conn().execute("UPDATE f SET name = 'new name' WHERE id = 'k'", [])?;
    let edit = sync(&g, &mut a);
    assert_eq!(edit.push.changes, 1);
    assert_eq!(edit.push.blobs.count, 0);
    assert!(edit.requests.bytes_up < 20_000, "{} bytes sent for a rename", edit.requests.bytes_up);
    let pulled = sync(&g, &mut b);
    assert_eq!(pulled.pull.blobs.count, 0, "nothing to download for a rename");
    assert_eq!(rows(&a), rows(&b));
    Ok(())
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_reference_is_refused_as_a_problem() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    b.conn().execute("INSERT INTO f VALUES ('mine', 'b', 'kept', NULL)", [])?;
    sync(&g, &mut b);
    let file = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(3), 200_000);
    a.conn().execute("INSERT INTO f VALUES ('k', 'x', 'y', ?1)", [&file])?;
    sync(&g, &mut a);
    // The bucket swaps the bytes for others of the same size.
    let key = layout::blob_key(&sha(&file));
    let mut other = file.clone();
    other[100_000] ^= 1;
    std::fs::write(g.bucket().join(&key), &other)?;
    let before = rows(&b);
    let report = sync(&g, &mut b);
    assert_eq!(report.pull.changes, 0, "nothing of the batch is applied");
    assert!(
        report.pull.problems.iter().any(|p| p.contains(&key) && p.contains("do not match")),
        "{:?}",
        report.pull.problems
    );
    assert_eq!(rows(&b), before, "what was stored stays");
    let st = dimple::status::status(&b)?;
    assert!(st.problems.iter().any(|p| p.object_key == key), "{:?}", st.problems);
    // Put right, the next pull applies it.
    std::fs::write(g.bucket().join(&key), &file)?;
    let report = sync(&g, &mut b);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert_eq!(rows(&a), rows(&b));
    assert!(dimple::status::status(&b)?.problems.is_empty());
    Ok(())
}

#[test]
fn a_lazy_replica_applies_the_row_without_the_value_and_fetches_it_on_demand() -> TestResult {
    let g = Group::new();
    let (mut a, mut phone) = (files(&g, "a"), files(&g, "phone"));
    dimple::blob::set_fetch_policy(phone.conn(), dimple::blob::Fetch::Lazy)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let (photo, pdf) = (random_bytes(&mut rng, 400_000), random_bytes(&mut rng, 150_000));
    a.conn().execute("INSERT INTO f VALUES ('p1', 'photo', 'n', ?1), ('p2', 'pdf', 'n', ?2)", [&photo, &pdf])?;
    sync(&g, &mut a);
    let report = sync(&g, &mut phone);
    assert_eq!(report.pull.blobs.count, 0, "a lazy replica downloads nothing");
    assert_eq!(report.pull.blobs_missing.count, 2);
    assert_eq!(report.pull.blobs_missing.bytes, 550_000);
    let data = |r: &Replica, id: &str| -> Value {
        r.conn().query_row("SELECT data FROM f WHERE id = ?1", [id], |row| row.get(0)).unwrap()
    };
    assert_eq!(data(&phone, "p1"), Value::Null);
    assert_eq!(phone.conn().query_row("SELECT name FROM f WHERE id = 'p1'", [], |r| r.get::<_, String>(0))?, "photo");
    let st = dimple::status::status(&phone)?;
    assert_eq!(st.blobs.missing.count, 2);
    assert!(st.blobs.missing_cells.contains(&("f".into(), "p1".into(), "data".into())));
    // One row on demand.
    let fetched = block_on(dimple::fetch(&mut phone, &g.store(), Some(("f", "p1"))))?;
    assert_eq!((fetched.moved.count, fetched.filled, fetched.still_missing), (1, 1, 0));
    assert_eq!(data(&phone, "p1"), Value::Blob(photo.clone()));
    assert_eq!(data(&phone, "p2"), Value::Null);
    assert_eq!(dimple::status::status(&phone)?.blobs.missing.count, 1);
    // Fetched values are not captured as local writes.
    assert_eq!(dimple::status::status(&phone)?.pending_changes, 0);
    // The app writing the cell itself ends the wait for the old value.
    phone.conn().execute("UPDATE f SET data = x'00' WHERE id = 'p2'", [])?;
    sync(&g, &mut phone);
    assert_eq!(dimple::status::status(&phone)?.blobs.missing.count, 0);
    sync(&g, &mut a);
    assert_eq!(data(&a, "p2"), Value::Blob(vec![0]));
    Ok(())
}
