//! S3-specific behaviour beyond the shared contract: how failures are classified
//! (which decides what `Retrying` repeats), prefix isolation, and `open_url`.

use crate::store_contract::s3_support;
use anyhow::{ensure, Result};
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::Credentials;
use dimple::store::faulty::Faulty;
use dimple::store::{self, PutMode, RetryPolicy, Retrying, S3Store, Store, StoreError};

/// An S3 store with explicit credentials, so a test can use wrong ones without
/// touching the environment that other tests (in other threads) read.
async fn with_credentials(url: &str, endpoint: &str, secret: &str) -> Result<S3Store> {
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(Credentials::new("testkey", secret, None, None, "test"))
        .endpoint_url(endpoint)
        .load()
        .await;
    Ok(S3Store::from_config(url, &conf)?)
}

#[tokio::test]
async fn wrong_secret_is_refused_and_not_retried() -> Result<()> {
    let Some(s) = s3_support::fresh_store("wrong_secret").await? else { return Ok(()) };
    let url = s.describe();
    let url = url.split(' ').next().unwrap();
    let endpoint = s3_support::endpoint()?.unwrap();
    let secret = "definitely-not-the-secret";
    let (faulty, plan) = Faulty::new(with_credentials(url, &endpoint, secret).await?);
    let bad = Retrying::new(Box::new(faulty), RetryPolicy::immediate(6));
    for r in [bad.get("k", None).await.map(|_| ()), bad.put("k", vec![1], PutMode::Create).await.map(|_| ())] {
        match r {
            Err(StoreError::Refused(msg)) => ensure!(!msg.contains(secret), "the secret leaked: {msg}"),
            other => anyhow::bail!("expected Refused, got {other:?}"),
        }
    }
    ensure!(plan.calls() == 2, "Refused was retried: {} calls", plan.calls());
    Ok(())
}

#[tokio::test]
async fn missing_bucket_is_refused() -> Result<()> {
    let Some(endpoint) = s3_support::endpoint()? else { return Ok(()) };
    let bucket = s3_support::bucket_name("never_created");
    let s = S3Store::open(&format!("s3://{bucket}/p"), Some(&endpoint)).await?;
    let list = s.list_page("", None).await;
    ensure!(matches!(list, Err(StoreError::Refused(_))), "list: {list:?}");
    let get = s.get("k", None).await;
    ensure!(matches!(get, Err(StoreError::Refused(_))), "get: {get:?}");
    let put = s.put("k", vec![1], PutMode::Overwrite).await;
    ensure!(matches!(put, Err(StoreError::Refused(_))), "put (is -s3.autoCreateBucket=false set?): {put:?}");
    Ok(())
}

/// Needs no server: nothing listens on port 1.
#[tokio::test]
async fn unreachable_server_is_unavailable() -> Result<()> {
    let s = with_credentials("s3://b/p", "http://127.0.0.1:1", "x").await?;
    let r = s.get("k", None).await;
    ensure!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn prefixes_isolate_sync_groups() -> Result<()> {
    let Some(s) = s3_support::fresh_store("prefixes").await? else { return Ok(()) };
    let endpoint = s3_support::endpoint()?.unwrap();
    let bucket = s.describe().trim_start_matches("s3://").split('/').next().unwrap().to_owned();
    let other = S3Store::open(&format!("s3://{bucket}/group2/"), Some(&endpoint)).await?;
    let root = S3Store::open(&format!("s3://{bucket}"), Some(&endpoint)).await?;
    s.put("replicas/a/LATEST.json", b"1".to_vec(), PutMode::Overwrite).await?;
    other.put("replicas/b/LATEST.json", b"2".to_vec(), PutMode::Overwrite).await?;
    let keys = |v: Vec<store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    ensure!(keys(store::list_all(&s, "replicas/", None).await?) == ["replicas/a/LATEST.json"]);
    ensure!(keys(store::list_all(&other, "", None).await?) == ["replicas/b/LATEST.json"]);
    ensure!(
        keys(store::list_all(&root, "", None).await?)
            == ["group1/replicas/a/LATEST.json", "group2/replicas/b/LATEST.json"]
    );
    Ok(())
}

#[tokio::test]
async fn open_url_picks_the_backend() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plain = store::open_url(dir.path().to_str().unwrap(), None).await?;
    plain.put("k", b"x".to_vec(), PutMode::Create).await?;
    let url = format!("file://{}", dir.path().display());
    let file = store::open_url(&url, None).await?;
    ensure!(store::get_bytes(&*file, "k").await?.0 == b"x");
    let s3 = store::open_url("s3://some-bucket/team", Some("http://127.0.0.1:1")).await?;
    ensure!(s3.describe().starts_with("s3://some-bucket/team/"), "{}", s3.describe());
    for bad in ["http://x/y", "file://relative", ""] {
        ensure!(matches!(store::open_url(bad, None).await, Err(StoreError::Refused(_))), "{bad:?}");
    }
    Ok(())
}

#[derive(Debug)]
struct NoCredentials;

impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        use aws_credential_types::provider::{error::CredentialsError, future::ProvideCredentials};
        ProvideCredentials::ready(Err(CredentialsError::not_loaded("test: nothing configured")))
    }
}

/// Needs no server: credentials are resolved before anything is sent.
#[tokio::test]
async fn missing_credentials_are_refused_not_retried() -> Result<()> {
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(NoCredentials)
        .endpoint_url("http://127.0.0.1:1")
        .load()
        .await;
    let s = S3Store::from_config("s3://b/p", &conf)?;
    let r = s.get("k", None).await;
    ensure!(matches!(r, Err(StoreError::Refused(_))), "{r:?}");
    Ok(())
}
