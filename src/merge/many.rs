//! Merging a whole pulled batch: the log and the clock change by change, then each
//! touched row written once.
//!
//! A pulled insert is a row marker plus one change per column; writing them one by
//! one costs an existence check, a materialize and an UPDATE per column. Deferring
//! the table writes to the end of the batch gives the same rows, because what
//! [`Merger::apply_remote`] leaves in a row depends only on the winners:
//! - the last winning row marker of the batch is `false`: the row is gone (later
//!   column updates hit no row);
//! - it is `true` after a `false` in the same batch: the row was deleted and then
//!   rebuilt from the winners;
//! - it is `true` with no `false`: an absent row is built from the winners, an
//!   existing one keeps its columns and takes the winning column changes;
//! - no row marker won: the winning column changes are applied (to no row if absent).
//!
//! Whether a change wins is one seek into the log per change, except for a row the
//! log held nothing of before the batch (every row of a fresh replica's first
//! pull): one seek finds that out, and its cells' winners are then found among
//! the batch's own changes in memory ([`crate::log::merge_order`]), and the
//! changes are stored 32 to a statement once all are judged
//! ([`crate::log::Log::merge_held_new`]). 1M pulled changes of 200k rows took 3.0 s
//! with a seek each, 2.5 s with the winners in memory, and with the checks on
//! their own thread (`sync::check`) 2.05 s with a statement per change and 1.70 s
//! with 32 to a statement.
//!
//! Rows are written in the order the batch first touched them. A row the batch
//! rebuilds and holds a winner for every column of is written from the batch's
//! values: they are the winners, so reading them back from the log is not needed.

use super::{key_values, Change, Merger, Outcome, ALIVE, DEAD};
use crate::error::Result;
use crate::log::merge_order;
use crate::track::{TableInfo, ROW};
use std::collections::HashMap;

/// Which row each change of a batch names, worked out where the batch is read:
/// the check thread ([`crate::sync`]) has just written the strings it compares,
/// while the merging thread, reading them first, waited for them to reach its
/// core (the comparison of a change's row with the row before was about 4% of
/// the merging thread's time).
#[derive(Debug, Default)]
pub struct RowIndex {
    /// For each change, its row's number; rows are numbered in the order the
    /// batch first names them.
    of: Vec<usize>,
    /// For each row, its first change, and whether its table differs from the
    /// row before's.
    rows: Vec<(usize, bool)>,
}

impl RowIndex {
    pub fn of(changes: &[Change]) -> RowIndex {
        let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(changes.len() / 4 + 1);
        let mut of = Vec::with_capacity(changes.len());
        let mut rows: Vec<(usize, bool)> = Vec::with_capacity(changes.len() / 4 + 1);
        for (k, c) in changes.iter().enumerate() {
            // A row's changes mostly come one after another (an insert's cells
            // are one transaction's): the row of the change before needs no hash.
            let i = match k.checked_sub(1).map(|b| &changes[b]) {
                Some(b) if b.entity_id == c.entity_id && b.entity_type == c.entity_type => of[k - 1],
                _ => *index.entry((c.entity_type.as_str(), c.entity_id.as_str())).or_insert(rows.len()),
            };
            if i == rows.len() {
                let new_table = rows.last().is_none_or(|&(first, _)| changes[first].entity_type != c.entity_type);
                rows.push((k, new_table));
            }
            of.push(i);
        }
        RowIndex { of, rows }
    }
}

/// What the batch holds of one row it names.
struct Row<'a> {
    entity_id: &'a str,
    /// The table as tracked here, looked up once per row (a lookup per change
    /// hashed its name twice).
    info: Option<&'a TableInfo>,
    seen: Seen<'a>,
    /// Its winners to write, once it has one in a tracked table.
    touched: Option<Touched<'a>>,
}

#[derive(Default)]
struct Touched<'a> {
    /// The last winning row state in the batch.
    row: Option<&'a str>,
    died: bool,
    /// Winning column values by column index, the last one kept.
    columns: Vec<(usize, Option<&'a str>)>,
}

/// What the batch knows of one row it names.
struct Seen<'a> {
    /// How many of the batch's changes name the row.
    changes: usize,
    /// Whether the log was asked about the row yet (at its first change).
    asked: bool,
    /// The log held changes of this row before the batch, or the row has one
    /// change here: each change's winner check is a seek into the log. Otherwise
    /// the batch's own changes are all there is, and the winners so far are kept
    /// here.
    known: bool,
    /// For a row the log did not know: per cell (attribute), the (id, author) of
    /// the batch's greatest change so far.
    best: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'c> Merger<'c> {
    /// Merges `changes` (checked by the caller) and writes every touched row of a
    /// tracked table once. Returns how many changes won.
    pub fn apply_many(&self, changes: &[Change]) -> Result<usize> {
        self.apply_indexed(changes, &RowIndex::of(changes))
    }

    /// [`Merger::apply_many`] with the rows of `changes` worked out already.
    pub fn apply_indexed(&self, changes: &[Change], index: &RowIndex) -> Result<usize> {
        assert_eq!(index.of.len(), changes.len(), "an index of these changes");
        // Records held from a call that failed describe a rolled-back transaction.
        self.log.forget();
        let mut rows: Vec<Row> = Vec::with_capacity(index.rows.len());
        for &(first, new_table) in &index.rows {
            let c = &changes[first];
            // A batch's rows are mostly of one table: the row before's lookup is reused.
            let info = match rows.last() {
                Some(r) if !new_table => r.info,
                _ => self.tables.get(&c.entity_type),
            };
            let seen = Seen { changes: 0, asked: false, known: true, best: Vec::new() };
            rows.push(Row { entity_id: &c.entity_id, info, seen, touched: None });
        }
        let row_of = &index.of;
        for &i in row_of {
            rows[i].seen.changes += 1;
        }
        let mut won = 0;
        let mut unstored: Vec<&Change> = Vec::new();
        // Rows with a winner to write, in the order of their first.
        let mut order: Vec<usize> = Vec::new();
        for (c, &i) in changes.iter().zip(row_of) {
            let Row { seen: s, touched, info, .. } = &mut rows[i];
            let info = *info;
            if !s.asked {
                s.asked = true;
                // A row with one change here costs a seek either way: only a row
                // with more is asked about, before any of its changes is stored.
                if s.changes > 1 && !self.log.knows_entity(self.log.table_n(&c.entity_type)?, &c.entity_id)? {
                    s.known = false;
                    // One cell per column and the row's own, when the table is tracked here.
                    s.best.reserve(info.map_or(4, |t| t.columns.len() + 1));
                }
            }
            if self.merge_log_in(c, s, &mut unstored)? != Outcome::Won {
                continue;
            }
            won += 1;
            let Some(info) = info else { continue };
            let column =
                if c.attribute == ROW { None } else { info.columns.iter().position(|col| *col == c.attribute) };
            if c.attribute != ROW && column.is_none() {
                continue; // a column this replica does not have (yet)
            }
            let t = touched.get_or_insert_with(|| {
                order.push(i);
                let columns = Vec::with_capacity(info.columns.len());
                Touched { columns, ..Touched::default() }
            });
            match column {
                None => {
                    t.died |= c.new_value.as_deref() == Some(DEAD);
                    t.row = c.new_value.as_deref();
                }
                Some(i) => match t.columns.iter_mut().find(|(j, _)| *j == i) {
                    Some(slot) => slot.1 = c.new_value.as_deref(),
                    None => t.columns.push((i, c.new_value.as_deref())),
                },
            }
        }
        // Before any row is written: writing one may read its winners from the log.
        for c in unstored {
            self.log.merge_held_new(c)?;
        }
        self.log.flush()?;
        // Rows written 32 to a statement, in order: any other write waits for them.
        let mut held = super::Rows::default();
        for i in order {
            let Row { entity_id, touched, info, .. } = &rows[i];
            let t = touched.as_ref().expect("a row in the order has a winner");
            let info = info.expect("a row with a winner to write is of a tracked table");
            let key = key_values(info, entity_id)?;
            // When the batch holds a winner for every column, it knows the whole row:
            // no need to read the winners back from the log.
            let whole = t.columns.len() == info.columns.len();
            let from_batch = |i: usize| t.columns.iter().find(|(j, _)| *j == i).map(|(_, v)| *v);
            // A winner for every column: the upsert leaves the same row whether
            // or not it existed, without looking first.
            if matches!(t.row, Some(ALIVE)) && !t.died && whole {
                self.write_row_held(&mut held, info, entity_id, &key, from_batch)?;
                continue;
            }
            self.write_rows(&mut held)?;
            match t.row {
                Some(ALIVE) if t.died => {
                    self.delete(info, &key)?;
                    if whole {
                        self.write_row(info, entity_id, &key, true, from_batch)?;
                    } else {
                        self.materialize(info, entity_id, &key)?;
                    }
                }
                Some(ALIVE) if !self.row_exists(info, &key)? => {
                    if whole {
                        self.write_row(info, entity_id, &key, true, from_batch)?;
                    } else {
                        self.materialize(info, entity_id, &key)?;
                    }
                }
                Some(ALIVE) | None => {
                    for (i, v) in &t.columns {
                        self.update_column(info, entity_id, &key, *i, *v)?;
                    }
                }
                _ => self.delete(info, &key)?,
            }
        }
        self.write_rows(&mut held)?;
        Ok(won)
    }

    /// [`Merger::merge_log`] for a change of a row the batch has `seen`. A change of
    /// a row new to the log is judged in memory and left in `unstored`, for the
    /// caller to store with [`crate::log::Log::merge_held_new`].
    fn merge_log_in<'a>(&self, c: &'a Change, seen: &mut Seen<'a>, unstored: &mut Vec<&'a Change>) -> Result<Outcome> {
        if seen.known {
            return if seen.changes == 1 { self.log.merge_one(c) } else { self.log.merge_held(c) };
        }
        let mine = (c.id.as_str(), c.author.as_str());
        let outcome = match seen.best.iter_mut().find(|(attribute, ..)| *attribute == c.attribute) {
            None => {
                seen.best.push((&c.attribute, mine.0, mine.1));
                Outcome::Won
            }
            Some(best) => match merge_order(mine.0, mine.1, best.1, best.2) {
                std::cmp::Ordering::Greater => {
                    (best.1, best.2) = mine;
                    Outcome::Won
                }
                // The batch repeats its cell's winner so far: the log holds it once.
                std::cmp::Ordering::Equal => return Ok(Outcome::Duplicate),
                // A repeat of an older change is stored once too (the insert skips it).
                std::cmp::Ordering::Less => Outcome::Lost,
            },
        };
        unstored.push(c);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn replica() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::migrate::SCHEMA).unwrap();
        crate::log::register(&c).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id TEXT PRIMARY KEY, a, b DEFAULT 'dflt');
             INSERT INTO ZV_TRACKED VALUES ('t', '[\"id\"]', '[\"a\",\"b\"]', 'now');
             -- a row written before any change about it arrived
             INSERT INTO t VALUES ('k0', 'local', 'local');",
        )
        .unwrap();
        c
    }

    fn rows(c: &Connection) -> Vec<(String, String)> {
        c.prepare("SELECT id, quote(a) || ',' || quote(b) FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_changes(rng: &mut Rng, n: usize) -> Vec<Change> {
        let mut ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 100).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        ids.into_iter()
            .map(|id| {
                let attribute = ["*", "*", "a", "b", "z"][rng.below(5) as usize];
                let new_value = match attribute {
                    "*" => [ALIVE, ALIVE, DEAD][rng.below(3) as usize].to_owned(),
                    _ => rng.below(50).to_string(),
                };
                Change {
                    id: format!("{id:012}"),
                    transaction_id: "tx".to_owned(),
                    entity_type: "t".to_owned(),
                    entity_id: format!("k{}", rng.below(4)),
                    attribute: attribute.to_owned(),
                    old_value: None,
                    new_value: Some(new_value),
                    author: "remote".to_owned(),
                }
            })
            .collect()
    }

    /// Batch-wise merging leaves the same rows as merging change by change, for
    /// any arrival order, batch boundaries, duplicates, deletes and re-inserts.
    #[test]
    fn many_at_once_equals_one_by_one() {
        let mut rng = Rng(0x5eed);
        for round in 0..300 {
            let n = 1 + rng.below(40) as usize;
            let changes = random_changes(&mut rng, n);
            let (one, many) = (replica(), replica());
            {
                let m = Merger::new(&one).unwrap();
                for c in changes.iter().chain(&changes[..changes.len() / 2]) {
                    m.apply_remote(c).unwrap();
                }
            }
            {
                let m = Merger::new(&many).unwrap();
                let mut rest: &[Change] = &changes;
                while !rest.is_empty() {
                    let k = 1 + rng.below(rest.len() as u64) as usize;
                    m.apply_many(&rest[..k]).unwrap();
                    rest = &rest[k..];
                }
                m.apply_many(&changes[..changes.len() / 2]).unwrap();
            }
            assert_eq!(rows(&one), rows(&many), "round {round}: {changes:#?}");
        }
    }

    /// Issue 9: two authors may publish the same id (a member copying another's).
    /// Both changes are kept, the greater (id, author) wins, and the result is the
    /// same in any arrival order, batch-wise or one by one.
    #[test]
    fn shared_ids_from_two_authors_merge_the_same_in_any_order() {
        let mut rng = Rng(0xa11ce);
        for round in 0..200 {
            let n = 1 + rng.below(30) as usize;
            let mut changes = random_changes(&mut rng, n);
            let mut seen = std::collections::HashSet::new();
            for c in changes.iter_mut() {
                c.id = format!("{:012}", 100 + rng.below(8)); // few ids: many shared
                c.author = ["m", "n"][rng.below(2) as usize].to_owned();
            }
            changes.retain(|c| seen.insert((c.id.clone(), c.author.clone())));
            let mut reversed = changes.clone();
            reversed.reverse();
            let results: Vec<Vec<(String, String)>> = [&changes, &reversed]
                .iter()
                .enumerate()
                .map(|(i, order)| {
                    let c = replica();
                    // No row outside the log here: with one, arrival order may matter.
                    c.execute_batch("DELETE FROM t;")
                        .unwrap();
                    let m = Merger::new(&c).unwrap();
                    if i == 0 {
                        for ch in order.iter() {
                            m.apply_remote(ch).unwrap();
                        }
                    } else {
                        m.apply_many(order).unwrap();
                    }
                    drop(m);
                    // Every change is in the log, and each clock entry is the greatest (id, author).
                    let logged: i64 = c.query_row("SELECT count(*) FROM ZV_CHANGE", [], |r| r.get(0)).unwrap();
                    assert_eq!(logged as usize, changes.len(), "round {round}");
                    let mut stmt = c.prepare(
                        "SELECT k.entity_id, k.attribute, k.change_id, a.id FROM ZV_CLOCK k JOIN ZV_AUTHOR a ON a.n = k.author_n",
                    )
                    .unwrap();
                    let clock = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?)))
                        .unwrap()
                        .map(Result::unwrap);
                    for (e, a, id, author) in clock {
                        let best = changes
                            .iter()
                            .filter(|c| c.entity_id == e && c.attribute == a)
                            .map(|c| (c.id.clone(), c.author.clone()))
                            .max()
                            .unwrap();
                        assert_eq!((id, author), best, "round {round}");
                    }
                    rows(&c)
                })
                .collect();
            assert_eq!(results[0], results[1], "round {round}: {changes:#?}");
        }
    }
}
