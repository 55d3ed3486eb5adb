//! Several databases in one agent, each independent of the others.
//!
//! Each database runs on a thread of its own with its own single-threaded runtime:
//! its SQLite work (a big pull applying for seconds) and its file I/O block only
//! that thread, never a thread another database's sync needs. A database that is
//! slow or failing therefore delays no other, and shutdown does not wait for it: the
//! agents get `grace` (plus a margin) to stop; one still busy after that is left to
//! the process's exit, which is safe (every step is crash-safe: the next run
//! finishes an interrupted push, and a pull applies whole batches or nothing).

use super::{run, AgentLock, Config};
use crate::error::{Error, Result};
use crate::replica::Replica;
use crate::store::{Metered, Store};
use futures::future::BoxFuture;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Opens a database's store on that database's own runtime (an S3 client belongs to
/// the runtime that made it).
pub type OpenStore = Box<dyn FnOnce() -> BoxFuture<'static, Result<Metered<dyn Store>>> + Send>;

/// One database for [`run_each`].
pub struct Target {
    pub replica: Replica,
    pub lock: AgentLock,
    pub open_store: OpenStore,
    /// This database's own settings (a config file's entry); None: the shared ones.
    pub cfg: Option<Config>,
}

/// How long after `grace` shutdown waits for agents that are still busy.
const MARGIN: Duration = Duration::from_secs(2);

/// Runs the agent for every target until `shutdown` completes. Fails if any target
/// cannot start (its store cannot be opened, its state file cannot be written): the
/// others are stopped then too, so a supervisor restarts the whole agent.
pub async fn run_each(targets: Vec<Target>, cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<Result<()>>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<()>>();
    let n = targets.len();
    let grace = targets.iter().filter_map(|t| t.cfg.as_ref().map(|c| c.grace)).fold(cfg.grace, Duration::max);
    for Target { mut replica, lock, open_store, cfg: own } in targets {
        let (cfg, mut stop_rx, started_tx, done_tx) =
            (own.unwrap_or_else(|| cfg.clone()), stop_rx.clone(), started_tx.clone(), done_tx.clone());
        let name = format!("agent {}", lock.db().display());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(Error::Invalid(format!("cannot start a runtime: {e}"))));
                        return;
                    }
                };
                let out = rt.block_on(async move {
                    let store = match open_store().await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    let stopped = async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    };
                    run(&mut replica, &store, lock, cfg, stopped).await
                });
                let _ = done_tx.send(out);
            })
            .map_err(|e| Error::Invalid(format!("cannot start an agent thread: {e}")))?;
    }
    drop((started_tx, done_tx));
    let mut first_error = None;
    for _ in 0..n {
        if let Some(Err(e)) = started_rx.recv().await {
            first_error.get_or_insert(e);
        }
    }
    if first_error.is_none() {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => {}
            // An agent that returns before shutdown could not write its state file.
            Some(Err(e)) = done_rx.recv() => { first_error = Some(e); }
        }
    }
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace + MARGIN;
    loop {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(Err(e))) => {
                first_error.get_or_insert(e);
            }
            Ok(Some(Ok(()))) => {}
            Ok(None) => break, // every agent stopped
            Err(_) => {
                tracing::warn!("an agent is still busy after the grace period; leaving it to the exit (safe)");
                break;
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
