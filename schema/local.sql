-- dimple's tables inside a replica. Applied by `dimple init` (idempotent), after
-- log.sql. ZV_METADATA and the log tables are the seed's (names and columns kept,
-- columns added); the rest are dimple's own.

CREATE TABLE IF NOT EXISTS ZV_METADATA (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- The change log (ZV_TRANSACTION, ZV_CHANGE, ZV_CLOCK) is defined in log.sql,
-- applied before this file; snapshots hold the same tables.

-- Writes captured by triggers wait for ids in one table per tracked table,
-- ZV_PENDING_<table> (created by `track`, see src/track.rs): triggers may run in
-- connections that never loaded dimple, so they only copy raw OLD/NEW values there.

-- Tables whose writes are captured; columns as JSON arrays of names.
CREATE TABLE IF NOT EXISTS ZV_TRACKED (
    tbl TEXT NOT NULL PRIMARY KEY,
    key_columns TEXT NOT NULL,
    columns TEXT NOT NULL,
    tracked_at TEXT NOT NULL
);

-- Every other replica seen in the bucket, its pinned key and how far we applied it.
CREATE TABLE IF NOT EXISTS ZV_REPLICA (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT,
    public_key TEXT,
    trust TEXT NOT NULL DEFAULT 'pinned',
    head_etag TEXT,
    batch_id TEXT,
    batch_sha256 TEXT,
    last_change_id TEXT,
    change_count INTEGER NOT NULL DEFAULT 0,
    first_seen TEXT NOT NULL,
    last_seen TEXT
);

-- Input refused from the bucket, one row per (replica, object, reason).
CREATE TABLE IF NOT EXISTS ZV_PROBLEM (
    id INTEGER PRIMARY KEY,
    replica TEXT NOT NULL,
    object_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    UNIQUE (replica, object_key, reason)
);

-- Values stored out of line (docs/attachments.md) that this replica's rows lack:
-- a lazy replica's, or ones whose bytes could not be fetched yet. The row holds
-- NULL meanwhile; ref is the value's reference as the log holds it. An entry whose
-- ref is no longer the cell's winner waits for nothing and is ignored.
CREATE TABLE IF NOT EXISTS ZV_BLOB_MISSING (
    tbl TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    ref TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (tbl, entity_id, attribute)
) WITHOUT ROWID;
