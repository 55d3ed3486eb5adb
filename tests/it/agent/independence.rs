//! Several databases in one agent (issue 10): a database whose sync blocks its
//! thread, as a long SQLite apply does, delays no other database, and shutdown does
//! not wait for it.

use anyhow::{Context, Result};
use async_trait::async_trait;
use dimple::agent::{self, Config, Report, Target};
use dimple::store::{Got, LocalStore, Metered, ObjectMeta, PutMode, Store, StoreResult};
use dimple::Replica;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bucket whose listing blocks the calling thread until released: the shape of a
/// database stuck in synchronous work.
struct Stuck {
    inner: LocalStore,
    entered: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

#[async_trait]
impl Store for Stuck {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        self.entered.store(true, Ordering::SeqCst);
        while !self.release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10)); // blocking on purpose
        }
        self.inner.list_page(prefix, start_after).await
    }
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        self.inner.get(key, if_none_match).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        self.inner.put(key, bytes, mode).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        "a stuck bucket".into()
    }
}

#[test]
fn a_database_stuck_in_blocking_work_delays_no_other_and_not_the_shutdown() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("bucket");
    let url = format!("file://{}", root.display());
    let (slow, fast) =
        (super::harness::replica(dir.path(), "slow", &url)?, super::harness::replica(dir.path(), "fast", &url)?);
    super::harness::insert(&fast, "n1", "from fast")?;
    let (entered, release) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let stuck = Stuck { inner: LocalStore::open(&root)?, entered: entered.clone(), release: release.clone() };
    let mut stuck = Some(stuck);
    let open_slow: agent::OpenStore = Box::new(move || {
        let s = stuck.take().expect("opened once");
        Box::pin(async move { Ok(Metered::new(Box::new(s) as Box<dyn Store>)) })
    });
    let root2 = root.clone();
    let open_fast: agent::OpenStore = Box::new(move || {
        Box::pin(async move { Ok(Metered::new(Box::new(LocalStore::open(&root2)?) as Box<dyn Store>)) })
    });
    let targets = vec![
        Target {
            replica: Replica::open(&slow, Default::default())?,
            lock: agent::lock(&slow)?,
            open_store: open_slow,
            cfg: None,
        },
        Target {
            replica: Replica::open(&fast, Default::default())?,
            lock: agent::lock(&fast)?,
            open_store: open_fast,
            cfg: None,
        },
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Report>();
    let cfg = Config {
        interval: Duration::from_secs(1),
        grace: Duration::from_millis(200),
        reports: Some(tx),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result: Result<()> = rt.block_on(async {
        let agents = tokio::spawn(agent::run_each(targets, cfg, async {
            let _ = stopped.await;
        }));
        // The fast database pushes its write while the slow one is blocked.
        let pushed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(r) = rx.recv().await {
                if r.db == fast && r.pushed > 0 {
                    return Ok(r);
                }
            }
            anyhow::bail!("the agents stopped reporting")
        })
        .await
        .context("the fast database never pushed while the slow one was stuck")??;
        assert!(pushed.error.is_none(), "{:?}", pushed.error);
        assert!(entered.load(Ordering::SeqCst), "the slow database was not stuck yet");
        assert!(!release.load(Ordering::SeqCst));
        // Shutdown returns within the grace period and its margin, the slow one still stuck.
        let asked = Instant::now();
        let _ = stop.send(());
        let out = tokio::time::timeout(Duration::from_secs(10), agents)
            .await
            .context("shutdown waited for the stuck database")?;
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        out??;
        Ok(())
    });
    release.store(true, Ordering::SeqCst);
    result?;
    let fast_id = Replica::open(&fast, Default::default())?.id().to_owned();
    assert!(
        root.join("replicas").join(&fast_id).join("LATEST.json").exists(),
        "the fast database's push is in the bucket"
    );
    Ok(())
}
