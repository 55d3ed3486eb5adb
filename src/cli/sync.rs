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
                warn_problems(&report.pull.problems);
                warn_waiting(&db, &report.pull.waiting_for_trust);
            }
        }
    }
    Ok(())
}
