-- One snapshot file (snapshots/<snapshot_id>.db): the state of a replica's tracked
-- tables plus what a new replica needs to go on merging from there. The tracked
-- tables themselves are stored under their own names, created by ZV_SCHEMA.sql.
-- Applied after log.sql.

CREATE TABLE ZV_SNAPSHOT (
    format INTEGER NOT NULL,
    snapshot_id TEXT NOT NULL,
    source_replica TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- The CREATE TABLE statement of each tracked table, as the source had it.
CREATE TABLE ZV_SCHEMA (
    tbl TEXT NOT NULL PRIMARY KEY,
    sql TEXT NOT NULL
);

-- Per author replica: the last batch whose changes the snapshot reflects. A clone
-- starts its cursors here, so its pull fetches only the batches after them.
CREATE TABLE ZV_CURSOR (
    replica TEXT NOT NULL PRIMARY KEY,
    name TEXT,
    public_key TEXT,
    batch_id TEXT,
    batch_sha256 TEXT,
    last_change_id TEXT,
    change_count INTEGER NOT NULL DEFAULT 0
);

-- The merge state follows, from log.sql: ZV_CLOCK (the winning change per
-- (entity, attribute)), ZV_CHANGE and ZV_TRANSACTION (those changes and their
-- transactions; losers can never win again and are left out). Snapshots written
-- before the author columns existed have none: readers then take the author from
-- ZV_TRANSACTION (ids were unique across the group there).
