//! Many devices: a local-directory bucket generated with R - 1 replicas (R = 10,000
//! at scale 1), each with a signed head, a descriptor and one batch holding one
//! change (a row of its own). A fresh replica (the R-th) pulls the one change of
//! every one of them; then a no-op sync among the R replicas, which should cost
//! ceil(2R/1000) LIST requests and nothing else (SPEC 5).

use crate::report::{secs, Table};
use crate::{runtime, scaled};
use dimple::batch::Header;
use dimple::clock::{compose, Clock, Stamp, SystemClock};
use dimple::codec::Codec;
use dimple::head::{Descriptor, Head, HeadBody};
use dimple::merge::Change;
use dimple::store::{LocalStore, Metered, PutMode, Store};
use dimple::{layout, Options, Replica, FORMAT};
use std::path::Path;
use std::time::Instant;

fn id(ms: u64, counter: u64, node: u32) -> String {
    compose(Stamp { ms, counter }, node).to_string()
}

/// Writes replica `i`'s descriptor, batch and head straight into the bucket.
async fn generate_one(store: &dyn Store, dir: &Path, i: usize, ms: u64) {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public_key = dimple::trust::public_b64(&key);
    let node = rand::random::<u32>();
    let replica = id(ms, i as u64, node);
    let (batch_id, change_id, txn_id) = (id(ms, 3, node), id(ms, 2, node), id(ms, 1, node));
    let header = Header {
        format: FORMAT,
        replica: replica.clone(),
        batch_id: batch_id.clone(),
        prev_batch_id: None,
        prev_sha256: None,
        first_change_id: change_id.clone(),
        last_change_id: change_id.clone(),
        transaction_count: 1,
        change_count: 1,
    };
    let change = Change {
        id: change_id.clone(),
        transaction_id: txn_id,
        entity_type: "t".into(),
        entity_id: format!("row-{i:06}"),
        attribute: "*".into(),
        old_value: None,
        new_value: Some(dimple::merge::ALIVE.into()),
        author: replica.clone(),
    };
    let path = dir.join(format!("{replica}.db"));
    let bytes = dimple::batch::write(&path, &header, &[change], &Codec::Plain).unwrap();
    let _ = std::fs::remove_file(&path);
    let sha256 = dimple::codec::sha256_hex(&bytes);
    store.put(&layout::batch_key(&replica, &batch_id), bytes, PutMode::Create).await.unwrap();
    let name = format!("device {i}");
    let descriptor = Descriptor {
        format: FORMAT,
        replica: replica.clone(),
        name: name.clone(),
        public_key: public_key.clone(),
        created_at: dimple::clock::rfc3339(ms),
        schema: None,
    };
    store
        .put(&layout::descriptor_key(&replica), serde_json::to_vec(&descriptor).unwrap(), PutMode::Create)
        .await
        .unwrap();
    let body = HeadBody {
        format: FORMAT,
        replica: replica.clone(),
        name,
        public_key,
        batch_key: layout::batch_key(&replica, &batch_id),
        batch_id: batch_id.clone(),
        sha256,
        first_change_id: change_id.clone(),
        last_change_id: change_id,
        batch_count: 1,
        change_count: 1,
        updated_at: dimple::clock::rfc3339(ms),
        recent_batch_ids: vec![batch_id],
    };
    store.put(&layout::head_key(&replica), Head::sign(body, &key).to_bytes(), PutMode::Create).await.unwrap();
}

pub fn run(dir: &Path, scale: f64, table: &mut Table) {
    let total = scaled(10_000, scale);
    let dir = dir.join("many");
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let rt = runtime();
    eprintln!("many: generating a bucket with {} replicas", total - 1);
    let t = Instant::now();
    let ms = SystemClock.now_ms();
    rt.block_on(async {
        let store = LocalStore::open(&bucket).unwrap();
        for i in 0..total - 1 {
            generate_one(&store, &dir, i, ms).await;
        }
    });
    let build = t.elapsed().as_secs_f64();
    let db = dir.join("fresh.db");
    let mut r = Replica::init(&db, Some(&bucket.display().to_string()), Some("fresh"), Options::default()).unwrap();
    r.conn().execute_batch("CREATE TABLE t(id TEXT PRIMARY KEY, a)").unwrap();
    r.track("t", false).unwrap();
    let store: Metered<dyn Store> = Metered::new(Box::new(LocalStore::open(&bucket).unwrap()));
    eprintln!("many: a fresh replica pulls one change from each");
    let t = Instant::now();
    let first = rt.block_on(dimple::sync(&mut r, &store)).unwrap();
    let fresh = t.elapsed().as_secs_f64();
    assert_eq!(first.pull.changes, total - 1, "one change from each: {:?}", first.pull.problems);
    // The fresh replica's own descriptor makes R replicas in the bucket.
    let t = Instant::now();
    let noop = rt.block_on(dimple::sync(&mut r, &store)).unwrap();
    let noop_s = t.elapsed().as_secs_f64();
    let want = (2 * total).div_ceil(1000) as u64;
    // Of which listing the bucket alone (the local store reads 2R directory entries).
    let t = Instant::now();
    let listed = rt.block_on(dimple::store::list_all(&store, layout::REPLICAS_PREFIX, None)).unwrap().len();
    let list_s = t.elapsed().as_secs_f64();
    let at_scale = |ok: bool| if scale == 1.0 { Some(ok) } else { None };
    table.section(&format!("many devices: {total} replicas in a local-directory bucket"));
    table.row(
        "no-op sync: requests (all LIST)",
        format!("{} LIST, {} other", noop.requests.list, noop.requests.total - noop.requests.list),
        format!("{want} LIST"),
        String::new(),
        "= ceil(2R/1000), nothing else",
        Some(noop.requests.list == want && noop.requests.total == want),
    );
    table.row("no-op sync: time", secs(noop_s), String::new(), String::new(), "< 2 s", at_scale(noop_s < 2.0));
    table.row(
        "fresh replica pulls one change from each",
        secs(fresh),
        format!("{} requests", first.requests.total),
        String::new(),
        "< 60 s",
        at_scale(fresh < 60.0),
    );
    table.note(&format!("  of which listing {listed} objects alone: {}", secs(list_s)));
    table.note(&format!("(bucket generated in {build:.0} s)"));
}
