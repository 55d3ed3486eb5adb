//! Push and pull of 100k changes through the S3 test server on loopback and through
//! a local directory, each in the clear and in an encrypted group, side by side:
//! changes per second, requests used and bytes uploaded per change (median of 5
//! runs each, the variants interleaved so that drift in the machine hits all alike).
//!
//! `cargo bench --bench transfer`. Uses the S3 server at DIMPLE_TEST_S3_ENDPOINT, or
//! starts the test server itself (scripts/s3-server) and stops it afterwards.

#[path = "support/s3.rs"]
mod s3;

use dimple::store::{Metered, Store};
use dimple::{Options, Replica};
use std::path::Path;
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

const PASSPHRASE: &str = "bench passphrase";

/// One push by a fresh writer and one pull by a fresh reader through `store`, a
/// fresh bucket or prefix at `bucket`; in an encrypted group when `sealed`.
fn run(name: &str, bucket: &str, store: Metered<dyn Store>, sealed: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut w = writer(dir.path(), bucket);
    if sealed {
        rt.block_on(dimple::group::create(&mut w, &store, Some(PASSPHRASE))).unwrap();
    } else {
        rt.block_on(dimple::group::prepare(&mut w, &store, false)).unwrap();
    }
    let changes = w.unpushed().unwrap() as f64;
    let before_push = store.stats();
    let t = Instant::now();
    rt.block_on(dimple::push(&mut w, &store)).unwrap();
    let push = t.elapsed().as_secs_f64();
    let after_push = store.stats();
    let mut r = Replica::init(&dir.path().join("r.db"), Some(bucket), Some("reader"), Options::default()).unwrap();
    if sealed {
        let keys = rt.block_on(dimple::group::unlock(&store, PASSPHRASE)).unwrap();
        rt.block_on(dimple::group::adopt(&mut r, &store, keys)).unwrap();
    }
    r.conn().execute_batch("CREATE TABLE t(id TEXT PRIMARY KEY, a INTEGER, b TEXT, c REAL, d TEXT)").unwrap();
    r.track("t", false).unwrap();
    let before_pull = store.stats();
    let t = Instant::now();
    let report = rt.block_on(dimple::pull(&mut r, &store)).unwrap();
    let pull = t.elapsed().as_secs_f64();
    assert_eq!(report.changes as f64, changes, "{name}: pulled everything");
    let pushed = after_push.since(&before_push);
    let pulled = store.stats().since(&before_pull);
    Figures {
        push_rate: changes / push,
        push_requests: pushed.total,
        pull_rate: changes / pull,
        pull_requests: pulled.total,
        bytes_per_change: pushed.bytes_up as f64 / changes,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of each figure over the runs.
fn summary(runs: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    Figures {
        push_rate: m(|f| f.push_rate),
        push_requests: runs[0].push_requests,
        pull_rate: m(|f| f.pull_rate),
        pull_requests: runs[0].pull_requests,
        bytes_per_change: m(|f| f.bytes_per_change),
    }
}

fn main() {
    let server = s3::Server::start();
    let endpoint = server.endpoint.clone();
    let local_dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let bucket = rt.block_on(server.bucket("bench"));
    // Every run gets a fresh prefix: an encrypted group needs an empty one.
    let mut runs: [Vec<Figures>; 4] = Default::default();
    for round in 0..5 {
        for (i, (s3, sealed)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
            let name =
                format!("{}-{}-{round}", if s3 { "s3" } else { "local" }, if sealed { "sealed" } else { "plain" });
            let url =
                if s3 { format!("s3://{bucket}/{name}") } else { local_dir.path().join(&name).display().to_string() };
            let store = rt.block_on(dimple::open_store(&url, if s3 { Some(endpoint.as_str()) } else { None })).unwrap();
            runs[i].push(run(&name, &url, store, sealed));
        }
    }
    rt.block_on(server.drop_bucket(&bucket));
    drop(server);
    for (name, r) in ["local", "local encrypted", "S3", "S3 encrypted"].iter().zip(&runs) {
        let each =
            |f: fn(&Figures) -> f64| r.iter().map(|x| format!("{:.0}k", f(x) / 1000.0)).collect::<Vec<_>>().join(" ");
        println!("{name:<16} push {}   pull {}", each(|f| f.push_rate), each(|f| f.pull_rate));
    }
    let [l, le, s, se] = runs.map(|r| summary(&r));
    println!("push and pull of {} changes (one writer, one fresh reader; median of 5)", ROWS * 5);
    println!(
        "{:<28} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "", "local dir", "encrypted", "ratio", "S3 (loop)", "encrypted", "ratio"
    );
    let rate = |what: &str, f: fn(&Figures) -> f64| {
        println!(
            "{what:<28} {:>12.0} {:>12.0} {:>7.2}x {:>12.0} {:>12.0} {:>7.2}x",
            f(&l),
            f(&le),
            f(&le) / f(&l),
            f(&s),
            f(&se),
            f(&se) / f(&s)
        )
    };
    rate("push, changes/s", |f| f.push_rate);
    rate("pull, changes/s", |f| f.pull_rate);
    let count = |what: &str, f: fn(&Figures) -> u64| {
        println!("{what:<28} {:>12} {:>12} {:>8} {:>12} {:>12}", f(&l), f(&le), "", f(&s), f(&se))
    };
    count("push, requests", |f| f.push_requests);
    count("pull, requests", |f| f.pull_requests);
    println!(
        "{:<28} {:>12.2} {:>12.2} {:>+7.2}B {:>12.2} {:>12.2} {:>+7.2}B",
        "uploaded bytes per change",
        l.bytes_per_change,
        le.bytes_per_change,
        le.bytes_per_change - l.bytes_per_change,
        s.bytes_per_change,
        se.bytes_per_change,
        se.bytes_per_change - s.bytes_per_change
    );
    println!("goal (issue 11): encrypted at least 0.9x the plaintext throughput, bytes per change within +2 B");
    // The cipher alone, without the network's noise: what sealing adds per change.
    let mut ring = dimple::seal::Keyring::new(uuid::Uuid::from_u128(1));
    ring.insert(uuid::Uuid::from_u128(2), dimple::seal::GroupKey::random());
    let plain = vec![7u8; 64 << 20];
    let t = Instant::now();
    let sealed = dimple::seal::seal(&ring, "k", &plain).unwrap();
    let seal_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert_eq!(dimple::seal::open(&ring, "k", &sealed).unwrap().len(), plain.len());
    let open_s = t.elapsed().as_secs_f64();
    let mb = plain.len() as f64 / 1e6;
    println!(
        "seal / open of 64 MiB: {:.0} / {:.0} MB/s, i.e. {:.2} / {:.2} us per change at {:.1} B per change",
        mb / seal_s,
        mb / open_s,
        le.bytes_per_change / (mb / seal_s),
        le.bytes_per_change / (mb / open_s),
        le.bytes_per_change
    );
}
