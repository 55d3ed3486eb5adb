-- One snapshot file (snapshots/<snapshot_id>.db): the state of a replica's tracked
-- tables plus what a new replica needs to go on merging from there. The tracked
-- tables themselves are stored under their own names, created by ZV_SCHEMA.sql.

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

-- The merge state: the winning change per (entity, attribute) and those changes
-- (losers are left out: they can never win again).
-- Changes are identified by (id, author), as in the local log (schema/local.sql).
-- Snapshots written before the author columns existed have none: readers then take
-- the author from ZV_TRANSACTION (ids were unique across the group there).
CREATE TABLE ZV_CLOCK (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    change_id TEXT NOT NULL,
    author TEXT NOT NULL,
    PRIMARY KEY (entity_type, entity_id, attribute)
) WITHOUT ROWID;

CREATE TABLE ZV_TRANSACTION (
    id TEXT NOT NULL,
    author TEXT NOT NULL,
    PRIMARY KEY (id, author)
) WITHOUT ROWID;

CREATE TABLE ZV_CHANGE (
    id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    author TEXT NOT NULL,
    PRIMARY KEY (id, author)
) WITHOUT ROWID;
