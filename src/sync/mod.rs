//! Moving batches between a replica and the bucket, one job per module:
//! - [`push`]: the push state machine: build a batch and its signed head, save them
//!   as the in-flight push, upload the batch (create-only), then the head (If-Match
//!   on the ETag we last wrote), then move the local cursor;
//! - [`pull`]: one paged LIST of `replicas/`, a GET only for heads whose ETag
//!   changed, trust decisions, and per replica the chain then the apply;
//! - [`chain`]: fetching a replica's new batches and verifying the hash chain from
//!   its signed head back to our cursor;
//! - [`apply`]: per-change checks, then the atomic apply of one batch together with
//!   its cursor.
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
mod chain;
mod pull;
mod push;

pub use apply::MAX_VALUE_KEY;
pub use pull::pull;
pub use push::push;
pub(crate) use push::{descriptor, publish_descriptor, put_descriptor};

use crate::error::Result;
use crate::replica::Replica;
use crate::store::{RequestStats, Store};
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    pub batches: usize,
    pub changes: usize,
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
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub pull: PullReport,
    pub push: PushReport,
    pub requests: RequestStats,
}

/// Pull, then push.
pub async fn sync(r: &mut Replica, store: &crate::store::Metered<dyn Store>) -> Result<SyncReport> {
    let before = store.stats();
    let pull = pull(r, store).await?;
    let push = push(r, store).await?;
    crate::meta::set(&r.sync, "last_sync", &crate::clock::rfc3339(r.hlc.now_ms()))?;
    // Superseded history past the retention (hourly at most; local work only).
    crate::retention::prune_if_due(r)?;
    Ok(SyncReport { pull, push, requests: store.stats().since(&before) })
}
