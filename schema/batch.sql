-- One batch file: consecutive transactions of one replica, immutable once uploaded.
-- The seed's ZV_TRANSACTION and ZV_CHANGE, plus a one-row header that links the
-- batch to its predecessor (the hash chain that the signed head ends).

CREATE TABLE ZV_BATCH (
    format INTEGER NOT NULL,
    replica TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    prev_batch_id TEXT,
    prev_sha256 TEXT,
    first_change_id TEXT NOT NULL,
    last_change_id TEXT NOT NULL,
    transaction_count INTEGER NOT NULL,
    change_count INTEGER NOT NULL
);

CREATE TABLE ZV_TRANSACTION (
    id TEXT NOT NULL PRIMARY KEY,
    author TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE ZV_CHANGE (
    id TEXT NOT NULL PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT
) WITHOUT ROWID;
