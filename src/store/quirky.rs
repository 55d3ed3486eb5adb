//! A store that misbehaves the way some S3-compatible servers do, for testing
//! `dimple doctor` without those servers.

use super::{Got, ObjectMeta, Part, PutMode, Store, StoreError, StoreResult};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// Create-only PUT on an existing key overwrites it (If-None-Match ignored).
    IgnoresIfNoneMatch,
    /// PUT with a stale If-Match overwrites anyway.
    IgnoresIfMatch,
    /// Create-only PUT on an existing key answers 304 instead of 412 (one MinIO release).
    AnswersNotModified,
    /// Every read reports a new ETag for unchanged bytes.
    UnstableEtags,
    /// LIST pages ignore `start_after` (every page starts over).
    IgnoresStartAfter,
    /// No multipart uploads (a minimal S3 implementation).
    NoMultipart,
}

pub struct Quirky<S> {
    inner: S,
    quirk: Quirk,
    reads: AtomicU64,
}

impl<S: Store> Quirky<S> {
    pub fn new(inner: S, quirk: Quirk) -> Self {
        Quirky { inner, quirk, reads: AtomicU64::new(0) }
    }
}

#[async_trait]
impl<S: Store> Store for Quirky<S> {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        let start_after = if self.quirk == Quirk::IgnoresStartAfter { None } else { start_after };
        self.inner.list_page(prefix, start_after).await
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        match self.inner.get(key, if_none_match).await? {
            Got::Found { bytes, etag } if self.quirk == Quirk::UnstableEtags => {
                let n = self.reads.fetch_add(1, Ordering::Relaxed);
                Ok(Got::Found { bytes, etag: format!("{etag}-{n}") })
            }
            other => Ok(other),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        match (self.quirk, &mode) {
            (Quirk::IgnoresIfNoneMatch, PutMode::Create) | (Quirk::IgnoresIfMatch, PutMode::Update(_)) => {
                self.inner.put(key, bytes, PutMode::Overwrite).await
            }
            (Quirk::AnswersNotModified, PutMode::Create) => match self.inner.put(key, bytes, mode).await {
                Err(StoreError::PreconditionFailed(_)) => {
                    Err(StoreError::PreconditionFailed(format!("put {key}: HTTP 304 (no code): Not Modified")))
                }
                other => other,
            },
            _ => self.inner.put(key, bytes, mode).await,
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        if self.quirk == Quirk::NoMultipart {
            return Err(StoreError::Refused(format!("start upload {key}: HTTP 501 NotImplemented")));
        }
        self.inner.multipart_start(key).await
    }

    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        self.inner.multipart_put(key, upload, number, bytes).await
    }

    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        self.inner.multipart_parts(key, upload).await
    }

    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        self.inner.multipart_finish(key, upload, parts).await
    }

    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        self.inner.multipart_abort(key, upload).await
    }

    fn describe(&self) -> String {
        format!("{} (with the quirk {:?})", self.inner.describe(), self.quirk)
    }
}
