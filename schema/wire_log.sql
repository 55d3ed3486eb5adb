-- The change log in its text form: ids and names as text, one row per change. A
-- replica kept these tables up to local schema version 3, and snapshots carried
-- them until then; both are still read (upgraded on open, converted on clone).
-- Since version 4 replicas and snapshots keep the compact form of log.sql, whose
-- views show these same columns. A batch file carries the seed's form of
-- ZV_TRANSACTION and ZV_CHANGE (batch.sql).

-- Every author (replica id) the log holds, numbered in this file only: changes and
-- the clock name their author by number, a byte or two instead of 36. The merge
-- orders authors by their id text, never by these numbers.
CREATE TABLE IF NOT EXISTS ZV_AUTHOR (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE
);

-- One row per transaction in the merged log, local or remote. author = replica id.
-- Ids are unique per author, not across the group: a member that reuses another
-- member's ids makes transactions and changes of its own, and can neither take the
-- other's ids away nor put words in its mouth (docs/protocol.md, "Ids").
CREATE TABLE IF NOT EXISTS ZV_TRANSACTION (
    id TEXT NOT NULL,
    author TEXT NOT NULL,
    PRIMARY KEY (id, author)
) WITHOUT ROWID;

-- The complete merged change log. Values are the exact encodings of src/value.rs;
-- attribute '*' is the row itself: new_value 'true' = inserted, 'false' = deleted.
-- The seed's seven columns, then the author of the change's transaction (its
-- ZV_AUTHOR number): a change is identified by (id, author), and the merge orders
-- changes by id, then by author id. WITHOUT ROWID: the key is the table, so each
-- applied change is one b-tree insert.
CREATE TABLE IF NOT EXISTS ZV_CHANGE (
    id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    author_n INTEGER NOT NULL REFERENCES ZV_AUTHOR(n),
    PRIMARY KEY (id, author_n)
) WITHOUT ROWID;

-- The winning change per (entity, attribute): the merge state, kept so that applying
-- a change costs one point lookup instead of a scan of the log.
CREATE TABLE IF NOT EXISTS ZV_CLOCK (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    attribute TEXT NOT NULL,
    change_id TEXT NOT NULL,
    author_n INTEGER NOT NULL,
    PRIMARY KEY (entity_type, entity_id, attribute)
) WITHOUT ROWID;
