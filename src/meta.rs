//! dimple's own state in `ZV_METADATA`, one owner for its keys: the replica's
//! identity and settings as single values, and this replica's place in the bucket
//! as one typed [`PushState`] read and written whole.

use crate::error::{Error, Result};
use crate::sql::ident;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub fn get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM ZV_METADATA WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

pub fn set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO ZV_METADATA(key, value) VALUES (?1, ?2)")?.execute([key, value])?;
    Ok(())
}

pub fn delete(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM ZV_METADATA WHERE key = ?1")?.execute([key])?;
    Ok(())
}

/// `ZV_METADATA` key: the public key of the replica's current key pair, recorded by
/// a fork before the new key file is moved into place (see [`crate::fork`]).
pub const PUBLIC_KEY: &str = "public_key";

/// Where this replica's own chain stands in the bucket, as of its last completed push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushState {
    /// The greatest own change id in the bucket (`""` before the first push).
    pub through: String,
    /// The newest batch pushed and the sha256 of its stored bytes.
    pub batch_id: Option<String>,
    pub sha256: Option<String>,
    /// The ETag of the head we last wrote (the If-Match of the next head write).
    pub head_etag: Option<String>,
    pub batch_count: i64,
    pub change_count: i64,
    /// The head's list of recent batch ids.
    pub recent: Vec<String>,
}

const THROUGH: &str = "push.through";
const BATCH_ID: &str = "push.batch_id";
const SHA256: &str = "push.sha256";
const HEAD_ETAG: &str = "push.head_etag";
const BATCH_COUNT: &str = "push.batch_count";
const CHANGE_COUNT: &str = "push.change_count";
const RECENT: &str = "push.recent";
const INFLIGHT: &str = "push.inflight";
const DESCRIPTOR_PUBLISHED: &str = "descriptor.published";
const SNAPSHOT_PUBLISHED: &str = "snapshot.published";

impl PushState {
    pub fn load(conn: &Connection) -> Result<PushState> {
        PushState::load_in(conn, "main")
    }

    /// From the database attached as `schema` (a snapshot reads its source's).
    pub fn load_in(conn: &Connection, schema: &str) -> Result<PushState> {
        let sql = format!("SELECT key, value FROM {}.ZV_METADATA WHERE key GLOB 'push.*'", ident(schema));
        let mut st = PushState::default();
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (k, v): (String, String) = (r.get(0)?, r.get(1)?);
            let number = |v: &str| {
                v.parse::<i64>().map_err(|_| Error::Invalid(format!("ZV_METADATA {k} {v:?} is not a number")))
            };
            match k.as_str() {
                THROUGH => st.through = v,
                BATCH_ID => st.batch_id = Some(v),
                SHA256 => st.sha256 = Some(v),
                HEAD_ETAG => st.head_etag = Some(v),
                BATCH_COUNT => st.batch_count = number(&v)?,
                CHANGE_COUNT => st.change_count = number(&v)?,
                RECENT => st.recent = serde_json::from_str(&v).unwrap_or_default(),
                _ => {}
            }
        }
        Ok(st)
    }

    /// Writes every field; the caller holds the write transaction.
    /// Saves the state; the changes through `through` leave the outbox with it.
    pub fn save(&self, conn: &Connection) -> Result<()> {
        set(conn, THROUGH, &self.through)?;
        crate::outbox::pushed(conn, &self.through)?;
        for (k, v) in [(BATCH_ID, &self.batch_id), (SHA256, &self.sha256), (HEAD_ETAG, &self.head_etag)] {
            match v {
                Some(v) => set(conn, k, v)?,
                None => delete(conn, k)?,
            }
        }
        set(conn, BATCH_COUNT, &self.batch_count.to_string())?;
        set(conn, CHANGE_COUNT, &self.change_count.to_string())?;
        set(conn, RECENT, &serde_json::to_string(&self.recent).expect("strings serialize"))
    }

    /// Forgets the bucket state of this identity (a fork starts a new chain): push
    /// state, in-flight push, and the published descriptor.
    pub fn forget(conn: &Connection) -> Result<()> {
        for k in [
            THROUGH,
            BATCH_ID,
            SHA256,
            HEAD_ETAG,
            BATCH_COUNT,
            CHANGE_COUNT,
            RECENT,
            INFLIGHT,
            DESCRIPTOR_PUBLISHED,
            SNAPSHOT_PUBLISHED,
        ] {
            delete(conn, k)?;
        }
        Ok(())
    }
}

/// A push saved before it is uploaded, so a crash or a timeout at any point is
/// finished by the next push with the very same bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inflight {
    pub batch_id: String,
    pub sha256: String,
    /// The last change id the batch holds.
    pub through: String,
    pub changes: usize,
    pub batch_count: i64,
    pub change_count: i64,
    /// The signed head, as it is uploaded.
    pub head: String,
}

impl Inflight {
    pub fn load(conn: &Connection) -> Result<Option<Inflight>> {
        get(conn, INFLIGHT)?
            .map(|j| serde_json::from_str(&j).map_err(|e| Error::Invalid(format!("corrupt {INFLIGHT}: {e}"))))
            .transpose()
    }

    pub fn save(&self, conn: &Connection) -> Result<()> {
        set(conn, INFLIGHT, &serde_json::to_string(self).expect("serializes"))
    }

    pub fn clear(conn: &Connection) -> Result<()> {
        delete(conn, INFLIGHT)
    }
}

/// When the descriptor was published (None: never, the next push publishes it).
pub fn descriptor_published(conn: &Connection) -> Result<Option<String>> {
    get(conn, DESCRIPTOR_PUBLISHED)
}

pub fn set_descriptor_published(conn: &Connection, at: &str) -> Result<()> {
    set(conn, DESCRIPTOR_PUBLISHED, at)
}

/// The id of the last snapshot this very database pointed LATEST.json at. A copy
/// of the database (a restored backup, a cloned disk) shares the replica id but
/// not necessarily this record: only a copy made after that publish holds it,
/// and its cursors are then at least the snapshot's.
pub fn snapshot_published(conn: &Connection) -> Result<Option<String>> {
    get(conn, SNAPSHOT_PUBLISHED)
}

pub fn set_snapshot_published(conn: &Connection, snapshot_id: &str) -> Result<()> {
    set(conn, SNAPSHOT_PUBLISHED, snapshot_id)
}
