//! Attachments: 100 values of 10 MiB pushed by one replica and pulled by a fresh
//! one through the S3 test server on loopback, against copying the same bytes up
//! and down with the AWS SDK alone (put_object / get_object from and to files, as
//! many requests in flight as dimple uses), in the same run. A pull also writes
//! the values into rows, which the SDK alone does not: it is shown against the
//! SDK's download plus plain SQLite inserting the same values, and its transfers
//! alone (the time its report gives them) against the SDK's download, in rounds
//! that alternate the SDK and a fresh reader (the median round is shown). The same rounds
//! time dimple's S3 store fetching the SDK's copies with and without the sha256
//! taken as they arrive, to show what the check itself costs.
//! Peak memory is the
//! process's resident high-water mark over each phase (reset through
//! /proc/self/clear_refs before it).
//!
//! `cargo bench --bench blobs`. Uses the S3 server at DIMPLE_TEST_S3_ENDPOINT, or
//! starts the test server itself (scripts/s3-server, with volumes of 1 GiB) and
//! stops it afterwards.

#[path = "support/s3.rs"]
mod s3;

use aws_sdk_s3::primitives::ByteStream;
use dimple::{Options, Replica};
use futures::StreamExt;
use rand::{RngCore, SeedableRng};
use std::time::Instant;

const VALUES: usize = 100;
const SIZE: usize = 10 << 20;
/// What dimple keeps in flight (blob::transfer's concurrency).
const IN_FLIGHT: usize = 4;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

const TABLE: &str = "CREATE TABLE files(id TEXT PRIMARY KEY, name TEXT, data BLOB)";

/// Resets the resident high-water mark of this process (Linux).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The resident high-water mark since the last reset, in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Seconds to fetch the SDK's copies (`sdk/0`, `sdk/1`, ...) into files of
/// `down_dir`, IN_FLIGHT at a time, each with `fetch(key, path)`; the files are
/// removed after the clock stops.
async fn timed_download<F, Fut>(down_dir: &std::path::Path, fetch: F) -> f64
where
    F: Fn(String, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    std::fs::create_dir_all(down_dir).unwrap();
    let t = Instant::now();
    futures::stream::iter((0..VALUES).map(|i| fetch(format!("sdk/{i}"), down_dir.join(format!("{i}")))))
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(down_dir).unwrap();
    secs
}

/// Downloads the SDK's copies with the SDK alone; returns the seconds.
async fn sdk_download(client: &aws_sdk_s3::Client, bucket: &str, down_dir: &std::path::Path) -> f64 {
    timed_download(down_dir, |key, path| {
        let (client, bucket) = (client.clone(), bucket.to_owned());
        async move {
            use std::io::Write;
            let mut resp = client.get_object().bucket(&bucket).key(key).send().await.unwrap();
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            while let Some(chunk) = resp.body.try_next().await.unwrap() {
                f.write_all(&chunk).unwrap();
            }
            f.flush().unwrap();
        }
    })
    .await
}

/// Downloads the SDK's copies with dimple's S3 store (the bucket's root as its
/// prefix), `hash`ing them as they arrive or not: the part of a pull's download
/// that is the transfer alone, and the part that is the sha256 check.
async fn store_download(store: &dimple::store::S3Store, down_dir: &std::path::Path, hash: bool) -> f64 {
    use dimple::store::Store;
    timed_download(down_dir, |key, path| async move {
        if hash {
            store.get_to_file_hashed(&key, &path).await.unwrap();
        } else {
            store.get_to_file(&key, &path).await.unwrap();
        }
    })
    .await
}

/// Rounds of the download comparison, alternating the SDK and dimple so that the
/// host's load falls on both alike; the median ratio is reported.
const DOWNLOAD_ROUNDS: usize = 3;

fn main() {
    let server = s3::Server::start();
    let rt = rt();
    let bucket = rt.block_on(server.bucket("blobs"));
    let dir = tempfile::tempdir().unwrap();
    let mb = (VALUES * SIZE) as f64 / 1e6;

    // The values, once as files (for the SDK) and once as rows (for dimple).
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let files_dir = dir.path().join("files");
    std::fs::create_dir_all(&files_dir).unwrap();
    let url = format!("s3://{bucket}/group");
    let mut w = Replica::init(&dir.path().join("w.db"), Some(&url), Some("writer"), Options::default()).unwrap();
    w.conn().execute_batch(TABLE).unwrap();
    w.track("files", false).unwrap();
    let mut value = vec![0u8; SIZE];
    for i in 0..VALUES {
        rng.fill_bytes(&mut value);
        std::fs::write(files_dir.join(format!("{i}")), &value).unwrap();
        w.conn().execute("INSERT INTO files VALUES (?1, 'f', ?2)", rusqlite::params![format!("f{i}"), value]).unwrap();
    }
    drop(value);
    w.capture().unwrap();

    // The AWS SDK alone: the same bytes up, then down, IN_FLIGHT requests at a time.
    let client = rt.block_on(async {
        let conf =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(&server.endpoint).load().await;
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&conf).force_path_style(true).build())
    });
    let sdk_up = rt.block_on(async {
        let t = Instant::now();
        futures::stream::iter((0..VALUES).map(|i| {
            let (client, bucket, path) = (client.clone(), bucket.clone(), files_dir.join(format!("{i}")));
            async move {
                let body = ByteStream::from_path(&path).await.unwrap();
                client.put_object().bucket(&bucket).key(format!("sdk/{i}")).body(body).send().await.unwrap();
            }
        }))
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
        t.elapsed().as_secs_f64()
    });

    // Plain SQLite writing the same values (a replica's settings: WAL, NORMAL).
    let plain_s = {
        let c = rusqlite::Connection::open(dir.path().join("plain.db")).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").unwrap();
        c.execute_batch(TABLE).unwrap();
        let t = Instant::now();
        c.execute_batch("BEGIN").unwrap();
        for i in 0..VALUES {
            let v = std::fs::read(files_dir.join(format!("{i}"))).unwrap();
            c.execute("INSERT INTO files VALUES (?1, 'f', ?2)", rusqlite::params![format!("f{i}"), v]).unwrap();
        }
        c.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        t.elapsed().as_secs_f64()
    };

    // dimple: push by the writer, pull by a fresh reader.
    let store = rt.block_on(dimple::open_store(&url, Some(&server.endpoint))).unwrap();
    reset_peak();
    let t = Instant::now();
    let pushed = rt.block_on(dimple::push(&mut w, &store)).unwrap();
    let push_s = t.elapsed().as_secs_f64();
    let push_peak = peak_mib();
    assert_eq!(pushed.blobs.count as usize, VALUES);
    // Rounds alternating the SDK's download and a pull by a fresh reader: the
    // pull's whole time, and the part of it spent downloading and checking the
    // values (its report's `millis`), both against the SDK's round.
    // (SDK seconds, dimple's pull seconds, dimple's download+check seconds)
    let mut rounds: Vec<(f64, f64, f64)> = Vec::new();
    let mut pull_peak = 0f64;
    // (SDK seconds, the store's download alone, the store's download hashed)
    let mut parts: Vec<(f64, f64, f64)> = Vec::new();
    let raw = rt.block_on(dimple::store::S3Store::open(&format!("s3://{bucket}"), Some(&server.endpoint))).unwrap();
    let reader = dir.path().join("r.db");
    for round in 0..DOWNLOAD_ROUNDS {
        if round > 0 {
            std::fs::remove_file(&reader).unwrap();
            let _ = std::fs::remove_dir_all(dimple::replica::side_dir(&reader));
        }
        let sdk_s = rt.block_on(sdk_download(&client, &bucket, &dir.path().join(format!("down-{round}"))));
        let mut r = Replica::init(&reader, Some(&url), Some(&format!("reader{round}")), Options::default()).unwrap();
        r.conn().execute_batch(TABLE).unwrap();
        r.track("files", false).unwrap();
        reset_peak();
        let t = Instant::now();
        let pulled = rt.block_on(dimple::pull(&mut r, &store)).unwrap();
        let pull_s = t.elapsed().as_secs_f64();
        pull_peak = pull_peak.max(peak_mib());
        assert_eq!(pulled.blobs.count as usize, VALUES);
        assert_eq!(pulled.blobs_missing.count, 0);
        assert!(pulled.blobs.millis > 0, "the transfers' time is reported");
        rounds.push((sdk_s, pull_s, pulled.blobs.millis as f64 / 1e3));
        let down = dir.path().join(format!("parts-{round}"));
        let sdk_s = rt.block_on(sdk_download(&client, &bucket, &down));
        let alone = rt.block_on(store_download(&raw, &down, false));
        let hashed = rt.block_on(store_download(&raw, &down, true));
        parts.push((sdk_s, alone, hashed));
    }
    let median = |ratios: Vec<f64>| {
        let mut v = ratios;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let alone_ratio = median(parts.iter().map(|p| p.0 / p.1).collect());
    let hashed_ratio = median(parts.iter().map(|p| p.0 / p.2).collect());
    // The median round by the download+check ratio; its pull is the one shown.
    rounds.sort_by(|a, b| (a.0 / a.2).total_cmp(&(b.0 / b.2)));
    let (round_sdk_s, pull_s, transfer_s) = rounds[rounds.len() / 2];
    let round_ratios: Vec<String> = rounds.iter().map(|(sdk, _, d)| format!("{:.2}x", sdk / d)).collect();
    let pull_ratios: Vec<String> = rounds.iter().map(|(sdk, p, _)| format!("{:.2}x", sdk / p)).collect();
    let r = Replica::open(&reader, Options::default()).unwrap();
    r.conn().execute("ATTACH ?1 AS w", [dir.path().join("w.db").display().to_string()]).unwrap();
    let same: i64 = r
        .conn()
        .query_row("SELECT count(*) FROM files r JOIN w.files x ON x.id = r.id AND x.data = r.data", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(same as usize, VALUES, "every value arrived bit for bit");
    rt.block_on(server.drop_bucket(&bucket));
    drop(server);

    let (dimple_up, dimple_down) = (mb / push_s, mb / pull_s);
    let (base_up, base_down) = (mb / sdk_up, mb / round_sdk_s);
    println!("{VALUES} values of {} MiB through the S3 test server on loopback ({IN_FLIGHT} in flight)", SIZE >> 20);
    println!("{:<22} {:>12} {:>14} {:>8} {:>12}", "", "dimple MB/s", "AWS SDK MB/s", "ratio", "peak MiB");
    println!(
        "{:<22} {:>12.0} {:>14.0} {:>7.2}x {:>12.0}",
        "push (upload)",
        dimple_up,
        base_up,
        dimple_up / base_up,
        push_peak
    );
    println!(
        "{:<22} {:>12.0} {:>14.0} {:>7.2}x {:>12.0}",
        "pull (download, apply)",
        dimple_down,
        base_down,
        dimple_down / base_down,
        pull_peak
    );
    println!(
        "{:<22} {:>12.0} {:>14.0} {:>7.2}x {:>12}",
        "pull, download+check",
        mb / transfer_s,
        mb / round_sdk_s,
        round_sdk_s / transfer_s,
        ""
    );
    println!(
        "{:<22} {:>12.0} {:>14.0} {:>7.2}x {:>12}",
        "pull vs SDK + SQLite",
        dimple_down,
        mb / (round_sdk_s + plain_s),
        (round_sdk_s + plain_s) / pull_s,
        ""
    );
    println!(
        "(pulls by {DOWNLOAD_ROUNDS} fresh readers alternating with the SDK's download, the median round shown; \
         download+check is the time the pull's report gives its transfers, ratios {}; whole pulls {})",
        round_ratios.join(", "),
        pull_ratios.join(", ")
    );
    println!(
        "(where the download's time goes, median of {DOWNLOAD_ROUNDS} rounds: dimple's S3 store fetching the SDK's copies \
         to files runs at {alone_ratio:.2}x the SDK alone, and {hashed_ratio:.2}x when it also takes their sha256 as they arrive)"
    );
    println!("(plain SQLite alone writes the same values at {:.0} MB/s)", mb / plain_s);
    println!("goal (issue 14): at least 0.8x the SDK alone, peak memory under 100 MB");
}
