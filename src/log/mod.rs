//! The change log as a replica stores it (`schema/log.sql`): the one module that
//! knows its compact form. Everything else speaks [`Change`] (the seed's text
//! columns) and leaves the numbering of names, authors and transactions and the
//! byte form of ids to this module (the outbox of unpushed changes is
//! [`crate::outbox`]'s). Retention, snapshots, clones, `verify` and the blob
//! collector reach the replica's log through the functions here. Outside it, only
//! the read-only views of the seed's tables and the snapshot checks of
//! [`crate::clone`] and [`crate::catchup`] (a snapshot carries these same tables)
//! name them. This file merges changes into the log ([`Log`]); `forms` holds
//! the stored forms of ids and reads rows as changes, `read` answers questions
//! about it, and `upkeep` prunes it and moves it into and out of
//! snapshots and imports.
//!
//! Why this form (docs/design/log-per-row.md): a row per change, even compact,
//! repeated the row key and a 16-byte id in every change, and a new row was an
//! insert per cell. Here a table row's winning changes are one record in
//! `ZV_ROW` (the row key once, ids after the first as small differences:
//! `crate::record`), found with one seek and written once per batch. A change a
//! winner supersedes stays in the record's past, a few bytes (up to
//! `PAST_CELLS` of them), or goes to `ZV_HISTORY`, keyed by id so that it is an
//! append and pruning removes the front; so does a change that arrives already
//! superseded. No separate clock: the records are it.

use crate::error::Result;
use crate::merge::{Change, Outcome};
use crate::record::{self, Cell, Id, Merged};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Statement};
use std::cell::RefCell;
use std::collections::HashMap;

mod forms;
mod numbers;
mod read;
mod upkeep;
pub use forms::*;
pub use numbers::known_name;
use numbers::{author_of, intern, known_author, remembered, Memo};
pub use read::*;
pub use upkeep::*;

/// Makes the log's views readable on `conn` (an app's own connection, for
/// example): `ZV_LOG` and the seed's `ZV_CHANGE` and `ZV_CLOCK` read the records
/// through `dimple_cells` and `dimple_past`, functions each connection must have
/// registered, and they are TEMP views of that connection, made here on a
/// replica's database (schema/log_views.sql says why they are not stored).
/// dimple's own connections have both.
pub fn register(conn: &Connection) -> Result<()> {
    record::register(conn)?;
    if crate::sql::has_table(conn, "main", "ZV_ROW")? {
        conn.execute_batch(&views_sql(true))?;
    }
    Ok(())
}

/// The views of schema/log_views.sql, as TEMP views (a replica's, on each of
/// its connections) or stored in `main` (a snapshot's, and a replica's before
/// local schema 10).
pub fn views_sql(temp: bool) -> String {
    let create = if temp { "CREATE TEMP VIEW IF NOT EXISTS " } else { "CREATE VIEW IF NOT EXISTS main." };
    include_str!("../../schema/log_views.sql").replace("CREATE VIEW IF NOT EXISTS ", create)
}

/// Where a change is stored: its table, column and author numbers.
#[derive(Debug, Clone, Copy)]
struct Numbers {
    type_n: i64,
    attr_n: i64,
    author_n: i64,
    tx_n: i64,
}

/// A change's columns, borrowed.
struct Parts<'a> {
    id: &'a str,
    transaction_id: &'a str,
    entity_type: &'a str,
    entity_id: &'a str,
    attribute: &'a str,
    old_value: Option<&'a str>,
    new_value: Option<&'a str>,
    author: &'a str,
}

impl<'a> Parts<'a> {
    fn of(c: &'a Change) -> Self {
        Parts {
            id: &c.id,
            transaction_id: &c.transaction_id,
            entity_type: &c.entity_type,
            entity_id: &c.entity_id,
            attribute: &c.attribute,
            old_value: c.old_value.as_deref(),
            new_value: c.new_value.as_deref(),
            author: &c.author,
        }
    }
}

/// A row's record while a merge works on it.
#[derive(Debug)]
struct Open {
    cells: Vec<Cell>,
    /// The changes superseded here that the record keeps ([`keeps`]).
    past: Vec<Cell>,
    stored: Stored,
    /// Whether `cells` differ from what `ZV_ROW` holds.
    changed: bool,
}

/// A held record while the merge works on other rows: encoded, a few times
/// smaller than its cells (a burst of 500k captured changes held 58 MB as
/// cells, about 20 MB as records).
#[derive(Debug)]
struct Parked {
    record: Vec<u8>,
    stored: Stored,
    changed: bool,
}

/// A row id's first 8 bytes (zeros after a shorter one) as a number: ids
/// whose prefixes differ order as the prefixes do.
fn key_prefix(id: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = id.len().min(8);
    b[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// The greatest row id a table's records hold.
#[derive(Debug)]
enum Greatest {
    /// The table has no record.
    Empty,
    Key(String),
    /// Unusable: every row is looked for.
    Unknown,
}

/// What `ZV_ROW` holds of an open record's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// The record `cells` were read from: it is updated.
    Yes,
    /// Nothing: the record is inserted.
    No,
    /// Not read yet: `cells` are the winners among the changes merged since, and
    /// [`Log::flush`] merges them into whatever `ZV_ROW` holds.
    Unread,
}

/// Writes changes into the log on one connection, with names, authors and
/// transactions numbered once and remembered: this is the hot path of capture and
/// of every pull.
pub struct Log<'c> {
    conn: &'c Connection,
    names: RefCell<Memo>,
    /// The names of tables alone (numbered with the other names): a batch's
    /// changes mostly name one, compared first.
    tables: RefCell<Memo>,
    authors: RefCell<Memo>,
    /// Replica ids by author number: asked only when two authors made one id.
    author_ids: RefCell<HashMap<i64, String>>,
    txs: RefCell<HashMap<(String, i64), i64>>,
    /// The last transaction asked for: a transaction's changes come one after another.
    last_tx: RefCell<Option<(String, i64, i64)>>,
    read: RefCell<Statement<'c>>,
    add: RefCell<Statement<'c>>,
    replace: RefCell<Statement<'c>>,
    history: RefCell<Statement<'c>>,
    known: RefCell<Statement<'c>>,
    /// Records merged into by [`Log::merge_held`] and not written yet, by table
    /// number and row id, but for the one in `current`.
    held: RefCell<HashMap<i64, HashMap<String, Parked>>>,
    /// The held record merged into last, decoded: a row's changes mostly come
    /// one after another (an insert's cells, a transaction's columns).
    current: RefCell<Option<(i64, String, Open)>>,
    /// About how much memory the parked records take.
    held_bytes: std::cell::Cell<usize>,
    /// The greatest row id of each table's records, as read once by
    /// [`Log::knows_entity`] and kept up to date by this `Log`'s inserts
    /// (forgotten with the held records, in case other code wrote the log).
    greatest: RefCell<HashMap<i64, Greatest>>,
    /// Where [`Log::merge_all_unread`] flushes by itself: [`HELD_BYTES`].
    held_budget: usize,
}

/// What [`Log::merge_all_unread`] holds before it flushes by itself.
const HELD_BYTES: usize = 64 << 20;
/// A parked row's memory beyond its key and record, about (its map entry and
/// the allocators' rounding).
const HELD_ROW_BYTES: usize = 96;

impl Open {
    /// The record of a row `ZV_ROW` does not hold.
    fn absent() -> Open {
        Open { cells: Vec::new(), past: Vec::new(), stored: Stored::No, changed: false }
    }
}

impl<'c> Log<'c> {
    pub fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Log {
            conn,
            names: RefCell::default(),
            tables: RefCell::default(),
            authors: RefCell::default(),
            author_ids: RefCell::default(),
            txs: RefCell::default(),
            last_tx: RefCell::default(),
            read: RefCell::new(conn.prepare(READ_RECORD)?),
            add: RefCell::new(conn.prepare("INSERT INTO ZV_ROW(type_n, entity_id, cells) VALUES (?1, ?2, ?3)")?),
            replace: RefCell::new(conn.prepare("UPDATE ZV_ROW SET cells = ?3 WHERE type_n = ?1 AND entity_id = ?2")?),
            // OR IGNORE: a change the history holds is a repeat, kept once.
            history: RefCell::new(conn.prepare(
                "INSERT OR IGNORE INTO ZV_HISTORY(type_n, entity_id, attr_n, id, author_n, tx_n, old_value, new_value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?),
            known: RefCell::new(
                conn.prepare("SELECT EXISTS (SELECT 1 FROM ZV_ROW WHERE type_n = ?1 AND entity_id = ?2)")?,
            ),
            held: RefCell::default(),
            current: RefCell::default(),
            held_bytes: std::cell::Cell::new(0),
            greatest: RefCell::default(),
            held_budget: HELD_BYTES,
        })
    }

    /// The number of a table or column name, numbered on first sight.
    pub fn name_n(&self, name: &str) -> Result<i64> {
        remembered(&self.names, name, || intern(self.conn, "ZV_NAME", "name", name))
    }

    /// [`Log::name_n`] of a table's name.
    pub fn table_n(&self, name: &str) -> Result<i64> {
        remembered(&self.tables, name, || intern(self.conn, "ZV_NAME", "name", name))
    }

    /// The `ZV_AUTHOR` number of replica `id`, numbered on first sight.
    pub fn author_n(&self, id: &str) -> Result<i64> {
        remembered(&self.authors, id, || intern(self.conn, "ZV_AUTHOR", "id", id))
    }

    /// The `ZV_TX` number of transaction `id` of author `author_n`, recorded on
    /// first sight.
    pub fn tx_n(&self, id: &str, author_n: i64) -> Result<i64> {
        if let Some((last, a, n)) = &*self.last_tx.borrow() {
            if last == id && *a == author_n {
                return Ok(*n);
            }
        }
        let key = (id.to_owned(), author_n);
        if let Some(n) = self.txs.borrow().get(&key).copied() {
            *self.last_tx.borrow_mut() = Some((key.0, author_n, n));
            return Ok(n);
        }
        let v = id_value(id);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO ZV_TX(id, author_n) VALUES (?1, ?2)")?
            .execute(params![v, author_n])?;
        let n: i64 = self
            .conn
            .prepare_cached("SELECT n FROM ZV_TX WHERE id = ?1 AND author_n = ?2")?
            .query_row(params![v, author_n], |r| r.get(0))?;
        self.txs.borrow_mut().insert(key, n);
        *self.last_tx.borrow_mut() = Some((id.to_owned(), author_n, n));
        Ok(n)
    }

    /// Merges `c` into the log: the winner of its cell now (the one it replaces
    /// goes to the history), superseded (it goes to the history), or already held.
    pub fn merge(&self, c: &Change) -> Result<Outcome> {
        self.forget();
        self.merge_now(&Parts::of(c))
    }

    /// [`Log::merge`] while records are held ([`Log::merge_held`]), of a row none
    /// of them is: its record is read and written at once, while its page is in
    /// the cache (a batch of updates to rows all over the log would otherwise
    /// read each page twice).
    pub fn merge_one(&self, c: &Change) -> Result<Outcome> {
        self.merge_now(&Parts::of(c))
    }

    fn merge_now(&self, c: &Parts<'_>) -> Result<Outcome> {
        let n = self.numbered(c)?;
        let mut open = self.open(n.type_n, c.entity_id)?;
        let outcome = self.merge_cell(&mut open, n.type_n, c.entity_id, cell_of(n, c))?;
        self.close(n.type_n, c.entity_id, &open)?;
        Ok(outcome)
    }

    /// [`Log::merge`], with the row's record kept in memory until [`Log::flush`]:
    /// a batch that changes a row several times reads and writes its record once.
    /// Nothing reads the log's records in between but this `Log`.
    pub fn merge_held(&self, c: &Change) -> Result<Outcome> {
        self.merge_parts_held(&Parts::of(c), Stored::Yes)
    }

    /// [`Log::merge_held`] of a change of a row the log does not hold (the
    /// caller asked [`Log::knows_entity`]): its record is not looked for.
    pub fn merge_held_new(&self, c: &Change) -> Result<Outcome> {
        self.merge_parts_held(&Parts::of(c), Stored::No)
    }

    /// Merges changes whose ids name one change each (changes this replica just
    /// made, its clock's ids), holding each row's record unread: the records are
    /// read and written by [`Log::flush`], which the caller must call before its
    /// transaction commits. The read waits so that it happens in key order, as the
    /// write does, on a page just read (a burst of captured writes to rows all
    /// over the log otherwise read a cold page per row, and wrote it once per
    /// few changes: `cargo bench --bench dimple capture`). Flushes by itself once
    /// about 64 MiB (`HELD_BYTES`) are held, which bounds the memory a burst takes.
    pub fn merge_all_unread<C: std::borrow::Borrow<Change>>(&self, changes: &[C]) -> Result<()> {
        for c in changes {
            self.merge_parts_held(&Parts::of(c.borrow()), Stored::Unread)?;
        }
        if self.held_bytes.get() >= self.held_budget {
            self.flush()?;
        }
        Ok(())
    }

    /// Merges into the held record of `c`'s row; a row not held yet is read now
    /// (`first` [`Stored::Yes`]), known to be absent ([`Stored::No`]), or left
    /// unread until the flush ([`Stored::Unread`]).
    fn merge_parts_held(&self, c: &Parts<'_>, first: Stored) -> Result<Outcome> {
        let n = self.numbered(c)?;
        let mut current = self.current.borrow_mut();
        let is_current = matches!(&*current, Some((t, e, _)) if *t == n.type_n && e == c.entity_id);
        if !is_current {
            self.park(current.take());
            let parked = self.held.borrow_mut().get_mut(&n.type_n).and_then(|rows| rows.remove(c.entity_id));
            let open = match parked {
                Some(p) => {
                    self.held_bytes.set(self.held_bytes.get() - parked_bytes(c.entity_id, &p));
                    let (cells, past) = record::decode_row(&p.record)?;
                    Open { cells, past, stored: p.stored, changed: p.changed }
                }
                None => match first {
                    Stored::Yes => self.open(n.type_n, c.entity_id)?,
                    Stored::No => Open::absent(),
                    Stored::Unread => Open { stored: Stored::Unread, ..Open::absent() },
                },
            };
            *current = Some((n.type_n, c.entity_id.to_owned(), open));
        }
        let (_, _, open) = current.as_mut().expect("the current record was just set");
        self.merge_cell(open, n.type_n, c.entity_id, cell_of(n, c))
    }

    /// Puts the record merged into last among the parked ones, encoded.
    fn park(&self, current: Option<(i64, String, Open)>) {
        let Some((type_n, entity_id, open)) = current else { return };
        let p =
            Parked { record: record::encode_row(&open.cells, &open.past), stored: open.stored, changed: open.changed };
        self.held_bytes.set(self.held_bytes.get() + parked_bytes(&entity_id, &p));
        self.held.borrow_mut().entry(type_n).or_default().insert(entity_id, p);
    }

    /// Writes every record the held merges changed, in key order; a record held
    /// unread is read first and the held cells merged into it.
    pub fn flush(&self) -> Result<()> {
        self.park(self.current.borrow_mut().take());
        let held = std::mem::take(&mut *self.held.borrow_mut());
        self.held_bytes.set(0);
        let mut rows: Vec<Option<(i64, String, Parked)>> =
            held.into_iter().flat_map(|(t, rows)| rows.into_iter().map(move |(e, p)| Some((t, e, p)))).collect();
        // Sorted by a small key, each row's first 8 bytes read as a number
        // (the whole row id compared only on a tie), and moved once: sorting the
        // rows themselves compared ids with memcmp and moved each row many
        // times, about a tenth of the ids a burst of 500k changes takes.
        let mut order: Vec<(i64, u64, usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (t, e, _) = r.as_ref().expect("every row is there");
                (*t, key_prefix(e), i)
            })
            .collect();
        let id = |i: usize| rows[i].as_ref().map(|r| r.1.as_str());
        order.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| id(a.2).cmp(&id(b.2))));
        let mut adds = Vec::with_capacity(ADD_ROWS);
        for (type_n, entity_id, parked) in order.into_iter().filter_map(|(_, _, i)| rows[i].take()) {
            if adds.len() == ADD_ROWS {
                self.add_all(&mut adds)?;
            }
            if parked.stored != Stored::Unread {
                match parked.stored {
                    Stored::No if parked.changed => adds.push((type_n, entity_id, parked.record)),
                    _ if parked.changed => self.write(type_n, &entity_id, &parked.record, parked.stored)?,
                    _ => {}
                }
                continue;
            }
            // In key order, a burst of new rows with growing ids is past the
            // greatest from its first one on: nothing to read.
            let mut stored =
                if self.past_greatest(type_n, &entity_id)? { Open::absent() } else { self.open(type_n, &entity_id)? };
            if stored.stored == Stored::No {
                adds.push((type_n, entity_id, parked.record));
                continue;
            }
            // The held changes meet the stored record, as if merged one by
            // one: what they superseded among themselves first, then their
            // winners (each newer than anything stored: it wins, and what it
            // supersedes joins the record's past or the history).
            let (cells, past) = record::decode_row(&parked.record)?;
            for cell in past.into_iter().chain(cells) {
                self.merge_cell(&mut stored, type_n, &entity_id, cell)?;
            }
            self.close(type_n, &entity_id, &stored)?;
        }
        self.add_all(&mut adds)
    }

    /// Inserts the records of rows `ZV_ROW` does not hold, [`ADD_ROWS`] to a
    /// statement when there are that many: a fresh pull inserts a record per
    /// row, and a statement each cost SQLite's per-statement work every time.
    fn add_all(&self, adds: &mut Vec<(i64, String, Vec<u8>)>) -> Result<()> {
        if adds.len() == ADD_ROWS {
            let mut stmt = self.conn.prepare_cached(add_rows_sql())?;
            for (i, (type_n, entity_id, record)) in adds.iter().enumerate() {
                stmt.raw_bind_parameter(3 * i + 1, type_n)?;
                stmt.raw_bind_parameter(3 * i + 2, entity_id)?;
                stmt.raw_bind_parameter(3 * i + 3, record)?;
            }
            stmt.raw_execute()?;
            for (type_n, entity_id, _) in adds.iter() {
                self.added(*type_n, entity_id);
            }
        } else {
            for (type_n, entity_id, record) in adds.iter() {
                self.write(*type_n, entity_id, record, Stored::No)?;
            }
        }
        adds.clear();
        Ok(())
    }

    /// Drops records held and not flushed: after an error, whose transaction the
    /// caller rolls back, they describe writes that never happened.
    pub fn forget(&self) {
        self.greatest.borrow_mut().clear();
        self.held.borrow_mut().clear();
        self.current.borrow_mut().take();
        self.held_bytes.set(0);
    }

    /// The numbers of change `c`, each given on first sight.
    fn numbered(&self, c: &Parts<'_>) -> Result<Numbers> {
        let author_n = self.author_n(c.author)?;
        Ok(Numbers {
            type_n: self.table_n(c.entity_type)?,
            attr_n: self.name_n(c.attribute)?,
            author_n,
            tx_n: self.tx_n(c.transaction_id, author_n)?,
        })
    }

    /// The record of a row, read.
    fn open(&self, type_n: i64, entity_id: &str) -> Result<Open> {
        Ok(match cells_at(&mut self.read.borrow_mut(), type_n, entity_id)? {
            Some((cells, past)) => Open { cells, past, stored: Stored::Yes, changed: false },
            None => Open::absent(),
        })
    }

    /// Writes a record back when a merge changed it.
    fn close(&self, type_n: i64, entity_id: &str, open: &Open) -> Result<()> {
        if open.changed {
            self.write(type_n, entity_id, &record::encode_row(&open.cells, &open.past), open.stored)?;
        }
        Ok(())
    }

    /// Writes `record`: over the stored one, or as the row's first.
    fn write(&self, type_n: i64, entity_id: &str, record: &[u8], stored: Stored) -> Result<()> {
        if stored == Stored::Yes {
            self.replace.borrow_mut().execute(params![type_n, entity_id, record])?;
            return Ok(());
        }
        self.add.borrow_mut().execute(params![type_n, entity_id, record])?;
        self.added(type_n, entity_id);
        Ok(())
    }

    /// Keeps the greatest row id of the table up to date after an insert.
    fn added(&self, type_n: i64, entity_id: &str) {
        if let Some(g) = self.greatest.borrow_mut().get_mut(&type_n) {
            match g {
                Greatest::Key(k) if entity_id <= k.as_str() => {}
                Greatest::Unknown => {}
                // Keys mostly grow row after row: the string is reused.
                Greatest::Key(k) => {
                    k.clear();
                    k.push_str(entity_id);
                }
                Greatest::Empty => *g = Greatest::Key(entity_id.to_owned()),
            }
        }
    }

    /// Merges `cell` into a row's open record, and into the history what it
    /// supersedes or what supersedes it.
    fn merge_cell(&self, open: &mut Open, type_n: i64, entity_id: &str, cell: Cell) -> Result<Outcome> {
        let mut failed = None;
        let merged = record::merge(&mut open.cells, cell, |a, b| match (self.author_id(a), self.author_id(b)) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            (Err(e), _) | (_, Err(e)) => {
                failed = Some(e);
                std::cmp::Ordering::Equal
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(match merged {
            Merged::Won(before) => {
                open.changed = true;
                if let Some(before) = before {
                    self.supersede(open, type_n, entity_id, before)?;
                }
                Outcome::Won
            }
            Merged::Duplicate => Outcome::Duplicate,
            // A change the history holds already is a repeat. The record's
            // past holds only changes that were winners here, which no
            // history row repeats, so a lost change is looked for in both.
            Merged::Lost(cell) if open.past.iter().any(|p| same_change(p, &cell)) => Outcome::Duplicate,
            Merged::Lost(cell) if self.to_history(type_n, entity_id, &cell)? => Outcome::Lost,
            Merged::Lost(_) => Outcome::Duplicate,
        })
    }

    /// Keeps `before`, a winner just superseded (never in the history: a
    /// change is stored once), in the record's past when it [`keeps`] it, else
    /// in the history.
    fn supersede(&self, open: &mut Open, type_n: i64, entity_id: &str, before: Cell) -> Result<()> {
        if keeps(&open.past, &before) {
            open.past.push(before);
        } else {
            self.to_history(type_n, entity_id, &before)?;
        }
        Ok(())
    }

    /// Puts a superseded change into the history; false when it was there.
    fn to_history(&self, type_n: i64, entity_id: &str, cell: &Cell) -> Result<bool> {
        let added = self.history.borrow_mut().execute(params![
            type_n,
            entity_id,
            cell.attr_n as i64,
            stored_id(&cell.id),
            cell.author_n as i64,
            cell.tx_n as i64,
            cell.old_value,
            cell.new_value
        ])?;
        Ok(added == 1)
    }

    /// The replica id of author number `n`.
    fn author_id(&self, n: u64) -> Result<String> {
        if let Some(id) = self.author_ids.borrow().get(&(n as i64)) {
            return Ok(id.clone());
        }
        let id = author_of(self.conn, n)?;
        self.author_ids.borrow_mut().insert(n as i64, id.clone());
        Ok(id)
    }

    /// Whether the log holds any change of row `entity_id` of table number `type_n`.
    /// A pull asks once per row: when it holds none, the winner of each of the
    /// row's cells is found among the pulled changes alone, without a seek per change.
    ///
    /// A row id greater than every one the table's records hold is not looked
    /// for: app keys that grow (time-ordered ids, counters) make most rows of a
    /// fresh replica's pull such a row, and the seek that finds nothing was a
    /// tenth of the merge (`cargo bench --bench dimple apply`).
    pub fn knows_entity(&self, type_n: i64, entity_id: &str) -> Result<bool> {
        if self.past_greatest(type_n, entity_id)? {
            return Ok(false);
        }
        Ok(self.known.borrow_mut().query_row(params![type_n, entity_id], |r| r.get(0))?)
    }

    /// Whether `entity_id` is past the greatest row id table `type_n`'s records
    /// hold, so that the log certainly holds no record of it.
    fn past_greatest(&self, type_n: i64, entity_id: &str) -> Result<bool> {
        let mut greatest = self.greatest.borrow_mut();
        let g = match greatest.entry(type_n) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let last: Option<Value> = self
                    .conn
                    .prepare_cached("SELECT entity_id FROM ZV_ROW WHERE type_n = ?1 ORDER BY entity_id DESC LIMIT 1")?
                    .query_row([type_n], |r| r.get(0))
                    .optional()?;
                e.insert(match last {
                    None => Greatest::Empty,
                    Some(Value::Text(t)) => Greatest::Key(t),
                    // Not text (a damaged file): SQLite's order is not a string's.
                    Some(_) => Greatest::Unknown,
                })
            }
        };
        Ok(match g {
            Greatest::Empty => true,
            Greatest::Key(k) => entity_id > k.as_str(),
            Greatest::Unknown => false,
        })
    }
}

/// The cell change `c` (numbered `n`) would be in a record.
fn cell_of(n: Numbers, c: &Parts<'_>) -> Cell {
    Cell {
        attr_n: n.attr_n as u64,
        id: Id::of(c.id),
        author_n: n.author_n as u64,
        tx_n: n.tx_n as u64,
        old_value: c.old_value.map(str::to_owned),
        new_value: c.new_value.map(str::to_owned),
    }
}

/// Records of new rows inserted by one statement ([`Log::add_all`]).
const ADD_ROWS: usize = 32;

fn add_rows_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows = vec!["(?, ?, ?)"; ADD_ROWS].join(", ");
        format!("INSERT INTO ZV_ROW(type_n, entity_id, cells) VALUES {rows}")
    })
}

/// How many superseded changes a record keeps at most: a row updated often
/// would otherwise rewrite an ever longer record at each update; its later
/// changes go to `ZV_HISTORY`, whose rows are appends.
const PAST_CELLS: usize = 16;
/// The most value bytes (old and new) of a superseded change a record keeps:
/// larger ones go to the history, so that a record stays about as small as its
/// winners.
const PAST_VALUE_BYTES: usize = 256;

/// Whether a record whose past is `past` keeps `c` there too.
fn keeps(past: &[Cell], c: &Cell) -> bool {
    let bytes = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    past.len() < PAST_CELLS && bytes(&c.old_value) + bytes(&c.new_value) <= PAST_VALUE_BYTES
}

/// Whether `a` and `b` are one change of one cell: its id and author.
fn same_change(a: &Cell, b: &Cell) -> bool {
    a.attr_n == b.attr_n && a.id == b.id && a.author_n == b.author_n
}

/// About the memory a parked record takes.
fn parked_bytes(entity_id: &str, p: &Parked) -> usize {
    HELD_ROW_BYTES + entity_id.len() + p.record.len()
}

/// The merge order of two changes of one cell, (`id`, `author`) against
/// (`other_id`, `other_author`): the id as the log stores and compares it (a
/// canonical UUID's 16 bytes sort after any id kept as text, each kind bytewise),
/// then the author's id text. The same rule as `crate::record::merge`, which the log
/// merges by, for a cell whose changes the caller holds in memory.
pub fn merge_order(id: &str, author: &str, other_id: &str, other_author: &str) -> std::cmp::Ordering {
    let stored = |id: &str| crate::layout::is_canonical_uuid(id);
    (stored(id), id, author).cmp(&(stored(other_id), other_id, other_author))
}

/// The SQL reading a row's record, for [`cells_at`].
const READ_RECORD: &str = "SELECT cells FROM ZV_ROW WHERE type_n = ?1 AND entity_id = ?2";

/// A record's cells and past.
type Row = (Vec<Cell>, Vec<Cell>);

/// The cells and past of the record of row `entity_id` of table number
/// `type_n`, read by `stmt` ([`READ_RECORD`]); None when the log has no change
/// of the row.
fn cells_at(stmt: &mut Statement<'_>, type_n: i64, entity_id: &str) -> Result<Option<Row>> {
    let bytes: Option<Vec<u8>> = stmt.query_row(params![type_n, entity_id], |r| r.get(0)).optional()?;
    bytes.map(|b| record::decode_row(&b)).transpose()
}

/// The cells and past of the record of (`table`, `entity_id`), None when the
/// log has no change of the row.
fn record_of(conn: &Connection, table: &str, entity_id: &str) -> Result<Option<Row>> {
    let Some(t) = known_name(conn, table)? else { return Ok(None) };
    let mut stmt = conn.prepare_cached(READ_RECORD)?;
    cells_at(&mut stmt, t, entity_id)
}

/// The record in column `i` of `row`, which must be bytes.
fn record_in<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r [u8]> {
    row.get_ref(i)?
        .as_blob()
        .map_err(|_| crate::error::Error::Invalid("a row record of the change log is not bytes".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An id as remote input may hold it: canonical UUIDs (stored as bytes) from a
    /// few values, so that ties happen, and text that is not one.
    pub(crate) fn any_id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4).prop_map(|i| format!("0190a000-0000-7000-8000-00000000000{i}")),
            (0u8..4).prop_map(|i| format!("0190A000-0000-7000-8000-00000000000{i}")),
            "[0-9a-z-]{0,6}",
        ]
    }

    proptest! {
        /// The flush writes rows in key order by their prefixes, then their ids:
        /// a prefix never orders two ids otherwise than the ids themselves.
        #[test]
        fn a_row_ids_prefix_orders_as_the_row_id(a in "(?s).{0,12}", b in "(?s).{0,12}", common in "(?s).{0,9}") {
            let (a, b) = (format!("{common}{a}"), format!("{common}{b}"));
            match key_prefix(&a).cmp(&key_prefix(&b)) {
                std::cmp::Ordering::Equal => {}
                by_prefix => prop_assert_eq!(by_prefix, a.cmp(&b), "{:?} {:?}", a, b),
            }
        }
    }

    /// Id number `n` as one clock makes them: a few a millisecond, mostly from
    /// one node, so that records hold ids in every form (src/record/mod.rs).
    fn clock_id(n: usize) -> String {
        let n = n as u128;
        let node = if n.is_multiple_of(7) { 2 } else { 1 };
        let v = ((0x0190_a000_0000 + n / 3) << 80) | (0x7 << 76) | (0b10 << 62) | ((n % 3) << 32) | node;
        uuid::Uuid::from_u128(v).hyphenated().to_string()
    }

    /// A change of cell (t, k, a) with id `id`, by `author`, setting `value`.
    pub(crate) fn cell_change(id: &str, author: &str, value: Option<String>) -> Change {
        Change {
            id: id.to_owned(),
            transaction_id: "tx".into(),
            entity_type: "t".into(),
            entity_id: "k".into(),
            attribute: "a".into(),
            old_value: None,
            new_value: value,
            author: author.to_owned(),
        }
    }

    fn log_rows(conn: &Connection) -> Vec<Vec<Value>> {
        let mut stmt = conn.prepare("SELECT * FROM ZV_LOG ORDER BY 1, 2, 3, 4, 5").unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect()).unwrap().map(Result::unwrap).collect()
    }

    proptest! {
        /// Merging changes with their records held unread, whether the log
        /// holds their rows already or not and wherever the flushes fall, leaves
        /// the log that merging them one by one leaves. As for a capture, each
        /// has an id of its own that the log does not hold yet (a clock's ids),
        /// though not in order: repeats are what the merge path is for.
        #[test]
        fn merging_unread_stores_what_merge_stores(
            changes in proptest::collection::vec((0usize..40, "[a-c]", "[xy*]"), 0..100),
            contents in proptest::collection::vec((proptest::option::of("[ -~]{0,8}"), 0u8..3), 40),
            stored_first in 0usize..100,
            flush_every in 1usize..40,
            budget in 0usize..4000,
        ) {
            let changes: Vec<Change> = changes
                .into_iter()
                .map(|(id, entity, attribute)| Change {
                    id: clock_id(id),
                    transaction_id: format!("0190a000-0000-7000-8000-00000000ff{:02x}", contents[id].1),
                    entity_type: "t".into(),
                    entity_id: entity,
                    attribute,
                    old_value: None,
                    new_value: contents[id].0.clone(),
                    author: "me".into(),
                })
                .collect();
            let (before, held) = changes.split_at(stored_first.min(changes.len()));
            let mut seen: std::collections::HashSet<&str> = before.iter().map(|c| c.id.as_str()).collect();
            let held: Vec<Change> = held.iter().filter(|c| seen.insert(&c.id)).cloned().collect();
            let (one, all) = (open_log(), open_log());
            let log = Log::new(&one).unwrap();
            for c in before.iter().chain(&held) {
                log.merge(c).unwrap();
            }
            let mut log = Log::new(&all).unwrap();
            // Flushes by the caller, and by the log itself once over its budget.
            log.held_budget = budget;
            for c in before {
                log.merge(c).unwrap();
            }
            for part in held.chunks(flush_every) {
                log.merge_all_unread(part).unwrap();
                prop_assert!(log.held_bytes.get() < budget.max(1));
            }
            log.flush().unwrap();
            prop_assert_eq!(log_rows(&one), log_rows(&all));
        }

        /// The log's merge of a cell's changes, one by one, agrees with the
        /// in-memory order a batch uses for rows new to the log: a change wins
        /// exactly when it is greater than every change before it, is a repeat
        /// exactly when it equals one, and the cell's winner is the greatest.
        #[test]
        fn the_log_merges_by_merge_order(
            changes in proptest::collection::vec((any_id(), "[a-c]{1,2}"), 1..12)
        ) {
            let conn = open_log();
            let log = Log::new(&conn).unwrap();
            let mut seen: Vec<(&str, &str)> = Vec::new();
            for (id, author) in &changes {
                let outcome = log.merge(&cell_change(id, author, Some(format!("{id}/{author}")))).unwrap();
                let expected = if seen.iter().any(|(i, a)| merge_order(id, author, i, a).is_eq()) {
                    Outcome::Duplicate
                } else if seen.iter().all(|(i, a)| merge_order(id, author, i, a).is_gt()) {
                    Outcome::Won
                } else {
                    Outcome::Lost
                };
                prop_assert_eq!(&outcome, &expected, "{} by {}", id, author);
                if expected != Outcome::Duplicate {
                    seen.push((id, author));
                }
            }
            let (id, author) = *seen.iter().max_by(|(i, a), (j, b)| merge_order(i, a, j, b)).unwrap();
            let w = winner(&conn, "t", "k", "a").unwrap().unwrap();
            prop_assert_eq!((w.id.as_str(), w.author.as_str()), (id, author));
            prop_assert_eq!(w.new_value, Some(format!("{id}/{author}")));
            // Every change is held once: the winner in the record, the rest in the history.
            prop_assert_eq!(count(&conn).unwrap(), seen.len() as i64);
        }
    }

    proptest! {
        #[test]
        fn whether_the_log_knows_a_row_is_what_it_holds(
            steps in proptest::collection::vec((any::<bool>(), "[a-c\u{e9}\u{10000}]{0,3}"), 1..40),
        ) {
            // Merged rows and questions, interleaved: the log's answer is always
            // the table's, whatever the keys' order (non-ASCII included).
            let conn = open_log();
            let log = Log::new(&conn).unwrap();
            for (i, (merge, key)) in steps.iter().enumerate() {
                if *merge {
                    let mut c = cell_change(&format!("0190a000-0000-7000-8000-0000000000{i:02x}"), "me", None);
                    c.entity_id.clone_from(key);
                    log.merge_one(&c).unwrap();
                    continue;
                }
                let t = log.name_n("t").unwrap();
                let held: bool = conn
                    .query_row("SELECT EXISTS (SELECT 1 FROM ZV_ROW WHERE type_n = ?1 AND entity_id = ?2)", params![t, key], |r| r.get(0))
                    .unwrap();
                prop_assert_eq!(log.knows_entity(t, key).unwrap(), held, "row {:?}", key);
            }
        }

        /// Taking a change out of the log (a fork's unpushed change) leaves the
        /// log that merging the others alone leaves: when it was the winner, the
        /// greatest of the rest takes its place from the history.
        #[test]
        fn removing_a_change_leaves_the_log_of_the_others(
            changes in proptest::collection::btree_set((0u8..12, "[a-c]"), 1..10),
            pick in any::<proptest::sample::Index>(),
        ) {
            let changes: Vec<Change> = changes
                .into_iter()
                .map(|(i, author)| cell_change(&format!("0190a000-0000-7000-8000-0000000000{i:02x}"), &author, Some(format!("{i}{author}"))))
                .collect();
            let gone = pick.index(changes.len());
            let (with, without) = (open_log(), open_log());
            let log = Log::new(&with).unwrap();
            for c in &changes {
                log.merge(c).unwrap();
            }
            remove_own(&with, &changes[gone]).unwrap();
            let other = Log::new(&without).unwrap();
            for (i, c) in changes.iter().enumerate() {
                if i != gone {
                    other.merge(c).unwrap();
                }
            }
            let text = |c: &Connection| {
                let mut stmt = c.prepare("SELECT c.id, a.id, c.new_value FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n ORDER BY 1, 2").unwrap();
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?)))
                    .unwrap().map(Result::unwrap).collect::<Vec<_>>()
            };
            prop_assert_eq!(text(&with), text(&without));
            prop_assert_eq!(winner(&with, "t", "k", "a").unwrap(), winner(&without, "t", "k", "a").unwrap());
        }
    }

    /// A log in memory, readable through its views.
    fn open_log() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::migrate::SCHEMA).unwrap();
        register(&conn).unwrap();
        conn
    }
}
