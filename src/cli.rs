//! The `dimple` command line: parse, run one command, report.

use anyhow::Result;
use clap::{Parser, Subcommand};
use dimple::{status, Options, Replica};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "dimple", version, about = "Offline-first SQLite replicas that sync through an object-storage bucket")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr as text or JSON (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct JsonFlag {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// S3 endpoint for MinIO-like servers (default: AWS_ENDPOINT_URL or AWS).
    #[arg(long, env = "DIMPLE_ENDPOINT")]
    pub endpoint: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make DB a replica: dimple's tables, a replica id and a key pair.
    Init {
        db: PathBuf,
        /// Where replicas meet: file:///path, a directory path, or s3://bucket/prefix.
        #[arg(long)]
        bucket: Option<String>,
        /// A name for people (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
        /// Sync direction: push, pull or both (see `dimple direction`).
        #[arg(long, default_value = "both")]
        direction: dimple::direction::Direction,
        /// `pinned` (default): apply a new replica's changes at once and pin its key
        /// on first sight. `explicit`: hold them until `dimple trust DB REPLICA_ID`.
        #[arg(long, default_value = "pinned", value_parser = ["pinned", "explicit"])]
        trust: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Capture writes to TABLE (it needs a TEXT primary key).
    Track {
        db: PathBuf,
        table: String,
        /// Accept an INTEGER key (only if keys are assigned globally, not 1, 2, 3...).
        #[arg(long)]
        allow_integer_key: bool,
    },
    /// Stop capturing writes to TABLE (the log keeps what it has).
    Untrack { db: PathBuf, table: String },
    /// Upload local changes.
    Push {
        db: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Download and merge other replicas' changes. Input that fails verification is
    /// refused, recorded as a problem and retried on the next pull (docs/trust.md).
    Pull {
        db: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Pull, then push.
    Sync {
        db: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Replica, bucket, pending changes, last sync, problems, trust mode and
    /// replicas waiting for trust.
    Status {
        db: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// The merged change history, oldest first.
    Log {
        db: PathBuf,
        /// Only this row: TABLE/ID.
        #[arg(long)]
        entity: Option<String>,
        /// At most this many changes (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Other replicas seen in the bucket: name, key fingerprint, trust, cursor,
    /// last seen, changes applied.
    Replicas {
        db: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    #[command(flatten)]
    Bootstrap(crate::cli_boot::BootCommand),
    /// Keep databases in sync in the background: push local writes within a second,
    /// pull every interval, retry failures with backoff. Stop with SIGINT or SIGTERM.
    Agent {
        #[arg(required = true)]
        dbs: Vec<PathBuf>,
        /// Seconds between pulls (±20% jitter).
        #[arg(long, default_value_t = dimple::agent::DEFAULT_INTERVAL.as_secs_f64())]
        interval: f64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Go on as a new replica (new id and key) that keeps this database's unpushed
    /// writes: for a copied database that another device also uses (sync said
    /// "in use by another device"). Writes a newer change already replaced are dropped.
    Fork {
        db: PathBuf,
        /// A name for the new replica (default: keep the current one).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Trust a replica (its changes are applied from the next pull), revoke it, or
    /// set the group's trust mode. Revoking stops further changes; those already
    /// applied stay. See docs/trust.md.
    #[command(arg_required_else_help = true)]
    Trust {
        db: PathBuf,
        /// The replica id (or a unique prefix of it), as `dimple replicas` shows.
        #[arg(required_unless_present = "mode")]
        replica_id: Option<String>,
        /// Stop applying this replica's changes.
        #[arg(long, requires = "replica_id")]
        revoke: bool,
        /// `pinned`: trust on first use. `explicit`: hold new replicas until trusted
        /// (replicas already applied become trusted).
        #[arg(long, value_parser = ["pinned", "explicit"], conflicts_with_all = ["replica_id", "revoke"])]
        mode: Option<String>,
    },
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn open(db: &Path) -> Result<Replica> {
    Ok(Replica::open(db, Options::default())?)
}

/// Checks a bucket location; plain relative paths are stored absolute, so the bucket
/// stays the same wherever dimple runs from.
pub(crate) fn normalize_bucket(url: &str) -> Result<String> {
    Ok(dimple::store::BucketUrl::parse(url).map_err(dimple::Error::from)?.canonical())
}

pub(crate) async fn store_for(
    r: &Replica,
    args: &StoreArgs,
) -> Result<dimple::store::Metered<dyn dimple::store::Store>> {
    let url = r.bucket()?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no bucket; run `dimple init {} --bucket URL` on a new database",
            r.path().display(),
            r.path().display()
        )
    })?;
    Ok(dimple::open_store(&url, args.endpoint.as_deref()).await?)
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { db, bucket, name, direction, trust, out } => {
            let bucket = bucket.as_deref().map(normalize_bucket).transpose()?;
            let mut r = Replica::init(&db, bucket.as_deref(), name.as_deref(), Options::default())?;
            r.set_direction(direction)?;
            dimple::trust::set_mode(r.conn(), trust.parse()?)?;
            let info = serde_json::json!({
                "replica": r.id(), "name": r.name()?, "bucket": r.bucket()?, "direction": direction, "trust_mode": trust,
                "key_fingerprint": dimple::trust::fingerprint(&r.public_key()?),
            });
            if out.json {
                print_json(&info)?;
            } else {
                println!("initialised {} as replica {} ({})", db.display(), r.id(), r.name()?);
            }
        }
        Command::Track { db, table, allow_integer_key } => {
            let mut r = open(&db)?;
            let info = r.track(&table, allow_integer_key)?;
            println!("tracking {table} (key: {}; columns: {})", info.key_columns.join(", "), info.columns.join(", "));
        }
        Command::Untrack { db, table } => {
            open(&db)?.untrack(&table)?;
            println!("no longer tracking {table}");
        }
        Command::Push { db, store, out } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let report = dimple::push(&mut r, &s).await?;
            if out.json {
                print_json(&serde_json::json!({"push": report, "requests": s.stats()}))?;
            } else {
                println!("pushed {} changes in {} batches", report.changes, report.batches);
            }
        }
        Command::Pull { db, store, out } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let report = dimple::pull(&mut r, &s).await?;
            if out.json {
                print_json(&serde_json::json!({"pull": report, "requests": s.stats()}))?;
            } else {
                println!("pulled {} changes in {} batches", report.changes, report.batches);
                warn_problems(&report.problems);
                warn_waiting(&db, &report.waiting_for_trust);
            }
        }
        Command::Sync { db, store, out } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let report = dimple::sync(&mut r, &s).await?;
            if out.json {
                print_json(&report)?;
            } else {
                println!(
                    "pulled {} changes in {} batches, pushed {} changes in {} batches ({} requests)",
                    report.pull.changes,
                    report.pull.batches,
                    report.push.changes,
                    report.push.batches,
                    report.requests.total
                );
                warn_problems(&report.pull.problems);
                warn_waiting(&db, &report.pull.waiting_for_trust);
            }
        }
        Command::Status { db, out } => {
            let st = status::status(&open(&db)?)?;
            if out.json {
                print_json(&st)?;
            } else {
                println!("replica   {} ({})", st.replica, st.name);
                println!("database  {}", st.path);
                println!("bucket    {}", st.bucket.as_deref().unwrap_or("(none)"));
                println!(
                    "tracked   {}",
                    if st.tracked_tables.is_empty() { "(none)".into() } else { st.tracked_tables.join(", ") }
                );
                println!("pending   {} changes", st.pending_changes);
                println!("last sync {}", st.last_sync.as_deref().unwrap_or("never"));
                println!("log       {} changes from {} other replicas", st.changes_in_log, st.replicas_known);
                if st.problems.is_empty() {
                    println!("problems  none");
                }
                for p in &st.problems {
                    println!(
                        "problem   {} {}: {} (x{}, last {})",
                        p.replica, p.object_key, p.reason, p.count, p.last_at
                    );
                }
                println!("trust     {}", st.trust_mode.as_str());
                for id in &st.waiting_for_trust {
                    println!("waiting   {id}: waiting for trust: run `dimple trust {} {id}`", db.display());
                }
                print_agent(&st.agent);
            }
        }
        Command::Log { db, entity, limit, out } => {
            let r = open(&db)?;
            let entity = match &entity {
                Some(e) => {
                    Some(e.split_once('/').ok_or_else(|| anyhow::anyhow!("--entity takes TABLE/ID, got {e:?}"))?)
                }
                None => None,
            };
            let log = dimple::changelog::history(r.conn(), entity, limit)?;
            let names: std::collections::HashMap<String, String> =
                status::replicas(&r)?.into_iter().filter_map(|i| Some((i.id, i.name?))).collect();
            if out.json {
                print_json(&log)?;
            } else {
                for e in &log {
                    let author = if e.author == r.id() {
                        "local".to_owned()
                    } else {
                        names.get(&e.author).cloned().unwrap_or_else(|| {
                            e.author.get(e.author.len().saturating_sub(8)..).unwrap_or(&e.author).to_owned()
                        })
                    };
                    let winner = if e.winner { "" } else { "  (superseded)" };
                    println!(
                        "{} {:<10} {}/{} {}: {} -> {}{winner}",
                        e.id,
                        author,
                        e.entity_type,
                        e.entity_id,
                        e.attribute,
                        e.old_value.as_deref().unwrap_or("-"),
                        e.new_value.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Command::Bootstrap(cmd) => crate::cli_boot::run(cmd).await?,
        Command::Agent { dbs, interval, store } => agent(dbs, interval, store).await?,
        Command::Fork { db, name, out } => {
            let (r, report) = dimple::fork::fork(open(&db)?, name.as_deref())?;
            if out.json {
                print_json(&report)?;
            } else {
                println!(
                    "{} is now replica {} ({}); {} unpushed changes kept for the next push, {} already replaced by newer ones dropped; the old id {} syncs as another replica",
                    db.display(),
                    r.id(),
                    r.name()?,
                    report.kept,
                    report.superseded,
                    report.old_replica
                );
            }
        }
        Command::Replicas { db, out } => {
            let list = status::replicas(&open(&db)?)?;
            if out.json {
                print_json(&list)?;
            } else {
                for r in &list {
                    println!(
                        "{} {:<12} key {} {:<8} at {} {} changes, last seen {}",
                        r.id,
                        r.name.as_deref().unwrap_or("?"),
                        r.key_fingerprint.as_deref().unwrap_or("(none yet)"),
                        r.trust,
                        r.cursor.as_deref().unwrap_or("(nothing applied)"),
                        r.change_count,
                        r.last_seen.as_deref().unwrap_or("never")
                    );
                }
            }
        }
        Command::Trust { db, replica_id, revoke, mode } => {
            let r = open(&db)?;
            if let Some(mode) = mode {
                let promoted = dimple::trust::set_mode(r.conn(), mode.parse()?)?;
                println!("trust mode is now {mode}");
                if promoted > 0 {
                    println!("{promoted} replicas already applied are now trusted");
                }
            } else if let Some(id) = replica_id {
                let state = if revoke { dimple::trust::REVOKED } else { dimple::trust::TRUSTED };
                let full = dimple::trust::set_replica(r.conn(), &id, state)?;
                if revoke {
                    println!("revoked {full}: its further changes are not applied (those already applied stay)");
                } else {
                    println!("trusted {full}: its changes are applied from the next pull");
                }
            }
        }
    }
    Ok(())
}

fn warn_waiting(db: &Path, ids: &[String]) {
    for id in ids {
        eprintln!("note: replica {id} is waiting for trust: run `dimple trust {} {id}`", db.display());
    }
}

async fn agent(dbs: Vec<PathBuf>, interval: f64, store: StoreArgs) -> Result<()> {
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

fn print_agent(a: &dimple::agent::AgentStatus) {
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

pub(crate) fn warn_problems(problems: &[String]) {
    for p in problems {
        eprintln!("warning: refused {p}");
    }
}
