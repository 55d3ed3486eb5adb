-- The change log as a replica keeps it (local schema version 10), applied by `init`
-- before local.sql. The seed's ZV_TRANSACTION (below), ZV_CHANGE and ZV_CLOCK
-- (log_views.sql: TEMP views on dimple's connections) are views over it with
-- their columns; dimple itself reads and writes these tables
-- (src/log/). A snapshot carries the log in this same form (snapshot format 4;
-- snapshot_log.sql is format 1's, a row per change), a batch in the seed's form
-- of batch.sql.
--
-- What makes it compact:
-- - ids are their 16 bytes (a BLOB), not 36 characters of text; bytewise order is
--   the order of the canonical text, so comparisons do not change;
-- - table and column names are numbers (ZV_NAME), authors are numbers (ZV_AUTHOR),
--   and a change names its transaction by number (ZV_TX);
-- - a table row's winning changes are one record (ZV_ROW) holding the row key
--   once, each id after the first as a difference of a few bytes: the winner of a
--   cell is found with one seek, and a new row is one insert, not one per cell;
-- - a record also keeps, after its cells, up to 16 of the changes superseded in
--   its row (its past): a few bytes each where a history row repeats the row
--   key and a 16-byte id;
-- - a change with the author and transaction numbers of the change before it
--   in its record leaves them out, and an update its old value when the
--   record's past keeps it (record form 3);
-- - there is no separate clock: the records are the clock.

-- Every author (replica id) the log holds, numbered in this file only. The merge
-- orders authors by their id text, never by these numbers.
CREATE TABLE IF NOT EXISTS ZV_AUTHOR (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE
);

-- Table and column names the log holds.
CREATE TABLE IF NOT EXISTS ZV_NAME (
    n INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

-- One row per transaction, local or remote. id: 16 bytes when it is a canonical
-- UUID (always, for transactions dimple makes), its text otherwise. Ids are unique
-- per author, not across the group (docs/protocol.md, "Ids").
CREATE TABLE IF NOT EXISTS ZV_TX (
    n INTEGER PRIMARY KEY,
    id NOT NULL,
    author_n INTEGER NOT NULL,
    UNIQUE (id, author_n)
);

-- The change log, per table row: `cells` holds the winning change of each of
-- the row's cells (attribute '*' is the row itself: new_value 'true' =
-- inserted, 'false' = deleted; the others are its columns), then its past (the
-- changes superseded there that it keeps), in the binary form of
-- src/record/mod.rs: attribute number, id, author and transaction numbers, old and
-- new value. Values are the exact encodings of src/value.rs. Per (type_n,
-- entity_id, attr_n) the change with the greatest id wins, and for one id the
-- greater author id text (two authors share an id only when a member copied
-- another's).
CREATE TABLE IF NOT EXISTS ZV_ROW (
    type_n INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    cells BLOB NOT NULL,
    PRIMARY KEY (type_n, entity_id)
) WITHOUT ROWID;

-- Every change that is not its cell's winner (superseded) and that its row's
-- record does not keep, one row per change: the history, which retention
-- prunes (src/retention.rs) and merging never reads except to see a repeat. Keyed by id first: ids grow with time, so a change
-- superseded now lands at the end of the table (a pull of updates to rows all
-- over the log writes to a few hot pages, not one cold page per change), and
-- pruning what is older than a horizon removes the front.
CREATE TABLE IF NOT EXISTS ZV_HISTORY (
    type_n INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    attr_n INTEGER NOT NULL,
    id BLOB NOT NULL,
    author_n INTEGER NOT NULL,
    tx_n INTEGER NOT NULL,
    old_value TEXT,
    new_value TEXT,
    PRIMARY KEY (id, author_n, type_n, entity_id, attr_n)
) WITHOUT ROWID;

-- This replica's own changes not pushed yet, whole, in packets of up to 4096
-- consecutive changes (zstd-compressed; the form is src/outbox.rs's): what the
-- next push sends, without a second index of every change. A packet goes once the
-- push that carries its last change is complete.
CREATE TABLE IF NOT EXISTS ZV_OUTBOX (
    n INTEGER PRIMARY KEY,
    first_id BLOB NOT NULL,
    last_id BLOB NOT NULL,
    changes INTEGER NOT NULL,
    packed BLOB NOT NULL
);

-- The seed's tables, as views with their columns (ids as canonical text; an id kept
-- as text, which only a transaction id from a batch can be, as it is).
CREATE VIEW IF NOT EXISTS ZV_TRANSACTION (id, author) AS
    SELECT CASE WHEN typeof(x.id) = 'blob' THEN
             lower(substr(hex(x.id), 1, 8) || '-' || substr(hex(x.id), 9, 4) || '-' || substr(hex(x.id), 13, 4)
                   || '-' || substr(hex(x.id), 17, 4) || '-' || substr(hex(x.id), 21))
           ELSE x.id END,
           a.id
    FROM ZV_TX x JOIN ZV_AUTHOR a ON a.n = x.author_n;
