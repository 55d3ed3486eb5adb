//! `dimple agent`: keep databases in sync in the background.

use super::{bucket_of, open, StoreArgs};
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
    use tokio::signal::unix::{signal, SignalKind};
    if !(interval.is_finite() && interval > 0.0) {
        anyhow::bail!("--interval must be a positive number of seconds, got {interval}");
    }
    // Handlers first: a SIGTERM that arrives while we start must still end us cleanly.
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let shutdown = async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutdown requested");
    };
    // Locks and replicas first, on this thread: a database another agent holds, or
    // one that is not a replica, stops the command before anything runs.
    let mut targets = Vec::new();
    for db in &dbs {
        let lock = agent::lock(db)?;
        let replica = open(db)?;
        let (url, endpoint) = (bucket_of(&replica)?, store.endpoint.clone());
        let open_store: agent::OpenStore =
            Box::new(move || Box::pin(async move { dimple::open_store(&url, endpoint.as_deref()).await }));
        targets.push(agent::Target { replica, lock, open_store });
    }
    let cfg = agent::Config { interval: std::time::Duration::from_secs_f64(interval), ..Default::default() };
    Ok(agent::run_each(targets, cfg, shutdown).await?)
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
