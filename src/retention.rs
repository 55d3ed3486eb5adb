//! History retention: superseded changes older than a horizon leave the local log.
//!
//! Merging needs, per (row, column), only the winning change (`ZV_CLOCK` points at
//! it) and whatever is newer; a superseded change can only ever lose again. So a
//! change is pruned when all of these hold:
//! - it is older than the horizon (now minus the retention, default 30 days);
//! - it is not the winner of its (row, column);
//! - its table is tracked here and its column is one this replica has (changes
//!   held for a table or column not here yet wait in the log, whatever their age);
//! - it is not one of this replica's own changes still to be pushed.
//!
//! Transactions left without changes go too. `ZV_METADATA.history.complete_from`
//! records the newest horizon used: `dimple log` says from when history is
//! complete. `retention_days = all` keeps everything.

use crate::clock::{self, Stamp};
use crate::error::{Error, Result};
use crate::meta;
use crate::replica::Replica;
use rusqlite::TransactionBehavior;
use serde::Serialize;

/// `ZV_METADATA`: the retention in days, or `all`.
pub const RETENTION_META: &str = "retention_days";
const COMPLETE_FROM_META: &str = "history.complete_from";
const PRUNED_AT_META: &str = "history.pruned_at";
pub const DEFAULT_DAYS: u64 = 30;
/// A sync prunes at most this often.
const EVERY_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Days(u64),
    All,
}

impl std::str::FromStr for Retention {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Retention::All),
            n => n
                .parse()
                .map(Retention::Days)
                .map_err(|_| Error::Invalid(format!("retention {s:?} is neither a number of days nor `all`"))),
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retention::Days(d) => write!(f, "{d} days"),
            Retention::All => f.write_str("everything"),
        }
    }
}

pub fn get(conn: &rusqlite::Connection) -> Result<Retention> {
    match meta::get(conn, RETENTION_META)? {
        Some(v) => v.parse(),
        None => Ok(Retention::Days(DEFAULT_DAYS)),
    }
}

pub fn set(conn: &rusqlite::Connection, r: Retention) -> Result<()> {
    let v = match r {
        Retention::Days(d) => d.to_string(),
        Retention::All => "all".to_owned(),
    };
    meta::set(conn, RETENTION_META, &v)
}

/// From when the local history is complete (None: nothing was ever pruned).
pub fn complete_from(conn: &rusqlite::Connection) -> Result<Option<String>> {
    meta::get(conn, COMPLETE_FROM_META)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub changes: usize,
    pub transactions: usize,
    pub complete_from: Option<String>,
}

/// Prunes now, in one transaction.
pub fn prune(r: &mut Replica) -> Result<Pruned> {
    let now = r.opts.clock.now_ms();
    let Retention::Days(days) = get(&r.sync)? else {
        return Ok(Pruned { complete_from: complete_from(&r.sync)?, ..Pruned::default() });
    };
    let horizon_ms = now.saturating_sub(days * 86_400_000);
    let horizon = crate::log::id_value(&clock::compose(Stamp { ms: horizon_ms, counter: 0 }, 0).to_string());
    let me = r.id().to_owned();
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let through = crate::outbox::after_value(&crate::meta::PushState::load(&tx)?.through);
    // Superseded (a greater id in the cell, or the same id from a greater author),
    // of a tracked table and column, and pushed (not in the outbox: a change of
    // this replica after the push cursor).
    let changes = crate::log::prune_superseded(&tx, &horizon, &me, &through)?;
    let transactions = if changes > 0 { crate::log::drop_empty_transactions(&tx)? } else { 0 };
    // Complete from the newest horizon that removed something (RFC 3339 text
    // orders like time).
    let mut complete = complete_from(&tx)?;
    if changes > 0 {
        let stamp = clock::rfc3339(horizon_ms);
        if complete.as_ref().is_none_or(|old| *old < stamp) {
            meta::set(&tx, COMPLETE_FROM_META, &stamp)?;
            complete = Some(stamp);
        }
    }
    meta::set(&tx, PRUNED_AT_META, &now.to_string())?;
    tx.commit()?;
    Ok(Pruned { changes, transactions, complete_from: complete })
}

/// Prunes when the last prune is more than an hour old (called after a sync).
pub fn prune_if_due(r: &mut Replica) -> Result<Option<Pruned>> {
    let last: u64 = meta::get(&r.sync, PRUNED_AT_META)?.and_then(|v| v.parse().ok()).unwrap_or(0);
    if r.opts.clock.now_ms().saturating_sub(last) < EVERY_MS {
        return Ok(None);
    }
    prune(r).map(Some)
}
