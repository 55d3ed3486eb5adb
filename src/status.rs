//! What `dimple status` and `dimple replicas` report.

use crate::error::Result;
use crate::meta;
use crate::problems::{self, Problem};
use crate::replica::Replica;
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
    /// The encrypted group, when the replica is in one.
    pub encryption: Option<crate::group::GroupStatus>,
    pub schema_policy: crate::schema::Policy,
    /// How long superseded history is kept, and from when it is complete.
    pub retention: crate::retention::Retention,
    pub history_complete_from: Option<String>,
    /// Tables and columns other replicas have and this one lacks (`dimple schema`).
    pub schema_missing: usize,
    /// Large values stored out of line (docs/attachments.md).
    pub blobs: BlobStatus,
    /// A clone cut short that neither a clone run again nor a pull finished.
    pub clone_unfinished: bool,
}

#[derive(Debug, Serialize)]
pub struct BlobStatus {
    pub fetch: crate::blob::Fetch,
    pub threshold: u64,
    /// Captured here, waiting for the push.
    pub to_upload: crate::blob::Missing,
    /// Other replicas' values this replica lacks (rows hold NULL meanwhile).
    pub missing: crate::blob::Missing,
    /// The first of them: table, row key, column.
    pub missing_cells: Vec<(String, String, String)>,
}

fn blob_status(r: &Replica) -> Result<BlobStatus> {
    let conn = r.conn();
    let missing = crate::blob::missing(conn)?;
    let mut to_upload = crate::blob::Missing::default();
    if let Ok(entries) = std::fs::read_dir(r.side().blobs_out_path()) {
        for e in entries.flatten() {
            if e.file_name().len() == 64 {
                to_upload.count += 1;
                to_upload.bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    Ok(BlobStatus {
        fetch: crate::blob::fetch_policy(conn)?,
        threshold: crate::blob::threshold(conn)?,
        to_upload,
        missing: crate::blob::Missing::of(&missing),
        missing_cells: missing.into_iter().take(20).map(|m| (m.table, m.entity_id, m.attribute)).collect(),
    })
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
        last_sync: meta::get(conn, "last_sync")?,
        last_push_batch: meta::PushState::load(conn)?.batch_id,
        changes_in_log: crate::log::count(conn)?,
        replicas_known: crate::peers::count(conn)?,
        problems: problems::list(conn)?,
        agent: crate::agent::inspect(r.path()),
        trust_mode: trust::mode(conn)?,
        waiting_for_trust: waiting_for_trust(r)?,
        encryption: crate::group::status(r)?,
        schema_policy: crate::schema::policy(conn)?,
        retention: crate::retention::get(conn)?,
        history_complete_from: crate::retention::complete_from(conn)?,
        schema_missing: {
            let d = crate::schema::diff(conn)?;
            d.missing_tables.len() + d.missing_columns.len()
        },
        blobs: blob_status(r)?,
        clone_unfinished: crate::clone::is_unfinished(conn)?,
    })
}

#[derive(Debug, Serialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub name: Option<String>,
    pub key_fingerprint: Option<String>,
    pub trust: crate::peers::Trust,
    pub cursor: Option<String>,
    pub last_change_id: Option<String>,
    pub change_count: i64,
    pub first_seen: String,
    pub last_seen: Option<String>,
}

pub fn replicas(r: &Replica) -> Result<Vec<ReplicaInfo>> {
    Ok(crate::peers::list(r.conn())?
        .into_iter()
        .map(|p| ReplicaInfo {
            key_fingerprint: p.public_key.as_deref().map(crate::trust::fingerprint),
            id: p.id,
            name: p.name,
            trust: p.trust,
            cursor: p.batch_id,
            last_change_id: p.last_change_id,
            change_count: p.change_count,
            first_seen: p.first_seen,
            last_seen: p.last_seen,
        })
        .collect())
}

/// Replicas whose verified heads are held by explicit trust mode.
pub fn waiting_for_trust(r: &Replica) -> Result<Vec<String>> {
    if trust::mode(r.conn())? != TrustMode::Explicit {
        return Ok(Vec::new());
    }
    crate::peers::waiting_for_trust(r.conn())
}
