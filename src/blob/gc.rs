//! Deleting values stored out of line that nothing references any more, as part
//! of `dimple compact --prune`.
//!
//! A blob is deleted only when all of these hold:
//! - no change in this replica's log sets it (the winners of live rows and every
//!   retained change; an old value is a record of what was replaced, never
//!   fetched, so it keeps nothing alive), after a pull that applied every
//!   replica's batches (a pull that left problems or held replicas skips the
//!   collection: their batches may name blobs this log does not);
//! - the store last wrote it longer than the grace period ago. A writer uploads a
//!   blob moments before the batch that names it: the grace period covers that
//!   window, and a writer that stopped in between re-uploads on its next push.

use super::transfer::object_key;
use crate::codec::Codec;
use crate::error::Result;
use crate::layout;
use crate::replica::Replica;
use crate::store::{list_all, Store, StoreError};
use std::collections::HashSet;
use std::time::Duration;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Collected {
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// Blobs kept because something references them or they are too young.
    pub kept: usize,
    /// Why nothing was collected, when it was not.
    pub skipped: Option<String>,
}

/// The bucket keys of every value a change in this replica's log sets.
pub fn referenced(r: &Replica, codec: &Codec) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for v in crate::log::new_values_starting_with(&r.sync, &[r#"{"blobref""#, r#"{"textref""#])? {
        if let Some(rf) = super::reference(Some(&v)) {
            out.insert(object_key(codec, &rf)?);
        }
    }
    Ok(out)
}

pub async fn collect(r: &mut Replica, store: &dyn Store, codec: &Codec, grace: Duration) -> Result<Collected> {
    // Listed before the pull: a blob uploaded after the listing is not a candidate,
    // and every batch pushed before the listing is applied by the pull.
    let listing = list_all(store, layout::BLOBS_PREFIX, None).await?;
    let pulled = crate::sync::pull(r, store).await?;
    if !pulled.problems.is_empty() || !pulled.waiting_for_trust.is_empty() {
        return Ok(Collected {
            kept: listing.len(),
            skipped: Some(format!(
                "blobs not collected: {} problem(s) and {} replica(s) waiting for trust leave batches unapplied here",
                pulled.problems.len(),
                pulled.waiting_for_trust.len()
            )),
            ..Collected::default()
        });
    }
    let keep = referenced(r, codec)?;
    let cutoff = r.opts.clock.now_ms().saturating_sub(grace.as_millis() as u64);
    let mut report = Collected::default();
    for meta in listing {
        let stale = layout::parse_blob_key(&meta.key).is_some()
            && !keep.contains(&meta.key)
            && meta.modified_ms > 0
            && meta.modified_ms < cutoff;
        if !stale {
            report.kept += 1;
            continue;
        }
        match store.delete(&meta.key).await {
            Ok(()) | Err(StoreError::NotFound(_)) => report.deleted.push(meta.key),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}
