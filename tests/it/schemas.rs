//! Random schemas (SPEC: tracked tables are the app's own): table and column
//! names of any characters SQLite takes, names that are SQL words or shadow
//! `rowid`, declared types of every affinity, single and composite keys of text
//! and integers, rowid and WITHOUT ROWID tables, columns the apps add at random
//! moments (with defaults) and write before the others have them. The writes:
//! inserts, `INSERT OR REPLACE`, upserts, updates, key changes and deletes. Replicas write values of any
//! bits at random (some large enough to travel out of line), insert, update and
//! delete, and sync in a random order: every
//! replica ends with the same rows, bit for bit, and `verify` finds nothing; a
//! replica made on an empty database and a clone from a snapshot get the same
//! table, columns, types and rows.

use crate::support::*;
use dimple::Replica;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Names an app may give a table or column: words, spaces, quotes, brackets,
/// non-ASCII letters, SQL keywords, and the names SQLite gives a rowid.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
        2 => "[a-z \"'`\\[\\]\\.é中🙂-]{1,10}",
        1 => prop::sample::select(vec!["select", "order", "group", "key", "values", "rowid", "oid", "_rowid_", "old", "new", "seq", "op", "pk", "col", "c0"])
            .prop_map(str::to_owned),
    ]
}

/// Declared types, one or more of each affinity, and collations (of columns
/// that are not the key: a key must compare by its bytes).
fn declared() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "INTEGER",
        "INT",
        "TEXT",
        "VARCHAR(20)",
        "CLOB",
        "REAL",
        "DOUBLE",
        "FLOAT",
        "NUMERIC",
        "DECIMAL(10,2)",
        "BOOLEAN",
        "DATETIME",
        "BLOB",
        "TEXT COLLATE NOCASE",
        "COLLATE RTRIM",
    ])
}

#[derive(Debug, Clone)]
struct Schema {
    table: String,
    /// (name, declared type, part of the key)
    columns: Vec<(String, &'static str, bool)>,
    without_rowid: bool,
    /// Columns the apps add later (`ALTER TABLE .. ADD COLUMN`), each the same
    /// everywhere: (name, declared type, default).
    added: Vec<(String, &'static str, &'static str)>,
}

impl Schema {
    fn keys(&self) -> Vec<&(String, &'static str, bool)> {
        self.columns.iter().filter(|c| c.2).collect()
    }

    fn values(&self) -> Vec<&(String, &'static str, bool)> {
        self.columns.iter().filter(|c| !c.2).collect()
    }

    /// Every column's name, keys first, then the added ones.
    fn all(&self) -> Vec<&str> {
        let keys = self.keys().into_iter().map(|c| c.0.as_str());
        let values = self.values().into_iter().map(|c| c.0.as_str());
        keys.chain(values).chain(self.added.iter().map(|c| c.0.as_str())).collect()
    }

    fn add(&self, j: usize) -> String {
        let (name, declared, default) = &self.added[j];
        format!("ALTER TABLE {} ADD COLUMN {} {declared} DEFAULT {default}", q(&self.table), q(name))
    }

    fn create(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|(n, t, _)| format!("{} {t}", q(n))).collect();
        let keys: Vec<String> = self.keys().iter().map(|c| q(&c.0)).collect();
        format!(
            "CREATE TABLE {}({}, PRIMARY KEY ({})){}",
            q(&self.table),
            cols.join(", "),
            keys.join(", "),
            if self.without_rowid { " WITHOUT ROWID" } else { "" }
        )
    }
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn schema() -> impl Strategy<Value = Schema> {
    let key_type = prop::sample::select(vec!["TEXT", "INTEGER", "VARCHAR(9)", "INT"]);
    (
        name(),
        prop::collection::vec((name(), key_type), 1..=2),
        prop::collection::vec((name(), declared()), 1..=4),
        any::<bool>(),
        prop::collection::vec((name(), declared(), default()), 0..=2),
    )
        .prop_filter_map("names must differ", |(table, keys, values, without_rowid, added)| {
            let lower = table.to_lowercase();
            if lower.starts_with("sqlite_") || table.starts_with("ZV_") {
                return None;
            }
            let columns: Vec<(String, &'static str, bool)> = keys
                .into_iter()
                .map(|(n, t)| (n, t, true))
                .chain(values.into_iter().map(|(n, t)| (n, t, false)))
                .collect();
            let mut seen = std::collections::HashSet::new();
            if !columns.iter().map(|c| &c.0).chain(added.iter().map(|c| &c.0)).all(|c| seen.insert(c.to_lowercase())) {
                return None;
            }
            // A rowid table's columns named after the rowid shadow it; a
            // WITHOUT ROWID table has none to shadow. Both are kept.
            Some(Schema { table, columns, without_rowid, added })
        })
}

/// A constant default, as `ADD COLUMN` requires.
fn default() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["NULL", "0", "-7", "1.5", "'x'", "''", "x'00ff'"])
}

/// Any value: every REAL bit pattern but NaN, text of any bytes, blobs, integers.
fn value() -> impl Strategy<Value = Cell> {
    prop_oneof![
        Just(Cell::Null),
        any::<i64>().prop_map(Cell::Integer),
        (-3i64..3).prop_map(Cell::Integer),
        any::<u64>().prop_map(f64::from_bits).prop_filter("SQLite has no NaN", |f| !f.is_nan()).prop_map(Cell::Real),
        "(?s).{0,12}".prop_map(|t| Cell::Text(t.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Cell::Text),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Cell::Blob),
        // At or above the threshold the replicas are given: out of line.
        prop::collection::vec(any::<u8>(), THRESHOLD..THRESHOLD + 200).prop_map(Cell::Blob),
        prop::collection::vec(any::<u8>(), THRESHOLD..THRESHOLD + 200).prop_map(Cell::Text),
    ]
}

/// The smallest threshold for values stored out of line.
const THRESHOLD: usize = 1024;

/// A key part: mostly a few texts (one that reads as a number, one empty, one
/// with JSON's quotes), so that rows meet, else any text; or a few integers.
fn key_part(declared: &str) -> BoxedStrategy<Cell> {
    if declared.contains("INT") {
        (-2i64..4).prop_map(Cell::Integer).boxed()
    } else {
        prop_oneof![
            3 => prop::sample::select(vec!["a", "B", "1", "", "x\"y", "[2]", "é"]).prop_map(|t| Cell::Text(t.as_bytes().to_vec())),
            1 => "(?s).{0,6}".prop_map(|t| Cell::Text(t.into_bytes())),
        ]
        .boxed()
    }
}

#[derive(Debug, Clone)]
enum Write {
    Insert(Vec<Cell>, Vec<Cell>),
    /// `INSERT OR REPLACE`: the row's every column written again.
    Replace(Vec<Cell>, Vec<Cell>),
    /// An upsert setting one column of a row that may exist.
    Upsert(Vec<Cell>, usize, Cell),
    /// A row's key changed: a delete of the old row and an insert of the new.
    Rekey(Vec<Cell>, Vec<Cell>),
    Update(Vec<Cell>, usize, Cell),
    /// Of an added column: made only by a replica whose app has added it.
    UpdateAdded(Vec<Cell>, usize, Cell),
    Delete(Vec<Cell>),
}

#[derive(Debug, Clone)]
enum Step {
    /// Replica `0` writes.
    Write(usize, Write),
    /// Replica `0` syncs.
    Sync(usize),
    /// Replica `0`'s app adds column `1` of the added ones, if it has not yet.
    Add(usize, usize),
}

fn steps(s: &Schema) -> impl Strategy<Value = Vec<Step>> {
    let key: Vec<BoxedStrategy<Cell>> = s.keys().iter().map(|c| key_part(c.1)).collect();
    let n = s.values().len();
    let added = s.added.len();
    let write = prop_oneof![
        3 => (key.clone(), prop::collection::vec(value(), n)).prop_map(|(k, v)| Write::Insert(k, v)),
        3 => (key.clone(), 0..n, value()).prop_map(|(k, i, v)| Write::Update(k, i, v)),
        1 => key.clone().prop_map(Write::Delete),
        1 => (key.clone(), prop::collection::vec(value(), n)).prop_map(|(k, v)| Write::Replace(k, v)),
        1 => (key.clone(), 0..n, value()).prop_map(|(k, i, v)| Write::Upsert(k, i, v)),
        1 => (key.clone(), key.clone()).prop_map(|(k, to)| Write::Rekey(k, to)),
        2 => (key, 0..added.max(1), value()).prop_map(|(k, i, v)| Write::UpdateAdded(k, i, v)),
    ];
    let step = prop_oneof![
        4 => (0..3usize, write).prop_map(|(r, w)| Step::Write(r, w)),
        1 => (0..3usize).prop_map(Step::Sync),
        1 => (0..3usize, 0..added.max(1)).prop_map(|(r, j)| Step::Add(r, j)),
    ];
    prop::collection::vec(step, 1..30)
}

fn run_write(conn: &rusqlite::Connection, s: &Schema, w: &Write) -> rusqlite::Result<()> {
    let keys = s.keys();
    let key_where: Vec<String> = keys.iter().enumerate().map(|(i, c)| format!("{} IS ?{}", q(&c.0), i + 1)).collect();
    let key_where = key_where.join(" AND ");
    let t = q(&s.table);
    match w {
        Write::Insert(k, v) | Write::Replace(k, v) => {
            let names: Vec<String> = keys.iter().chain(s.values().iter()).map(|c| q(&c.0)).collect();
            let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            let params: Vec<&Cell> = k.iter().chain(v).collect();
            let or = if matches!(w, Write::Insert(..)) { "IGNORE" } else { "REPLACE" };
            conn.execute(
                &format!("INSERT OR {or} INTO {t}({}) VALUES ({})", names.join(", "), marks.join(", ")),
                rusqlite::params_from_iter(params),
            )?;
        }
        Write::Upsert(k, i, v) => {
            let names: Vec<String> = keys.iter().map(|c| q(&c.0)).collect();
            let col = q(&s.values()[*i].0);
            let marks: Vec<String> = (1..=names.len() + 1).map(|i| format!("?{i}")).collect();
            let params: Vec<&Cell> = k.iter().chain([v]).collect();
            conn.execute(
                &format!(
                    "INSERT INTO {t}({}, {col}) VALUES ({}) ON CONFLICT DO UPDATE SET {col} = excluded.{col}",
                    names.join(", "),
                    marks.join(", ")
                ),
                rusqlite::params_from_iter(params),
            )?;
        }
        Write::Rekey(k, to) => {
            let set: Vec<String> =
                keys.iter().enumerate().map(|(i, c)| format!("{} = ?{}", q(&c.0), keys.len() + i + 1)).collect();
            let params: Vec<&Cell> = k.iter().chain(to).collect();
            // A key another row holds: the app's write fails, as it would without dimple.
            match conn.execute(
                &format!("UPDATE {t} SET {} WHERE {key_where}", set.join(", ")),
                rusqlite::params_from_iter(params),
            ) {
                Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {}
                other => {
                    other?;
                }
            }
        }
        Write::Update(k, i, v) | Write::UpdateAdded(k, i, v) => {
            let col = match w {
                Write::Update(..) => q(&s.values()[*i].0),
                _ => q(&s.added[*i].0),
            };
            let params: Vec<&Cell> = k.iter().chain([v]).collect();
            conn.execute(
                &format!("UPDATE {t} SET {col} = ?{} WHERE {key_where}", keys.len() + 1),
                rusqlite::params_from_iter(params),
            )?;
        }
        Write::Delete(k) => {
            conn.execute(&format!("DELETE FROM {t} WHERE {key_where}"), rusqlite::params_from_iter(k))?;
        }
    }
    Ok(())
}

/// Every row, ordered by key, each value in dimple's exact encoding with its
/// storage class.
fn table(conn: &rusqlite::Connection, s: &Schema) -> Vec<Vec<String>> {
    let keys: Vec<String> = s.keys().iter().map(|c| q(&c.0)).collect();
    let all: Vec<String> = s.all().into_iter().map(q).collect();
    let sql = format!("SELECT {} FROM {} ORDER BY {}", all.join(", "), q(&s.table), keys.join(", "));
    let mut stmt = conn.prepare(&sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get_ref(i).map(dimple::value::encode_ref)).collect())
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The table's columns as SQLite describes them (name, declared type,
/// default, place in the key, collation), in name order: columns added later
/// may come in another order on each replica; and whether it has a rowid.
#[allow(clippy::type_complexity)]
fn columns(conn: &rusqlite::Connection, s: &Schema) -> (Vec<(String, String, Option<String>, i64, String)>, bool) {
    let mut stmt = conn.prepare("SELECT name, type, dflt_value, pk FROM pragma_table_info(?1) ORDER BY name").unwrap();
    let cols: Vec<(String, String, Option<String>, i64)> = stmt
        .query_map([&s.table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // SQLite names a column's collation only in an index on it: one over every
    // column, on a copy of the table's definition.
    let sql: String = conn
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [&s.table], |r| r.get(0))
        .unwrap();
    let scratch = rusqlite::Connection::open_in_memory().unwrap();
    scratch.execute_batch(&sql).unwrap();
    let all: Vec<String> = cols.iter().map(|c| q(&c.0)).collect();
    scratch.execute_batch(&format!("CREATE INDEX every_column ON {}({})", q(&s.table), all.join(", "))).unwrap();
    let coll = |name: &str| -> String {
        scratch
            .query_row("SELECT upper(coll) FROM pragma_index_xinfo('every_column') WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let cols = cols.into_iter().map(|(n, t, d, pk)| (n.clone(), t, d, pk, coll(&n))).collect();
    let without_rowid: bool = conn
        .query_row("SELECT wr FROM pragma_table_list WHERE name = ?1 AND schema = 'main'", [&s.table], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}: no table {:?} in {:?}", s.table, conn.path()));
    (cols, without_rowid)
}

/// The replica whose app adds no column.
const FOLLOWER: usize = 2;

fn check(s: Schema, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let g = Group::new();
    let store = g.store();
    let integer_key = s.keys().len() == 1 && s.keys()[0].1.contains("INT");
    let mut rs: Vec<Replica> = Vec::new();
    for name in ["a", "b", "c"] {
        let r = Replica::init(&g.db(name), Some(&g.bucket_url()), Some(name), g.opts()).map_err(|e| fail(&e))?;
        r.conn().execute_batch(&s.create()).map_err(|e| fail(&e))?;
        dimple::blob::set_threshold(r.conn(), THRESHOLD as u64).map_err(|e| fail(&e))?;
        let mut r = r;
        r.track(&s.table, integer_key).map_err(|e| fail(&e))?;
        rs.push(r);
    }
    // c's app never migrates: dimple adds the columns the others add (the
    // follow policy), from their published definitions.
    dimple::schema::set_policy(rs[FOLLOWER].conn(), dimple::schema::Policy::Follow).map_err(|e| fail(&e))?;
    let apps: Vec<rusqlite::Connection> = ["a", "b", "c"].iter().map(|n| open_plain(&g.db(n))).collect();
    // Which added columns each replica's app has added.
    let mut has = [vec![false; s.added.len()], vec![false; s.added.len()], vec![false; s.added.len()]];
    for step in &steps {
        match step {
            Step::Write(r, Write::UpdateAdded(_, j, _)) if !has[*r].get(*j).copied().unwrap_or(false) => {}
            Step::Write(r, w) => run_write(&apps[*r], &s, w).map_err(|e| fail(&e))?,
            Step::Sync(r) => {
                block_on(dimple::sync(&mut rs[*r], &store)).map_err(|e| fail(&e))?;
                g.clock.advance(5);
            }
            Step::Add(r, j) if *r != FOLLOWER && *j < s.added.len() && !has[*r][*j] => {
                apps[*r].execute_batch(&s.add(*j)).map_err(|e| fail(&e))?;
                has[*r][*j] = true;
            }
            Step::Add(..) => {}
        }
    }
    // Every app migrates in the end (the manual policy's way): the values held
    // for the columns it lacked apply.
    for (r, has) in has.iter().enumerate().filter(|(r, _)| *r != FOLLOWER) {
        for j in (0..s.added.len()).filter(|&j| !has[j]) {
            apps[r].execute_batch(&s.add(j)).map_err(|e| fail(&e))?;
        }
    }
    for _ in 0..2 {
        for r in rs.iter_mut() {
            block_on(dimple::sync(r, &store)).map_err(|e| fail(&e))?;
        }
    }
    // The schema travels: a replica made on an empty database creates the
    // table from the group's, and a clone from a snapshot holds it too.
    let mut d = Replica::init(&g.db("d"), Some(&g.bucket_url()), Some("d"), g.opts()).map_err(|e| fail(&e))?;
    // What `dimple init` chooses for a database without tables of its own.
    dimple::schema::set_policy(d.conn(), dimple::schema::Policy::Follow).map_err(|e| fail(&e))?;
    block_on(dimple::sync(&mut d, &store)).map_err(|e| fail(&e))?;
    block_on(dimple::snapshot::compact(&mut rs[0], &store, std::time::Duration::from_secs(3600)))
        .map_err(|e| fail(&e))?;
    let (e, _) = block_on(dimple::clone::clone(&g.bucket_url(), &g.db("e"), Some("e"), g.opts(), &store, &|_| {}))
        .map_err(|e| fail(&e))?;
    rs.extend([d, e]);
    let want = table(rs[0].conn(), &s);
    let shape = columns(rs[0].conn(), &s);
    for r in rs.iter_mut() {
        prop_assert_eq!(&columns(r.conn(), &s), &shape, "replica {}'s table", r.name().unwrap());
        prop_assert_eq!(&table(r.conn(), &s), &want, "replica {} differs", r.name().unwrap());
        let findings = dimple::verify::check(r).map_err(|e| fail(&e))?;
        prop_assert!(findings.is_empty(), "{findings:?}");
        prop_assert!(dimple::status::status(r).map_err(|e| fail(&e))?.problems.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn replicas_of_any_schema_converge_bit_for_bit((s, steps) in schema().prop_flat_map(|s| (Just(s.clone()), steps(&s)))) {
        check(s, steps)?;
    }
}
