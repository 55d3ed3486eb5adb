-- dimple's tables inside a replica. Applied by `dimple init` (idempotent).
-- The first three are the seed's (names and columns kept); the rest are dimple's own.

CREATE TABLE IF NOT EXISTS ZV_METADATA (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per transaction in the merged log, local or remote. author = replica id.
-- Ids are unique per author, not across the group: a member that reuses another
-- member's ids makes transactions and changes of its own, and can neither take the
-- other's ids away nor put words in its mouth (see docs/protocol.md, "Identity").
CREATE TABLE IF NOT EXISTS ZV_TRANSACTION (
    id TEXT NOT NULL,
    author TEXT NOT NULL,
    PRIMARY KEY (id, author)
) WITHOUT ROWID;

-- The complete merged change log. Values are the exact encodings of src/value.rs;
-- attribute '*' is the row itself: new_value 'true' = inserted, 'false' = deleted.
-- The seed's seven columns, then the author of the change's transaction: a change
-- is identified by (id, author), and the merge orders changes by (id, author).
-- WITHOUT ROWID: the key is the table, so each applied change is one b-tree insert.
CREATE TABLE IF NOT EXISTS ZV_CHANGE (
    id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    author TEXT NOT NULL,
    PRIMARY KEY (id, author),
    FOREIGN KEY (transaction_id, author) REFERENCES ZV_TRANSACTION(id, author)
) WITHOUT ROWID;

-- The winning change per (entity, attribute): the merge state, kept so that applying
-- a change costs one point lookup instead of a scan of the log.
CREATE TABLE IF NOT EXISTS ZV_CLOCK (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    change_id TEXT NOT NULL,
    author TEXT NOT NULL,
    PRIMARY KEY (entity_type, entity_id, attribute)
) WITHOUT ROWID;

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
