//! `dimple verify`: is what the tables hold what the change log says, and does this
//! replica hold what the others hold? (Seed 003's "CRC to detect divergence".)
//!
//! 1. Local: each tracked table is recomputed from `ZV_CHANGE` alone (per
//!    (entity, attribute) the greatest id wins; a row exists iff its `*` winner is
//!    `true`) and compared with the stored rows. A write made behind dimple's back
//!    (triggers off, dropped and re-created) shows up as a missing row, an extra row
//!    or a differing column. `--repair` writes the log's truth back through the
//!    trigger-less connection, so the repair is not captured as a new local change.
//!    Columns no change ever wrote (a default added by ALTER TABLE) are not judged.
//! 2. Across replicas: an order-independent digest per table (XOR of the sha256 of
//!    each row's canonical encoding) together with the cursor vector it reflects
//!    (last change id applied per author, own included) is published to
//!    `digests/<replica>.json`. Digests are compared only with replicas whose vector
//!    is identical: same changes, so the same tables, or divergence.

use crate::error::{Error, Result};
use crate::layout;
use crate::merge::{entity_id_of, key_values, ALIVE};
use crate::replica::Replica;
use crate::sql::ident;
use crate::store::{get_bytes, list_all, PutMode, Store, StoreError};
use crate::track::{self, affinity, Affinity, TableInfo, ROW};
use crate::value::{self, Cell};
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// One way a stored row differs from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    MissingRow {
        table: String,
        entity_id: String,
    },
    ExtraRow {
        table: String,
        entity_id: String,
    },
    Column {
        table: String,
        entity_id: String,
        column: String,
        expected: String,
        found: String,
    },
    /// A row whose key is NULL, a blob, or not of its column's type: it cannot sync
    /// (and `--repair` cannot fix it: the app must give it a proper key).
    KeyCannotSync {
        table: String,
        key: String,
    },
    /// A table tracked before `track` refused keys that compare by a collation
    /// other than BINARY: two keys that differ only in what the collation
    /// ignores are one row here and two in the group, and replicas that wrote
    /// both keep different rows. Only the app can fix it (a BINARY key).
    KeyCollation {
        table: String,
        column: String,
        collation: String,
    },
    /// A row whose foreign key names no parent (SQLite's `foreign_key_check`):
    /// per-row last-writer-wins can leave an orphan when one replica deletes a
    /// parent while another adds a child (see the merge rules).
    ForeignKey {
        table: String,
        rowid: Option<i64>,
        parent: String,
    },
    /// The outbox does not hold exactly this replica's changes after the push
    /// cursor: the next push would leave some behind (or send some twice).
    /// `--repair` rebuilds it from the log.
    Outbox {
        in_log: i64,
        waiting: i64,
    },
    /// The log's record of a row cannot be read (a damaged file): its winners
    /// are lost locally, so nothing else is compared until it is dealt with, and
    /// `--repair` cannot rebuild it (a clone from the bucket can).
    DamagedRecord {
        table: String,
        entity_id: String,
    },
}

impl Difference {
    /// Whether `--repair` can fix it from the log (a bad key or an orphan needs the app).
    pub fn repairable(&self) -> bool {
        matches!(
            self,
            Difference::MissingRow { .. }
                | Difference::ExtraRow { .. }
                | Difference::Column { .. }
                | Difference::Outbox { .. }
        )
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::MissingRow { table, entity_id } => {
                write!(f, "{table}/{entity_id}: missing row (the log has it alive)")
            }
            Difference::ExtraRow { table, entity_id } => {
                write!(f, "{table}/{entity_id}: extra row (the log has it deleted or never inserted)")
            }
            Difference::Column { table, entity_id, column, expected, found } => {
                write!(f, "{table}/{entity_id}: column {column} is {found}, the log says {expected}")
            }
            Difference::KeyCannotSync { table, key } => {
                write!(f, "{table}: a row whose key ({key}) cannot sync: NULL, a blob, text that is not UTF-8, or not of the key's type")
            }
            Difference::KeyCollation { table, column, collation } => write!(
                f,
                "{}; untrack {table} and give it a key without a collation",
                track::key_collation_risk(table, column, collation)
            ),
            Difference::ForeignKey { table, rowid, parent } => match rowid {
                Some(rowid) => write!(f, "{table} (rowid {rowid}): foreign key names no row of {parent}"),
                None => write!(f, "{table}: a row's foreign key names no row of {parent}"),
            },
            Difference::Outbox { in_log, waiting } => write!(
                f,
                "the outbox holds {waiting} changes for the next push, but the log has {in_log} of this replica's after the push cursor"
            ),
            Difference::DamagedRecord { table, entity_id } => write!(
                f,
                "{table}/{entity_id}: the log's record of this row is damaged; clone the replica again from the bucket"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    pub rows: u64,
    pub sha256: String,
}

/// What a replica publishes to `digests/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub format: i64,
    pub replica: String,
    pub name: String,
    /// Author replica id -> last change id of it reflected in `tables`.
    pub cursors: BTreeMap<String, String>,
    pub tables: BTreeMap<String, TableDigest>,
    pub computed_at: String,
}

/// How this replica compares with one other replica's published digest.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub replica: String,
    pub name: String,
    pub verdict: Verdict,
    /// Tables whose digests differ (when comparable).
    pub tables: Vec<String>,
}

/// The outcome of comparing digests with another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Same cursors and the same tables.
    #[serde(rename = "same")]
    Same,
    /// Same cursors, different tables: divergence.
    #[serde(rename = "different")]
    Different,
    /// The two hold different changes, so their tables may differ legitimately.
    #[serde(rename = "not comparable (different cursors)")]
    NotComparable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Different => "different",
            Verdict::NotComparable => "not comparable (different cursors)",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Verdict {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The log's view of one table: entity id -> attribute -> winning encoded value.
type Winners = BTreeMap<String, HashMap<String, Option<String>>>;

fn winners(conn: &Connection, table: &str) -> Result<Winners> {
    // SQLite takes the bare columns from the row holding the max: the merge order
    // is id, then author id, and ids are fixed-length canonical text, so
    // `id || author id` sorts the same way.
    let mut stmt = conn.prepare(
        "SELECT c.entity_id, c.attribute, c.new_value, max(c.id || a.id) FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n
         WHERE c.entity_type = ?1 GROUP BY c.entity_id, c.attribute",
    )?;
    let mut rows = stmt.query([table])?;
    let mut out = Winners::new();
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_default().insert(r.get(1)?, r.get(2)?);
    }
    Ok(out)
}

/// Stored rows: entity id -> column -> value, for non-key columns.
fn stored(conn: &Connection, info: &TableInfo) -> Result<BTreeMap<String, Vec<Cell>>> {
    let mut cols = vec![track::captured_key(info, "r")];
    cols.extend(info.columns.iter().map(|c| format!("r.{}", ident(c))));
    let sql = format!("SELECT {} FROM {} AS r", cols.join(", "), ident(&info.name));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let Some(id) = entity_id_of(r.get_ref(0)?) else { continue };
        let vals = (1..=info.columns.len()).map(|i| r.get::<_, Cell>(i)).collect::<rusqlite::Result<_>>()?;
        out.insert(id, vals);
    }
    Ok(out)
}

fn affinities(conn: &Connection, table: &str) -> Result<HashMap<String, Affinity>> {
    let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1)")?;
    let rows = stmt.query_map([table], |r| Ok((r.get::<_, String>(0)?, affinity(&r.get::<_, String>(1)?))))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The value a column of `aff` would hold after storing `v` (SQLite converts on
/// write), computed by SQLite itself in a scratch table.
fn coerce(conn: &Connection, aff: Affinity, v: &Cell) -> Result<Cell> {
    let decl = match aff {
        Affinity::Integer => "INTEGER",
        Affinity::Text => "TEXT",
        Affinity::Real => "REAL",
        Affinity::Numeric => "NUMERIC",
        Affinity::Blob => "",
    };
    let name = format!("zv_verify_{}", if decl.is_empty() { "none" } else { decl });
    conn.execute_batch(&format!("CREATE TEMP TABLE IF NOT EXISTS {name}(v {decl})"))?;
    conn.execute(&format!("DELETE FROM temp.{name}"), [])?;
    conn.execute(&format!("INSERT INTO temp.{name}(v) VALUES (?1)"), [v])?;
    Ok(conn.query_row(&format!("SELECT v FROM temp.{name}"), [], |r| r.get(0))?)
}

fn decode(s: Option<&str>) -> Result<Cell> {
    s.map(|s| value::decode(s).map_err(|e| Error::bad("change log", e))).transpose().map(|v| v.unwrap_or(Cell::Null))
}

/// Whether `found` is the value `r` refers to (same storage class, size and
/// sha256), or NULL where the value is known to be missing here.
fn holds(conn: &Connection, cell: (&str, &str, &str), r: &value::Ref, found: &Cell) -> Result<bool> {
    let bytes = match found {
        Cell::Blob(b) if !r.text => b.as_slice(),
        Cell::Text(t) if r.text => t.as_slice(),
        Cell::Null => {
            let marked: bool = conn.query_row(
                "SELECT count(*) > 0 FROM ZV_BLOB_MISSING WHERE tbl = ?1 AND entity_id = ?2 AND attribute = ?3 AND ref = ?4",
                rusqlite::params![cell.0, cell.1, cell.2, r.encode()],
                |row| row.get(0),
            )?;
            return Ok(marked);
        }
        _ => return Ok(false),
    };
    Ok(bytes.len() as u64 == r.size && crate::hash::sha256_hex(bytes) == r.sha256)
}

/// A found value as a difference shows it: large ones by size and hash.
fn shown(v: &Cell) -> String {
    match v {
        Cell::Blob(b) if b.len() > 1024 => format!("<{} bytes, sha256 {}>", b.len(), crate::hash::sha256_hex(b)),
        Cell::Text(t) if t.len() > 1024 => {
            format!("<{} bytes of text, sha256 {}>", t.len(), crate::hash::sha256_hex(t))
        }
        v => value::encode_ref(v.as_ref()),
    }
}

/// Compares every tracked table with the log.
pub fn check(r: &mut Replica) -> Result<Vec<Difference>> {
    r.capture()?;
    let conn = &r.sync;
    let me = r.id().to_owned();
    conn.execute_batch("BEGIN")?;
    let out = crate::log::damaged_records(conn).and_then(|damaged| {
        // Every other comparison reads the records: they would stop at the first.
        if !damaged.is_empty() {
            return Ok(damaged
                .into_iter()
                .map(|(table, entity_id)| Difference::DamagedRecord { table, entity_id })
                .collect());
        }
        let mut out = check_all(conn)?;
        out.extend(outbox(conn, &me)?);
        Ok(out)
    });
    conn.execute_batch("COMMIT")?;
    out
}

/// Whether the outbox holds as many changes as the log has of this replica's
/// after the push cursor, in packets that can be read (no write left behind by
/// the next push).
fn outbox(conn: &Connection, me: &str) -> Result<Option<Difference>> {
    let through = crate::meta::PushState::load(conn)?.through;
    let in_log = crate::log::count_by_after(conn, me, &crate::outbox::after_value(&through))?;
    let waiting = crate::outbox::readable_count(conn, &through)?;
    Ok((in_log != waiting).then_some(Difference::Outbox { in_log, waiting }))
}

fn check_all(conn: &Connection) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    for table in track::tracked_names(conn)? {
        let Some(info) = track::inspect(conn, &table)? else { continue };
        if let Some((column, collation)) = track::key_collation(conn, &table)? {
            out.push(Difference::KeyCollation { table: table.clone(), column, collation });
        }
        out.extend(unsyncable_keys(conn, &info)?);
        out.extend(orphans(conn, &table)?);
        let log = winners(conn, &table)?;
        let rows = stored(conn, &info)?;
        let affs = affinities(conn, &table)?;
        let ids: std::collections::BTreeSet<&String> = log.keys().chain(rows.keys()).collect();
        for id in ids {
            let w = log.get(id);
            let alive = w.and_then(|w| w.get(ROW)).is_some_and(|v| v.as_deref() == Some(ALIVE));
            let (table, entity_id) = (table.clone(), id.clone());
            match (alive, rows.get(id)) {
                (true, None) => out.push(Difference::MissingRow { table, entity_id }),
                (false, Some(_)) => out.push(Difference::ExtraRow { table, entity_id }),
                (false, None) => {}
                (true, Some(vals)) => {
                    let w = w.expect("alive implies winners");
                    for (col, found) in info.columns.iter().zip(vals) {
                        let Some(enc) = w.get(col) else { continue };
                        if let Some(r) = crate::blob::reference(enc.as_deref()) {
                            if !holds(conn, (&table, &entity_id, col), &r, found)? {
                                out.push(Difference::Column {
                                    table: table.clone(),
                                    entity_id: entity_id.clone(),
                                    column: col.clone(),
                                    expected: r.encode(),
                                    found: shown(found),
                                });
                            }
                            continue;
                        }
                        let want = decode(enc.as_deref())?;
                        let same = want == *found
                            || coerce(conn, affs.get(col).copied().unwrap_or(Affinity::Blob), &want)? == *found;
                        if !same {
                            out.push(Difference::Column {
                                table: table.clone(),
                                entity_id: entity_id.clone(),
                                column: col.clone(),
                                expected: value::encode_ref(want.as_ref()),
                                found: shown(found),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn unsyncable_keys(conn: &Connection, info: &TableInfo) -> Result<Vec<Difference>> {
    Ok(track::unsyncable_keys(conn, info)?
        .into_iter()
        .map(|key| Difference::KeyCannotSync { table: info.name.clone(), key })
        .collect())
}

/// SQLite's own foreign-key check of one table (whatever `PRAGMA foreign_keys` says).
fn orphans(conn: &Connection, table: &str) -> Result<Vec<Difference>> {
    let mut stmt = conn.prepare("SELECT rowid, \"parent\" FROM pragma_foreign_key_check(?1)")?;
    let rows = stmt.query_map([table], |r| {
        Ok(Difference::ForeignKey { table: table.to_owned(), rowid: r.get(0)?, parent: r.get(1)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Writes the log's truth over `diffs` on the trigger-less connection (not captured).
/// Returns how many rows were rewritten.
pub fn repair(r: &mut Replica, diffs: &[Difference]) -> Result<usize> {
    let now = crate::clock::rfc3339(r.hlc.now_ms());
    let me = r.id().to_owned();
    let tx = r.sync.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done = std::collections::BTreeSet::new();
    if diffs.iter().any(|d| matches!(d, Difference::Outbox { .. })) {
        let through = crate::meta::PushState::load(&tx)?.through;
        crate::outbox::rebuild(&tx, &me, &through)?;
    }
    for d in diffs {
        let (Difference::MissingRow { table, entity_id }
        | Difference::ExtraRow { table, entity_id }
        | Difference::Column { table, entity_id, .. }) = d
        else {
            continue; // only the app can fix a key or an orphan
        };
        if !done.insert((table.clone(), entity_id.clone())) {
            continue;
        }
        let Some(info) = track::inspect(&tx, table)? else { continue };
        let key = key_values(&info, entity_id)?;
        let key_where = info
            .key_columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", ident(c), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        tx.execute(&format!("DELETE FROM {} WHERE {key_where}", ident(table)), rusqlite::params_from_iter(&key))?;
        if matches!(d, Difference::ExtraRow { .. }) {
            continue;
        }
        // Re-insert from the log's winners (columns never written keep their default).
        let mut stmt = tx.prepare(
            "SELECT c.attribute, c.new_value, max(c.id || a.id) FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n
             WHERE c.entity_type = ?1 AND c.entity_id = ?2 GROUP BY c.attribute",
        )?;
        let w: HashMap<String, Option<String>> =
            stmt.query_map([table, entity_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut names: Vec<String> = info.key_columns.iter().map(|c| ident(c)).collect();
        let mut vals: Vec<Cell> = key.iter().cloned().map(Cell::from).collect();
        for c in &info.columns {
            if let Some(v) = w.get(c) {
                names.push(ident(c));
                // A value stored out of line is NULL until the next fetch brings it
                // back from the bucket (its bytes were only in this row).
                if let Some(rf) = crate::blob::reference(v.as_deref()) {
                    crate::blob::mark_missing(&tx, table, entity_id, c, &rf, &now)?;
                    vals.push(Cell::Null);
                    continue;
                }
                vals.push(decode(v.as_deref())?);
            }
        }
        let ph = (1..=vals.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        tx.execute(
            &format!("INSERT INTO {} ({}) VALUES ({ph})", ident(table), names.join(", ")),
            rusqlite::params_from_iter(&vals),
        )?;
    }
    tx.commit()?;
    Ok(done.len())
}

/// Per tracked table: row count and the XOR of sha256(canonical row) over its rows.
/// A row's canonical encoding: entity id, then `column=value` for its non-key
/// columns sorted by name, each line ended by `\n`, values in [`value::encode`].
pub fn digests(conn: &Connection) -> Result<BTreeMap<String, TableDigest>> {
    let mut out = BTreeMap::new();
    for table in track::tracked_names(conn)? {
        let Some(info) = track::inspect(conn, &table)? else { continue };
        let mut order: Vec<usize> = (0..info.columns.len()).collect();
        order.sort_by(|a, b| info.columns[*a].cmp(&info.columns[*b]));
        let mut acc = [0u8; 32];
        let rows = stored(conn, &info)?;
        for (id, vals) in &rows {
            let mut h = Sha256::new();
            h.update(id.as_bytes());
            h.update(b"\n");
            for &i in &order {
                h.update(format!("{}={}\n", info.columns[i], value::encode_ref(vals[i].as_ref())).as_bytes());
            }
            for (a, b) in acc.iter_mut().zip(h.finalize()) {
                *a ^= b;
            }
        }
        let sha256 = crate::codec::hex(&acc);
        out.insert(table, TableDigest { rows: rows.len() as u64, sha256 });
    }
    Ok(out)
}

/// Last change id applied per author, this replica's own included.
pub fn cursor_vector(r: &Replica) -> Result<BTreeMap<String, String>> {
    let conn = &r.sync;
    let mut out = crate::peers::applied_through(conn)?;
    if let Some(own) = crate::log::last_id_of(conn, r.id())? {
        out.insert(r.id().to_owned(), own);
    }
    Ok(out)
}

/// This replica's digest and the vector it reflects, read in one transaction.
pub fn snapshot_digest(r: &mut Replica) -> Result<Published> {
    r.capture()?;
    r.sync.execute_batch("BEGIN")?;
    let out = (|| {
        Ok(Published {
            format: crate::FORMAT,
            replica: r.id().to_owned(),
            name: r.name()?,
            cursors: cursor_vector(r)?,
            tables: digests(&r.sync)?,
            computed_at: crate::clock::rfc3339(r.hlc.now_ms()),
        })
    })();
    r.sync.execute_batch("COMMIT")?;
    out
}

/// Uploads `mine` to `digests/<id>.json` (not for pull-only replicas: they write nothing).
pub async fn publish(r: &mut Replica, store: &dyn Store, mine: &Published) -> Result<bool> {
    if !r.direction()?.pushes() {
        return Ok(false);
    }
    // New grants first: the digest is sealed under the newest epoch.
    let codec = crate::group::prepare(r, store, true).await?;
    let key = layout::digest_key(r.id());
    let bytes = codec.encode(crate::codec::Kind::Digest, &key, serde_json::to_vec_pretty(mine).expect("serializes"))?;
    store.put(&key, bytes, PutMode::Overwrite).await?;
    Ok(true)
}

/// Compares `mine` with every other replica's published digest.
pub async fn compare(r: &mut Replica, store: &dyn Store, mine: &Published) -> Result<Vec<Comparison>> {
    let codec = crate::group::prepare(r, store, false).await?;
    let mut out = Vec::new();
    for meta in list_all(store, layout::DIGESTS_PREFIX, None).await? {
        let Some(id) = layout::parse_digest_key(&meta.key) else { continue };
        if id == r.id() {
            continue;
        }
        let bytes = match get_bytes(store, &meta.key).await {
            Ok((b, _)) => b,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        if bytes.len() > 16 * 1024 * 1024 {
            return Err(Error::bad(&meta.key, "digest object is too large"));
        }
        let plain = codec.decode(crate::codec::Kind::Digest, &meta.key, &bytes)?;
        let theirs: Published =
            serde_json::from_slice(&plain).map_err(|e| Error::bad(&meta.key, format!("malformed digest: {e}")))?;
        let (verdict, tables) = if theirs.cursors != mine.cursors {
            (Verdict::NotComparable, Vec::new())
        } else {
            let names: std::collections::BTreeSet<&String> = mine.tables.keys().chain(theirs.tables.keys()).collect();
            let differing: Vec<String> =
                names.into_iter().filter(|t| mine.tables.get(*t) != theirs.tables.get(*t)).cloned().collect();
            (if differing.is_empty() { Verdict::Same } else { Verdict::Different }, differing)
        };
        out.push(Comparison { replica: id.to_owned(), name: theirs.name, verdict, tables });
    }
    Ok(out)
}
