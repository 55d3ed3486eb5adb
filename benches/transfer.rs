//! Push and pull of 100k changes through the S3 test server on loopback and through
//! a local directory, side by side: changes per second and requests used.
//!
//! `cargo bench --bench transfer`. Uses the S3 server at DIMPLE_TEST_S3_ENDPOINT, or
//! starts the test server itself (scripts/s3-server) and stops it afterwards.

use dimple::store::{Metered, Store};
use dimple::{Options, Replica};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const ROWS: i64 = 20_000; // x 5 changes (row + 4 columns) = 100k changes

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn writer(dir: &Path, bucket: &str) -> Replica {
    let mut r = Replica::init(&dir.join("w.db"), Some(bucket), Some("writer"), Options::default()).unwrap();
    r.conn().execute_batch("CREATE TABLE t(id TEXT PRIMARY KEY, a INTEGER, b TEXT, c REAL, d TEXT)").unwrap();
    r.track("t", false).unwrap();
    r.conn()
        .execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {})
             INSERT INTO t SELECT printf('row-%06d', i), i, 'text ' || i, i * 0.5, hex(randomblob(8)) FROM n",
            ROWS - 1
        ))
        .unwrap();
    r.capture().unwrap();
    r
}

struct Figures {
    push_rate: f64,
    push_requests: u64,
    pull_rate: f64,
    pull_requests: u64,
    bytes_per_change: f64,
}

fn run(name: &str, bucket: &str, store: Metered<dyn Store>) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut w = writer(dir.path(), bucket);
    let changes = w.unpushed().unwrap() as f64;
    let t = Instant::now();
    rt.block_on(dimple::push(&mut w, &store)).unwrap();
    let push = t.elapsed().as_secs_f64();
    let after_push = store.stats();
    let mut r = Replica::init(&dir.path().join("r.db"), Some(bucket), Some("reader"), Options::default()).unwrap();
    r.conn().execute_batch("CREATE TABLE t(id TEXT PRIMARY KEY, a INTEGER, b TEXT, c REAL, d TEXT)").unwrap();
    r.track("t", false).unwrap();
    let t = Instant::now();
    let report = rt.block_on(dimple::pull(&mut r, &store)).unwrap();
    let pull = t.elapsed().as_secs_f64();
    assert_eq!(report.changes as f64, changes, "{name}: pulled everything");
    let pulled = store.stats().since(&after_push);
    Figures {
        push_rate: changes / push,
        push_requests: after_push.total,
        pull_rate: changes / pull,
        pull_requests: pulled.total,
        bytes_per_change: after_push.bytes_up as f64 / changes,
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut started = false;
    let endpoint = std::env::var("DIMPLE_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        let out = Command::new("bash").arg(root.join("scripts/s3-server")).arg("start").output().unwrap();
        assert!(out.status.success(), "could not start the S3 test server: {}", String::from_utf8_lossy(&out.stderr));
        started = true;
        std::env::set_var("AWS_ACCESS_KEY_ID", "testkey");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testsecret");
        std::env::set_var("AWS_REGION", "us-east-1");
        "http://127.0.0.1:9000".to_owned()
    });
    let local_dir = tempfile::tempdir().unwrap();
    let local_url = local_dir.path().join("bucket").display().to_string();
    let rt = rt();
    let local = rt.block_on(dimple::open_store(&local_url, None)).unwrap();
    let bucket = format!("bench-{:08x}", rand::random::<u32>());
    let s3_url = format!("s3://{bucket}/transfer");
    let s3 = rt.block_on(async {
        let raw = dimple::store::S3Store::open(&s3_url, Some(&endpoint)).await.unwrap();
        raw.client().create_bucket().bucket(&bucket).send().await.unwrap();
        dimple::open_store(&s3_url, Some(&endpoint)).await.unwrap()
    });
    let l = run("local", &local_url, local);
    let s = run("s3", &s3_url, s3);
    if started {
        let _ = Command::new("bash").arg(root.join("scripts/s3-server")).arg("stop").output();
    }
    println!("push and pull of {} changes (one writer, one fresh reader)", ROWS * 5);
    println!("{:<28} {:>14} {:>14}", "", "local dir", "S3 (loopback)");
    println!("{:<28} {:>14.0} {:>14.0}", "push, changes/s", l.push_rate, s.push_rate);
    println!("{:<28} {:>14} {:>14}", "push, requests", l.push_requests, s.push_requests);
    println!("{:<28} {:>14.0} {:>14.0}", "pull, changes/s", l.pull_rate, s.pull_rate);
    println!("{:<28} {:>14} {:>14}", "pull, requests", l.pull_requests, s.pull_requests);
    println!("{:<28} {:>14.1} {:>14.1}", "uploaded bytes per change", l.bytes_per_change, s.bytes_per_change);
}
