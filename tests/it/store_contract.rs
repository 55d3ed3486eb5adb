//! The `Store` contract (see `src/store/mod.rs`), written once and run on every
//! backend: a directory bucket, and S3 against the server `scripts/test` starts.
//!
//! Without `DIMPLE_TEST_S3_ENDPOINT` the S3 cases fail, so a missing server can never
//! look like a pass; `DIMPLE_SKIP_S3=1` skips them (loudly) outside CI.

use anyhow::{bail, ensure, Context, Result};
use dimple::store::{self, Got, PutMode, Store, StoreError};
use futures::stream::{self, StreamExt, TryStreamExt};

/// Defines each contract case once per backend: `local::<case>` and `s3::<case>`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() -> anyhow::Result<()> {
                    let dir = tempfile::tempdir()?;
                    let s = dimple::store::LocalStore::open(dir.path())?;
                    super::$case(&s, super::Caps::FULL).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    match super::s3_support::fresh_store(stringify!($case)).await? {
                        Some(s) => super::$case(&s, super::s3_support::caps()).await,
                        None => Ok(()),
                    }
                }
            )*
        }
    };
}

contract!(
    put_get_roundtrip,
    get_missing_is_not_found,
    list_is_in_byte_order_under_the_prefix,
    list_pages_over_a_thousand_keys,
    etag_changes_on_every_put,
    get_if_none_match_is_not_modified,
    create_on_existing_key_fails,
    update_with_stale_etag_fails,
    update_on_missing_key_fails,
    racing_creates_have_exactly_one_winner,
    delete_removes_and_is_idempotent,
    get_to_file_streams_the_whole_object,
    put_file_keeps_the_preconditions_of_put,
);

/// What a backend under test is known to do differently from the contract.
#[derive(Clone, Copy)]
pub struct Caps {
    /// Lists in byte order even where a key segment is a prefix of a sibling followed
    /// by a byte below '/' (`a-1` < `a/1`). SeaweedFS walks its directory tree
    /// instead (`a/1` before `a-1`); dimple's keys never depend on the difference.
    pub byte_order_across_directories: bool,
}

impl Caps {
    pub const FULL: Caps = Caps { byte_order_across_directories: true };
}

fn is_precondition<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::PreconditionFailed(_)))
}

async fn put_get_roundtrip(s: &dyn Store, _caps: Caps) -> Result<()> {
    for (key, bytes) in [("a/b/c.db", b"hello".to_vec()), ("top", vec![]), ("bin/x", (0..=255).collect())] {
        let etag = s.put(key, bytes.clone(), PutMode::Overwrite).await?;
        let (got, got_etag) = store::get_bytes(s, key).await?;
        ensure!(got == bytes, "{key}: read back other bytes");
        ensure!(got_etag == etag, "{key}: get ETag {got_etag} != put ETag {etag}");
    }
    Ok(())
}

async fn get_to_file_streams_the_whole_object(s: &dyn Store, _caps: Caps) -> Result<()> {
    // Bigger than one network read, and not compressible into a single chunk.
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    s.put("big/object", bytes.clone(), PutMode::Overwrite).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("copy");
    std::fs::write(&path, b"old contents are replaced")?;
    let size = s.get_to_file("big/object", &path).await?;
    ensure!(size == bytes.len() as u64, "size {size}");
    ensure!(std::fs::read(&path)? == bytes, "the file holds other bytes");
    let missing = s.get_to_file("no/such/key", &dir.path().join("none")).await;
    ensure!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    Ok(())
}

async fn put_file_keeps_the_preconditions_of_put(s: &dyn Store, _caps: Caps) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8).collect();
    std::fs::write(&one, &bytes)?;
    std::fs::write(&two, b"second version")?;
    let etag = s.put_file("f/obj", &one, PutMode::Create).await?;
    ensure!(store::get_bytes(s, "f/obj").await?.0 == bytes, "read back other bytes");
    ensure!(is_precondition(&s.put_file("f/obj", &two, PutMode::Create).await), "create over an existing key");
    ensure!(is_precondition(&s.put_file("f/obj", &two, PutMode::Update("stale".into())).await), "stale update");
    s.put_file("f/obj", &two, PutMode::Update(etag)).await?;
    ensure!(store::get_bytes(s, "f/obj").await?.0 == b"second version", "update did not land");
    Ok(())
}

async fn get_missing_is_not_found(s: &dyn Store, _caps: Caps) -> Result<()> {
    let r = s.get("no/such/key", None).await;
    ensure!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    Ok(())
}

async fn list_is_in_byte_order_under_the_prefix(s: &dyn Store, caps: Caps) -> Result<()> {
    // '-' < '/' < '0' < 'B' < 'a' < 'b' in bytes; written out of order.
    let keys = ["x/b", "x/a0", "x/B", "x/a/1", "x/a-1", "y/outside", "x-sibling"];
    let mut etags = std::collections::HashMap::new();
    for k in keys {
        etags.insert(k, s.put(k, k.as_bytes().to_vec(), PutMode::Overwrite).await?);
    }
    let listed = store::list_all(s, "x/", None).await?;
    let names: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    if caps.byte_order_across_directories {
        ensure!(names == ["x/B", "x/a-1", "x/a/1", "x/a0", "x/b"], "{names:?}");
    } else {
        // Asserted, not skipped: if the server starts sorting by bytes, this fails
        // and the capability flag can go.
        ensure!(names == ["x/B", "x/a/1", "x/a-1", "x/a0", "x/b"], "directory order changed: {names:?}");
    }
    for m in &listed {
        ensure!(m.etag == etags[m.key.as_str()], "{}: list ETag differs from put ETag", m.key);
        ensure!(m.size == m.key.len() as u64, "{}: size {}", m.key, m.size);
    }
    let after = store::list_all(s, "x/", Some("x/a0")).await?;
    let names: Vec<&str> = after.iter().map(|m| m.key.as_str()).collect();
    ensure!(names == ["x/b"], "strictly after x/a0: {names:?}");
    // A start key that sorts before the prefix (SeaweedFS issue #11321 answered this
    // with an empty page) lists everything.
    let all = store::list_all(s, "x/", Some("a")).await?;
    ensure!(all.len() == 5, "start_after before the prefix: {all:?}");
    Ok(())
}

async fn list_pages_over_a_thousand_keys(s: &dyn Store, _caps: Caps) -> Result<()> {
    let n = store::LIST_PAGE + 5;
    let keys: Vec<String> = (0..n).map(|i| format!("p/{i:05}")).collect();
    stream::iter(keys.iter().map(|k| s.put(k, vec![1], PutMode::Overwrite)))
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let (first, more) = s.list_page("p/", None).await?;
    ensure!(first.len() == store::LIST_PAGE && more, "first page: {} keys, more={more}", first.len());
    let (second, more) = s.list_page("p/", Some(&first.last().unwrap().key)).await?;
    ensure!(second.len() == 5 && !more, "second page: {} keys, more={more}", second.len());
    let all: Vec<String> = store::list_all(s, "p/", None).await?.into_iter().map(|m| m.key).collect();
    ensure!(all == keys, "list_all returned {} keys, not all {n} in order", all.len());
    let (mid, _) = s.list_page("p/", Some("p/00499")).await?;
    ensure!(mid.first().map(|m| m.key.as_str()) == Some("p/00500"), "start_after in the middle");
    Ok(())
}

async fn etag_changes_on_every_put(s: &dyn Store, _caps: Caps) -> Result<()> {
    let mut seen = Vec::new();
    for v in ["v1", "v2", "v3"] {
        let etag = s.put("k", v.as_bytes().to_vec(), PutMode::Overwrite).await?;
        ensure!(!seen.contains(&etag), "ETag {etag} repeated");
        seen.push(etag);
    }
    let listed = store::list_all(s, "k", None).await?;
    ensure!(listed.len() == 1 && Some(&listed[0].etag) == seen.last(), "{listed:?}");
    Ok(())
}

async fn get_if_none_match_is_not_modified(s: &dyn Store, _caps: Caps) -> Result<()> {
    let old = s.put("k", b"1".to_vec(), PutMode::Overwrite).await?;
    ensure!(matches!(s.get("k", Some(&old)).await?, Got::NotModified), "current ETag");
    let listed = store::list_all(s, "k", None).await?;
    ensure!(matches!(s.get("k", Some(&listed[0].etag)).await?, Got::NotModified), "listed ETag");
    s.put("k", b"2".to_vec(), PutMode::Overwrite).await?;
    match s.get("k", Some(&old)).await? {
        Got::Found { bytes, .. } => ensure!(bytes == b"2"),
        Got::NotModified => bail!("stale ETag answered NotModified"),
    }
    Ok(())
}

async fn create_on_existing_key_fails(s: &dyn Store, _caps: Caps) -> Result<()> {
    s.put("k", b"first".to_vec(), PutMode::Create).await?;
    let r = s.put("k", b"second".to_vec(), PutMode::Create).await;
    ensure!(is_precondition(&r), "{r:?}");
    ensure!(store::get_bytes(s, "k").await?.0 == b"first");
    Ok(())
}

async fn update_with_stale_etag_fails(s: &dyn Store, _caps: Caps) -> Result<()> {
    let v1 = s.put("k", b"1".to_vec(), PutMode::Create).await?;
    let v2 = s.put("k", b"2".to_vec(), PutMode::Update(v1.clone())).await?;
    ensure!(v2 != v1);
    let r = s.put("k", b"3".to_vec(), PutMode::Update(v1)).await;
    ensure!(is_precondition(&r), "{r:?}");
    let listed = store::list_all(s, "k", None).await?;
    let v3 = s.put("k", b"3".to_vec(), PutMode::Update(listed[0].etag.clone())).await?;
    ensure!(store::get_bytes(s, "k").await? == (b"3".to_vec(), v3), "update with listed ETag");
    Ok(())
}

async fn update_on_missing_key_fails(s: &dyn Store, _caps: Caps) -> Result<()> {
    let etag = s.put("other", b"x".to_vec(), PutMode::Overwrite).await?;
    let r = s.put("missing", b"x".to_vec(), PutMode::Update(etag)).await;
    ensure!(is_precondition(&r), "{r:?}");
    ensure!(matches!(s.get("missing", None).await, Err(StoreError::NotFound(_))));
    Ok(())
}

async fn racing_creates_have_exactly_one_winner(s: &dyn Store, _caps: Caps) -> Result<()> {
    for round in 0..3 {
        let key = format!("race/{round}");
        let tries = (0..8).map(|i| {
            let key = key.clone();
            async move { (i, s.put(&key, format!("writer {i}").into_bytes(), PutMode::Create).await) }
        });
        let results = futures::future::join_all(tries).await;
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect();
        ensure!(winners.len() == 1, "round {round}: winners {winners:?}");
        for (i, r) in &results {
            ensure!(r.is_ok() || is_precondition(r), "writer {i}: {r:?}");
        }
        let stored = store::get_bytes(s, &key).await?.0;
        ensure!(stored == format!("writer {}", winners[0]).into_bytes(), "the winner's bytes are stored");
    }
    Ok(())
}

async fn delete_removes_and_is_idempotent(s: &dyn Store, _caps: Caps) -> Result<()> {
    s.put("d/k", b"x".to_vec(), PutMode::Overwrite).await?;
    s.put("d/keep", b"y".to_vec(), PutMode::Overwrite).await?;
    s.delete("d/k").await?;
    ensure!(matches!(s.get("d/k", None).await, Err(StoreError::NotFound(_))));
    let names: Vec<String> = store::list_all(s, "d/", None).await?.into_iter().map(|m| m.key).collect();
    ensure!(names == ["d/keep"], "{names:?}");
    s.delete("d/k").await.context("deleting a missing key")?;
    Ok(())
}

pub mod s3_support {
    use anyhow::{bail, Context, Result};
    use dimple::store::S3Store;

    /// Set by `scripts/s3-server`, which knows that it runs SeaweedFS.
    pub fn caps() -> super::Caps {
        let directory_order = std::env::var("DIMPLE_TEST_S3_DIRECTORY_ORDER").as_deref() == Ok("1");
        super::Caps { byte_order_across_directories: !directory_order }
    }

    pub fn endpoint() -> Result<Option<String>> {
        if let Ok(e) = std::env::var("DIMPLE_TEST_S3_ENDPOINT") {
            return Ok(Some(e));
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("DIMPLE_TEST_S3_ENDPOINT is not set, and CI=true: the S3 tests must run in CI (use scripts/test)");
        }
        if std::env::var("DIMPLE_SKIP_S3").as_deref() == Ok("1") {
            eprintln!("SKIPPED: S3 test (DIMPLE_SKIP_S3=1 and no DIMPLE_TEST_S3_ENDPOINT)");
            return Ok(None);
        }
        bail!(
            "DIMPLE_TEST_S3_ENDPOINT is not set: run `bash scripts/test`, or set DIMPLE_SKIP_S3=1 to skip the S3 tests"
        );
    }

    /// A bucket name that is unique per test and run, and valid for S3 (3-63 chars
    /// of lowercase letters, digits and hyphens).
    pub fn bucket_name(test: &str) -> String {
        let stem: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let stem = &stem[..stem.len().min(45)];
        format!("t-{}-{:08x}", stem.trim_end_matches('-'), rand::random::<u32>())
    }

    /// Opens `s3://<fresh bucket>/group1` (a prefix, so that prefix handling is part
    /// of every case), creating the bucket; `None` when S3 tests are skipped.
    pub async fn fresh_store(test: &str) -> Result<Option<S3Store>> {
        let Some(endpoint) = endpoint()? else { return Ok(None) };
        let bucket = bucket_name(test);
        let s = S3Store::open(&format!("s3://{bucket}/group1"), Some(&endpoint)).await?;
        s.client()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e).to_string()))
            .with_context(|| format!("creating bucket {bucket} at {endpoint}"))?;
        Ok(Some(s))
    }
}
