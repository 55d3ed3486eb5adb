//! `dimple trust`: trust or revoke a replica, or set the group's trust mode.

use super::{open, store_for, StoreArgs, TrustModeArg};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrustArgs {
    db: PathBuf,
    /// The replica id (or a unique prefix of it), as `dimple replicas` shows.
    #[arg(required_unless_present = "mode")]
    replica_id: Option<String>,
    /// Stop applying this replica's changes.
    #[arg(long, requires = "replica_id")]
    revoke: bool,
    /// `pinned`: trust on first use. `explicit`: hold new replicas until trusted
    /// (replicas already applied become trusted).
    #[arg(long, value_enum, conflicts_with_all = ["replica_id", "revoke"])]
    mode: Option<TrustModeArg>,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(args: TrustArgs) -> Result<()> {
    let TrustArgs { db, replica_id, revoke, mode, store } = args;
    let mut r = open(&db)?;
    let encrypted = dimple::group::group_of(&r)?.is_some();
    if let (Some(id), false, true) = (&replica_id, revoke, encrypted) {
        // In an encrypted group, trusting a waiting device grants it the keys.
        let s = store_for(&r, &store).await?;
        match dimple::group::grant(&mut r, &s, id).await {
            Ok(g) => {
                println!(
                    "granted the group key to {} (key fingerprint {}): it reads and writes from its next sync",
                    g.replica, g.key_fingerprint
                );
                return Ok(());
            }
            // Not waiting: an ordinary member to trust.
            Err(dimple::Error::Invalid(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(mode) = mode {
        let mode = dimple::trust::TrustMode::from(mode);
        let promoted = dimple::trust::set_mode(r.conn(), mode)?;
        println!("trust mode is now {}", mode.as_str());
        if promoted > 0 {
            println!("{promoted} replicas already applied are now trusted");
        }
    } else if let Some(id) = replica_id {
        let state = if revoke { dimple::trust::REVOKED } else { dimple::trust::TRUSTED };
        let full = dimple::trust::set_replica(r.conn(), &id, state)?;
        if revoke {
            println!("revoked {full}: its further changes are not applied (those already applied stay)");
            if encrypted {
                println!("it can still read the group: run `dimple rekey {} --revoke {full}`", db.display());
            }
        } else {
            println!("trusted {full}: its changes are applied from the next pull");
        }
    }
    Ok(())
}
