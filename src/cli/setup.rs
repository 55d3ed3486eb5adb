//! Setting a replica up: init, track, untrack, direction, fork.

use super::{
    normalize_bucket, open, print_json, store_for, DirectionArg, JsonFlag, PassphraseArgs, SchemaPolicyArg, StoreArgs,
    TrustModeArg,
};
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
        /// What to do about tables and columns other replicas have and this one
        /// lacks: `follow` creates them, `manual` reports them (the app migrates).
        /// Default: `follow` for a database with no tables yet, `manual` for one an
        /// app already uses.
        #[arg(long, value_enum)]
        schema: Option<SchemaPolicyArg>,
        /// Start an encrypted group in this (empty) bucket: the bucket stores what
        /// it cannot read. With a passphrase, devices that know it join by
        /// themselves; others join when a member runs `dimple trust`.
        #[arg(long, requires = "bucket")]
        encrypt: bool,
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Start a new key epoch of an encrypted group: every member but the revoked
    /// ones gets the new key; revoked devices read nothing written from now on.
    Rekey {
        db: PathBuf,
        /// A member to remove from the group (repeatable).
        #[arg(long, value_name = "REPLICA_ID")]
        revoke: Vec<String>,
        /// Wrap the new epoch to this passphrase too (without one, the new epoch
        /// has no passphrase: devices join by grant).
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Seed a new encrypted group at URL (an empty bucket or prefix) with this
    /// replica's current state; devices then move with `dimple clone URL NEW.db`
    /// and the passphrase. DB itself stays in its group.
    Encrypt {
        db: PathBuf,
        #[arg(long, value_name = "URL")]
        to: String,
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        store: StoreArgs,
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

/// Whether `db` already holds tables of an app (then its schema is the app's to
/// migrate, and `init` defaults to the manual schema policy).
fn app_tables(db: &std::path::Path) -> Result<bool> {
    if !db.exists() {
        return Ok(false);
    }
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    Ok(n > 0)
}

/// What `init` does about encryption, decided before the database is touched.
enum Plan {
    Plain(Option<dimple::store::Metered<dyn dimple::store::Store>>),
    Create(dimple::store::Metered<dyn dimple::store::Store>),
    Join(dimple::store::Metered<dyn dimple::store::Store>, dimple::seal::Keyring),
    Request(dimple::store::Metered<dyn dimple::store::Store>, String),
}

async fn plan(bucket: Option<&str>, encrypt: bool, passphrase: Option<&str>, endpoint: Option<&str>) -> Result<Plan> {
    let Some(url) = bucket else {
        if passphrase.is_some() {
            anyhow::bail!("a passphrase needs --bucket");
        }
        return Ok(Plan::Plain(None));
    };
    let explicit = encrypt || passphrase.is_some();
    let s = match dimple::open_store(url, endpoint).await {
        Ok(s) => s,
        Err(e) if !explicit => {
            eprintln!("note: could not open the bucket ({e}); the first sync checks it");
            return Ok(Plan::Plain(None));
        }
        Err(e) => return Err(e.into()),
    };
    if encrypt {
        dimple::group::ensure_empty(&s).await?;
        return Ok(Plan::Create(s));
    }
    Ok(match (dimple::group::detect(&s).await, passphrase) {
        (Ok(Some(_)), Some(p)) => {
            let keys = dimple::group::unlock(&s, p).await?;
            Plan::Join(s, keys)
        }
        (Ok(Some(group)), None) => Plan::Request(s, group),
        (Ok(None), Some(_)) => anyhow::bail!("this bucket holds no encrypted group; add --encrypt to start one"),
        (Ok(None), None) => Plan::Plain(Some(s)),
        // Offline or not yet usable: the first sync checks it.
        (Err(e), None) => {
            eprintln!("note: could not check the bucket ({e}); the first sync checks it");
            Plan::Plain(None)
        }
        (Err(e), Some(_)) => return Err(e.into()),
    })
}

pub async fn run(cmd: SetupCommand) -> Result<()> {
    match cmd {
        SetupCommand::Init { db, bucket, name, direction, trust, schema, encrypt, passphrase, store, out } => {
            let bucket = bucket.as_deref().map(normalize_bucket).transpose()?;
            let policy = match schema {
                Some(p) => p.into(),
                None if app_tables(&db)? => dimple::schema::Policy::Manual,
                None => dimple::schema::Policy::Follow,
            };
            let passphrase = passphrase.read(encrypt)?;
            // Decided against the bucket before anything local is created: a wrong
            // passphrase or an unusable bucket leaves no database behind.
            let plan = plan(bucket.as_deref(), encrypt, passphrase.as_deref(), store.endpoint.as_deref()).await?;
            let mut r = Replica::init(&db, bucket.as_deref(), name.as_deref(), Options::default())?;
            let (direction, trust) =
                (dimple::direction::Direction::from(direction), dimple::trust::TrustMode::from(trust));
            r.set_direction(direction)?;
            dimple::trust::set_mode(r.conn(), trust)?;
            dimple::schema::set_policy(r.conn(), policy)?;
            let fingerprint = dimple::trust::fingerprint(&r.public_key()?);
            let encryption = match plan {
                Plan::Plain(checked) => {
                    if checked.is_some() {
                        dimple::group::mark_plain(&r)?;
                    }
                    "none"
                }
                Plan::Create(s) => {
                    dimple::group::create(&mut r, &s, passphrase.as_deref()).await?;
                    "created"
                }
                Plan::Join(s, keys) => {
                    dimple::group::adopt(&mut r, &s, keys).await?;
                    "joined"
                }
                Plan::Request(s, group) => {
                    dimple::group::request(&mut r, &s, &group).await?;
                    "waiting for a member"
                }
            };
            let info = serde_json::json!({
                "replica": r.id(), "name": r.name()?, "bucket": r.bucket()?, "direction": direction,
                "trust_mode": trust.as_str(), "key_fingerprint": fingerprint, "encryption": encryption,
                "schema_policy": policy,
            });
            if out.json {
                print_json(&info)?;
            } else {
                println!("initialised {} as replica {} ({})", db.display(), r.id(), r.name()?);
                match encryption {
                    "created" => println!("started an encrypted group in {}", r.bucket()?.unwrap_or_default()),
                    "joined" => println!("joined the encrypted group with the passphrase"),
                    "waiting for a member" => println!(
                        "waiting for a member: the group is encrypted; on a member run `dimple trust <its db> {}` (key fingerprint {fingerprint})",
                        r.id()
                    ),
                    _ => {}
                }
            }
        }
        SetupCommand::Rekey { db, revoke, passphrase, store, out } => {
            let passphrase = passphrase.read(true)?;
            let mut r = open(&db)?;
            let s = store_for(&r, &store).await?;
            let done = dimple::group::rekey(&mut r, &s, &revoke, passphrase.as_deref()).await?;
            if out.json {
                print_json(&done)?;
            } else {
                println!(
                    "new key epoch {}: granted to {} other members{}; revoked {}",
                    done.epoch,
                    done.granted.len(),
                    if done.passphrase { " and the passphrase" } else { "" },
                    if done.revoked.is_empty() { "none".to_owned() } else { done.revoked.join(", ") }
                );
            }
        }
        SetupCommand::Encrypt { db, to, passphrase, store, out } => {
            let Some(passphrase) = passphrase.read(true)? else {
                anyhow::bail!("the new group needs a passphrase (--passphrase-file, --ask-passphrase or DIMPLE_PASSPHRASE): devices join it by cloning with it")
            };
            let to = normalize_bucket(&to)?;
            let mut r = open(&db)?;
            let s = dimple::open_store(&to, store.endpoint.as_deref()).await?;
            let (group, report) = dimple::group::seed(&mut r, &s, &passphrase).await?;
            if out.json {
                print_json(&serde_json::json!({"group": group, "bucket": to, "snapshot": report}))?;
            } else {
                println!(
                    "started encrypted group {group} at {to} with a snapshot of {} ({} rows); on each device: `dimple clone {to} NEW.db --passphrase-file FILE`",
                    db.display(),
                    report.rows
                );
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
