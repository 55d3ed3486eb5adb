//! The agent's retry policy in-process, on paused time, over a store that goes down.

use anyhow::{Context, Result};
use dimple::agent::{self, Config, Report};
use dimple::store::faulty::{Fault, Faulty};
use dimple::store::{LocalStore, Metered, Store};
use dimple::{ErrorKind, Replica};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

async fn next(rx: &mut UnboundedReceiver<Report>) -> Result<Report> {
    rx.recv().await.context("agent stopped reporting")
}

#[tokio::test(start_paused = true)]
async fn store_outage_backs_off_with_growing_delays_then_converges_and_resets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("bucket");
    let url = format!("file://{}", root.display());
    let (a_path, b_path) =
        (super::harness::replica(dir.path(), "a", &url)?, super::harness::replica(dir.path(), "b", &url)?);
    let mut a = Replica::open(&a_path, Default::default())?;
    let mut b = Replica::open(&b_path, Default::default())?;
    let plain = Metered::new(Box::new(LocalStore::open(&root)?) as Box<dyn Store>);
    let (faulty, plan) = Faulty::new(LocalStore::open(&root)?);
    let store = Metered::new(Box::new(faulty) as Box<dyn Store>);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = Config { interval: Duration::from_secs(10), reports: Some(tx), ..Default::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    plan.go_down(Fault::Unavailable);
    let lock = agent::lock(&a_path)?;
    let agent = agent::run(&mut a, &store, lock, cfg, async {
        let _ = stopped.await;
    });

    let test = async {
        // Down: every attempt fails as retryable, and each waits longer than the last.
        let mut fails = Vec::new();
        while fails.len() < 6 {
            let r = next(&mut rx).await?;
            let (kind, msg) = r.error.clone().context("a step succeeded while the store was down")?;
            assert_eq!(kind, ErrorKind::Unavailable, "{msg}");
            assert_eq!(r.failures as usize, fails.len() + 1);
            fails.push(r);
        }
        for w in fails.windows(2) {
            let gap = w[1].started - w[0].started;
            let asked = w[0].retry_in.expect("failures say when they retry");
            assert!(gap >= asked, "retried after {gap:?}, before the {asked:?} backoff");
            assert!(gap <= asked + Duration::from_millis(500), "retried after {gap:?}, long after {asked:?}");
        }
        let delays: Vec<_> = fails.iter().map(|r| r.retry_in.unwrap()).collect();
        assert!(delays.windows(2).all(|w| w[1] > w[0]), "delays must grow: {delays:?}");
        assert!(delays[0] <= Duration::from_millis(1200), "first delay {:?}", delays[0]);
        let st = agent::state::read(&a_path).context("agent.json")?;
        assert_eq!(st.state, agent::state::Phase::BackingOff);
        assert!(st.last_error.is_some_and(|e| e.contains("injected")));

        // Meanwhile: a local write on a (plain SQL), and b pushes its own.
        super::harness::insert(&a_path, "from-a", "offline write")?;
        super::harness::insert(&b_path, "from-b", "b's write")?;
        dimple::push(&mut b, &plain).await?;

        // Back: the next attempt converges and the backoff starts over.
        plan.heal();
        let ok = loop {
            let r = next(&mut rx).await?;
            if r.error.is_none() {
                break r;
            }
        };
        assert_eq!(ok.failures, 0);
        assert_eq!((ok.pulled, ok.pushed), (2, 2), "pulled b's row, pushed a's");
        dimple::pull(&mut b, &plain).await?;
        assert_eq!(super::harness::rows(&a_path)?, super::harness::rows(&b_path)?);
        assert_eq!(super::harness::rows(&a_path)?.len(), 2);
        let st = agent::state::read(&a_path).context("agent.json")?;
        assert_eq!((st.state, st.consecutive_failures, st.pending_changes), (agent::state::Phase::Running, 0, 0));

        plan.go_down(Fault::Unavailable);
        let again = loop {
            let r = next(&mut rx).await?;
            if r.error.is_some() {
                break r;
            }
        };
        assert_eq!(again.failures, 1, "a success resets the count");
        assert!(
            again.retry_in.unwrap() <= Duration::from_millis(1200),
            "reset to the first delay: {:?}",
            again.retry_in
        );

        // Refused (bad credentials): retried slowly, still no crash.
        plan.go_down(Fault::Refused);
        let refused = loop {
            let r = next(&mut rx).await?;
            if r.error.as_ref().is_some_and(|(k, _)| *k == ErrorKind::Invalid) {
                break r;
            }
        };
        assert!(refused.retry_in.unwrap() >= Duration::from_secs(240), "{:?}", refused.retry_in);
        let _ = stop.send(());
        anyhow::Ok(())
    };
    let (ran, tested) = tokio::join!(agent, test);
    tested?;
    ran?;
    let st = agent::state::read(&a_path).context("agent.json")?;
    assert_eq!(st.state, agent::state::Phase::Stopped);
    Ok(())
}
