//! A store that fails on purpose, for crash and retry tests.
//!
//! Calls are numbered from 0 across every operation. A plan says which calls fail and
//! how; `Fault::AfterEffect` lets a put land and then reports a failure, which is
//! what a timed-out request that reached the server looks like to the client.

use super::{Got, ObjectMeta, Part, PutMode, Store, StoreError, StoreResult};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A transient error before the request has any effect (5xx, throttling, offline).
    Unavailable,
    /// A permanent refusal (403).
    Refused,
    /// The request takes effect, then the client sees a transient error.
    AfterEffect,
    /// The request never returns: the process dies here (the test drops the future).
    Hang,
}

#[derive(Debug, Default)]
struct Plan {
    calls: u64,
    failing: BTreeSet<u64>,
    fault: Option<Fault>,
    /// Fail every call from this number on (a store that went away).
    down_from: Option<u64>,
}

/// Shared handle to steer a [`Faulty`] store from a test.
#[derive(Clone, Default)]
pub struct FaultPlan(Arc<Mutex<Plan>>, Arc<tokio::sync::Notify>);

impl FaultPlan {
    /// Fail exactly call number `n` (counting from 0, from now on) with `fault`.
    pub fn fail_nth(&self, n: u64, fault: Fault) {
        let mut p = self.0.lock().unwrap();
        p.failing = [p.calls + n].into();
        p.fault = Some(fault);
        p.down_from = None;
    }

    /// Fail the next `k` calls with `fault`.
    pub fn fail_next(&self, k: u64, fault: Fault) {
        let mut p = self.0.lock().unwrap();
        p.failing = (p.calls..p.calls + k).collect();
        p.fault = Some(fault);
        p.down_from = None;
    }

    /// Fail every call from now on, until `heal`.
    pub fn go_down(&self, fault: Fault) {
        let mut p = self.0.lock().unwrap();
        p.down_from = Some(p.calls);
        p.fault = Some(fault);
    }

    pub fn heal(&self) {
        let mut p = self.0.lock().unwrap();
        p.failing.clear();
        p.down_from = None;
        p.fault = None;
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.0.lock().unwrap().calls
    }

    /// Resolves once a call has hung on [`Fault::Hang`]: the moment a test "kills"
    /// the process by dropping the operation.
    pub async fn hung(&self) {
        self.1.notified().await
    }

    fn next(&self) -> Option<Fault> {
        let mut p = self.0.lock().unwrap();
        let n = p.calls;
        p.calls += 1;
        let hit = p.failing.contains(&n) || p.down_from.is_some_and(|d| n >= d);
        if hit && p.fault == Some(Fault::Hang) {
            self.1.notify_one();
        }
        if hit {
            p.fault
        } else {
            None
        }
    }
}

pub struct Faulty<S> {
    inner: S,
    plan: FaultPlan,
}

impl<S: Store> Faulty<S> {
    pub fn new(inner: S) -> (Self, FaultPlan) {
        let plan = FaultPlan::default();
        (Faulty { inner, plan: plan.clone() }, plan)
    }
}

async fn before(fault: Option<Fault>, what: &str) -> StoreResult<()> {
    match fault {
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Unavailable) => Err(StoreError::Unavailable(format!("injected fault on {what}"))),
        Some(Fault::Refused) => Err(StoreError::Refused(format!("injected 403 on {what}"))),
        _ => Ok(()),
    }
}

fn after<T>(fault: Option<Fault>, what: &str, result: StoreResult<T>) -> StoreResult<T> {
    match (fault, result) {
        (Some(Fault::AfterEffect), Ok(_)) => Err(StoreError::Unavailable(format!("injected timeout after {what}"))),
        (_, r) => r,
    }
}

#[async_trait]
impl<S: Store> Store for Faulty<S> {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        let f = self.plan.next();
        before(f, "list").await?;
        after(f, "list", self.inner.list_page(prefix, start_after).await)
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.get(key, if_none_match).await)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.put(key, bytes, mode).await)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.delete(key).await)
    }

    async fn put_file(&self, key: &str, path: &std::path::Path, mode: PutMode) -> StoreResult<String> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.put_file(key, path, mode).await)
    }

    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> StoreResult<u64> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.get_to_file(key, path).await)
    }

    async fn get_to_file_hashed(&self, key: &str, path: &std::path::Path) -> StoreResult<(u64, String)> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.get_to_file_hashed(key, path).await)
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.stat(key).await)
    }

    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.multipart_start(key).await)
    }

    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.multipart_put(key, upload, number, bytes).await)
    }

    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.multipart_parts(key, upload).await)
    }

    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.multipart_finish(key, upload, parts).await)
    }

    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        let f = self.plan.next();
        before(f, key).await?;
        after(f, key, self.inner.multipart_abort(key, upload).await)
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}
