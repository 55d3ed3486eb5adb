//! `dimple trust`: trust or revoke a replica, or set the group's trust mode.

use super::{open, TrustModeArg};
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
}

pub fn run(args: TrustArgs) -> Result<()> {
    let TrustArgs { db, replica_id, revoke, mode } = args;
    let r = open(&db)?;
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
        } else {
            println!("trusted {full}: its changes are applied from the next pull");
        }
    }
    Ok(())
}
