-- The views of the change log that read its records through `dimple_cells` and
-- `dimple_past`, table-valued functions dimple registers on its connections
-- (src/record/table.rs). A replica does not store them: SQLite checks every
-- view of a file when an app renames a table or a column, or drops a column,
-- and on the app's own connection, which lacks the functions, that check
-- failed for every table of the database. dimple creates them as TEMP views on
-- each of its connections, and `dimple::log::register` on an app's. A snapshot
-- file stores them, as it always has.

-- Every change, winners and history, one row each. `dimple_cells` is a
-- function dimple registers on its connections (src/record/mod.rs); another SQLite
-- client reads these views after `dimple::log::register` on its connection.
CREATE VIEW IF NOT EXISTS ZV_LOG (type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value) AS
    SELECT r.type_n, r.entity_id, c.attr_n, c.id, c.author_n, c.tx_n, c.old_value, c.new_value
    FROM ZV_ROW r, dimple_cells(r.cells) c
    UNION ALL
    SELECT r.type_n, r.entity_id, p.attr_n, p.id, p.author_n, p.tx_n, p.old_value, p.new_value
    FROM ZV_ROW r, dimple_past(r.cells) p
    UNION ALL
    SELECT type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value FROM ZV_HISTORY;

-- The seed's ZV_CHANGE and ZV_CLOCK, with their columns.
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
    SELECT t.name, r.entity_id, n.name,
           CASE WHEN typeof(c.id) = 'blob' THEN
             lower(substr(hex(c.id), 1, 8) || '-' || substr(hex(c.id), 9, 4) || '-' || substr(hex(c.id), 13, 4)
                   || '-' || substr(hex(c.id), 17, 4) || '-' || substr(hex(c.id), 21))
           ELSE c.id END,
           c.author_n
    FROM ZV_ROW r, dimple_cells(r.cells) c JOIN ZV_NAME t ON t.n = r.type_n JOIN ZV_NAME n ON n.n = c.attr_n;
