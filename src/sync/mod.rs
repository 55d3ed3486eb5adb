//! Moving batches between a replica and the bucket, one job per module:
//! - `push`: the push state machine: build a batch and its signed head, save them
//!   as the in-flight push, upload the batch (create-only), then the head (If-Match
//!   on the ETag we last wrote), then move the local cursor;
//! - `pull`: one paged LIST of `replicas/`, a GET only for heads whose ETag
//!   changed, trust decisions, and per replica the chain then the apply;
//! - `chain`: fetching a replica's new batches and verifying the hash chain from
//!   its signed head back to our cursor;
//! - `check`: per-change checks of a downloaded batch, on a thread of its own,
//!   a large batch handed over piece by piece as its changes pass;
//! - `apply`: the atomic apply of checked batches together with their cursors.
//!
//! A replica whose objects are bad gets a problem row and keeps its cursor; the
//! others sync on. The protocol is written down in docs/protocol.md.
//!
//! The SQLite work of a push or a pull runs between awaits, on the thread that
//! polls it: the agent gives every database a thread and runtime of its own
//! ([`crate::agent::run_each`]), so one database's long apply never holds up
//! another's sync. An app that embeds dimple in a shared runtime should do the
//! same, or call from `spawn_blocking`.

mod apply;
pub(crate) mod chain;
mod check;
mod pull;
mod push;

pub use check::MAX_VALUE_KEY;
pub use pull::pull;
pub use push::push;
pub(crate) use push::{descriptor, own_head_is_ours, publish_descriptor, push_after_pull, put_descriptor};

use crate::error::Result;
use crate::replica::Replica;
use crate::store::{RequestStats, Store};
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    pub batches: usize,
    pub changes: usize,
    /// Values stored out of line that this push uploaded (those the bucket held
    /// already are not counted).
    pub blobs: crate::blob::Moved,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PullReport {
    pub replicas_seen: usize,
    pub batches: usize,
    pub changes: usize,
    /// The tables the applied changes touch, sorted.
    pub tables: Vec<String>,
    /// Replicas whose pruned batches were made up for from the newest snapshot.
    pub caught_up: Vec<String>,
    /// The snapshot is fetched at most once per pull, for whichever replica needs it.
    #[serde(skip)]
    pub(crate) tried_snapshot: bool,
    /// Problems recorded by this pull, one line each.
    pub problems: Vec<String>,
    /// Replicas whose changes are held until someone runs `dimple trust` (explicit
    /// trust mode): their heads verified, their keys are pinned, nothing applied.
    pub waiting_for_trust: Vec<String>,
    /// Values stored out of line that this pull downloaded.
    pub blobs: crate::blob::Moved,
    /// Values this replica lacks after the pull (lazy, or not in the bucket).
    pub blobs_missing: crate::blob::Missing,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub pull: PullReport,
    pub push: PushReport,
    pub requests: RequestStats,
}

/// Downloads values stored out of line that this replica lacks (a lazy replica's,
/// or ones not fetched yet) and writes them into their rows: all of them, or only
/// those of one row (`only` = table and entity id, as `dimple log` shows it).
pub async fn fetch(
    r: &mut Replica,
    store: &dyn Store,
    only: Option<(&str, &str)>,
) -> Result<crate::blob::transfer::Fetched> {
    let codec = crate::group::prepare(r, store, true).await?;
    crate::blob::transfer::fetch_missing(r, store, &codec, only).await
}

/// Pull, then push.
pub async fn sync(r: &mut Replica, store: &crate::store::Metered<dyn Store>) -> Result<SyncReport> {
    let before = store.stats();
    let pull = pull(r, store).await?;
    // A push-only replica's pull returns before it takes in new grants.
    let push = if r.direction()?.pulls() { push::push_after_pull(r, store).await? } else { push(r, store).await? };
    crate::meta::set(&r.sync, "last_sync", &crate::clock::rfc3339(r.hlc.now_ms()))?;
    // Superseded history past the retention (hourly at most; local work only).
    crate::retention::prune_if_due(r)?;
    Ok(SyncReport { pull, push, requests: store.stats().since(&before) })
}
