-- The change log a row per change: the form of snapshot format 1 (written by
-- builds before local schema version 6, still read: src/clone.rs) and of a
-- replica's own log at local schema versions 4 and 5 (which the upgrade to 6
-- converts: src/migrate.rs). A row of ZV_LOG per change, and the seed's tables
-- as views over it, which any SQLite client reads. Not written any more.
--
-- What makes it compact:
-- - ids are their 16 bytes (a BLOB), not 36 characters of text; bytewise order is
--   the order of the canonical text, so comparisons do not change;
-- - table and column names are numbers (ZV_NAME), authors are numbers (ZV_AUTHOR),
--   and a change names its transaction by number (ZV_TX);
-- - ZV_LOG is keyed by the cell first, so the changes of one (table, row, column)
--   lie side by side in id order and the winner is the last of them.

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

-- The complete merged change log, one row per change. Values are the exact
-- encodings of src/value.rs; attribute '*' is the row itself: new_value 'true' =
-- inserted, 'false' = deleted. Per (type_n, entity_id, attr_n) the change with the
-- greatest id wins, and for one id the greater author id text (two authors share
-- an id only when a member copied another's).
CREATE TABLE IF NOT EXISTS ZV_LOG (
    type_n INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    attr_n INTEGER NOT NULL,
    id BLOB NOT NULL,
    author_n INTEGER NOT NULL,
    tx_n INTEGER NOT NULL,
    old_value TEXT,
    new_value TEXT,
    PRIMARY KEY (type_n, entity_id, attr_n, id, author_n)
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

CREATE VIEW IF NOT EXISTS ZV_CHANGE
    (id, transaction_id, entity_type, entity_id, attribute, old_value, new_value, author_n) AS
    SELECT CASE WHEN typeof(l.id) = 'blob' THEN
             lower(substr(hex(l.id), 1, 8) || '-' || substr(hex(l.id), 9, 4) || '-' || substr(hex(l.id), 13, 4)
                   || '-' || substr(hex(l.id), 17, 4) || '-' || substr(hex(l.id), 21))
           ELSE l.id END,
           CASE WHEN typeof(x.id) = 'blob' THEN
             lower(substr(hex(x.id), 1, 8) || '-' || substr(hex(x.id), 9, 4) || '-' || substr(hex(x.id), 13, 4)
                   || '-' || substr(hex(x.id), 17, 4) || '-' || substr(hex(x.id), 21))
           ELSE x.id END,
           t.name, l.entity_id, c.name, l.old_value, l.new_value, l.author_n
    FROM ZV_LOG l JOIN ZV_NAME t ON t.n = l.type_n JOIN ZV_NAME c ON c.n = l.attr_n JOIN ZV_TX x ON x.n = l.tx_n;

-- The winning change per (entity, attribute).
CREATE VIEW IF NOT EXISTS ZV_CLOCK (entity_type, entity_id, attribute, change_id, author_n) AS
    SELECT t.name, l.entity_id, c.name,
           CASE WHEN typeof(l.id) = 'blob' THEN
             lower(substr(hex(l.id), 1, 8) || '-' || substr(hex(l.id), 9, 4) || '-' || substr(hex(l.id), 13, 4)
                   || '-' || substr(hex(l.id), 17, 4) || '-' || substr(hex(l.id), 21))
           ELSE l.id END,
           l.author_n
    FROM ZV_LOG l JOIN ZV_NAME t ON t.n = l.type_n JOIN ZV_NAME c ON c.n = l.attr_n
    WHERE NOT EXISTS (
        SELECT 1 FROM ZV_LOG g
        WHERE g.type_n = l.type_n AND g.entity_id = l.entity_id AND g.attr_n = l.attr_n AND g.id >= l.id
          AND (g.id > l.id OR (SELECT id FROM ZV_AUTHOR WHERE n = g.author_n) > (SELECT id FROM ZV_AUTHOR WHERE n = l.author_n)));
