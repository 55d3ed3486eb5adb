//! The other replicas this one knows (`ZV_REPLICA`), one owner for the table: their
//! pinned keys, the trust given to them, and the cursor that says how far their
//! chains are applied here.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;

/// The trust a replica has here (docs/trust.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Key pinned on first sight; applied in `pinned` mode, held in `explicit` mode.
    #[default]
    Pinned,
    /// Applied in every mode (`dimple trust`).
    Trusted,
    /// Never read again (`dimple trust --revoke`).
    Revoked,
}

impl Trust {
    /// Whether a replica in this state has its changes applied in a group of `mode`.
    pub fn applied_in(self, mode: crate::trust::TrustMode) -> bool {
        match self {
            Trust::Revoked => false,
            Trust::Trusted => true,
            Trust::Pinned => mode == crate::trust::TrustMode::Pinned,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Pinned => "pinned",
            Trust::Trusted => "trusted",
            Trust::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<Trust> {
        match s {
            "pinned" => Ok(Trust::Pinned),
            "trusted" => Ok(Trust::Trusted),
            "revoked" => Ok(Trust::Revoked),
            other => Err(rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown trust state {other:?}").into(),
            )),
        }
    }
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One known replica: its key and trust, and the cursor of its chain here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub id: String,
    pub name: Option<String>,
    pub public_key: Option<String>,
    pub trust: Trust,
    /// ETag of the head last applied in full (a pull skips an unchanged head).
    pub head_etag: Option<String>,
    /// The last batch applied, the sha256 it was stored with, its last change id.
    pub batch_id: Option<String>,
    pub batch_sha256: Option<String>,
    pub last_change_id: Option<String>,
    pub change_count: i64,
    pub first_seen: String,
    pub last_seen: Option<String>,
}

const COLUMNS: &str = "id, name, public_key, trust, head_etag, batch_id, batch_sha256, last_change_id, change_count, first_seen, last_seen";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Peer> {
    Ok(Peer {
        id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        trust: Trust::parse(&r.get::<_, String>(3)?)?,
        head_etag: r.get(4)?,
        batch_id: r.get(5)?,
        batch_sha256: r.get(6)?,
        last_change_id: r.get(7)?,
        change_count: r.get(8)?,
        first_seen: r.get(9)?,
        last_seen: r.get(10)?,
    })
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Peer>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM ZV_REPLICA WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<Peer>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM ZV_REPLICA ORDER BY id"))?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT count(*) FROM ZV_REPLICA", [], |r| r.get(0))?)
}

/// Records that `id` is in the bucket (first sight or again).
pub fn seen(conn: &Connection, id: &str, now: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO ZV_REPLICA(id, first_seen, last_seen) VALUES (?1, ?2, ?2) ON CONFLICT DO UPDATE SET last_seen = ?2",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// Pins the key a replica's first verified head carries.
pub fn pin(conn: &Connection, id: &str, public_key: &str, name: &str) -> Result<()> {
    conn.execute("UPDATE ZV_REPLICA SET public_key = ?2, name = ?3 WHERE id = ?1", params![id, public_key, name])?;
    Ok(())
}

/// The head with `etag` is applied in full; `name` is the one it carries.
pub fn head_applied(conn: &Connection, id: &str, etag: &str, name: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE ZV_REPLICA SET head_etag = ?2, name = coalesce(?3, name) WHERE id = ?1",
        params![id, etag, name],
    )?;
    Ok(())
}

/// Moves the cursor past one applied batch; the caller's transaction also holds
/// the batch's changes, so the two commit together.
pub fn batch_applied(
    conn: &Connection,
    id: &str,
    batch_id: &str,
    sha256: &str,
    last_change_id: &str,
    changes: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE ZV_REPLICA SET batch_id = ?2, batch_sha256 = ?3, last_change_id = ?4, change_count = change_count + ?5 WHERE id = ?1",
        params![id, batch_id, sha256, last_change_id, changes],
    )?;
    Ok(())
}

/// Moves a replica's cursor forward to a snapshot's (a catch-up): the batches
/// before it are reflected by the snapshot. The head is read again next pull.
pub fn cursor_moved_to(
    conn: &Connection,
    id: &str,
    batch_id: Option<&str>,
    sha256: Option<&str>,
    last_change_id: &str,
    change_count: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE ZV_REPLICA SET batch_id = ?2, batch_sha256 = ?3, last_change_id = ?4,
                change_count = max(change_count, ?5), head_etag = NULL WHERE id = ?1",
        params![id, batch_id, sha256, last_change_id, change_count],
    )?;
    Ok(())
}

/// Adds a replica with a known key and cursor (a clone's snapshot, a fork's old id).
pub fn add(conn: &Connection, p: &Peer) -> Result<()> {
    conn.execute(
        &format!("INSERT INTO ZV_REPLICA({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            p.id,
            p.name,
            p.public_key,
            p.trust.as_str(),
            p.head_etag,
            p.batch_id,
            p.batch_sha256,
            p.last_change_id,
            p.change_count,
            p.first_seen,
            p.last_seen
        ],
    )?;
    Ok(())
}

/// Revokes `id`, recording it when it was never seen (an encrypted group's rekey
/// names members this replica may not have met yet).
pub fn revoke(conn: &Connection, id: &str, now: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO ZV_REPLICA(id, first_seen, trust) VALUES (?1, ?2, ?3) ON CONFLICT DO UPDATE SET trust = ?3",
        params![id, now, Trust::Revoked.as_str()],
    )?;
    Ok(())
}

/// Replicas whose verified heads are held by explicit trust mode.
pub fn waiting_for_trust(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT id FROM ZV_REPLICA WHERE trust = ?1 AND public_key IS NOT NULL ORDER BY id")?;
    let ids = stmt.query_map([Trust::Pinned.as_str()], |row| row.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// Replicas already applied under `pinned` become `trusted`; returns how many.
pub fn trust_applied(conn: &Connection) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE ZV_REPLICA SET trust = ?1 WHERE trust = ?2 AND batch_id IS NOT NULL",
        [Trust::Trusted.as_str(), Trust::Pinned.as_str()],
    )?)
}

/// Sets the trust of the one known replica whose id starts with `id` and returns
/// its full id. Unknown ids are refused rather than recorded, so a typo cannot
/// pre-authorise a replica nobody has seen.
pub fn set_trust(conn: &Connection, id: &str, trust: Trust) -> Result<String> {
    let mut stmt = conn.prepare("SELECT id FROM ZV_REPLICA WHERE substr(id, 1, length(?1)) = ?1")?;
    let ids: Vec<String> = stmt.query_map([id], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
    let full = match ids.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::Invalid(format!(
                "no replica {id:?} has been seen in the bucket yet; run `dimple pull` first (see `dimple replicas`)"
            )))
        }
        _ => return Err(Error::Invalid(format!("{id:?} matches {} replicas; give more of the id", ids.len()))),
    };
    conn.execute("UPDATE ZV_REPLICA SET trust = ?2 WHERE id = ?1", [&full, trust.as_str()])?;
    Ok(full)
}

/// Last change id applied per remote replica.
pub fn applied_through(conn: &Connection) -> Result<BTreeMap<String, String>> {
    let mut stmt = conn.prepare("SELECT id, last_change_id FROM ZV_REPLICA WHERE last_change_id IS NOT NULL")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Copies the cursors of every replica with a pinned key into a snapshot being
/// written (`main` is the snapshot, `src` the replica).
pub(crate) fn copy_to_snapshot(snapshot: &Connection) -> Result<()> {
    snapshot.execute_batch(
        "INSERT INTO main.ZV_CURSOR(replica, name, public_key, batch_id, batch_sha256, last_change_id, change_count)
           SELECT id, name, public_key, batch_id, batch_sha256, last_change_id, change_count
           FROM src.ZV_REPLICA WHERE public_key IS NOT NULL;",
    )?;
    Ok(())
}

/// Takes the cursors of a snapshot attached as `snap` (all but `me`'s own).
pub(crate) fn copy_from_snapshot(conn: &Connection, me: &str, now: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO main.ZV_REPLICA(id, name, public_key, batch_id, batch_sha256, last_change_id, change_count, first_seen, last_seen)
         SELECT replica, name, public_key, batch_id, batch_sha256, last_change_id, change_count, ?1, ?1 FROM snap.ZV_CURSOR WHERE replica <> ?2",
        [now, me],
    )?;
    Ok(())
}
