//! The data itself: export, import, verify, compact, clone.

use super::{normalize_bucket, open, print_json, store_for, warn_problems, JsonFlag, StoreArgs};
use anyhow::Result;
use clap::Subcommand;
use dimple::export::{self, Format};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FileFormat {
    Csv,
    Json,
}

impl From<FileFormat> for Format {
    fn from(f: FileFormat) -> Format {
        match f {
            FileFormat::Csv => Format::Csv,
            FileFormat::Json => Format::Json,
        }
    }
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write each tracked table to DIR/<table>.csv or .json (values in dimple's exact encoding).
    Export {
        db: PathBuf,
        #[arg(long, value_enum)]
        format: FileFormat,
        /// Output directory (default: the current one).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Load rows from a CSV or JSON file (as written by export) into tracked TABLE,
    /// as captured local changes; rows whose key exists are updated.
    Import {
        db: PathBuf,
        table: String,
        file: PathBuf,
        /// Default: from the file name's ending.
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Compare the tables with the change log, and this replica's digest with the
    /// other replicas' (exit status 5 on divergence).
    Verify {
        db: PathBuf,
        /// Rewrite rows that differ from the log (not captured as new changes).
        #[arg(long)]
        repair: bool,
        /// Only the local check: no bucket requests.
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Write a snapshot of this replica's state to the bucket (for fast clones).
    Compact {
        db: PathBuf,
        /// Delete superseded snapshots older than this many days (and, with
        /// --prune, covered batches older than it).
        #[arg(long, default_value_t = 7)]
        keep_days: u64,
        /// Also delete the batches the new snapshot covers, older than --keep-days:
        /// the bucket stops growing. Replicas behind them catch up from the snapshot.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Drop superseded changes older than the retention (default 30 days) from the
    /// local log now (a sync does it hourly); the winning change of every row and
    /// column, and everything newer, stay. --keep sets the retention first.
    Prune {
        db: PathBuf,
        /// Days of superseded history to keep, or `all`.
        #[arg(long, value_name = "DAYS|all")]
        keep: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make DB a new replica of the bucket at URL: latest snapshot, then the batches after it.
    Clone {
        url: String,
        db: PathBuf,
        /// A name for people (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
        /// The passphrase of an encrypted group.
        #[command(flatten)]
        passphrase: super::PassphraseArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
}

pub async fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Export { db, format, out, json } => {
            let r = open(&db)?;
            let files = export::export(&r, &out, format.into())?;
            if json.json {
                print_json(&files)?;
            } else {
                for f in &files {
                    println!("{} rows of {} -> {}", f.rows, f.table, f.path);
                }
            }
        }
        DataCommand::Import { db, table, file, format, json } => {
            let mut r = open(&db)?;
            let n = export::import(&mut r, &table, &file, format.map(Into::into))?;
            if json.json {
                print_json(&serde_json::json!({"table": table, "rows": n}))?;
            } else {
                println!("imported {n} rows into {table}");
            }
        }
        DataCommand::Verify { db, repair, local, store, json } => verify(db, repair, local, store, json.json).await?,
        DataCommand::Compact { db, keep_days, prune, store, json } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let grace = std::time::Duration::from_secs(keep_days * 24 * 3600);
            let report = dimple::snapshot::compact_with(&mut r, &s, grace, prune).await?;
            if json.json {
                print_json(&serde_json::json!({"compact": report, "requests": s.stats()}))?;
            } else {
                println!(
                    "snapshot {}: {} rows in {} tables, {} changes, {} cursors, {} bytes{}",
                    report.key,
                    report.rows,
                    report.tables,
                    report.changes,
                    report.cursors,
                    report.bytes,
                    if report.published { "" } else { " (a newer snapshot is already published)" }
                );
                if !report.caught_up.is_empty() {
                    println!(
                        "caught up first from the published snapshot for {} member(s) it covered further",
                        report.caught_up.len()
                    );
                }
                for k in &report.deleted {
                    println!("deleted {k}");
                }
                if prune {
                    println!("pruned {} batches the snapshot covers", report.pruned_batches.len());
                }
            }
        }
        DataCommand::Prune { db, keep, json } => {
            let mut r = open(&db)?;
            if let Some(k) = keep {
                dimple::retention::set(r.conn(), k.parse::<dimple::retention::Retention>()?)?;
            }
            let pruned = dimple::retention::prune(&mut r)?;
            if json.json {
                print_json(&pruned)?;
            } else {
                println!(
                    "pruned {} superseded changes ({} transactions); keeping {}; history complete from {}",
                    pruned.changes,
                    pruned.transactions,
                    dimple::retention::get(r.conn())?,
                    pruned.complete_from.as_deref().unwrap_or("the start")
                );
            }
        }
        DataCommand::Clone { url, db, name, passphrase, store, json } => {
            let url = normalize_bucket(&url)?;
            let s = dimple::open_store(&url, store.endpoint.as_deref()).await?;
            let keys = match passphrase.read(false)? {
                Some(p) => Some(dimple::group::unlock(&s, &p).await?),
                None => None,
            };
            let bar = progress_bar();
            let show = |step: &str| {
                if let Some(b) = &bar {
                    b.set_message(step.to_owned());
                }
            };
            let (_, report) =
                dimple::clone::clone_with_keys(&url, &db, name.as_deref(), dimple::Options::default(), &s, &show, keys)
                    .await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if json.json {
                print_json(&serde_json::json!({"clone": report, "requests": s.stats()}))?;
            } else {
                if report.resumed {
                    println!("took up the clone interrupted before");
                }
                match &report.snapshot {
                    Some(id) => println!(
                        "cloned from snapshot {id}: {} rows, {} changes",
                        report.snapshot_rows, report.snapshot_changes
                    ),
                    // Taken up after its snapshot was in: nothing more to say of it.
                    None if report.resumed && report.tracked.is_empty() => {}
                    None => println!("no snapshot in the bucket: replayed every batch"),
                }
                println!(
                    "then pulled {} changes in {} batches; replica {}",
                    report.pull.changes, report.pull.batches, report.replica
                );
                warn_problems(&report.pull.problems);
            }
        }
    }
    Ok(())
}

/// Divergence is bad data: exit status 5 (see main.rs).
async fn verify(db: PathBuf, repair: bool, local: bool, store: StoreArgs, json: bool) -> Result<()> {
    use dimple::verify;
    let mut r = open(&db)?;
    let diffs = verify::check(&mut r)?;
    let repaired = if repair && !diffs.is_empty() { verify::repair(&mut r, &diffs)? } else { 0 };
    let mut comparisons = Vec::new();
    if !local && r.bucket()?.is_some() {
        let s = store_for(&r, &store).await?;
        let mine = verify::snapshot_digest(&mut r)?;
        // A digest of rows known to be wrong would only mislead the others.
        if diffs.iter().all(|d| repair && d.repairable()) {
            verify::publish(&mut r, &s, &mine).await?;
        }
        comparisons = verify::compare(&mut r, &s, &mine).await?;
    }
    let diverged = diffs.iter().any(|d| !repair || !d.repairable())
        || comparisons.iter().any(|c| c.verdict == dimple::verify::Verdict::Different);
    if json {
        print_json(&serde_json::json!({
            "differences": diffs, "repaired": repaired, "replicas": comparisons, "ok": !diverged,
        }))?;
    } else {
        for d in &diffs {
            println!("{d}");
        }
        if repair && repaired > 0 {
            println!("repaired {repaired} rows from the change log");
        }
        if repair && diffs.iter().any(|d| matches!(d, verify::Difference::Outbox { .. })) {
            println!("rebuilt the outbox from the change log: the next push sends every change it left out");
        }
        for c in &comparisons {
            let tables =
                if c.tables.is_empty() { String::new() } else { format!(" (tables: {})", c.tables.join(", ")) };
            println!("replica {} ({}): {}{tables}", c.replica, c.name, c.verdict);
        }
        if !diverged {
            println!("ok: tables match the change log");
        }
    }
    if diverged {
        return Err(
            dimple::Error::BadData { origin: db.display().to_string(), reason: "diverged (see above)".into() }.into()
        );
    }
    Ok(())
}

/// A spinner on stderr, only when it is a terminal.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(b)
}
