//! `dimple agent`: keep databases in sync in the background; `dimple config check`.

use super::{bucket_of, open, StoreArgs};
use anyhow::Result;
use dimple::agent::{self, OnChange};
use dimple::config::{self, Entry};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Databases to sync (or list them in a config file: --config).
    dbs: Vec<PathBuf>,
    /// A dimple.toml listing the databases and their settings (docs/agent.md).
    /// Default, when no database is given: ~/.config/dimple/dimple.toml.
    #[arg(long, value_name = "FILE", conflicts_with = "dbs")]
    config: Option<PathBuf>,
    /// Seconds between pulls (±20% jitter).
    #[arg(long)]
    interval: Option<f64>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464), at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// At most this many bucket requests an hour for the whole agent (shared
    /// evenly by its databases): pulls are spaced out to fit; pushes of local
    /// writes wait at most 60 s for it.
    #[arg(long, value_name = "N")]
    max_requests_per_hour: Option<u64>,
    /// Run this shell command after remote changes are applied, with DIMPLE_DB,
    /// DIMPLE_TABLES (comma-separated) and DIMPLE_CHANGES in its environment.
    #[arg(long, value_name = "CMD")]
    on_change: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a dimple.toml: one line per problem (file:line: what is wrong), exit 1 if any.
    Check { file: PathBuf },
}

/// Reads and checks a config file; every problem is printed on its own line.
fn load(file: &Path) -> Result<config::Config> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let env = |name: &str| std::env::var(name).ok();
    match config::check(&text, file, &env, &replica_bucket) {
        Ok(c) => Ok(c),
        Err(problems) => {
            for p in &problems {
                eprintln!("{}:{}: {}", file.display(), p.line, p.message);
            }
            anyhow::bail!("{} problem(s) in {}", problems.len(), file.display())
        }
    }
}

/// Whether `db` is a replica (read-only: a check changes nothing), and its bucket.
fn replica_bucket(db: &Path) -> std::result::Result<Option<String>, String> {
    if !db.exists() {
        return Err(format!("{}: no such database", db.display()));
    }
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", db.display()))?;
    match dimple::meta::get(&conn, "database_uuid") {
        Ok(Some(_)) => dimple::meta::get(&conn, "bucket").map_err(|e| format!("{}: {e}", db.display())),
        _ => Err(format!("{}: not a dimple replica (run `dimple init` first)", db.display())),
    }
}

pub fn config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Check { file } => {
            let c = load(&file)?;
            println!("{}: ok, {} databases", file.display(), c.databases.len());
            Ok(())
        }
    }
}

/// `--on-change CMD`: a shell command per notice, not waited for (its exit is
/// collected by a thread, so no zombie is left behind).
fn shell_hook(cmd: String) -> OnChange {
    OnChange(Arc::new(move |c: &agent::Changed| {
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("DIMPLE_DB", &c.db)
            .env("DIMPLE_TABLES", c.tables.join(","))
            .env("DIMPLE_CHANGES", c.changes.to_string())
            .stdin(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => {
                std::thread::spawn(move || {
                    if let Ok(status) = child.wait() {
                        if !status.success() {
                            tracing::warn!(%status, "--on-change command failed");
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot run the --on-change command"),
        }
    }))
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let AgentArgs { dbs, config, interval, metrics_addr, max_requests_per_hour, on_change, store } = args;
    use tokio::signal::unix::{signal, SignalKind};
    if let Some(i) = interval {
        if !(i.is_finite() && i > 0.0) {
            anyhow::bail!("--interval must be a positive number of seconds, got {i}");
        }
    }
    // The databases: from the command line, or a config file.
    let (entries, file_budget, file_metrics) = if dbs.is_empty() {
        let file = match config.or_else(config::default_path) {
            Some(f) if f.exists() => f,
            Some(f) => anyhow::bail!("no databases: give DB paths, or --config FILE ({} does not exist)", f.display()),
            None => anyhow::bail!("no databases: give DB paths, or --config FILE"),
        };
        let c = load(&file)?;
        (c.databases, c.max_requests_per_hour, c.metrics_addr)
    } else {
        let entries = dbs
            .into_iter()
            .map(|path| Entry {
                path,
                interval_secs: None,
                endpoint: None,
                direction: None,
                schema: None,
                max_requests_per_hour: None,
                on_change: None,
            })
            .collect::<Vec<_>>();
        (entries, None, None)
    };
    let share = max_requests_per_hour.or(file_budget).map(|n| (n / entries.len() as u64).max(1));
    let metrics = metrics_addr.or(file_metrics).map(|addr| (addr, Arc::new(agent::metrics::Metrics::new())));
    // Handlers first: a SIGTERM that arrives while we start must still end us cleanly.
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let shutdown = async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutdown requested");
    };
    // Locks and replicas first, on this thread: a database another agent holds, or
    // one that is not a replica, stops the command before anything runs.
    let mut targets = Vec::new();
    for e in entries {
        let lock = agent::lock(&e.path)?;
        let replica = open(&e.path)?;
        if let Some(d) = e.direction {
            replica.set_direction(d)?;
        }
        if let Some(p) = e.schema {
            dimple::schema::set_policy(replica.conn(), p)?;
        }
        let url = bucket_of(&replica)?;
        let endpoint = e.endpoint.clone().or_else(|| store.endpoint.clone());
        let open_store: agent::OpenStore =
            Box::new(move || Box::pin(async move { dimple::open_store(&url, endpoint.as_deref()).await }));
        let secs = e.interval_secs.or(interval).unwrap_or(agent::DEFAULT_INTERVAL.as_secs_f64());
        let cfg = agent::Config {
            interval: std::time::Duration::from_secs_f64(secs),
            on_change: e.on_change.or_else(|| on_change.clone()).map(shell_hook),
            metrics: metrics.as_ref().map(|(_, m)| m.clone()),
            max_requests_per_hour: e.max_requests_per_hour.or(share),
            ..Default::default()
        };
        targets.push(agent::Target { replica, lock, open_store, cfg: Some(cfg) });
    }
    if let Some((addr, m)) = &metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        tracing::info!(%addr, "serving metrics at /metrics");
        tokio::spawn(agent::metrics::serve(listener, m.clone()));
    }
    Ok(agent::run_each(targets, agent::Config::default(), shutdown).await?)
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
    if let Some(n) = last.max_requests_per_hour {
        match last.pull_interval_secs {
            Some(s) => println!("  budget        {n} requests/hour: pulls stretched to every {s:.0} s to fit"),
            None => println!("  budget        {n} requests/hour: within it"),
        }
    }
}
