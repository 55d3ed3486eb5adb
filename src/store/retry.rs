//! The one retry policy: every store call that failed transiently is repeated here,
//! and nowhere else (the S3 client itself makes a single attempt).
//!
//! Only [`StoreError::Unavailable`] is retried. A conditional put whose earlier
//! attempt failed transiently may have landed anyway (the request reached the
//! server, the answer got lost); its retry then fails the precondition against our
//! own write. So when a retried `Create`/`Update` gets `PreconditionFailed`, the
//! object is read back: if it holds exactly our bytes, the write is ours and
//! succeeds with the current ETag instead of being reported as a conflict.

use super::{Got, ObjectMeta, Part, PutMode, Store, StoreError, StoreResult};
use async_trait::async_trait;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Capped exponential backoff with full jitter: attempt `n` (from 0) waits a uniform
/// random time in `[0, min(cap, base * 2^n)]`, which spreads out devices that all
/// lost the server at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in total, the first one included; at least 1.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(5), max_attempts: 6 }
    }
}

impl RetryPolicy {
    /// No waiting between attempts: for tests, which must not sleep.
    pub fn immediate(max_attempts: u32) -> Self {
        RetryPolicy { base: Duration::ZERO, cap: Duration::ZERO, max_attempts }
    }

    /// The longest wait before retry number `retry` (0 = the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if ceiling.is_zero() {
            return ceiling;
        }
        rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
    }
}

pub struct Retrying<S: ?Sized> {
    inner: Box<S>,
    policy: RetryPolicy,
}

impl<S: Store + ?Sized> Retrying<S> {
    pub fn new(inner: Box<S>, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }

    /// Runs `op` until it succeeds, fails permanently or runs out of attempts.
    /// Also returns how many attempts were made: every attempt before the last one
    /// failed with `Unavailable`, so more than one means an earlier one may have
    /// taken effect on the server.
    async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> (StoreResult<T>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let attempts = self.policy.max_attempts.max(1);
        let mut made = 0;
        loop {
            made += 1;
            match op().await {
                Err(e) if e.is_retryable() && made < attempts => {
                    let wait = self.policy.delay(made - 1);
                    tracing::debug!(%what, attempt = made, ?wait, error = %e, "retrying store call");
                    tokio::time::sleep(wait).await;
                }
                other => return (other, made),
            }
        }
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Retrying<S> {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        self.run(prefix, || self.inner.list_page(prefix, start_after)).await.0
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        self.run(key, || self.inner.get(key, if_none_match)).await.0
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        let (result, attempts) = self.run(key, || self.inner.put(key, bytes.clone(), mode.clone())).await;
        match result {
            Err(StoreError::PreconditionFailed(msg)) if attempts > 1 && mode != PutMode::Overwrite => {
                match self.get(key, None).await {
                    Ok(Got::Found { bytes: current, etag }) if current == bytes => {
                        tracing::debug!(%key, "conditional put timed out but landed");
                        Ok(etag)
                    }
                    _ => Err(StoreError::PreconditionFailed(msg)),
                }
            }
            other => other,
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.run(key, || self.inner.delete(key)).await.0
    }

    async fn put_file(&self, key: &str, path: &std::path::Path, mode: PutMode) -> StoreResult<String> {
        let (result, attempts) = self.run(key, || self.inner.put_file(key, path, mode.clone())).await;
        match result {
            // As in `put`: an earlier attempt may have landed; compare by hash.
            Err(StoreError::PreconditionFailed(msg)) if attempts > 1 && mode != PutMode::Overwrite => {
                let copy = path.with_extension("landed-check");
                let same = match self.get_to_file(key, &copy).await {
                    Ok(_) => super::file_sha256(&copy).ok().is_some_and(|h| super::file_sha256(path).ok() == Some(h)),
                    Err(_) => false,
                };
                let _ = std::fs::remove_file(&copy);
                // The ETag from a listing, so the object is not downloaded again.
                let etag = match self.inner.list_page(key, None).await {
                    Ok((page, _)) => page.into_iter().find(|m| m.key == key).map(|m| m.etag),
                    Err(_) => None,
                };
                match (same, etag) {
                    (true, Some(etag)) => Ok(etag),
                    _ => Err(StoreError::PreconditionFailed(msg)),
                }
            }
            other => other,
        }
    }

    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> StoreResult<u64> {
        self.run(key, || self.inner.get_to_file(key, path)).await.0
    }

    async fn get_to_file_hashed(&self, key: &str, path: &std::path::Path) -> StoreResult<(u64, String)> {
        self.run(key, || self.inner.get_to_file_hashed(key, path)).await.0
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.run(key, || self.inner.stat(key)).await.0
    }

    // Every multipart step is safe to repeat: a part re-sent replaces itself, and a
    // finish that landed is recognised by the caller ([`crate::blob`]) by its object.
    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        self.run(key, || self.inner.multipart_start(key)).await.0
    }

    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        self.run(key, || self.inner.multipart_put(key, upload, number, bytes.clone())).await.0
    }

    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        self.run(key, || self.inner.multipart_parts(key, upload)).await.0
    }

    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        self.run(key, || self.inner.multipart_finish(key, upload, parts)).await.0
    }

    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        self.run(key, || self.inner.multipart_abort(key, upload)).await.0
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{Fault, FaultPlan, Faulty};
    use crate::store::LocalStore;

    fn store(policy: RetryPolicy) -> (tempfile::TempDir, Retrying<Faulty<LocalStore>>, FaultPlan) {
        let dir = tempfile::tempdir().unwrap();
        let (faulty, plan) = Faulty::new(LocalStore::open(dir.path()).unwrap());
        (dir, Retrying::new(Box::new(faulty), policy), plan)
    }

    async fn current(s: &dyn Store, key: &str) -> (Vec<u8>, String) {
        crate::store::get_bytes(s, key).await.unwrap()
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let (_d, s, plan) = store(RetryPolicy::immediate(6));
        s.put("k", b"v".to_vec(), PutMode::Overwrite).await.unwrap();
        plan.fail_next(3, Fault::Unavailable);
        let before = plan.calls();
        assert_eq!(current(&s, "k").await.0, b"v");
        assert_eq!(plan.calls() - before, 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let (_d, s, plan) = store(RetryPolicy::immediate(4));
        plan.go_down(Fault::Unavailable);
        let err = s.list_page("", None).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert_eq!(plan.calls(), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let (_d, s, plan) = store(RetryPolicy::immediate(6));
        plan.fail_next(1, Fault::Refused);
        assert!(matches!(s.get("k", None).await, Err(StoreError::Refused(_))));
        assert_eq!(plan.calls(), 1);
        assert!(matches!(s.get("k", None).await, Err(StoreError::NotFound(_))));
        assert_eq!(plan.calls(), 2);
        s.put("k", b"a".to_vec(), PutMode::Create).await.unwrap();
        let err = s.put("k", b"b".to_vec(), PutMode::Create).await.unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err}");
        assert_eq!(plan.calls(), 4, "a first-attempt 412 is a real conflict: no re-read");
    }

    #[tokio::test]
    async fn create_that_timed_out_but_landed_succeeds() {
        let (_d, s, plan) = store(RetryPolicy::immediate(6));
        plan.fail_nth(0, Fault::AfterEffect);
        let etag = s.put("head", b"mine".to_vec(), PutMode::Create).await.unwrap();
        assert_eq!(current(&s, "head").await, (b"mine".to_vec(), etag));
        assert_eq!(plan.calls(), 4, "put (landed), put (412), get, and the check above");
    }

    #[tokio::test]
    async fn a_file_create_that_timed_out_but_landed_succeeds_and_a_different_file_does_not() {
        let (d, s, plan) = store(RetryPolicy::immediate(6));
        let (mine, other) = (d.path().join("mine"), d.path().join("other"));
        std::fs::write(&mine, b"snapshot bytes").unwrap();
        std::fs::write(&other, b"another snapshot").unwrap();
        plan.fail_nth(0, Fault::AfterEffect);
        let etag = s.put_file("snap", &mine, PutMode::Create).await.unwrap();
        assert_eq!(current(&s, "snap").await, (b"snapshot bytes".to_vec(), etag));
        plan.fail_nth(0, Fault::Unavailable);
        let err = s.put_file("snap", &other, PutMode::Create).await.unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn update_that_timed_out_but_landed_succeeds() {
        let (_d, s, plan) = store(RetryPolicy::immediate(6));
        let old = s.put("head", b"v1".to_vec(), PutMode::Create).await.unwrap();
        plan.fail_nth(0, Fault::AfterEffect);
        let etag = s.put("head", b"v2".to_vec(), PutMode::Update(old.clone())).await.unwrap();
        assert_ne!(etag, old);
        assert_eq!(current(&s, "head").await, (b"v2".to_vec(), etag));
    }

    #[tokio::test]
    async fn someone_elses_write_is_still_a_conflict_after_a_retry() {
        let (_d, s, plan) = store(RetryPolicy::immediate(6));
        let old = s.put("head", b"v1".to_vec(), PutMode::Create).await.unwrap();
        s.put("head", b"theirs".to_vec(), PutMode::Overwrite).await.unwrap();
        plan.fail_next(1, Fault::Unavailable);
        let err = s.put("head", b"mine".to_vec(), PutMode::Update(old)).await.unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err}");
        plan.fail_next(1, Fault::Unavailable);
        let err = s.put("head", b"mine".to_vec(), PutMode::Create).await.unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err}");
        assert_eq!(current(&s, "head").await.0, b"theirs");
    }

    #[tokio::test]
    async fn overwrite_is_simply_repeated() {
        let (_d, s, plan) = store(RetryPolicy::immediate(6));
        plan.fail_nth(0, Fault::AfterEffect);
        s.put("k", b"x".to_vec(), PutMode::Overwrite).await.unwrap();
        assert_eq!(plan.calls(), 2);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (0..8).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(p.ceiling(u32::MAX), p.cap);
        for n in 0..8 {
            assert!(p.delay(n) <= p.ceiling(n));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_stay_within_the_jittered_ceilings() {
        let (_d, s, plan) = store(RetryPolicy::default());
        plan.go_down(Fault::Unavailable);
        let start = tokio::time::Instant::now();
        assert!(s.get("k", None).await.is_err());
        let most: Duration = (0..5).map(|n| RetryPolicy::default().ceiling(n)).sum();
        assert!(start.elapsed() <= most, "{:?} > {most:?}", start.elapsed());
        assert_eq!(plan.calls(), 6);
    }
}
