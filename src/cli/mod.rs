//! The `dimple` command line: parse, run one command, report. One file per command
//! family, each with its arguments, its run and its output:
//! - `setup`: init, track, untrack, direction, fork, rekey, encrypt
//! - `sync`: push, pull, sync
//! - `report`: status, log, replicas, schema
//! - `trust`: trust
//! - `data`: export, import, verify, compact, clone
//! - `agent`: the background agent
//!
//! This file holds what they share: common arguments, opening a replica and its
//! store, JSON output.

mod agent;
mod data;
mod report;
mod setup;
mod sync;
mod trust;

use anyhow::Result;
use clap::{Parser, Subcommand};
use dimple::{Options, Replica};
use std::path::Path;

#[derive(Parser)]
#[command(
    name = "dimple",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DIMPLE_COMMIT"), ")"),
    about = "Offline-first SQLite replicas that sync through an object-storage bucket"
)]
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

#[derive(Subcommand)]
pub enum Command {
    #[command(flatten)]
    Setup(setup::SetupCommand),
    #[command(flatten)]
    Sync(sync::SyncCommand),
    #[command(flatten)]
    Report(report::ReportCommand),
    #[command(flatten)]
    Data(data::DataCommand),
    /// Keep databases in sync in the background: push local writes within a second,
    /// pull every interval, retry failures with backoff. Each database syncs on its
    /// own. Stop with SIGINT or SIGTERM.
    Agent(agent::AgentArgs),
    /// Trust a replica (its changes are applied from the next pull), revoke it, or
    /// set the group's trust mode. Revoking stops further changes; those already
    /// applied stay. See docs/trust.md.
    #[command(arg_required_else_help = true)]
    Trust(trust::TrustArgs),
    /// Check that a bucket's server does what dimple relies on (in a scratch
    /// prefix it removes): one line per check; exit 1 if dimple cannot run there safely.
    Doctor {
        url: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Check a config file for `dimple agent --config`.
    #[command(subcommand)]
    Config(agent::ConfigCommand),
    /// Print a shell completion script: `dimple completions bash > /etc/bash_completion.d/dimple`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `dimple man > dimple.1; man ./dimple.1`.
    Man,
}

impl Command {
    /// The agent runs unattended: its default log says what it did, not only what failed.
    pub fn is_agent(&self) -> bool {
        matches!(self, Command::Agent(_))
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Setup(cmd) => setup::run(cmd).await,
        Command::Sync(cmd) => sync::run(cmd).await,
        Command::Report(cmd) => report::run(cmd),
        Command::Data(cmd) => data::run(cmd).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Trust(args) => trust::run(args).await,
        Command::Config(cmd) => agent::config(cmd),
        Command::Doctor { url, store, json } => doctor(&url, store.endpoint.as_deref(), json.json).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "dimple", &mut out);
            print_raw(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
            print_raw(&out)
        }
    }
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

/// Where the group passphrase comes from: a file, `DIMPLE_PASSPHRASE`, or the
/// terminal; never an argument (it would show in `ps` and shell history).
#[derive(clap::Args)]
pub struct PassphraseArgs {
    /// Read the group passphrase from FILE (its first line). DIMPLE_PASSPHRASE also
    /// gives it.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<std::path::PathBuf>,
    /// Ask for the group passphrase on the terminal.
    #[arg(long, conflicts_with = "passphrase_file")]
    pub ask_passphrase: bool,
}

impl PassphraseArgs {
    /// The passphrase, if one was given; `confirm` asks twice on a terminal (a new
    /// passphrase mistyped once would lock the group out).
    pub fn read(&self, confirm: bool) -> Result<Option<String>> {
        let p = if let Some(f) = &self.passphrase_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read the passphrase file {}: {e}", f.display()))?;
            text.lines().next().unwrap_or("").to_owned()
        } else if self.ask_passphrase {
            let p = rpassword::prompt_password("group passphrase: ")?;
            if confirm && rpassword::prompt_password("again: ")? != p {
                anyhow::bail!("the two passphrases differ");
            }
            p
        } else if let Ok(p) = std::env::var("DIMPLE_PASSPHRASE") {
            p
        } else {
            return Ok(None);
        };
        if p.is_empty() {
            anyhow::bail!("the group passphrase is empty");
        }
        Ok(Some(p))
    }
}

async fn doctor(url: &str, endpoint: Option<&str>, json: bool) -> Result<()> {
    let url = normalize_bucket(url)?;
    let store = dimple::open_store(&url, endpoint).await?;
    let skew = if url.starts_with("s3://") {
        let s3 = dimple::store::S3Store::open(&url, endpoint).await.map_err(dimple::Error::from)?;
        s3.clock_skew_ms(&format!("doctor-clock-{:016x}", rand::random::<u64>())).await.ok()
    } else {
        None
    };
    let checks = dimple::doctor::run(&store, skew).await;
    if json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let mark = match c.outcome {
                dimple::doctor::Outcome::Pass => "pass",
                dimple::doctor::Outcome::Warn => "warn",
                dimple::doctor::Outcome::Fail => "FAIL",
            };
            println!("{mark}  {}: {}", c.name, c.detail);
        }
    }
    let failed = checks.iter().filter(|c| c.outcome == dimple::doctor::Outcome::Fail).count();
    if failed > 0 {
        anyhow::bail!("dimple cannot run safely on {url}: {failed} check(s) failed");
    }
    Ok(())
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is fine.
fn print_raw(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn open(db: &Path) -> Result<Replica> {
    Ok(Replica::open(db, Options::default())?)
}

/// Checks a bucket location; plain relative paths are stored absolute, so the bucket
/// stays the same wherever dimple runs from.
fn normalize_bucket(url: &str) -> Result<String> {
    Ok(dimple::store::BucketUrl::parse(url).map_err(dimple::Error::from)?.canonical())
}

/// The replica's bucket URL, or what to do when it has none.
fn bucket_of(r: &Replica) -> Result<String> {
    r.bucket()?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no bucket; run `dimple init {} --bucket URL` on a new database",
            r.path().display(),
            r.path().display()
        )
    })
}

async fn store_for(r: &Replica, args: &StoreArgs) -> Result<dimple::store::Metered<dyn dimple::store::Store>> {
    Ok(dimple::open_store(&bucket_of(r)?, args.endpoint.as_deref()).await?)
}

fn warn_problems(problems: &[String]) {
    for p in problems {
        eprintln!("warning: refused {p}");
    }
}

fn warn_waiting(db: &Path, ids: &[String]) {
    for id in ids {
        eprintln!("note: replica {id} is waiting for trust: run `dimple trust {} {id}`", db.display());
    }
}

/// `follow` or `manual` (docs/schema.md).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaPolicyArg {
    Follow,
    Manual,
}

impl From<SchemaPolicyArg> for dimple::schema::Policy {
    fn from(p: SchemaPolicyArg) -> Self {
        match p {
            SchemaPolicyArg::Follow => dimple::schema::Policy::Follow,
            SchemaPolicyArg::Manual => dimple::schema::Policy::Manual,
        }
    }
}

/// `pinned` or `explicit` (docs/trust.md).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrustModeArg {
    Pinned,
    Explicit,
}

impl From<TrustModeArg> for dimple::trust::TrustMode {
    fn from(m: TrustModeArg) -> Self {
        match m {
            TrustModeArg::Pinned => dimple::trust::TrustMode::Pinned,
            TrustModeArg::Explicit => dimple::trust::TrustMode::Explicit,
        }
    }
}

/// `push`, `pull` or `both`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    Push,
    Pull,
    Both,
}

impl From<DirectionArg> for dimple::direction::Direction {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::Push => dimple::direction::Direction::Push,
            DirectionArg::Pull => dimple::direction::Direction::Pull,
            DirectionArg::Both => dimple::direction::Direction::Both,
        }
    }
}
