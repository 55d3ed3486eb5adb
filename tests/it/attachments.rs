//! Attachments (docs/attachments.md): values at or above the threshold travel out
//! of line, once per content, streamed, checked, fetched lazily on request and
//! collected when nothing references them. One test per promise.

use crate::support::*;
use dimple::store::{list_all, ObjectMeta, Part, PutMode, Store, StoreError};
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
fn rows(r: &Replica) -> Vec<Vec<Cell>> {
    let mut stmt =
        r.conn().prepare("SELECT id, name, note, data, typeof(data), typeof(note) FROM f ORDER BY id").unwrap();
    stmt.query_map([], |row| (0..6).map(|i| row.get::<_, Cell>(i)).collect()).unwrap().map(Result::unwrap).collect()
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
    // Around the threshold, and well above it; TEXT and BLOB, and TEXT whose
    // bytes are not UTF-8 (random bytes, as SQLite stores them).
    for (i, n) in [threshold - 1, threshold, threshold + 1, 3 * threshold + 17, 1 << 20].into_iter().enumerate() {
        let data = random_bytes(&mut rng, n);
        let note = random_text(&mut rng, n);
        let raw = random_bytes(&mut rng, n);
        a.conn()
            .execute("INSERT INTO f VALUES (?1, ?2, ?3, ?4)", rusqlite::params![format!("r{i}"), "x", note, data])?;
        a.conn().execute(
            "INSERT INTO f VALUES (?1, ?2, ?3, NULL)",
            rusqlite::params![format!("r{i}-raw"), "x", Cell::Text(raw.clone())],
        )?;
        assert!(std::str::from_utf8(&raw).is_err());
        for v in [data.as_slice(), note.as_bytes(), &raw] {
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

/// A captured write's value at or above the threshold is selected as an empty
/// blob stands in for it, and only then is its pending row asked which it is:
/// real empty blobs and empty text beside large values, small values just
/// under the threshold, in inserts and updates, arrive as themselves, and
/// only the large values travel out of line.
#[test]
fn empty_values_beside_large_ones_in_captured_writes_arrive_as_themselves() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let threshold = 1024;
    dimple::blob::set_threshold(a.conn(), threshold as u64)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let pick = |rng: &mut rand::rngs::StdRng| -> Value {
        let (small, large) = (rng.gen_range(0..threshold - 1), rng.gen_range(threshold..3 * threshold));
        match rng.gen_range(0..7) {
            0 | 1 => Value::Blob(Vec::new()),
            2 => Value::Text(String::new()),
            3 => Value::Blob(random_bytes(rng, large)),
            4 => Value::Text(random_text(rng, large)),
            5 => Value::Blob(random_bytes(rng, small)),
            _ => Value::Null,
        }
    };
    let mut large = std::collections::BTreeSet::new();
    let mut side_by_side = 0;
    let note = |v: &Value, large: &mut std::collections::BTreeSet<String>| {
        if matches!(v, Value::Blob(b) if b.len() >= threshold) || matches!(v, Value::Text(t) if t.len() >= threshold) {
            large.insert(blob_key_of(v));
        }
    };
    let is_empty = |v: &Value| matches!(v, Value::Blob(b) if b.is_empty());
    for i in 0..60 {
        let (text, data) = (pick(&mut rng), pick(&mut rng));
        for v in [&text, &data] {
            note(v, &mut large);
        }
        side_by_side += usize::from(
            is_empty(&text) && large.contains(&blob_key_of(&data))
                || is_empty(&data) && large.contains(&blob_key_of(&text)),
        );
        let sql = "INSERT INTO f VALUES (?1, 'x', ?2, ?3)";
        a.conn().execute(sql, rusqlite::params![format!("r{i}"), text, data])?;
    }
    for i in 0..60 {
        if rng.gen_bool(0.5) {
            continue;
        }
        let (text, data) = (pick(&mut rng), pick(&mut rng));
        for v in [&text, &data] {
            note(v, &mut large);
        }
        let sql = "UPDATE f SET note = ?2, data = ?3 WHERE id = ?1";
        a.conn().execute(sql, rusqlite::params![format!("r{i}"), text, data])?;
    }
    assert!(side_by_side > 0, "some row holds an empty blob beside a large value");
    sync(&g, &mut a);
    sync(&g, &mut b);
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(blob_keys(&g.store()), large.into_iter().collect::<Vec<_>>());
    Ok(())
}

/// The key a value would be stored under, were it large.
fn blob_key_of(v: &Value) -> String {
    match v {
        Value::Blob(b) => layout::blob_key(&sha(b)),
        Value::Text(t) => layout::blob_key(&sha(t.as_bytes())),
        _ => String::new(),
    }
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

/// `n` rows of `f` on `a`, each holding a value of 70-300 kB in `data`; returns their bytes.
fn insert_large_values(a: &Replica, n: usize) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut bytes = 0;
    for i in 0..n {
        let n = rng.gen_range(70_000..300_000);
        let value = random_bytes(&mut rng, n);
        bytes += value.len() as u64;
        a.conn()
            .execute("INSERT INTO f VALUES (?1, 'x', NULL, ?2)", rusqlite::params![format!("r{i}"), value])
            .unwrap();
    }
    bytes
}

#[test]
fn values_of_a_table_this_replica_lacks_are_not_downloaded_until_the_app_creates_it() -> TestResult {
    let g = Group::new();
    let mut a = files(&g, "a");
    let bytes = insert_large_values(&a, 3);
    sync(&g, &mut a);
    // The second replica's app has not created the table yet (manual schema
    // policy): the changes wait in the log, and there is no row to put a value in.
    let mut b = Replica::init(&g.db("b"), Some(&g.bucket_url()), Some("b"), g.opts())?;
    let before = sync(&g, &mut b);
    assert_eq!(before.pull.changes, 12, "the changes are stored");
    assert_eq!(before.pull.blobs.count, 0, "no value is downloaded for a table with no rows to fill");
    // Created by the app: the next pull tracks it, applies the rows and fetches the values.
    b.conn().execute_batch(FILES_SQL)?;
    let after = sync(&g, &mut b);
    assert_eq!((after.pull.blobs.count, after.pull.blobs.bytes), (3, bytes));
    assert_eq!(rows(&b), rows(&a));
    Ok(())
}

#[test]
fn values_of_a_column_this_replica_lacks_are_not_downloaded_until_the_app_adds_it() -> TestResult {
    let g = Group::new();
    let mut a = files(&g, "a");
    let bytes = insert_large_values(&a, 2);
    sync(&g, &mut a);
    // The second replica's table has no `data` column yet (an older schema).
    let mut b = Replica::init(&g.db("b"), Some(&g.bucket_url()), Some("b"), g.opts())?;
    b.conn().execute_batch("CREATE TABLE f(id TEXT PRIMARY KEY, name TEXT, note TEXT)")?;
    b.track("f", false)?;
    let before = sync(&g, &mut b);
    assert_eq!(before.pull.changes, 8, "the changes are stored");
    assert_eq!(before.pull.blobs.count, 0, "no value is downloaded for a column the table lacks");
    b.conn().execute_batch("ALTER TABLE f ADD COLUMN data BLOB")?;
    let after = sync(&g, &mut b);
    assert_eq!((after.pull.blobs.count, after.pull.blobs.bytes), (2, bytes));
    assert_eq!(rows(&b), rows(&a));
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
    a_blob_not_matching_its_reference_is_refused(0)
}

/// The same in a batch of more changes than a pull merges at a time, the
/// reference in a later piece: such a batch is merged while its check goes on,
/// until a reference is found; then it is checked whole, its values downloaded,
/// and only then applied.
#[test]
fn a_blob_late_in_a_large_batch_not_matching_its_reference_is_refused_as_a_problem() -> TestResult {
    a_blob_not_matching_its_reference_is_refused(rand::thread_rng().gen_range(2_600..3_000))
}

/// `rows_before` small rows, then one with a large value, pushed as one batch.
fn a_blob_not_matching_its_reference_is_refused(rows_before: usize) -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    b.conn().execute("INSERT INTO f VALUES ('mine', 'b', 'kept', NULL)", [])?;
    sync(&g, &mut b);
    a.conn().execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO f SELECT printf('small-%05d', i), 'x', i, randomblob(8) FROM n",
        [rows_before as i64],
    )?;
    let file = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(3), 200_000);
    a.conn().execute("INSERT INTO f VALUES ('k', 'x', 'y', ?1)", [&file])?;
    let pushed = sync(&g, &mut a).push;
    assert_eq!((pushed.batches, pushed.changes), (1, rows_before * 4 + 4), "one batch");
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

/// Batches that share a pull's transaction with a large batch referring to
/// values stored out of line: that batch's transaction is rolled back when its
/// first reference is read, and they are applied again, each checked whole,
/// once and all of them.
#[test]
fn batches_before_a_large_batch_with_values_stored_out_of_line_arrive_once_with_it() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut pushed = 0;
    for batch in 0..rng.gen_range(1..4) {
        for i in 0..rng.gen_range(1..30) {
            let note = random_text(&mut rng, 20);
            a.conn()
                .execute("INSERT INTO f VALUES (?1, 'x', ?2, NULL)", rusqlite::params![format!("{batch}-{i}"), note])?;
        }
        pushed += sync(&g, &mut a).push.changes;
    }
    a.conn().execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO f SELECT printf('small-%05d', i), 'x', i, randomblob(8) FROM n",
        [rng.gen_range(2_600..3_000)],
    )?;
    let n = insert_large_values(&a, rng.gen_range(1..4));
    assert!(n > 0);
    let last = sync(&g, &mut a).push;
    assert!(last.batches == 1 && last.changes > 10_000, "one large batch: {last:?}");
    pushed += last.changes;
    let report = sync(&g, &mut b);
    assert!(report.pull.problems.is_empty(), "{:?}", report.pull.problems);
    assert_eq!(report.pull.changes, pushed, "every change applied once");
    assert_eq!(rows(&a), rows(&b));
    let logged: i64 = b.conn().query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get(0))?;
    assert_eq!(logged as usize, pushed, "the log holds each change once");
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

/// A lazy replica's row holds NULL where a value is not fetched yet. The app
/// changing the row's key never wrote that NULL: the new row waits for the same
/// value, and every replica gets the value under the new key. A value the app
/// sets in the same statement is its own write.
#[test]
fn a_lazy_replica_changing_a_rows_key_keeps_the_values_it_has_not_fetched() -> TestResult {
    let g = Group::new();
    let (mut a, mut phone) = (files(&g, "a"), files(&g, "phone"));
    dimple::blob::set_fetch_policy(phone.conn(), dimple::blob::Fetch::Lazy)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (photo, caption, pdf) =
        (random_bytes(&mut rng, 300_000), random_text(&mut rng, 90_000), random_bytes(&mut rng, 70_000));
    a.conn().execute(
        "INSERT INTO f VALUES ('p1', 'photo', ?1, ?2), ('p2', 'pdf', 'n', ?3)",
        rusqlite::params![caption, photo, pdf],
    )?;
    sync(&g, &mut a);
    sync(&g, &mut phone);
    assert_eq!(dimple::status::status(&phone)?.blobs.missing.count, 3);
    phone.conn().execute("UPDATE f SET id = 'p1-renamed' WHERE id = 'p1'", [])?;
    phone.transaction(|tx| {
        tx.execute("UPDATE f SET id = 'p2-renamed', data = x'01' WHERE id = 'p2'", [])?;
        Ok(())
    })?;
    sync(&g, &mut phone);
    sync(&g, &mut a);
    let expected = vec![
        vec![
            Cell::Text(b"p1-renamed".to_vec()),
            Cell::Text(b"photo".to_vec()),
            Cell::Text(caption.clone().into_bytes()),
            Cell::Blob(photo.clone()),
            Cell::Text(b"blob".to_vec()),
            Cell::Text(b"text".to_vec()),
        ],
        vec![
            Cell::Text(b"p2-renamed".to_vec()),
            Cell::Text(b"pdf".to_vec()),
            Cell::Text(b"n".to_vec()),
            Cell::Blob(vec![1]),
            Cell::Text(b"blob".to_vec()),
            Cell::Text(b"text".to_vec()),
        ],
    ];
    // Rows printed short: a failure would print megabytes.
    let brief = |rows: Vec<Vec<Cell>>| -> Vec<Vec<String>> {
        rows.iter().map(|r| r.iter().map(|c| format!("{c:?}").chars().take(24).collect()).collect()).collect()
    };
    let on_a = rows(&a);
    assert!(on_a == expected, "the other replica gets the values under the new key: {:?}", brief(on_a));
    let st = dimple::status::status(&phone)?;
    assert_eq!(st.blobs.missing.count, 2, "{:?}", st.blobs.missing_cells);
    assert!(st.blobs.missing_cells.contains(&("f".into(), "p1-renamed".into(), "data".into())));
    let fetched = block_on(dimple::fetch(&mut phone, &g.store(), None))?;
    assert_eq!((fetched.filled, fetched.still_missing), (2, 0));
    let on_phone = rows(&phone);
    assert!(on_phone == expected, "{:?}", brief(on_phone));
    assert!(dimple::verify::check(&mut phone)?.is_empty());
    assert!(dimple::verify::check(&mut a)?.is_empty());
    Ok(())
}

/// A lazy replica's row holds NULL where a value is not fetched yet, and an app
/// saving a whole row (as ORMs do) writes that NULL back. That NULL is what the
/// app saw, not a value it chose: the cell keeps waiting, every replica keeps
/// the value, and the columns the app did change travel. To clear such a value
/// the app fetches it first; NULL over a fetched value is an ordinary write.
#[test]
fn a_lazy_replica_writing_back_the_null_it_sees_keeps_the_value_it_has_not_fetched() -> TestResult {
    let g = Group::new();
    let (mut a, mut phone) = (files(&g, "a"), files(&g, "phone"));
    dimple::blob::set_fetch_policy(phone.conn(), dimple::blob::Fetch::Lazy)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (photo, scan) = (random_bytes(&mut rng, 200_000), random_bytes(&mut rng, 120_000));
    a.conn().execute("INSERT INTO f VALUES ('p1', 'photo', 'n', ?1), ('p2', 'scan', 'n', ?2)", [&photo, &scan])?;
    sync(&g, &mut a);
    sync(&g, &mut phone);
    assert_eq!(dimple::status::status(&phone)?.blobs.missing.count, 2);
    // The ORM's save: every column, as read.
    let (name, note, data): (String, String, Value) =
        phone.conn().query_row("SELECT name, note, data FROM f WHERE id = 'p1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    assert_eq!(data, Value::Null);
    phone.conn().execute(
        "UPDATE f SET name = ?1, note = ?2, data = ?3 WHERE id = 'p1'",
        rusqlite::params![format!("{name} (renamed)"), note, data],
    )?;
    // Clearing a value: fetched first, then an ordinary write.
    block_on(dimple::fetch(&mut phone, &g.store(), Some(("f", "p2"))))?;
    phone.conn().execute("UPDATE f SET data = NULL WHERE id = 'p2'", [])?;
    sync(&g, &mut phone);
    sync(&g, &mut a);
    let data_of = |r: &Replica, id: &str| -> Value {
        r.conn().query_row("SELECT data FROM f WHERE id = ?1", [id], |row| row.get(0)).unwrap()
    };
    let name_on_a: String = a.conn().query_row("SELECT name FROM f WHERE id = 'p1'", [], |r| r.get(0))?;
    assert_eq!(name_on_a, "photo (renamed)");
    assert!(data_of(&a, "p1") == Value::Blob(photo.clone()), "the other replica keeps the value");
    assert_eq!(data_of(&a, "p2"), Value::Null, "a fetched value set to NULL is cleared everywhere");
    let st = dimple::status::status(&phone)?;
    assert_eq!(st.blobs.missing_cells, vec![("f".into(), "p1".into(), "data".into())]);
    block_on(dimple::fetch(&mut phone, &g.store(), None))?;
    assert!(data_of(&phone, "p1") == Value::Blob(photo), "the phone gets it on demand");
    assert_eq!(data_of(&phone, "p2"), Value::Null);
    assert!(dimple::verify::check(&mut phone)?.is_empty());
    Ok(())
}

/// The app's way to clear a value a lazy replica has not fetched: `blob::clear`
/// makes it NULL on every replica without downloading it. On a cell that does
/// not wait for a value it writes nothing, and says so.
#[test]
fn a_lazy_replica_clears_a_value_it_has_not_fetched_without_downloading_it() -> TestResult {
    let g = Group::new();
    let (mut a, mut phone) = (files(&g, "a"), files(&g, "phone"));
    dimple::blob::set_fetch_policy(phone.conn(), dimple::blob::Fetch::Lazy)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (video, caption) = (random_bytes(&mut rng, 250_000), random_text(&mut rng, 90_000));
    a.conn().execute(
        "INSERT INTO f VALUES ('v1', 'video', ?1, ?2), ('v2', 'clip', 'n', ?2)",
        rusqlite::params![caption, video],
    )?;
    sync(&g, &mut a);
    sync(&g, &mut phone);
    assert_eq!(dimple::status::status(&phone)?.blobs.missing_cells.len(), 3);
    let before = phone.unpushed()?;
    assert!(dimple::blob::clear(&mut phone, "f", "v1", "data")?, "the cell waited");
    assert!(dimple::blob::clear(&mut phone, "f", "v1", "note")?, "so did this one");
    assert_eq!(phone.unpushed()? - before, 2, "one change each");
    // Cleared already, or never waiting: nothing written.
    assert!(!dimple::blob::clear(&mut phone, "f", "v1", "data")?);
    assert!(!dimple::blob::clear(&mut phone, "f", "v1", "name")?);
    assert!(!dimple::blob::clear(&mut phone, "f", "nowhere", "data")?);
    assert_eq!(phone.unpushed()? - before, 2);
    let st = dimple::status::status(&phone)?;
    assert_eq!(st.blobs.missing_cells, vec![("f".into(), "v2".into(), "data".into())]);
    let report = sync(&g, &mut phone);
    assert_eq!(report.pull.blobs.count, 0, "nothing downloaded");
    sync(&g, &mut a);
    let cells = |r: &Replica, id: &str| -> (Value, Value) {
        r.conn()
            .query_row("SELECT note, data FROM f WHERE id = ?1", [id], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
    };
    assert_eq!(cells(&a, "v1"), (Value::Null, Value::Null), "cleared everywhere");
    assert!(cells(&a, "v2") == (Value::Text("n".into()), Value::Blob(video.clone())), "the other row untouched");
    let fetched = block_on(dimple::fetch(&mut phone, &g.store(), None))?;
    assert_eq!((fetched.filled, fetched.still_missing), (1, 0));
    assert_eq!(cells(&phone, "v1"), (Value::Null, Value::Null));
    assert!(dimple::verify::check(&mut phone)?.is_empty());
    assert!(dimple::verify::check(&mut a)?.is_empty());
    Ok(())
}

/// A store whose connection is lost after `allowed` parts of multipart uploads
/// (those finish first: the failing calls wait for them), recording the part
/// numbers it took.
struct CutAfterParts {
    inner: Box<dyn Store>,
    allowed: i64,
    started: std::sync::atomic::AtomicI64,
    took: std::sync::Mutex<Vec<u32>>,
    finished: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Store for CutAfterParts {
    async fn list_page(&self, p: &str, a: Option<&str>) -> dimple::store::StoreResult<(Vec<ObjectMeta>, bool)> {
        self.inner.list_page(p, a).await
    }
    async fn get(&self, k: &str, i: Option<&str>) -> dimple::store::StoreResult<dimple::store::Got> {
        self.inner.get(k, i).await
    }
    async fn put(&self, k: &str, b: Vec<u8>, m: PutMode) -> dimple::store::StoreResult<String> {
        self.inner.put(k, b, m).await
    }
    async fn delete(&self, k: &str) -> dimple::store::StoreResult<()> {
        self.inner.delete(k).await
    }
    async fn put_file(&self, k: &str, p: &std::path::Path, m: PutMode) -> dimple::store::StoreResult<String> {
        self.inner.put_file(k, p, m).await
    }
    async fn get_to_file(&self, k: &str, p: &std::path::Path) -> dimple::store::StoreResult<u64> {
        self.inner.get_to_file(k, p).await
    }
    async fn stat(&self, k: &str) -> dimple::store::StoreResult<Option<ObjectMeta>> {
        self.inner.stat(k).await
    }
    async fn multipart_start(&self, k: &str) -> dimple::store::StoreResult<String> {
        self.inner.multipart_start(k).await
    }
    async fn multipart_put(&self, k: &str, u: &str, n: u32, b: bytes::Bytes) -> dimple::store::StoreResult<String> {
        if self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.allowed {
            loop {
                let finished = self.finished.notified();
                if self.took.lock().unwrap().len() as i64 >= self.allowed {
                    return Err(StoreError::Unavailable("connection lost".into()));
                }
                finished.await;
            }
        }
        let etag = self.inner.multipart_put(k, u, n, b).await?;
        self.took.lock().unwrap().push(n);
        self.finished.notify_waiters();
        Ok(etag)
    }
    async fn multipart_parts(&self, k: &str, u: &str) -> dimple::store::StoreResult<Vec<Part>> {
        self.inner.multipart_parts(k, u).await
    }
    async fn multipart_finish(&self, k: &str, u: &str, p: &[Part]) -> dimple::store::StoreResult<String> {
        self.inner.multipart_finish(k, u, p).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn cut_after(g: &Group, allowed: i64) -> CutAfterParts {
    CutAfterParts {
        inner: g.raw_store(),
        allowed,
        started: 0.into(),
        took: Default::default(),
        finished: tokio::sync::Notify::new(),
    }
}

fn a_cut_upload_resumes(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "blobs-resume") else { return Ok(()) };
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let part = dimple::blob::transfer::PART as usize;
    let big = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(5), 4 * part + 12_345);
    a.conn().execute("INSERT INTO f VALUES ('big', 'x', NULL, ?1)", [&big])?;
    let first = cut_after(&g, 2);
    let failed = block_on(dimple::push(&mut a, &first));
    assert!(failed.is_err(), "the push must fail when the connection is lost");
    let took_first = first.took.lock().unwrap().clone();
    assert_eq!(took_first.len(), 2, "{took_first:?}");
    // The batch file was built before its value failed to upload; it never became
    // the in-flight push, so it is gone (the next push builds its own).
    let outbox = dimple::replica::side_dir(a.path()).join("outbox");
    let left: Vec<_> = std::fs::read_dir(&outbox)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "batch files left behind: {left:?}");
    // The process dies here: a new one opens the replica and pushes again.
    drop(a);
    let mut a = Replica::open(&g.db("a"), g.opts())?;
    let second = cut_after(&g, i64::MAX);
    let pushed = block_on(dimple::push(&mut a, &second))?;
    let took_second = second.took.lock().unwrap().clone();
    assert_eq!(pushed.changes, 4, "the row marker and three columns");
    let mut all: Vec<u32> = took_first.iter().chain(&took_second).copied().collect();
    all.sort();
    assert_eq!(all, vec![1, 2, 3, 4, 5], "every part sent exactly once: {took_first:?} then {took_second:?}");
    sync(&g, &mut b);
    let got: Vec<u8> = b.conn().query_row("SELECT data FROM f WHERE id = 'big'", [], |r| r.get(0))?;
    assert!(got == big, "the value arrives bit for bit");
    Ok(())
}

#[test]
fn a_push_cut_mid_multipart_resumes_without_resending_finished_parts() -> TestResult {
    a_cut_upload_resumes(Backend::Local)
}

#[test]
fn a_push_cut_mid_multipart_resumes_without_resending_finished_parts_on_s3() -> TestResult {
    a_cut_upload_resumes(Backend::S3)
}

/// Makes an object of the directory bucket look `hours` old.
fn age(g: &Group, key: &str, hours: u32) {
    let path = g.bucket().join(key);
    let ok =
        std::process::Command::new("touch").arg("-d").arg(format!("{hours} hours ago")).arg(&path).status().unwrap();
    assert!(ok.success());
}

fn compact_prune(g: &Group, r: &mut Replica, grace_s: u64) -> dimple::snapshot::CompactReport {
    block_on(dimple::snapshot::compact_with(r, &g.store(), std::time::Duration::from_secs(grace_s), true)).unwrap()
}

#[test]
fn gc_keeps_every_referenced_blob_and_deletes_the_rest_after_the_grace_period() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let (x, y, z) = (random_bytes(&mut rng, 100_000), random_bytes(&mut rng, 100_000), random_bytes(&mut rng, 100_000));
    a.conn().execute("INSERT INTO f VALUES ('r1', 'x', NULL, ?1), ('r2', 'y', NULL, ?2)", [&x, &y])?;
    sync(&g, &mut a);
    a.conn().execute("UPDATE f SET data = ?1 WHERE id = 'r1'", [&z])?;
    sync(&g, &mut a);
    sync(&g, &mut b);
    // An object nothing references (a writer that died before its batch).
    let orphan = random_bytes(&mut rng, 70_000);
    let orphan_key = layout::blob_key(&sha(&orphan));
    std::fs::write(g.bucket().join(&orphan_key), &orphan)?;
    let key = |v: &[u8]| layout::blob_key(&sha(v));
    for k in blob_keys(&g.store()) {
        age(&g, &k, 2);
    }
    // Within the grace period nothing goes; X is still in the retained history.
    let young = compact_prune(&g, &mut a, 3 * 3600);
    assert!(young.blobs.deleted.is_empty(), "{:?}", young.blobs.deleted);
    let kept = compact_prune(&g, &mut a, 3600);
    assert_eq!(
        kept.blobs.deleted,
        vec![orphan_key.clone()],
        "only the orphan: X is history still kept: {:?}",
        kept.blobs
    );
    // Once X's change is pruned from the history, X goes too; Z (live) and Y (live) stay.
    dimple::retention::set(a.conn(), dimple::retention::Retention::Days(0))?;
    g.clock.advance(1000);
    let pruned = dimple::retention::prune(&mut a)?;
    assert!(pruned.changes >= 1);
    let collected = compact_prune(&g, &mut a, 3600);
    assert_eq!(collected.blobs.deleted, vec![key(&x)]);
    let mut left = blob_keys(&g.store());
    left.sort();
    let mut live = vec![key(&y), key(&z)];
    live.sort();
    assert_eq!(left, live);
    // A new replica gets every live value.
    let mut c = files(&g, "c");
    let report = sync(&g, &mut c);
    assert_eq!(report.pull.blobs_missing.count, 0);
    assert_eq!(rows(&c), rows(&b));
    Ok(())
}

#[test]
fn gc_under_concurrent_pushes_never_deletes_a_referenced_blob() -> TestResult {
    let g = Group::new();
    let (mut a, mut b) = (files(&g, "a"), files(&g, "b"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    // Old objects nothing references: the collector must delete them meanwhile.
    let mut orphans = Vec::new();
    for _ in 0..5 {
        let o = random_bytes(&mut rng, 70_000);
        let k = layout::blob_key(&sha(&o));
        std::fs::create_dir_all(g.bucket().join(layout::BLOBS_PREFIX))?;
        std::fs::write(g.bucket().join(&k), &o)?;
        age(&g, &k, 2);
        orphans.push(k);
    }
    let writer = {
        let mut seeds = rand::rngs::StdRng::seed_from_u64(9);
        let values: Vec<Vec<u8>> = (0..12)
            .map(|_| {
                let n = 80_000 + seeds.gen_range(0..5000);
                random_bytes(&mut seeds, n)
            })
            .collect();
        let store = g.store();
        std::thread::spawn(move || -> Vec<Vec<u8>> {
            for (i, v) in values.iter().enumerate() {
                b.conn()
                    .execute("INSERT INTO f VALUES (?1, 'w', NULL, ?2)", rusqlite::params![format!("w{i}"), v])
                    .unwrap();
                block_on(dimple::push(&mut b, &store)).unwrap();
            }
            values
        })
    };
    let mut deleted = Vec::new();
    while !writer.is_finished() {
        deleted.extend(compact_prune(&g, &mut a, 60).blobs.deleted);
    }
    let values = writer.join().unwrap();
    deleted.extend(compact_prune(&g, &mut a, 60).blobs.deleted);
    deleted.sort();
    orphans.sort();
    assert_eq!(deleted, orphans, "exactly the old unreferenced objects");
    let mut c = files(&g, "c");
    let report = sync(&g, &mut c);
    assert_eq!(report.pull.blobs_missing.count, 0, "every referenced blob is there");
    for (i, v) in values.iter().enumerate() {
        let got: Vec<u8> = c.conn().query_row("SELECT data FROM f WHERE id = ?1", [format!("w{i}")], |r| r.get(0))?;
        assert!(&got == v, "w{i}");
    }
    Ok(())
}

/// Runs `dimple args` and returns its success, its peak resident memory in bytes
/// as the kernel counts it, and its stderr. Started by a small Python process: a
/// child forked from this (large) test process would report this process's peak.
fn dimple_measured(args: &[&str]) -> (bool, u64, String) {
    const MEASURE: &str = "import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sys.stderr.buffer.write(p.stderr)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = std::process::Command::new("python3")
        .args(["-c", MEASURE, env!("CARGO_BIN_EXE_dimple")])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut it = stdout.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    let (code, kib) = (it.next().unwrap(), it.next().unwrap());
    (code == 0, kib * 1024, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Hashes a cell in pieces, so the test itself holds no copy of a huge value.
fn cell_sha256(r: &Replica, id: &str) -> (String, u64) {
    use sha2::Digest;
    let rowid: i64 = r.conn().query_row("SELECT rowid FROM f WHERE id = ?1", [id], |row| row.get(0)).unwrap();
    let mut blob = r.conn().blob_open(rusqlite::DatabaseName::Main, "f", "data", rowid, true).unwrap();
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut blob, &mut h).unwrap();
    (dimple::hash::hex(&h.finalize()), n)
}

/// A value of `size` random bytes syncs from a writer to a reader through
/// `backend`, each side's `dimple sync` under 100 MiB at its peak.
fn a_huge_value_syncs_in_bounded_memory(backend: Backend, size: usize) -> TestResult {
    let Some(g) = Group::on(backend, "blobs-huge") else { return Ok(()) };
    let (a, b) = (files(&g, "a"), files(&g, "b"));
    // Generated into a scratch table piece by piece, then copied by SQL (which the
    // capture triggers see, unlike incremental blob writes).
    a.conn()
        .execute_batch(&format!("CREATE TEMP TABLE scratch(v BLOB); INSERT INTO scratch VALUES (zeroblob({size}))"))?;
    {
        let mut blob = a.conn().blob_open(rusqlite::DatabaseName::Temp, "scratch", "v", 1, false)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let mut piece = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(piece.len());
            rng.fill_bytes(&mut piece[..n]);
            std::io::Write::write_all(&mut blob, &piece[..n])?;
            left -= n;
        }
    }
    a.conn().execute("INSERT INTO f SELECT 'huge', 'movie', NULL, v FROM temp.scratch", [])?;
    a.conn().execute_batch("DROP TABLE temp.scratch")?;
    let want = cell_sha256(&a, "huge");
    drop((a, b));
    let limit = 100 << 20;
    let endpoint = match backend {
        Backend::S3 => crate::store_contract::s3_support::endpoint()?,
        Backend::Local => None,
    };
    for db in ["a", "b"] {
        let path = g.db(db);
        let mut args = vec!["sync", path.to_str().unwrap()];
        if let Some(e) = &endpoint {
            args.extend(["--endpoint", e]);
        }
        let (ok, peak, err) = dimple_measured(&args);
        eprintln!("sync {db} on {backend:?}: peak {} MiB", peak >> 20);
        assert!(ok, "sync {db}: {err}");
        assert!(peak < limit, "sync {db} peaked at {} MiB for a {} MiB value", peak >> 20, size >> 20);
    }
    let b = Replica::open(&g.db("b"), g.opts())?;
    assert_eq!(cell_sha256(&b, "huge"), want);
    Ok(())
}

#[test]
fn a_value_of_hundreds_of_megabytes_syncs_in_bounded_memory() -> TestResult {
    a_huge_value_syncs_in_bounded_memory(Backend::Local, 200 << 20)
}

#[test]
fn a_value_of_hundreds_of_megabytes_syncs_in_bounded_memory_on_s3() -> TestResult {
    a_huge_value_syncs_in_bounded_memory(Backend::S3, 200 << 20)
}

/// Over SQLite's default limit of 1e9 bytes, which dimple's builds raise to the
/// most SQLite allows (`value::MAX_SIZE`).
#[test]
fn a_value_over_a_gigabyte_syncs_in_bounded_memory() -> TestResult {
    a_huge_value_syncs_in_bounded_memory(Backend::Local, 1_000_000_000 + rand::random::<u16>() as usize + 1)
}

#[test]
fn in_an_encrypted_group_blobs_are_sealed_and_named_by_a_keyed_hash() -> TestResult {
    let g = Group::new();
    const PASS: &str = "a long enough passphrase for tests";
    let mut a = files(&g, "a");
    block_on(dimple::group::create(&mut a, &g.store(), Some(PASS)))?;
    let keys = block_on(dimple::group::unlock(&g.store(), PASS))?;
    let mut b = files(&g, "b");
    block_on(dimple::group::adopt(&mut b, &g.store(), keys))?;
    // Recognisable content: a marker repeated through a large value.
    let marker = b"MARKER-7f3a9c";
    let file: Vec<u8> = marker.iter().copied().cycle().take(300_000).collect();
    a.conn().execute("INSERT INTO f VALUES ('p1', 'x', NULL, ?1), ('p2', 'y', NULL, ?1)", [&file])?;
    let pushed = sync(&g, &mut a);
    assert_eq!(pushed.push.blobs.count, 1, "stored once");
    sync(&g, &mut b);
    assert_eq!(rows(&a), rows(&b));
    let keys = blob_keys(&g.store());
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0], layout::blob_key(&sha(&file)), "the name is not the content's plain hash");
    let stored = std::fs::read(g.bucket().join(&keys[0]))?;
    assert!(!stored.windows(marker.len()).any(|w| w == marker), "the bytes are sealed");
    assert!(stored.starts_with(b"dimple\0E"), "in the envelope");
    Ok(())
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dimple")).args(args).output().unwrap()
}

#[test]
fn the_command_line_sets_lazy_fetches_on_demand_and_refuses_bad_settings() -> TestResult {
    let g = Group::new();
    let (mut a, phone) = (files(&g, "a"), files(&g, "phone"));
    drop(phone);
    let db = g.db("phone");
    let db = db.to_str().unwrap();
    let out = cli(&["blobs", db, "--fetch", "lazy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fetch: lazy"));
    // Bad settings: one line, exit 1, nothing changed.
    let out = cli(&["blobs", db, "--threshold", "10"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("at least 1024"), "{err}");
    let out = cli(&["fetch", db]);
    assert_eq!(out.status.code(), Some(2), "a fetch names a row or --all");
    let photo = random_bytes(&mut rand::rngs::StdRng::seed_from_u64(11), 90_000);
    a.conn().execute("INSERT INTO f VALUES ('p', 'photo', NULL, ?1)", [&photo])?;
    sync(&g, &mut a);
    let out = cli(&["sync", db]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 large values (90000 bytes) are not here yet"));
    let out = cli(&["status", db]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing   f p data"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(&["fetch", db, "--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fetched 1 values (90000 bytes) into 1 cells; 0 still missing")
    );
    let phone = Replica::open(&g.db("phone"), g.opts())?;
    let got: Vec<u8> = phone.conn().query_row("SELECT data FROM f WHERE id = 'p'", [], |r| r.get(0))?;
    assert!(got == photo);
    // What moved, with the time it took: in words and in JSON.
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (scan, map) = (random_bytes(&mut rng, 120_000), random_bytes(&mut rng, 70_000));
    a.conn().execute("INSERT INTO f VALUES ('s', 'scan', NULL, ?1)", [&scan])?;
    drop(a);
    let writer = g.db("a");
    let writer = writer.to_str().unwrap();
    let out = cli(&["sync", writer]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("uploaded 1 large values (120000 bytes)"), "{said}");
    Replica::open(&g.db("a"), g.opts())?.conn().execute("INSERT INTO f VALUES ('m', 'map', NULL, ?1)", [&map])?;
    let out = cli(&["sync", writer, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let up = &json["push"]["blobs"];
    assert_eq!((up["count"].as_u64(), up["bytes"].as_u64()), (Some(1), Some(70_000)), "{json}");
    assert!(up["millis"].is_u64(), "{json}");
    Ok(())
}

#[test]
fn a_clone_from_a_snapshot_and_from_the_batches_carries_large_values() -> TestResult {
    let g = Group::new();
    let mut a = files(&g, "a");
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (early, late) = (random_bytes(&mut rng, 300_000), random_text(&mut rng, 200_000));
    a.conn().execute("INSERT INTO f VALUES ('e', 'early', NULL, ?1)", [&early])?;
    sync(&g, &mut a);
    block_on(dimple::snapshot::compact(&mut a, &g.store(), std::time::Duration::from_secs(3600)))?;
    // Written after the snapshot: arrives through a batch and its blob.
    a.conn().execute("INSERT INTO f VALUES ('l', 'late', ?1, NULL)", [&late])?;
    sync(&g, &mut a);
    let (mut c, _) =
        block_on(dimple::clone::clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &g.store(), &|_| {}))?;
    let report = sync(&g, &mut c);
    assert_eq!(report.pull.blobs_missing.count, 0);
    assert_eq!(rows(&c), rows(&a));
    Ok(())
}

/// An app's table may have a column named `rowid`, which then hides SQLite's
/// rowid under that name. A value streamed into its cell (over 16 MiB: smaller
/// ones are bound with the row) goes into its own row, not into the row whose
/// rowid the app's column happens to hold; TEXT of any bytes stays TEXT.
#[test]
fn a_streamed_value_lands_in_its_own_row_when_a_column_is_named_rowid() -> TestResult {
    let g = Group::new();
    let mut rs = Vec::new();
    for name in ["a", "b"] {
        let mut r = Replica::init(&g.db(name), Some(&g.bucket_url()), Some(name), g.opts())?;
        r.conn().execute_batch("CREATE TABLE g(id TEXT PRIMARY KEY, rowid INTEGER, body TEXT)")?;
        r.track("g", false)?;
        rs.push(r);
    }
    let (mut a, mut b) = (rs.remove(0), rs.remove(0));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x20);
    let size = 17 << 20;
    // Inserted in this order, the reader's rows get rowids 1 and 2: each app
    // column names the other row.
    for (id, other) in [("x", 2), ("y", 1)] {
        let body = Cell::Text(random_bytes(&mut rng, size));
        a.conn().execute("INSERT INTO g VALUES (?1, ?2, ?3)", rusqlite::params![id, other, body])?;
    }
    sync(&g, &mut a);
    sync(&g, &mut b);
    let cells = |r: &Replica| -> Vec<(String, i64, String, String)> {
        let mut stmt = r.conn().prepare("SELECT id, rowid, body, typeof(body) FROM g ORDER BY id").unwrap();
        stmt.query_map([], |row| {
            let body = match row.get_ref(2)? {
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => sha(t),
                other => format!("{other:?}"),
            };
            Ok((row.get(0)?, row.get(1)?, body, row.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let want = cells(&a);
    assert_eq!(want.iter().map(|c| c.3.as_str()).collect::<Vec<_>>(), ["text", "text"]);
    assert_eq!(cells(&b), want);
    Ok(())
}

/// A compaction that catches up from the published snapshot takes in large
/// values as references, as a pull that catches up does; an eager replica
/// then fetches them before it goes on, as at the end of every pull.
#[test]
fn a_compaction_that_catches_up_from_a_snapshot_fetches_the_large_values_it_took_in() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = files(&g, "a");
    let mut b = files(&g, "b");
    dimple::blob::set_threshold(a.conn(), 1024)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let len = 1024 + rng.gen_range(0..4096);
    let data = random_bytes(&mut rng, len);
    a.conn().execute("INSERT INTO f(id, data) VALUES ('x', ?1)", [&data])?;
    block_on(dimple::snapshot::compact_with(&mut a, &store, std::time::Duration::ZERO, false))?;
    let compacted = block_on(dimple::snapshot::compact_with(&mut b, &store, std::time::Duration::ZERO, false))?;
    assert_eq!(compacted.caught_up, vec![a.id().to_owned()], "b caught up from a's snapshot");
    assert_eq!(rows(&b), rows(&a));
    assert!(dimple::blob::missing(b.conn())?.is_empty());
    Ok(())
}

/// A lazy replica's snapshot holds NULL where it never fetched a large value: a
/// clone from it marks those cells missing, so its pull fetches them, instead
/// of keeping NULL as if it were the value.
#[test]
fn a_clone_from_a_lazy_replicas_snapshot_fetches_the_values_its_source_lacked() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let mut a = files(&g, "a");
    let mut b = files(&g, "b");
    dimple::blob::set_threshold(a.conn(), 1024)?;
    dimple::blob::set_fetch_policy(b.conn(), dimple::blob::Fetch::Lazy)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let len = 1024 + rng.gen_range(0..4096);
    let data = random_bytes(&mut rng, len);
    a.conn().execute("INSERT INTO f(id, data) VALUES ('x', ?1)", [&data])?;
    sync(&g, &mut a);
    sync(&g, &mut b);
    assert_eq!(dimple::blob::missing(b.conn())?.len(), 1, "b is lazy");
    block_on(dimple::snapshot::compact_with(&mut b, &store, std::time::Duration::ZERO, false))?;
    let (c, report) =
        block_on(dimple::clone::clone(&g.bucket_url(), &g.db("c"), Some("c"), g.opts(), &store, &|_| {}))?;
    assert!(report.snapshot.is_some(), "c cloned from b's snapshot");
    assert_eq!(rows(&c), rows(&a));
    assert!(dimple::blob::missing(c.conn())?.is_empty());
    Ok(())
}
