//! Setting a replica up: init, track, untrack, direction, fork.

use super::{normalize_bucket, open, print_json, DirectionArg, JsonFlag, TrustModeArg};
use anyhow::Result;
use clap::Subcommand;
use dimple::{Options, Replica};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SetupCommand {
    /// Make DB a replica: dimple's tables, a replica id and a key pair.
    Init {
        db: PathBuf,
        /// Where replicas meet: file:///path, a directory path, or s3://bucket/prefix.
        #[arg(long)]
        bucket: Option<String>,
        /// A name for people (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
        /// Sync direction (see `dimple direction`).
        #[arg(long, value_enum, default_value_t = DirectionArg::Both)]
        direction: DirectionArg,
        /// `pinned` (default): apply a new replica's changes at once and pin its key
        /// on first sight. `explicit`: hold them until `dimple trust DB REPLICA_ID`.
        #[arg(long, value_enum, default_value_t = TrustModeArg::Pinned)]
        trust: TrustModeArg,
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
    /// Show or set which way this replica syncs: push, pull or both.
    Direction {
        db: PathBuf,
        #[arg(value_enum)]
        direction: Option<DirectionArg>,
        #[command(flatten)]
        json: JsonFlag,
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
}

pub async fn run(cmd: SetupCommand) -> Result<()> {
    match cmd {
        SetupCommand::Init { db, bucket, name, direction, trust, out } => {
            let bucket = bucket.as_deref().map(normalize_bucket).transpose()?;
            let mut r = Replica::init(&db, bucket.as_deref(), name.as_deref(), Options::default())?;
            let (direction, trust) =
                (dimple::direction::Direction::from(direction), dimple::trust::TrustMode::from(trust));
            r.set_direction(direction)?;
            dimple::trust::set_mode(r.conn(), trust)?;
            let info = serde_json::json!({
                "replica": r.id(), "name": r.name()?, "bucket": r.bucket()?, "direction": direction,
                "trust_mode": trust.as_str(), "key_fingerprint": dimple::trust::fingerprint(&r.public_key()?),
            });
            if out.json {
                print_json(&info)?;
            } else {
                println!("initialised {} as replica {} ({})", db.display(), r.id(), r.name()?);
            }
        }
        SetupCommand::Track { db, table, allow_integer_key } => {
            let mut r = open(&db)?;
            let info = r.track(&table, allow_integer_key)?;
            println!("tracking {table} (key: {}; columns: {})", info.key_columns.join(", "), info.columns.join(", "));
        }
        SetupCommand::Untrack { db, table } => {
            open(&db)?.untrack(&table)?;
            println!("no longer tracking {table}");
        }
        SetupCommand::Direction { db, direction, json } => {
            let r = open(&db)?;
            if let Some(d) = direction {
                r.set_direction(d.into())?;
            }
            let d = r.direction()?;
            if json.json {
                print_json(&serde_json::json!({"direction": d}))?;
            } else {
                println!("{d}");
            }
        }
        SetupCommand::Fork { db, name, out } => {
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
    }
    Ok(())
}
