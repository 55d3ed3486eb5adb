//! The schema travels with the data: each replica publishes the shape of its
//! tracked tables, and each replica compares the group's with its own.
//!
//! The replica's descriptor, `replicas/<id>/replica.json` (sealed in an encrypted
//! group), carries under `schema` a body signed with the replica's key: every
//! tracked table's `CREATE TABLE` as SQLite stores it, its key and its columns,
//! under a version that grows with each change. A push rewrites the descriptor when
//! the local shape changed (a new tracked table, a column the app added:
//! [`crate::changelog::ingest`] notices those by itself). A pull reads a replica's
//! descriptor only when its ETag, in the LIST it makes anyway, changed: the schema
//! adds no object to list, so a no-op sync among R replicas still costs
//! ceil(2R/1000) LISTs.
//!
//! What the group has and this replica lacks is then settled by the replica's
//! policy ([`Policy`]): `follow` creates new tables and adds new columns itself
//! (the DDL checked by [`crate::ddl`] first) and applies the values the log held
//! for them; `manual` never runs DDL and reports what is missing, with the
//! statements that would add it (`dimple schema`), and applies the held values
//! once the app has migrated. Either way, a table the group tracks that this
//! database has but does not track is tracked. Incompatible differences (another
//! declared type or default for the same column, another key, a column that
//! disappeared) are never applied: they are problems, shown with both sides.

use crate::codec::{Codec, Kind};
use crate::ddl::{self, Column};
use crate::error::{Error, Result};
use crate::layout;
use crate::peers::{self, Trust};
use crate::problems;
use crate::replica::Replica;
use crate::store::{Got, ObjectMeta, PutMode, Store, StoreError};
use crate::trust::{self, Signed};
use crate::{clock, track, FORMAT};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `ZV_METADATA`: this replica's schema policy.
pub const POLICY_META: &str = "schema_policy";
/// `ZV_METADATA`: the local shape and policy at the last settle.
const SETTLED_META: &str = "schema.settled";
/// `ZV_METADATA`: the version and hash of the schema this replica last published.
const PUBLISHED_META: &str = "schema.published";
/// A descriptor (with its schema) larger than this is refused unread.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// What a replica does about tables and columns the group has and it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Create them (checked DDL), then apply their values.
    Follow,
    /// Never run DDL: report them; apply their values once the app migrates.
    Manual,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Follow => "follow",
            Policy::Manual => "manual",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "follow" => Ok(Policy::Follow),
            "manual" => Ok(Policy::Manual),
            _ => Err(Error::Invalid(format!("schema policy {s:?} is neither `follow` nor `manual`"))),
        }
    }
}

/// The policy (absent: `manual`, which never runs DDL on a database an app owns).
pub fn policy(conn: &Connection) -> Result<Policy> {
    crate::meta::get(conn, POLICY_META)?.as_deref().unwrap_or("manual").parse()
}

pub fn set_policy(conn: &Connection, p: Policy) -> Result<()> {
    crate::meta::set(conn, POLICY_META, p.as_str())
}

/// One tracked table as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableShape {
    pub name: String,
    /// `CREATE TABLE` as SQLite stores it.
    pub sql: String,
    pub key: Vec<String>,
    /// Every column, key columns included, in table order.
    pub columns: Vec<Column>,
}

/// The signed body under `schema` in `replica.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub format: i64,
    pub replica: String,
    /// The key it is signed with (pinned on first sight, like a head's).
    pub public_key: String,
    pub version: i64,
    pub tables: Vec<TableShape>,
}

/// The tracked tables as this replica has them now.
pub fn local(conn: &Connection) -> Result<Vec<TableShape>> {
    let mut out = Vec::new();
    for name in track::tracked_names(conn)? {
        let Some(info) = track::inspect(conn, &name)? else { continue };
        let sql: String =
            conn.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [&name], |r| r.get(0))?;
        let columns =
            ddl::columns(conn, &name)?.into_iter().filter(|(_, hidden)| *hidden == 0).map(|(c, _)| c).collect();
        out.push(TableShape { name, sql, key: info.key_columns, columns });
    }
    Ok(out)
}

/// Publishes this replica's schema if it changed since the last time. Returns
/// whether it wrote.
pub async fn publish(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<bool> {
    let tables = local(&r.sync)?;
    let hash = crate::hash::sha256_hex(&serde_json::to_vec(&tables).expect("serializes"));
    let (version, last) = match crate::meta::get(&r.sync, PUBLISHED_META)? {
        Some(v) => {
            v.split_once(' ').map(|(n, h)| (n.parse::<i64>().unwrap_or(0), h.to_owned())).unwrap_or((0, String::new()))
        }
        None => (0, String::new()),
    };
    if last == hash {
        return Ok(false);
    }
    let key = layout::descriptor_key(r.id());
    // Copies of one database (a restored backup, before `dimple fork`) publish
    // under one id, each counting its own versions: never below the version in
    // the bucket, which readers would take for a replay, and not again what is
    // there already.
    let version = match published_there(r, store, codec, &key).await? {
        Some(there) if there.1 == hash => {
            crate::meta::set(&r.sync, PUBLISHED_META, &format!("{} {hash}", there.0))?;
            return Ok(false);
        }
        Some(there) => version.max(there.0),
        None => version,
    };
    let body = Published {
        format: FORMAT,
        replica: r.id().to_owned(),
        public_key: r.public_key()?,
        version: version + 1,
        tables,
    };
    let signed = serde_json::to_value(Signed::new(r.signing_key()?, body)).expect("serializes");
    let plain = serde_json::to_vec_pretty(&crate::sync::descriptor(r, Some(signed))?).expect("serializes");
    // Only this replica writes its descriptor (created once by its first push).
    store.put(&key, codec.encode(Kind::Descriptor, &key, plain)?, PutMode::Overwrite).await?;
    crate::meta::set(&r.sync, PUBLISHED_META, &format!("{} {hash}", version + 1))?;
    Ok(true)
}

/// The version and tables hash of the schema in this replica's own descriptor
/// in the bucket, when one signed with its key is there.
async fn published_there(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    key: &str,
) -> Result<Option<(i64, String)>> {
    let bytes = match store.get(key, None).await {
        Ok(Got::Found { bytes, .. }) => bytes,
        Ok(Got::NotModified) | Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let me = r.id().to_owned();
    let public_key = r.public_key()?;
    let there = codec
        .decode(Kind::Descriptor, key, &bytes)
        .and_then(|plain| crate::head::Descriptor::parse(&plain, key, &me))
        .ok()
        .and_then(|d| d.schema)
        .and_then(|v| parse(v, key, &me, Some(&public_key)).ok());
    Ok(there.map(|p| (p.version, crate::hash::sha256_hex(&serde_json::to_vec(&p.tables).expect("serializes")))))
}

/// A fork's new id publishes its own schema.
pub(crate) fn forget_published(conn: &Connection) -> Result<()> {
    crate::meta::delete(conn, PUBLISHED_META)
}

/// Parses and verifies a published schema (the `schema` value of a descriptor)
/// read from `origin` for `replica`, whose pinned key is `pinned` (None on first
/// sight: its own key is checked against itself, and the caller pins it).
pub fn parse(value: serde_json::Value, origin: &str, replica: &str, pinned: Option<&str>) -> Result<Published> {
    let bad = |r: String| Error::bad(origin, r);
    let s: Signed<Published> = serde_json::from_value(value).map_err(|e| bad(format!("malformed schema: {e}")))?;
    let key = pinned.unwrap_or(&s.body.public_key);
    if key != s.body.public_key {
        return Err(bad(format!(
            "schema carries public key {} but {} was pinned for this replica",
            trust::fingerprint(&s.body.public_key),
            trust::fingerprint(key)
        )));
    }
    s.verify(key).map_err(|e| bad(format!("schema signature: {e}")))?;
    if s.body.format != FORMAT {
        return Err(bad(format!("unknown schema format {}", s.body.format)));
    }
    if s.body.replica != replica {
        return Err(bad(format!("schema names replica {}, but is stored under {replica}", s.body.replica)));
    }
    Ok(s.body)
}

/// What this replica knows of another's schema (`ZV_METADATA`, one key each).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Known {
    /// The descriptor's ETag when it was read.
    etag: String,
    /// None: its descriptor has no schema (a build from before it travelled).
    schema: Option<Published>,
    /// `table.column`s its earlier versions had and a later one lacks.
    disappeared: Vec<String>,
}

fn known_key(replica: &str) -> String {
    format!("schema.of.{replica}")
}

/// The descriptor ETag last read, kept apart so a no-op pull compares one string
/// instead of parsing a schema.
fn etag_key(replica: &str) -> String {
    format!("schema.etag.{replica}")
}

fn known(conn: &Connection, replica: &str) -> Result<Option<Known>> {
    Ok(crate::meta::get(conn, &known_key(replica))?.and_then(|j| serde_json::from_str(&j).ok()))
}

/// Reads `replica`'s descriptor, and the schema in it, when its ETag (from the
/// listing) changed. Returns whether it read one.
pub async fn fetch(r: &Replica, store: &dyn Store, codec: &Codec, replica: &str, meta: &ObjectMeta) -> Result<bool> {
    if crate::meta::get(&r.sync, &etag_key(replica))?.as_deref() == Some(meta.etag.as_str()) {
        return Ok(false);
    }
    let before = known(&r.sync, replica)?;
    let pinned = peers::get(&r.sync, replica)?.and_then(|p| p.public_key);
    let key = layout::descriptor_key(replica);
    if meta.size > MAX_SCHEMA_BYTES as u64 {
        return Err(Error::bad(
            &key,
            format!("replica.json is {} bytes, more than the {MAX_SCHEMA_BYTES} allowed", meta.size),
        ));
    }
    let (bytes, etag) = match store.get(&key, None).await {
        Ok(Got::Found { bytes, etag }) => (bytes, etag),
        Ok(Got::NotModified) | Err(StoreError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let plain = codec.decode(Kind::Descriptor, &key, &bytes)?;
    let descriptor = crate::head::Descriptor::parse(&plain, &key, replica)?;
    let Some(value) = descriptor.schema else {
        let disappeared = before.map(|b| b.disappeared).unwrap_or_default();
        let k = Known { etag, schema: None, disappeared };
        save_known(r, replica, &k)?;
        return Ok(true);
    };
    let schema = parse(value, &key, replica, pinned.as_deref())?;
    if pinned.is_none() {
        peers::pin(&r.sync, replica, &schema.public_key, "")?;
    }
    let mut disappeared = Vec::new();
    if let Some((old, old_schema)) = before.as_ref().and_then(|b| b.schema.as_ref().map(|s| (b, s))) {
        if schema.version < old_schema.version {
            return Err(Error::bad(
                &key,
                format!(
                    "schema version {} is older than version {} already read: replayed",
                    schema.version, old_schema.version
                ),
            ));
        }
        disappeared = old.disappeared.clone();
        for t in &old_schema.tables {
            let Some(now) = schema.tables.iter().find(|n| n.name == t.name) else { continue };
            for c in &t.columns {
                let gone = format!("{}.{}", t.name, c.name);
                if !now.columns.iter().any(|n| n.name == c.name) && !disappeared.contains(&gone) {
                    disappeared.push(gone);
                }
            }
        }
    }
    let k = Known { etag, schema: Some(schema), disappeared };
    save_known(r, replica, &k)?;
    Ok(true)
}

fn save_known(r: &Replica, replica: &str, k: &Known) -> Result<()> {
    let tx = r.sync.unchecked_transaction()?;
    crate::meta::set(&tx, &known_key(replica), &serde_json::to_string(k).expect("serializes"))?;
    crate::meta::set(&tx, &etag_key(replica), &k.etag)?;
    tx.commit()?;
    Ok(())
}

/// A table the group tracks and this replica does not have.
#[derive(Debug, Clone, Serialize)]
pub struct MissingTable {
    pub table: String,
    /// The statement that creates it (checked).
    pub ddl: String,
    pub replicas: Vec<String>,
}

/// A column the group has in a table this replica tracks.
#[derive(Debug, Clone, Serialize)]
pub struct MissingColumn {
    pub table: String,
    pub column: Column,
    /// The statement that adds it (checked), or why it cannot be added.
    pub ddl: std::result::Result<String, String>,
    pub replicas: Vec<String>,
}

/// A difference that is never applied by itself.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub replica: String,
    /// `table` or `table.column`.
    pub what: String,
    pub here: String,
    pub there: String,
}

/// The group's schema against this replica's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub missing_tables: Vec<MissingTable>,
    pub missing_columns: Vec<MissingColumn>,
    /// Tables the group tracks that exist here untracked (with the same key).
    pub untracked: Vec<MissingTable>,
    pub conflicts: Vec<Conflict>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing_tables.is_empty()
            && self.missing_columns.is_empty()
            && self.untracked.is_empty()
            && self.conflicts.is_empty()
    }
}

fn same_type(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

fn describe(c: &Column) -> String {
    let mut s = if c.declared_type.is_empty() { "(no type)".to_owned() } else { c.declared_type.clone() };
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        s.push_str(" DEFAULT ");
        s.push_str(d);
    }
    if let Some(coll) = &c.collation {
        s.push_str(" COLLATE ");
        s.push_str(coll);
    }
    s
}

/// Compares what every other (not revoked) replica published with this replica's
/// own tracked tables.
pub fn diff(conn: &Connection) -> Result<Diff> {
    let mine: BTreeMap<String, TableShape> = local(conn)?.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut d = Diff::default();
    let mut tables: BTreeMap<String, (TableShape, Vec<String>)> = BTreeMap::new();
    let mut columns: BTreeMap<(String, String), (Column, Vec<String>)> = BTreeMap::new();
    // Every column any replica has, per table, in the order they first appear.
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let peers: Vec<String> = conn
        .prepare("SELECT substr(key, 11) FROM ZV_METADATA WHERE key LIKE 'schema.of.%' ORDER BY key")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in peers {
        if peers::get(conn, &id)?.is_some_and(|p| p.trust == Trust::Revoked) {
            continue;
        }
        let Some(k) = known(conn, &id)? else { continue };
        for gone in &k.disappeared {
            d.conflicts.push(Conflict {
                replica: id.clone(),
                what: gone.clone(),
                here: "a column".to_owned(),
                there: "dropped or renamed (a later schema version no longer has it)".to_owned(),
            });
        }
        let Some(schema) = &k.schema else { continue };
        for t in &schema.tables {
            if let Some(other) = tables.get(&t.name).map(|(s, _)| s) {
                if other.key != t.key {
                    d.conflicts.push(Conflict {
                        replica: id.clone(),
                        what: t.name.clone(),
                        here: format!("key ({}) on another replica", other.key.join(", ")),
                        there: format!("key ({})", t.key.join(", ")),
                    });
                    continue;
                }
            }
            tables.entry(t.name.clone()).or_insert_with(|| (t.clone(), Vec::new())).1.push(id.clone());
            for c in &t.columns {
                let names = order.entry(t.name.clone()).or_default();
                if !names.contains(&c.name) {
                    names.push(c.name.clone());
                }
                let slot = columns.entry((t.name.clone(), c.name.clone())).or_insert_with(|| (c.clone(), Vec::new()));
                if !same_type(&slot.0.declared_type, &c.declared_type) || slot.0.default != c.default {
                    d.conflicts.push(Conflict {
                        replica: id.clone(),
                        what: format!("{}.{}", t.name, c.name),
                        here: format!("{} on replica {}", describe(&slot.0), slot.1.join(", ")),
                        there: describe(c),
                    });
                } else {
                    slot.1.push(id.clone());
                }
            }
        }
    }
    let conflicted: Vec<String> = d.conflicts.iter().map(|c| c.what.clone()).collect();
    for (name, (shape, replicas)) in tables {
        if conflicted.contains(&name) {
            continue;
        }
        let Some(local) = mine.get(&name) else {
            match track::inspect(conn, &name)? {
                Some(info) if info.key_columns == shape.key => {
                    d.untracked.push(MissingTable { table: name, ddl: shape.sql, replicas })
                }
                Some(info) => d.conflicts.push(Conflict {
                    replica: replicas[0].clone(),
                    what: name.clone(),
                    here: format!("key ({}), not tracked", info.key_columns.join(", ")),
                    there: format!("key ({})", shape.key.join(", ")),
                }),
                None => match ddl::check_create_table(&name, &shape.sql) {
                    Ok(_) => d.missing_tables.push(MissingTable { table: name, ddl: shape.sql, replicas }),
                    Err(reason) => d.conflicts.push(Conflict {
                        replica: replicas[0].clone(),
                        what: name,
                        here: "no such table".to_owned(),
                        there: format!("refused: {reason}"),
                    }),
                },
            }
            continue;
        };
        if local.key != shape.key {
            d.conflicts.push(Conflict {
                replica: replicas[0].clone(),
                what: name.clone(),
                here: format!("key ({})", local.key.join(", ")),
                there: format!("key ({})", shape.key.join(", ")),
            });
            continue;
        }
        for c in order.get(&name).into_iter().flatten() {
            let what = format!("{name}.{c}");
            if conflicted.contains(&what) {
                continue;
            }
            let (col, replicas) = &columns[&(name.clone(), c.clone())];
            match local.columns.iter().find(|l| l.name == *c) {
                Some(l) if !same_type(&l.declared_type, &col.declared_type) || l.default != col.default => d
                    .conflicts
                    .push(Conflict { replica: replicas[0].clone(), what, here: describe(l), there: describe(col) }),
                Some(_) => {}
                None => d.missing_columns.push(MissingColumn {
                    table: name.clone(),
                    column: col.clone(),
                    ddl: ddl::add_column(&name, &local.sql, col),
                    replicas: replicas.clone(),
                }),
            }
        }
    }
    Ok(d)
}

/// [`settle`] when something may have changed: a schema was read in this pull (or
/// problems were there to clear), or the local shape (or the policy) differs from
/// the last settle. A no-op pull among
/// thousands of replicas then parses no schema at all.
pub fn settle_if_changed(r: &mut Replica, schemas_read: bool) -> Result<()> {
    let stamp = settle_stamp(&r.sync)?;
    let last = crate::meta::get(&r.sync, SETTLED_META)?;
    if !schemas_read && last.as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    settle(r)?;
    // After settling, the shape may have changed (tables created, columns added).
    let stamp = settle_stamp(&r.sync)?;
    crate::meta::set(&r.sync, SETTLED_META, &stamp)
}

/// What a settle depends on locally: the tracked shape, the policy, and which
/// tables exist (an app creating a table the group tracks).
fn settle_stamp(conn: &Connection) -> Result<String> {
    let tables: Option<String> =
        conn.query_row("SELECT group_concat(name, ',') FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))?;
    let state = (local(conn)?, policy(conn)?.as_str(), tables);
    Ok(crate::hash::sha256_hex(&serde_json::to_vec(&state).expect("serializes")))
}

/// Settles the group's schema against this replica's after a pull: tracks the
/// group's tables the app created; in `follow` mode creates missing tables and
/// adds missing columns, then applies their held values; records conflicts (and
/// additions that cannot be made) as problems. Returns what is left.
pub fn settle(r: &mut Replica) -> Result<Diff> {
    let d = diff(&r.sync)?;
    let now = clock::rfc3339(r.opts.clock.now_ms());
    // What cannot be done here (a name taken by a local view, say) is a problem of
    // the replica that published it; the rest goes on.
    let mut failed = Vec::new();
    for t in &d.untracked {
        if let Err(e) = r.track(&t.table, true) {
            failed.push((t.replicas[0].clone(), format!("cannot track {}: {e}", t.table)));
        }
    }
    let mut changed = !d.untracked.is_empty();
    if policy(&r.sync)? == Policy::Follow {
        for t in &d.missing_tables {
            let made = r.sync.prepare(&t.ddl).and_then(|mut s| s.raw_execute()).map_err(Error::from);
            if let Err(e) = made.and_then(|_| r.track(&t.table, true).map(|_| ())) {
                failed.push((t.replicas[0].clone(), format!("cannot create table {}: {e}", t.table)));
            }
            changed = true;
        }
        let mut added = false;
        for c in &d.missing_columns {
            if let Ok(sql) = &c.ddl {
                match r.sync.prepare(sql).and_then(|mut s| s.raw_execute()) {
                    Ok(_) => added = true,
                    Err(e) => {
                        failed.push((c.replicas[0].clone(), format!("cannot add {}.{}: {e}", c.table, c.column.name)))
                    }
                }
            }
        }
        if added {
            r.refresh_schema()?;
            changed = true;
        }
    }
    for (replica, reason) in failed {
        problems::record(&r.sync, &replica, &layout::descriptor_key(&replica), &reason, &now)?;
    }
    let left = if changed { diff(&r.sync)? } else { d };
    for c in &left.conflicts {
        let reason = format!("schema of {}: {} here, {} there; not applied (docs/schema.md)", c.what, c.here, c.there);
        problems::record(&r.sync, &c.replica, &layout::descriptor_key(&c.replica), &reason, &now)?;
    }
    for c in &left.missing_columns {
        if let Err(why) = &c.ddl {
            problems::record(&r.sync, &c.replicas[0], &layout::descriptor_key(&c.replicas[0]), why, &now)?;
        }
    }
    Ok(left)
}
