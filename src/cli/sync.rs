//! Moving changes: push, pull, sync.

use super::{open, print_json, store_for, warn_problems, warn_waiting, JsonFlag, StoreArgs};
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SyncCommand {
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
    /// Download values stored out of line that this replica lacks (a lazy
    /// replica's, see `dimple blobs`) into their rows: one row's, or all of them.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["row", "all"])))]
    Fetch {
        db: PathBuf,
        /// The row's table.
        #[arg(long, requires = "row")]
        table: Option<String>,
        /// The row's key as `dimple log` shows it (a composite key as a JSON array).
        #[arg(long, requires = "table")]
        row: Option<String>,
        /// Every missing value.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show or set how this replica handles large values (docs/attachments.md):
    /// the size from which they are stored out of line, and whether other
    /// replicas' are downloaded at once (eager) or on demand (lazy).
    Blobs {
        db: PathBuf,
        /// eager: download before applying; lazy: rows get the value missing (NULL)
        /// until `dimple fetch`.
        #[arg(long, value_parser = ["eager", "lazy"])]
        fetch: Option<String>,
        /// Values at least this many bytes travel out of line (default 65536, at least 1024).
        #[arg(long)]
        threshold: Option<u64>,
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
}

pub async fn run(cmd: SyncCommand) -> Result<()> {
    match cmd {
        SyncCommand::Push { db, store, out } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let report = dimple::push(&mut r, &s).await?;
            if out.json {
                print_json(&serde_json::json!({"push": report, "requests": s.stats()}))?;
            } else {
                println!("pushed {} changes in {} batches", report.changes, report.batches);
                say_blobs("uploaded", &report.blobs);
            }
        }
        SyncCommand::Pull { db, store, out } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let report = dimple::pull(&mut r, &s).await?;
            if out.json {
                print_json(&serde_json::json!({"pull": report, "requests": s.stats()}))?;
            } else {
                println!("pulled {} changes in {} batches", report.changes, report.batches);
                say_blobs("downloaded", &report.blobs);
                say_missing(&db, &report.blobs_missing);
                warn_problems(&report.problems);
                warn_waiting(&db, &report.waiting_for_trust);
            }
        }
        SyncCommand::Sync { db, store, out } => {
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
                say_blobs("downloaded", &report.pull.blobs);
                say_blobs("uploaded", &report.push.blobs);
                say_missing(&db, &report.pull.blobs_missing);
                warn_problems(&report.pull.problems);
                warn_waiting(&db, &report.pull.waiting_for_trust);
            }
        }
        SyncCommand::Fetch { db, table, row, all: _, store, out } => {
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let only = table.as_deref().zip(row.as_deref());
            let report = dimple::fetch(&mut r, &s, only).await?;
            if out.json {
                print_json(&serde_json::json!({"fetch": report, "requests": s.stats()}))?;
            } else {
                println!(
                    "fetched {} values ({} bytes) into {} cells; {} still missing",
                    report.moved.count, report.moved.bytes, report.filled, report.still_missing
                );
                warn_problems(&report.problems);
            }
            if report.still_missing > 0 || !report.problems.is_empty() {
                anyhow::bail!("{} values could not be fetched (see `dimple status`)", report.still_missing);
            }
        }
        SyncCommand::Blobs { db, fetch, threshold, out } => {
            let r = open(&db)?;
            if let Some(f) = fetch {
                dimple::blob::set_fetch_policy(r.conn(), dimple::blob::Fetch::parse(&f)?)?;
            }
            if let Some(t) = threshold {
                dimple::blob::set_threshold(r.conn(), t)?;
            }
            let policy = dimple::blob::fetch_policy(r.conn())?;
            let threshold = dimple::blob::threshold(r.conn())?;
            let missing = dimple::blob::missing_summary(r.conn())?;
            if out.json {
                print_json(&serde_json::json!({"fetch": policy, "threshold": threshold, "missing": missing}))?;
            } else {
                println!("fetch: {}", policy.as_str());
                println!("threshold: {threshold} bytes");
                println!("missing: {} values ({} bytes)", missing.count, missing.bytes);
            }
        }
    }
    Ok(())
}

/// One line when values travelled out of line.
fn say_blobs(verb: &str, moved: &dimple::blob::Moved) {
    if moved.count > 0 {
        let rate = match moved.millis {
            0 => String::new(),
            ms => format!(" in {:.1} s, {:.0} MB/s", ms as f64 / 1e3, moved.bytes as f64 / 1e3 / ms as f64),
        };
        println!("{verb} {} large values ({} bytes){rate}", moved.count, moved.bytes);
    }
}

fn say_missing(db: &std::path::Path, missing: &dimple::blob::Missing) {
    if missing.count > 0 {
        println!(
            "note: {} large values ({} bytes) are not here yet: `dimple fetch {} --all` downloads them",
            missing.count,
            missing.bytes,
            db.display()
        );
    }
}
