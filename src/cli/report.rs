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
    /// The group's schema against this replica's: tables and columns other
    /// replicas have and this one lacks (with the DDL that adds them), and
    /// differences never applied by themselves. Sets the policy with --policy.
    Schema {
        db: PathBuf,
        /// `follow`: create what the group adds; `manual`: only report it.
        #[arg(long, value_enum)]
        policy: Option<super::SchemaPolicyArg>,
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
            if st.clone_unfinished {
                println!(
                    "clone     cut short: run `dimple clone {} {}` again (or `dimple sync`)",
                    st.bucket.as_deref().unwrap_or("URL"),
                    db.display()
                );
            }
            println!(
                "tracked   {}",
                if st.tracked_tables.is_empty() { "(none)".into() } else { st.tracked_tables.join(", ") }
            );
            println!("pending   {} changes", st.pending_changes);
            println!("last sync {}", st.last_sync.as_deref().unwrap_or("never"));
            println!("log       {} changes from {} other replicas", st.changes_in_log, st.replicas_known);
            match &st.history_complete_from {
                Some(t) => println!("history   keeps {}; complete from {t}", st.retention),
                None => println!("history   keeps {}; complete", st.retention),
            }
            if st.problems.is_empty() {
                println!("problems  none");
            }
            for p in &st.problems {
                println!("problem   {} {}: {} (x{}, last {})", p.replica, p.object_key, p.reason, p.count, p.last_at);
            }
            println!("trust     {}", st.trust_mode.as_str());
            match st.schema_missing {
                0 => println!("schema    {} policy, in step with the group", st.schema_policy.as_str()),
                n => println!(
                    "schema    {} policy, {n} tables or columns the group has are missing here: run `dimple schema {}`",
                    st.schema_policy.as_str(),
                    db.display()
                ),
            }
            let b = &st.blobs;
            println!(
                "blobs     {} fetch, out of line from {} bytes; {} to upload ({} bytes); {} missing here ({} bytes)",
                b.fetch.as_str(),
                b.threshold,
                b.to_upload.count,
                b.to_upload.bytes,
                b.missing.count,
                b.missing.bytes
            );
            for (t, k, c) in &b.missing_cells {
                println!("missing   {t} {k} {c}: run `dimple fetch {} --table {t} --row '{k}'`", db.display());
            }
            match &st.encryption {
                None => println!("encrypted no"),
                Some(g) if g.waiting_for_member => println!(
                    "encrypted waiting for a member: this device holds no group key yet; on a member run `dimple trust <its db> {}`",
                    st.replica
                ),
                Some(g) => {
                    println!("encrypted group {} ({} key epochs)", g.group, g.key_epochs);
                    if let Some(why) = &g.sealing_blocked {
                        println!("blocked   nothing is pushed: {why}");
                    }
                }
            }
            for id in &st.waiting_for_trust {
                println!("waiting   {id}: waiting for trust: run `dimple trust {} {id}`", db.display());
            }
            super::agent::print_status(&st.agent);
        }
        ReportCommand::Schema { db, policy, out } => {
            let r = open(&db)?;
            if let Some(p) = policy {
                dimple::schema::set_policy(r.conn(), p.into())?;
            }
            let policy = dimple::schema::policy(r.conn())?;
            let diff = dimple::schema::diff(r.conn())?;
            if out.json {
                return print_json(&serde_json::json!({"policy": policy, "diff": diff}));
            }
            println!("policy    {}", policy.as_str());
            let known: std::collections::HashMap<String, String> =
                status::replicas(&r)?.into_iter().filter_map(|i| Some((i.id, i.name?))).collect();
            let names = |ids: &[String]| {
                ids.iter().map(|i| known.get(i).cloned().unwrap_or_else(|| i.clone())).collect::<Vec<_>>().join(", ")
            };
            if diff.is_empty() {
                println!("in step   this replica has every table and column the group has");
            }
            for t in &diff.missing_tables {
                println!("missing   table {} (on {}):\n          {};", t.table, names(&t.replicas), t.ddl);
            }
            for t in &diff.untracked {
                println!("untracked table {} exists here; the next pull tracks it", t.table);
            }
            for c in &diff.missing_columns {
                match &c.ddl {
                    Ok(sql) => println!(
                        "missing   column {}.{} (on {}):\n          {sql};",
                        c.table,
                        c.column.name,
                        names(&c.replicas)
                    ),
                    Err(why) => {
                        println!("missing   column {}.{} (on {}): {why}", c.table, c.column.name, names(&c.replicas))
                    }
                }
            }
            for c in &diff.conflicts {
                println!(
                    "conflict  {}: {} here, {} on {}; never applied by itself",
                    c.what,
                    c.here,
                    c.there,
                    names(std::slice::from_ref(&c.replica))
                );
            }
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
            if let Some(t) = dimple::retention::complete_from(r.conn())? {
                println!(
                    "(history complete from {t}: older superseded changes were pruned; `dimple prune --keep all` keeps them from now on)"
                );
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
