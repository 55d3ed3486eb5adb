//! Refused input from the bucket, kept until its cause goes away.

use crate::error::Result;
use rusqlite::{params, Connection};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub replica: String,
    pub object_key: String,
    pub reason: String,
    pub first_at: String,
    pub last_at: String,
    pub count: i64,
}

pub fn record(conn: &Connection, replica: &str, object_key: &str, reason: &str, now: &str) -> Result<()> {
    tracing::warn!(%replica, %object_key, %reason, "refused input from the bucket");
    upsert(conn, replica, object_key, reason, now)
}

fn upsert(conn: &Connection, replica: &str, object_key: &str, reason: &str, now: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO ZV_PROBLEM(replica, object_key, reason, first_at, last_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT(replica, object_key, reason) DO UPDATE SET last_at = excluded.last_at, count = count + 1",
        params![replica, object_key, reason, now],
    )?;
    Ok(())
}

/// A problem with this replica's own data (rows that cannot sync), which no pull
/// clears: the code that found it clears it once its cause is gone.
pub fn record_local(conn: &Connection, me: &str, origin: &str, reason: &str, now: &str) -> Result<()> {
    tracing::warn!(%origin, %reason, "local rows cannot sync");
    upsert(conn, me, origin, reason, now)
}

/// Clears what [`record_local`] recorded from `origin`, once its cause is gone.
pub fn clear_local(conn: &Connection, me: &str, origin: &str) -> Result<()> {
    conn.execute("DELETE FROM ZV_PROBLEM WHERE replica = ?1 AND object_key = ?2", [me, origin])?;
    Ok(())
}

/// The replicas that have problems now.
pub fn replicas(conn: &Connection) -> Result<std::collections::BTreeSet<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT replica FROM ZV_PROBLEM")?;
    let ids = stmt.query_map([], |r| r.get(0))?;
    Ok(ids.collect::<rusqlite::Result<_>>()?)
}

/// A replica that synced cleanly has no problems left.
pub fn clear(conn: &Connection, replica: &str) -> Result<()> {
    conn.execute("DELETE FROM ZV_PROBLEM WHERE replica = ?1", [replica])?;
    Ok(())
}

pub fn list(conn: &Connection) -> Result<Vec<Problem>> {
    let mut stmt = conn.prepare(
        "SELECT replica, object_key, reason, first_at, last_at, count FROM ZV_PROBLEM ORDER BY last_at DESC, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Problem {
            replica: r.get(0)?,
            object_key: r.get(1)?,
            reason: r.get(2)?,
            first_at: r.get(3)?,
            last_at: r.get(4)?,
            count: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
