//! The object store a sync group shares: a bucket, seen as a flat key space.
//!
//! The contract every backend keeps (and `tests/it/store_contract.rs` checks):
//! - a put is atomic: no reader ever sees part of an object;
//! - `PutMode::Create` fails with [`StoreError::PreconditionFailed`] when the key
//!   exists, `PutMode::Update(etag)` when the current ETag differs or the key is missing;
//! - `list` returns keys in byte order, strictly after `start_after`, with ETags that
//!   change on every put of that key that changes its bytes (S3 ETags are content
//!   hashes, so rewriting identical bytes may keep the ETag; `LocalStore` changes it
//!   anyway);
//! - `get` with `if_none_match` returns [`Got::NotModified`] when the ETag still matches.
//!
//! Every request goes through [`Metered`], which counts it by kind so that
//! `sync --json` can report what a sync cost, and [`Retrying`], the one place that
//! repeats transient failures. [`open_url`] returns the bare backend; the caller
//! stacks the wrappers (`Metered` outside `Retrying` counts syncs, inside counts
//! round trips).

mod conditional;
pub mod faulty;
mod local;
mod metered;
pub mod quirky;
mod retry;
mod s3;

pub use conditional::{create_or_accept, update_or_recognise, Written};
pub use local::LocalStore;
pub use metered::{Metered, RequestStats};
pub use retry::{RetryPolicy, Retrying};
pub use s3::S3Store;

use async_trait::async_trait;
use std::sync::Arc;

/// Keys per LIST page. S3 returns at most 1000; every backend pages the same way so
/// request counts compare across backends.
pub const LIST_PAGE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// When the object was last written, in ms since the epoch by the store's
    /// clock (0 when the store does not say). Garbage collection ages blobs by it.
    pub modified_ms: u64,
}

/// One finished part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// From 1.
    pub number: u32,
    pub size: u64,
    pub etag: String,
}

/// Parts of a multipart upload are at least this big (S3 refuses smaller ones,
/// except the last).
pub const MIN_PART: u64 = 5 << 20;

#[derive(Debug)]
pub enum Got {
    Found { bytes: Vec<u8>, etag: String },
    NotModified,
}

/// The precondition of a put: the domain's way to say "create only" and
/// "replace only what I last saw".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    Overwrite,
    Create,
    Update(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Worth retrying: throttling, 5xx, timeouts, connection errors.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying: bad credentials, missing bucket, forbidden.
    #[error("store refused the request: {0}")]
    Refused(String),
    #[error("store I/O error: {0}")]
    Io(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One bucket (already narrowed to the sync group's prefix): keys are relative.
#[async_trait]
pub trait Store: Send + Sync {
    /// One page of keys under `prefix`, strictly after `start_after`, at most [`LIST_PAGE`].
    /// Returns the page and whether more keys follow.
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)>;
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got>;
    /// Returns the new ETag.
    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String>;
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// Downloads an object into `path` (replacing it), returning its size. Backends
    /// stream it, so memory does not grow with the object (a snapshot can be as big
    /// as the database); this default reads it whole.
    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> StoreResult<u64> {
        let (bytes, _) = get_bytes(self, key).await?;
        std::fs::write(path, &bytes).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        Ok(bytes.len() as u64)
    }
    /// [`Store::get_to_file`], also returning the sha256 (hex) of the bytes, which
    /// backends compute as the bytes arrive (large values are checked by it); this
    /// default reads the file again.
    async fn get_to_file_hashed(&self, key: &str, path: &std::path::Path) -> StoreResult<(u64, String)> {
        let n = self.get_to_file(key, path).await?;
        let sha = file_sha256(path).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        Ok((n, sha))
    }
    /// Uploads the file at `path` under the same preconditions as [`Store::put`].
    /// Backends stream it; this default reads it whole.
    async fn put_file(&self, key: &str, path: &std::path::Path, mode: PutMode) -> StoreResult<String> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        self.put(key, bytes, mode).await
    }
    /// The object under `key`, or None. This default lists its key.
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let (page, _) = self.list_page(key, None).await?;
        Ok(page.into_iter().find(|m| m.key == key))
    }
    /// Starts a multipart upload to `key`, returning its upload id. Large values
    /// ([`crate::blob`]) travel this way so that a lost connection or a crash costs
    /// at most the part in flight. Backends without it refuse.
    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        Err(StoreError::Refused(format!("{key}: multipart uploads are not supported by {}", self.describe())))
    }
    /// Uploads part `number` (from 1) of an upload; returns its ETag.
    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        let _ = (upload, number, bytes);
        Err(StoreError::Refused(format!("{key}: multipart uploads are not supported by {}", self.describe())))
    }
    /// The parts of an upload that the store holds; NotFound when the upload is
    /// gone (finished, aborted or expired).
    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        let _ = upload;
        Err(StoreError::NotFound(format!("{key}: no multipart upload")))
    }
    /// Joins `parts` into the object under `key` (replacing it); returns its ETag.
    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        let _ = (upload, parts);
        Err(StoreError::Refused(format!("{key}: multipart uploads are not supported by {}", self.describe())))
    }
    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        let _ = (key, upload);
        Ok(())
    }
    /// Human-readable location, without secrets.
    fn describe(&self) -> String;
}

pub use crate::hash::file_sha256;

/// Every key under `prefix` after `start_after`, following pages.
pub async fn list_all(store: &dyn Store, prefix: &str, start_after: Option<&str>) -> StoreResult<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut after = start_after.map(str::to_owned);
    loop {
        let (page, more) = store.list_page(prefix, after.as_deref()).await?;
        let last = page.last().map(|m| m.key.clone());
        out.extend(page);
        match (more, last) {
            (true, Some(k)) => after = Some(k),
            _ => return Ok(out),
        }
    }
}

/// Fetch an object that must exist.
pub async fn get_bytes<S: Store + ?Sized>(store: &S, key: &str) -> StoreResult<(Vec<u8>, String)> {
    match store.get(key, None).await? {
        Got::Found { bytes, etag } => Ok((bytes, etag)),
        Got::NotModified => Err(StoreError::Io(format!("{key}: unexpected not-modified"))),
    }
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the store a sync group names: `s3://bucket/prefix` (with `endpoint`, or
/// `AWS_ENDPOINT_URL`, for S3-compatible servers), `file:///abs/path`, or a plain
/// directory path. Any other scheme is refused rather than taken for a directory.
pub async fn open_url(url: &str, endpoint: Option<&str>) -> StoreResult<Box<dyn Store>> {
    Ok(match BucketUrl::parse(url)? {
        BucketUrl::S3(url) => Box::new(S3Store::open(&url, endpoint).await?),
        BucketUrl::Dir(path) => Box::new(LocalStore::open(path)?),
    })
}

/// A bucket location as a user writes it, checked before anything is stored: a typo
/// such as `s3:/notes` must not quietly become a local directory named `s3:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketUrl {
    /// `s3://bucket[/prefix]`
    S3(String),
    /// An absolute directory (`file:///dir`, or a plain path made absolute).
    Dir(std::path::PathBuf),
}

impl BucketUrl {
    pub fn parse(url: &str) -> StoreResult<BucketUrl> {
        let refuse = |why: &str| {
            StoreError::Refused(format!(
                "bucket {url:?}: {why}; write s3://bucket/prefix, file:///absolute/dir or a directory path"
            ))
        };
        if url.is_empty() {
            return Err(refuse("empty location"));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            let ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
            if !ok {
                return Err(refuse("not a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)"));
            }
            return Ok(BucketUrl::S3(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(refuse("file URLs need an absolute path (file:///dir)"));
            }
            return Ok(BucketUrl::Dir(path.into()));
        }
        // `scheme:` at the start: a URL we do not know or a mistyped one (`s3:/b`).
        // A directory whose name really starts like that can be given as `./s3:`.
        let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
            s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        });
        if let Some(scheme) = scheme {
            return Err(refuse(&format!("{scheme}: is not a supported scheme (or a mistyped s3:// or file://)")));
        }
        let abs = std::path::absolute(url).map_err(|e| refuse(&e.to_string()))?;
        Ok(BucketUrl::Dir(abs))
    }

    /// The form stored in the replica: `s3://...` or `file:///abs/dir`.
    pub fn canonical(&self) -> String {
        match self {
            BucketUrl::S3(url) => url.clone(),
            BucketUrl::Dir(p) => format!("file://{}", p.display()),
        }
    }
}

/// A boxed store is a store, so wrappers (fault injection, retries, metering) stack
/// over any backend chosen at run time.
#[async_trait]
impl<S: Store + ?Sized> Store for Box<S> {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        (**self).list_page(prefix, start_after).await
    }
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        (**self).get(key, if_none_match).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        (**self).put(key, bytes, mode).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        (**self).delete(key).await
    }
    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> StoreResult<u64> {
        (**self).get_to_file(key, path).await
    }
    async fn put_file(&self, key: &str, path: &std::path::Path, mode: PutMode) -> StoreResult<String> {
        (**self).put_file(key, path, mode).await
    }
    async fn get_to_file_hashed(&self, key: &str, path: &std::path::Path) -> StoreResult<(u64, String)> {
        (**self).get_to_file_hashed(key, path).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        (**self).stat(key).await
    }
    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        (**self).multipart_start(key).await
    }
    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        (**self).multipart_put(key, upload, number, bytes).await
    }
    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        (**self).multipart_parts(key, upload).await
    }
    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        (**self).multipart_finish(key, upload, parts).await
    }
    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        (**self).multipart_abort(key, upload).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
