//! What `dimple status` and `dimple replicas` report.

use crate::error::Result;
use crate::problems::{self, Problem};
use crate::replica::{meta_get, Replica};
use crate::track;
use crate::trust::{self, TrustMode};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Status {
    pub replica: String,
    pub name: String,
    pub path: String,
    pub bucket: Option<String>,
    pub tracked_tables: Vec<String>,
    /// Local changes not yet uploaded (captured and waiting for ids included).
    pub pending_changes: i64,
    pub last_sync: Option<String>,
    pub last_push_batch: Option<String>,
    pub changes_in_log: i64,
    pub replicas_known: i64,
    pub problems: Vec<Problem>,
    pub agent: crate::agent::AgentStatus,
    pub trust_mode: TrustMode,
    /// Replicas seen but held until `dimple trust` (explicit mode only).
    pub waiting_for_trust: Vec<String>,
}

pub fn status(r: &Replica) -> Result<Status> {
    let conn = r.conn();
    Ok(Status {
        replica: r.id().to_owned(),
        name: r.name()?,
        path: r.path().display().to_string(),
        bucket: r.bucket()?,
        tracked_tables: track::tracked_names(conn)?,
        pending_changes: r.unpushed()? + r.pending_captured()?,
        last_sync: meta_get(conn, "last_sync")?,
        last_push_batch: meta_get(conn, "push.batch_id")?,
        changes_in_log: conn.query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get(0))?,
        replicas_known: conn.query_row("SELECT count(*) FROM ZV_REPLICA", [], |r| r.get(0))?,
        problems: problems::list(conn)?,
        agent: crate::agent::inspect(r.path()),
        trust_mode: trust::mode(conn)?,
        waiting_for_trust: waiting_for_trust(r)?,
    })
}

#[derive(Debug, Serialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub name: Option<String>,
    pub key_fingerprint: Option<String>,
    pub trust: String,
    pub cursor: Option<String>,
    pub last_change_id: Option<String>,
    pub change_count: i64,
    pub first_seen: String,
    pub last_seen: Option<String>,
}

pub fn replicas(r: &Replica) -> Result<Vec<ReplicaInfo>> {
    let mut stmt = r.conn().prepare(
        "SELECT id, name, public_key, trust, batch_id, last_change_id, change_count, first_seen, last_seen FROM ZV_REPLICA ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(ReplicaInfo {
            id: row.get(0)?,
            name: row.get(1)?,
            key_fingerprint: row.get::<_, Option<String>>(2)?.map(|k| crate::trust::fingerprint(&k)),
            trust: row.get(3)?,
            cursor: row.get(4)?,
            last_change_id: row.get(5)?,
            change_count: row.get(6)?,
            first_seen: row.get(7)?,
            last_seen: row.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replicas whose verified heads are held by explicit trust mode.
pub fn waiting_for_trust(r: &Replica) -> Result<Vec<String>> {
    if trust::mode(r.conn())? != TrustMode::Explicit {
        return Ok(Vec::new());
    }
    let mut stmt =
        r.conn().prepare("SELECT id FROM ZV_REPLICA WHERE trust = ?1 AND public_key IS NOT NULL ORDER BY id")?;
    let ids = stmt.query_map([trust::PINNED], |row| row.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}
