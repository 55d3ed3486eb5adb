//! `dimple agent`: keep databases in sync in the background.

use super::{open, store_for, StoreArgs};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AgentArgs {
    #[arg(required = true)]
    dbs: Vec<PathBuf>,
    /// Seconds between pulls (±20% jitter).
    #[arg(long, default_value_t = dimple::agent::DEFAULT_INTERVAL.as_secs_f64())]
    interval: f64,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let AgentArgs { dbs, interval, store } = args;
    use dimple::agent;
    use futures::FutureExt;
    use tokio::signal::unix::{signal, SignalKind};
    if !(interval.is_finite() && interval > 0.0) {
        anyhow::bail!("--interval must be a positive number of seconds, got {interval}");
    }
    // Handlers first: a SIGTERM that arrives while we start must still end us cleanly.
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let shutdown = async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutdown requested");
    }
    .shared();
    let mut targets = Vec::new();
    for db in &dbs {
        let lock = agent::lock(db)?;
        let r = open(db)?;
        let s = store_for(&r, &store).await?;
        targets.push((r, s, Some(lock)));
    }
    let cfg = agent::Config { interval: std::time::Duration::from_secs_f64(interval), ..Default::default() };
    let runs = targets
        .iter_mut()
        .map(|(r, s, lock)| agent::run(r, s, lock.take().expect("one run per lock"), cfg.clone(), shutdown.clone()));
    for result in futures::future::join_all(runs).await {
        result?;
    }
    Ok(())
}

/// The agent part of `dimple status`.
pub fn print_status(a: &dimple::agent::AgentStatus) {
    let Some(last) = &a.last else {
        println!("agent     never ran");
        return;
    };
    if !a.running {
        println!("agent     not running (last seen {}, pid {})", last.updated_at, last.pid);
        return;
    }
    println!("agent     running, pid {}, {}", last.pid, last.state.as_str());
    println!("  last sync     {}", last.last_sync.as_deref().unwrap_or("never"));
    println!("  last error    {}", last.last_error.as_deref().unwrap_or("none"));
    println!("  next attempt  {}", last.next_attempt.as_deref().unwrap_or("-"));
    println!("  pending       {} changes", last.pending_changes);
}
