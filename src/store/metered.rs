//! Request accounting: the one place that counts what a sync costs.

use super::{Got, ObjectMeta, Part, PutMode, Store, StoreResult};
use async_trait::async_trait;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestStats {
    pub list: u64,
    pub get: u64,
    pub put: u64,
    pub head: u64,
    pub delete: u64,
    pub total: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl RequestStats {
    pub fn since(&self, earlier: &RequestStats) -> RequestStats {
        RequestStats {
            list: self.list - earlier.list,
            get: self.get - earlier.get,
            put: self.put - earlier.put,
            head: self.head - earlier.head,
            delete: self.delete - earlier.delete,
            total: self.total - earlier.total,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
        }
    }
}

#[derive(Default)]
struct Counters {
    list: AtomicU64,
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// Wraps a store and counts every request made through it, failed ones included
/// (a failed request still costs a round trip and, on S3, money).
pub struct Metered<S: ?Sized> {
    counters: Arc<Counters>,
    inner: Box<S>,
}

impl<S: Store + ?Sized> Metered<S> {
    pub fn new(inner: Box<S>) -> Self {
        Metered { counters: Arc::default(), inner }
    }

    pub fn stats(&self) -> RequestStats {
        let c = &self.counters;
        let (list, get, put, head, delete) = (
            c.list.load(Relaxed),
            c.get.load(Relaxed),
            c.put.load(Relaxed),
            c.head.load(Relaxed),
            c.delete.load(Relaxed),
        );
        RequestStats {
            list,
            get,
            put,
            head,
            delete,
            total: list + get + put + head + delete,
            bytes_up: c.bytes_up.load(Relaxed),
            bytes_down: c.bytes_down.load(Relaxed),
        }
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Metered<S> {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        self.counters.list.fetch_add(1, Relaxed);
        self.inner.list_page(prefix, start_after).await
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        self.counters.get.fetch_add(1, Relaxed);
        let got = self.inner.get(key, if_none_match).await?;
        if let Got::Found { bytes, .. } = &got {
            self.counters.bytes_down.fetch_add(bytes.len() as u64, Relaxed);
        }
        Ok(got)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        self.counters.put.fetch_add(1, Relaxed);
        self.counters.bytes_up.fetch_add(bytes.len() as u64, Relaxed);
        self.inner.put(key, bytes, mode).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.counters.delete.fetch_add(1, Relaxed);
        self.inner.delete(key).await
    }

    async fn put_file(&self, key: &str, path: &std::path::Path, mode: PutMode) -> StoreResult<String> {
        self.counters.put.fetch_add(1, Relaxed);
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        self.counters.bytes_up.fetch_add(size, Relaxed);
        self.inner.put_file(key, path, mode).await
    }

    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> StoreResult<u64> {
        self.counters.get.fetch_add(1, Relaxed);
        let size = self.inner.get_to_file(key, path).await?;
        self.counters.bytes_down.fetch_add(size, Relaxed);
        Ok(size)
    }

    async fn get_to_file_hashed(&self, key: &str, path: &std::path::Path) -> StoreResult<(u64, String)> {
        self.counters.get.fetch_add(1, Relaxed);
        let (size, sha) = self.inner.get_to_file_hashed(key, path).await?;
        self.counters.bytes_down.fetch_add(size, Relaxed);
        Ok((size, sha))
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.counters.head.fetch_add(1, Relaxed);
        self.inner.stat(key).await
    }

    // Multipart requests are POSTs and PUTs: counted as puts, the parts' bytes as up.
    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner.multipart_start(key).await
    }

    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        self.counters.put.fetch_add(1, Relaxed);
        self.counters.bytes_up.fetch_add(bytes.len() as u64, Relaxed);
        self.inner.multipart_put(key, upload, number, bytes).await
    }

    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        self.counters.list.fetch_add(1, Relaxed);
        self.inner.multipart_parts(key, upload).await
    }

    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner.multipart_finish(key, upload, parts).await
    }

    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        self.counters.delete.fetch_add(1, Relaxed);
        self.inner.multipart_abort(key, upload).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
