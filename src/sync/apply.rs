//! Applying one verified batch: every change checked first, then all of them merged
//! in one SQLite transaction together with the cursor that records the batch, so a
//! crash loses nothing and applies nothing twice.

use crate::batch;
use crate::changelog;
use crate::clock::parse_id;
use crate::error::{Error, Result};
use crate::merge::{Change, Merger, ALIVE, DEAD};
use crate::meta;
use crate::peers;
use crate::replica::Replica;
use crate::track::ROW;
use crate::value;
use rusqlite::TransactionBehavior;
use std::path::Path;

/// `ZV_METADATA` key overriding [`crate::Options::max_value_bytes`].
pub const MAX_VALUE_KEY: &str = "max_value_bytes";

/// A downloaded batch whose every change passed the checks, not applied yet.
pub struct Checked {
    pub header: batch::Header,
    pub changes: Vec<Change>,
}

/// Checks every change of a downloaded batch of replica `id`.
pub fn check_batch(r: &Replica, id: &str, path: &Path, key: &str) -> Result<Checked> {
    let batch = batch::open(path, key, id)?;
    let changes = batch.changes()?;
    let known = peers::get(&r.sync, id)?.unwrap_or_default();
    if let Some(last) = &known.last_change_id {
        if batch.header.first_change_id <= *last {
            return Err(Error::bad(key, "change ids go backwards from the last batch applied"));
        }
    }
    let cap = match meta::get(&r.sync, MAX_VALUE_KEY)? {
        Some(v) => v.parse().map_err(|_| Error::Invalid(format!("{MAX_VALUE_KEY} {v:?} is not a number of bytes")))?,
        None => r.opts.max_value_bytes,
    };
    for c in &changes {
        check_change(r, key, c, cap)?;
    }
    Ok(Checked { header: batch.header, changes })
}

/// Applies a checked batch in one transaction together with the replica's cursor.
/// Returns how many changes, and the tables they touch.
pub fn commit_batch(
    r: &mut Replica,
    id: &str,
    checked: Checked,
    key: &str,
    sha: &str,
) -> Result<(usize, std::collections::BTreeSet<String>)> {
    let Checked { header, changes } = checked;
    let me = r.id().to_owned();
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    r.hlc.observe_persisted(&tx)?;
    changelog::ingest(&tx, &mut r.hlc, &me)?;
    {
        let merger = Merger::new(&tx)?;
        merger.apply_many(&changes).map_err(|e| local_refusal(key, e))?;
    }
    if let Some(last) = changes.last().and_then(|c| parse_id(&c.id)) {
        r.hlc.observe(&last);
    }
    changelog::save_clock(&tx, &r.hlc)?;
    let h = &header;
    peers::batch_applied(&tx, id, &h.batch_id, sha, &h.last_change_id, changes.len() as i64)?;
    tx.commit()?;
    Ok((changes.len(), changes.iter().map(|c| c.entity_type.clone()).collect()))
}

/// Refuses a change that is malformed or too far in the future, before anything of
/// its batch is applied.
fn check_change(r: &Replica, key: &str, c: &Change, max_value_bytes: usize) -> Result<()> {
    let id = parse_id(&c.id).ok_or_else(|| Error::bad(key, format!("change id {:?} is not a UUIDv7", c.id)))?;
    r.hlc.check_drift(&id).map_err(|e| Error::bad(key, e.to_string()))?;
    if c.entity_type.is_empty() || c.attribute.is_empty() {
        return Err(Error::bad(key, format!("change {} has an empty table or column name", c.id)));
    }
    if c.attribute == ROW {
        if !matches!(c.new_value.as_deref(), Some(ALIVE) | Some(DEAD)) {
            return Err(Error::bad(key, format!("change {} has a bad row state {:?}", c.id, c.new_value)));
        }
        return Ok(());
    }
    for v in [&c.old_value, &c.new_value].into_iter().flatten() {
        if v.len() > max_value_bytes {
            return Err(Error::bad(
                key,
                format!("change {} holds a value of {} bytes, over the cap of {max_value_bytes} bytes", c.id, v.len()),
            ));
        }
        value::check(v).map_err(|e| Error::bad(key, format!("change {}: {e}", c.id)))?;
    }
    Ok(())
}

/// A remote change that breaks a local constraint (UNIQUE, NOT NULL, CHECK, a type
/// the key cannot hold) refuses its batch for that replica only, instead of failing
/// the whole pull and stopping every other replica with it.
fn local_refusal(key: &str, e: Error) -> Error {
    match e {
        Error::Sqlite(ref s) if s.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Error::bad(key, format!("batch cannot be applied here: {s}"))
        }
        Error::BadData { reason, .. } => Error::bad(key, reason),
        e => e,
    }
}
