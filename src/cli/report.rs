//! Looking at a replica: status, log, replicas.

use super::{open, print_json, JsonFlag};
use anyhow::Result;
use clap::Subcommand;
use dimple::status;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ReportCommand {
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
}

pub fn run(cmd: ReportCommand) -> Result<()> {
    match cmd {
        ReportCommand::Status { db, out } => {
            let st = status::status(&open(&db)?)?;
            if out.json {
                return print_json(&st);
            }
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
                println!("problem   {} {}: {} (x{}, last {})", p.replica, p.object_key, p.reason, p.count, p.last_at);
            }
            println!("trust     {}", st.trust_mode.as_str());
            match &st.encryption {
                None => println!("encrypted no"),
                Some(g) if g.waiting_for_member => println!(
                    "encrypted waiting for a member: this device holds no group key yet; on a member run `dimple trust <its db> {}`",
                    st.replica
                ),
                Some(g) => println!("encrypted group {} ({} key epochs)", g.group, g.key_epochs),
            }
            for id in &st.waiting_for_trust {
                println!("waiting   {id}: waiting for trust: run `dimple trust {} {id}`", db.display());
            }
            super::agent::print_status(&st.agent);
        }
        ReportCommand::Log { db, entity, limit, out } => {
            let r = open(&db)?;
            let entity = match &entity {
                Some(e) => {
                    Some(e.split_once('/').ok_or_else(|| anyhow::anyhow!("--entity takes TABLE/ID, got {e:?}"))?)
                }
                None => None,
            };
            let log = dimple::changelog::history(r.conn(), entity, limit)?;
            if out.json {
                return print_json(&log);
            }
            let names: std::collections::HashMap<String, String> =
                status::replicas(&r)?.into_iter().filter_map(|i| Some((i.id, i.name?))).collect();
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
        ReportCommand::Replicas { db, out } => {
            let list = status::replicas(&open(&db)?)?;
            if out.json {
                return print_json(&list);
            }
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
    Ok(())
}
