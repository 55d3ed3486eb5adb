//! The record of one row's winning changes (docs/design/log-per-row.md): the
//! form of `ZV_ROW.cells` (schema/log.sql). `table` holds `dimple_cells` and
//! `dimple_past`, the functions through which SQL reads a record as rows.
//!
//! Why a record: a log with a row per change (local schema 5) repeated, for the
//! bench's workload, the row key (23 bytes) and a 16-byte id in every change,
//! most of its size. A record per table row holds the winner of each of its cells once, the
//! row key once, and each id after the first as the difference from the one
//! before it when both come from the same node (one transaction's ids differ
//! only in their counter): a few bytes.
//!
//! The form, cells in ascending attribute number, each:
//! - the attribute number (varint);
//! - the id: tag 0 and its 16 bytes; tag 1 and the difference of its bits above
//!   the node (varint) from the previous cell's id, when that id is smaller and
//!   has the same node (tag 3 and two varints, high part first, for a difference
//!   of 64 bits or more); tag 2 and its text (varint length, then the bytes), for
//!   an id the log keeps as text ([`crate::log::id_value`]);
//! - the author and transaction numbers (varints);
//! - the old and the new value: varint 0 for none, else length + 1 and the bytes.
//!
//! Form 3 (local schema 9) leaves out the author and transaction numbers of a
//! change that has those of the change before it in the record, and says so
//! with bit [`SAME_TX`] of its id's tag: the cells of one insert, and mostly
//! a row's whole record, are one transaction's. Two bytes a cell, a tenth of
//! the bench's records. It also leaves out a change's old value when that is
//! the new value of the change it superseded, kept in the same record (bit
//! [`OLD_KEPT`]): an update's old value is mostly the value its row's past
//! keeps, so an update kept with its past costs its new value once, not three
//! times.
//!
//! A record may also keep its row's past (local schema 8): after the cells, a
//! varint 0 (no attribute number follows another that is not smaller) and the
//! changes the winners superseded here, in the order they were superseded,
//! each in the cells' form, its id a difference from the cell before (a past
//! change's, or the last winner's for the first) or from the record's first id.
//! The change an update supersedes is mostly its row's insert, a few counts
//! from the record's first id: a few bytes where a row of `ZV_HISTORY` took
//! about 65 (the row key and a 16-byte id each time). A record with no past
//! ends after its cells, as before.
//!
//! Records are written by this replica only (a snapshot carries its winners
//! alone), yet a broken one is refused with an error, never a panic: a file can
//! be damaged.

use crate::error::{Error, Result};
use crate::packed::{put_opt, put_text, put_varint};

mod ids;
mod table;
use ids::{
    apply, apply_delta, form_1_tag, form_of, put_id, put_id_form_1, Rel, DELTA, FAR, FIRST_DELTA, FIRST_FAR, FULL,
    TEXT, WIDE_DELTA,
};
pub use table::register;

/// A change id as the log stores it: 16 bytes, or text when it is not a
/// canonical UUID. The order is the merge's: any id kept as text before any
/// UUID, each kind bytewise (as SQLite orders the log's TEXT and BLOB ids).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Id {
    Text(String),
    Uuid([u8; 16]),
}

impl Id {
    /// The stored form of id text ([`crate::log::id_value`]).
    pub fn of(id: &str) -> Id {
        match crate::layout::uuid_bytes(id) {
            Some(b) => Id::Uuid(b),
            None => Id::Text(id.to_owned()),
        }
    }
}

/// What merging a change into a row's cells did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// It is its cell's winner now; the winner before it, if any, is superseded
    /// (history, in the new layout).
    Won(Option<Cell>),
    /// The cell's winner is newer: the change (given back) is history.
    Lost(Cell),
    /// The cell's winner is this very change.
    Duplicate,
}

/// Merges change `c` into `cells` (a record's, in attribute order) by the log's
/// rule: the greatest id wins, then the greater author id. `authors` orders two
/// different author numbers by their replica ids; it is asked only when two
/// authors made the same id (a member copying another's), so the common case
/// needs no lookup. The same rule as [`crate::log::merge_order`].
pub fn merge(cells: &mut Vec<Cell>, c: Cell, authors: impl FnOnce(u64, u64) -> std::cmp::Ordering) -> Merged {
    match cells.binary_search_by_key(&c.attr_n, |x| x.attr_n) {
        Err(at) => {
            cells.insert(at, c);
            Merged::Won(None)
        }
        Ok(at) => {
            let w = &cells[at];
            let by_author = |a: u64, b: u64| if a == b { std::cmp::Ordering::Equal } else { authors(a, b) };
            match c.id.cmp(&w.id).then_with(|| by_author(c.author_n, w.author_n)) {
                std::cmp::Ordering::Greater => Merged::Won(Some(std::mem::replace(&mut cells[at], c))),
                std::cmp::Ordering::Equal => Merged::Duplicate,
                std::cmp::Ordering::Less => Merged::Lost(c),
            }
        }
    }
}

/// The winning change of one cell of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub attr_n: u64,
    pub id: Id,
    pub author_n: u64,
    pub tx_n: u64,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

/// Form 3: set on an id's tag when its change has the author and transaction
/// numbers of the change before it in the record (which are then not
/// written), and only then.
const SAME_TX: u8 = 0x08;
/// Form 3: set on an id's tag when its change's old value is the new value of
/// the change it superseded ([`superseded`]) and is not written, and only then.
const OLD_KEPT: u8 = 0x10;

/// The change that change `i` of `all` (a record's cells, then from
/// `past_from` on its past) superseded, as far as the record's past knows: of
/// its attribute, the past change with the greatest id below its own, when
/// exactly one has that id (two authors may share an id; their order is their
/// replica ids', which a record does not hold). Only the past is looked in: a
/// winner supersedes, it is never superseded.
fn superseded(all: &[&Cell], past_from: usize, i: usize) -> Option<usize> {
    let c = all[i];
    let mut best: Option<usize> = None;
    let mut tied = false;
    for (j, o) in all.iter().enumerate().skip(past_from) {
        if j == i || o.attr_n != c.attr_n || o.id >= c.id {
            continue;
        }
        match best.map(|b| o.id.cmp(&all[b].id)) {
            None | Some(std::cmp::Ordering::Greater) => (best, tied) = (Some(j), false),
            Some(std::cmp::Ordering::Equal) => tied = true,
            Some(std::cmp::Ordering::Less) => {}
        }
    }
    best.filter(|_| !tied)
}

/// Whether form 3 leaves out change `i`'s old value.
fn old_kept(all: &[&Cell], past_from: usize, i: usize) -> bool {
    superseded(all, past_from, i).is_some_and(|j| all[j].new_value == all[i].old_value)
}

/// The forms a record can be in, as the bits of a set ([`decode_cells`]).
const FORM_1: u8 = 1;
const FORM_2: u8 = 2;
const FORM_3: u8 = 4;

/// Which encoder writes a record: form 3 is the one this build writes; the
/// older two stay for the tests of the upgrades from them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    One,
    Two,
    Three,
}

/// Encodes `cells`, which must be in ascending attribute order with no
/// attribute twice (the record is then the same bytes whatever order a caller
/// built them in).
#[cfg(test)]
pub fn encode(cells: &[Cell]) -> Vec<u8> {
    encode_in(cells, &[], Form::Three)
}

/// Encodes a record keeping `past`, the changes its winners superseded, in
/// the order given (none without a winner: a past needs a cell to follow).
pub fn encode_row(cells: &[Cell], past: &[Cell]) -> Vec<u8> {
    encode_in(cells, past, Form::Three)
}

/// Encodes `cells` in the form local schema 6 wrote: each id a difference from
/// the previous cell's only. Kept to make version-6 replicas in the tests of
/// the upgrade that rewrites them.
#[doc(hidden)]
pub fn encode_form_1(cells: &[Cell]) -> Vec<u8> {
    encode_in(cells, &[], Form::One)
}

/// Encodes a record in the form local schema 7 and 8 wrote: each change's
/// author and transaction numbers written. Kept to make version-8 replicas in
/// the tests of the upgrade that rewrites them.
#[doc(hidden)]
pub fn encode_form_2(cells: &[Cell], past: &[Cell]) -> Vec<u8> {
    encode_in(cells, past, Form::Two)
}

/// Where a record's past starts: an attribute number no cell after another can
/// have (they ascend).
const PAST: u64 = 0;

fn encode_in(cells: &[Cell], past: &[Cell], form: Form) -> Vec<u8> {
    debug_assert!(cells.windows(2).all(|w| w[0].attr_n < w[1].attr_n), "cells in attribute order");
    assert!(past.is_empty() || !cells.is_empty(), "a record's past follows its cells");
    let mut out = Vec::with_capacity((cells.len() + past.len()) * 24);
    let (mut prev, mut first): (Option<u128>, Option<u128>) = (None, None);
    let mut before: Option<&Cell> = None;
    // Only a past holds changes that others superseded (cells have one attribute each).
    let all: Vec<&Cell> =
        if form == Form::Three && !past.is_empty() { cells.iter().chain(past).collect() } else { Vec::new() };
    for (i, c) in cells.iter().chain(past).enumerate() {
        if i == cells.len() {
            put_varint(&mut out, PAST);
        }
        put_varint(&mut out, c.attr_n);
        let tag_at = out.len();
        match &c.id {
            Id::Uuid(b) => {
                let v = u128::from_be_bytes(*b);
                if form == Form::One {
                    put_id_form_1(&mut out, v, prev);
                } else {
                    put_id(&mut out, v, prev, first);
                }
                prev = Some(v);
                first.get_or_insert(v);
            }
            Id::Text(t) => {
                out.push(TEXT);
                put_text(&mut out, t);
                prev = None;
            }
        }
        if form == Form::Three && before.is_some_and(|b| (b.author_n, b.tx_n) == (c.author_n, c.tx_n)) {
            out[tag_at] |= SAME_TX;
        } else {
            put_varint(&mut out, c.author_n);
            put_varint(&mut out, c.tx_n);
        }
        before = Some(c);
        if !all.is_empty() && old_kept(&all, cells.len(), i) {
            out[tag_at] |= OLD_KEPT;
        } else {
            put_opt(&mut out, c.old_value.as_deref());
        }
        put_opt(&mut out, c.new_value.as_deref());
    }
    out
}

fn broken() -> Error {
    Error::Invalid("a row record of the change log is damaged (`dimple verify` names the rows)".into())
}

/// The cells of a record, in attribute order (its past read, and left).
#[cfg(test)]
pub fn decode(record: &[u8]) -> Result<Vec<Cell>> {
    Ok(decode_cells(record, true)?.cells)
}

/// The cells of a record and its past.
pub fn decode_row(record: &[u8]) -> Result<(Vec<Cell>, Vec<Cell>)> {
    decode_cells(record, true).map(|d| (d.cells, d.past))
}

/// The cells of a record and its past without their values (None): what
/// counting changes or finding the greatest id needs, with no text copied.
pub fn decode_keys(record: &[u8]) -> Result<(Vec<Cell>, Vec<Cell>)> {
    decode_cells(record, false).map(|d| (d.cells, d.past))
}

/// A record without its past, the record of the same winners with no past:
/// its cells' bytes (the whole record read, values skipped), which come first
/// and do not depend on the past unless a cell leaves its old value to it;
/// else written again.
pub fn without_past(record: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    let read = decode_cells(record, false)?;
    if !read.cells_refer_to_past {
        return Ok(std::borrow::Cow::Borrowed(&record[..read.cells_len]));
    }
    let (cells, _) = decode_row(record)?;
    Ok(std::borrow::Cow::Owned(encode_in(&cells, &[], Form::Three)))
}

/// What [`decode_cells`] read.
struct Decoded {
    cells: Vec<Cell>,
    past: Vec<Cell>,
    /// Where the past starts (the record's length without one).
    cells_len: usize,
    /// Whether a cell leaves its old value to the past ([`OLD_KEPT`]).
    cells_refer_to_past: bool,
}

/// A record is read in any of the three forms, each exactly as its encoder
/// writes it (every id in the one form it takes there, the author and
/// transaction left out exactly when form 3 leaves them out, the whole record
/// in one form): a record of an older form is not damaged, only older.
/// Upgrades rewrite a replica's records, but a process of an older build that
/// still had the file open when it was upgraded goes on writing its form, and
/// those rows must stay readable.
fn decode_cells(record: &[u8], values: bool) -> Result<Decoded> {
    let mut r = crate::packed::Reader::new(record);
    let (mut cells, mut past): (Vec<Cell>, Vec<Cell>) = (Vec::new(), Vec::new());
    let mut in_past = false;
    let mut cells_len = record.len();
    let (mut prev, mut first): (Option<u128>, Option<u128>) = (None, None);
    // The author and transaction numbers of the change before.
    let mut before: Option<(u64, u64)> = None;
    // Each change's (cells, then past) old and new value as written: comparing
    // those, whether values are read or not, accepts the same records. An old
    // value left to the change it superseded is written as nothing (one that
    // is none takes a byte).
    let mut written: Vec<(&[u8], &[u8])> = Vec::new();
    let left_out = |w: &(&[u8], &[u8])| w.0.is_empty();
    // The forms the record read so far can be in.
    let mut forms = FORM_1 | FORM_2 | FORM_3;
    let mut only = |allowed: u8| {
        forms &= allowed;
        if forms == 0 {
            Err(broken())
        } else {
            Ok(())
        }
    };
    while !r.done() {
        let start = r.at();
        let mut attr_n = r.varint().ok_or_else(broken)?;
        if !in_past && attr_n == PAST && !cells.is_empty() {
            // A past is never empty, and form 1 never writes one.
            in_past = true;
            cells_len = start;
            only(FORM_2 | FORM_3)?;
            attr_n = r.varint().ok_or_else(broken)?;
        }
        if !in_past && cells.last().is_some_and(|c| c.attr_n >= attr_n) {
            return Err(broken());
        }
        let tag = r.byte().ok_or_else(broken)?;
        let (same_tx, old_elsewhere) = (tag & SAME_TX != 0, tag & OLD_KEPT != 0);
        let id = match tag & !(SAME_TX | OLD_KEPT) {
            TEXT => {
                prev = None;
                Id::Text(r.text().ok_or_else(broken)?)
            }
            tag => {
                let v = match tag {
                    FULL => u128::from_be_bytes(r.bytes(16).ok_or_else(broken)?.try_into().expect("16 bytes")),
                    DELTA | FAR | FIRST_DELTA | FIRST_FAR => {
                        let base = if tag == DELTA || tag == FAR { prev } else { first };
                        let base = base.ok_or_else(broken)?;
                        let rel = if tag == DELTA || tag == FIRST_DELTA {
                            Rel::Near(r.varint().ok_or_else(broken)?)
                        } else {
                            Rel::Far(r.varint().ok_or_else(broken)?, r.varint().ok_or_else(broken)?)
                        };
                        apply(base, rel).ok_or_else(broken)?
                    }
                    WIDE_DELTA => {
                        let (high, low) = (r.varint().ok_or_else(broken)?, r.varint().ok_or_else(broken)?);
                        let delta = (u128::from(high) << 64) | u128::from(low);
                        apply_delta(prev.ok_or_else(broken)?, delta).ok_or_else(broken)?
                    }
                    _ => return Err(broken()),
                };
                // One form per id: the tag must be the one an encoder gives it
                // (the numbers are then the same too: each kind of difference
                // has one value for an id, and varints one form).
                let in_1 = if form_1_tag(v, prev) == tag { FORM_1 } else { 0 };
                let in_2 = if form_of(v, prev, first).tag() == tag { FORM_2 | FORM_3 } else { 0 };
                only(in_1 | in_2)?;
                prev = Some(v);
                first.get_or_insert(v);
                Id::Uuid(v.to_be_bytes())
            }
        };
        let (author_n, tx_n) = if same_tx {
            only(FORM_3)?;
            before.ok_or_else(broken)?
        } else {
            let numbers = (r.varint().ok_or_else(broken)?, r.varint().ok_or_else(broken)?);
            if before == Some(numbers) {
                only(FORM_1 | FORM_2)?;
            }
            numbers
        };
        before = Some((author_n, tx_n));
        if old_elsewhere {
            only(FORM_3)?;
        }
        let old_at = r.at();
        let old_value = match (old_elsewhere, values) {
            (true, _) => None,
            (false, true) => r.opt().ok_or_else(broken)?,
            (false, false) => r.skip_opt().ok_or_else(broken).map(|_| None)?,
        };
        let new_at = r.at();
        let new_value =
            if values { r.opt().ok_or_else(broken)? } else { r.skip_opt().ok_or_else(broken).map(|_| None)? };
        written.push((&record[old_at..new_at], &record[new_at..r.at()]));
        let cell = Cell { attr_n, id, author_n, tx_n, old_value, new_value };
        if in_past { &mut past } else { &mut cells }.push(cell);
    }
    // Old values left to the changes they superseded, which may come later.
    let mut olds: Vec<(usize, Option<String>)> = Vec::new();
    if !past.is_empty() {
        let all: Vec<&Cell> = cells.iter().chain(&past).collect();
        for (i, kept) in written.iter().map(left_out).enumerate() {
            match superseded(&all, cells.len(), i) {
                None if kept => return Err(broken()),
                Some(j) if kept => olds.push((i, all[j].new_value.clone())),
                // Form 3 would have left it out.
                Some(j) if written[j].1 == written[i].0 => only(FORM_1 | FORM_2)?,
                _ => {}
            }
        }
    } else if written.iter().any(left_out) {
        return Err(broken());
    }
    let cells_refer_to_past = written[..cells.len()].iter().any(left_out);
    for (i, old) in olds {
        let n = cells.len();
        if i < n { &mut cells[i] } else { &mut past[i - n] }.old_value = old;
    }
    Ok(Decoded { cells, past, cells_len, cells_refer_to_past })
}

#[cfg(test)]
mod tests {
    use super::ids::NODE_BITS;
    use super::*;
    use proptest::prelude::*;

    /// Ids as a row's cells hold them: many from one node and near each other
    /// (one transaction, or a few milliseconds apart), some from other nodes,
    /// some kept as text.
    fn any_id() -> impl Strategy<Value = Id> {
        let node = prop_oneof![Just(0x1234_abcdu32), any::<u32>()];
        let ms = prop_oneof![Just(0u64), 0u64..3, 0u64..1 << 20];
        prop_oneof![
            8 => (0u64..1 << 20, ms, node).prop_map(|(counter, ms, node)| {
                let base = 0x0190_a000_0000_7000_8000_0000u128 + (u128::from(ms) << 48);
                let v = (base + (u128::from(counter) << 8)) << NODE_BITS | u128::from(node);
                Id::Uuid(v.to_be_bytes())
            }),
            1 => any::<[u8; 16]>().prop_map(Id::Uuid),
            1 => "[0-9A-Za-z-]{0,40}".prop_map(Id::Text),
        ]
    }

    fn any_cells() -> impl Strategy<Value = Vec<Cell>> {
        proptest::collection::btree_map(
            0u64..300,
            (
                any_id(),
                // Mostly one author and a few transactions, as in a row.
                prop_oneof![3 => 0u64..3, 1 => 0u64..100_000],
                prop_oneof![3 => 0u64..3, 1 => any::<u64>()],
                proptest::option::of(".{0,20}"),
                proptest::option::of(".{0,20}"),
            ),
            0..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(attr_n, (id, author_n, tx_n, old_value, new_value))| Cell {
                    attr_n,
                    id,
                    author_n,
                    tx_n,
                    old_value,
                    new_value,
                })
                .collect()
        })
    }

    /// A record's cells and a past of a few changes of any of its attributes
    /// (or others), in any order, ids as the cells' are; many a change's old
    /// value is the new value of the change it superseded, as an update's is.
    fn any_row() -> impl Strategy<Value = (Vec<Cell>, Vec<Cell>)> {
        let attrs = proptest::collection::vec(prop_oneof![0u64..4, 0u64..300], 0..12);
        (any_cells(), any_cells(), attrs, proptest::collection::vec(any::<bool>(), 24)).prop_map(
            |(mut cells, mut past, attrs, chained)| {
                if cells.is_empty() {
                    past.clear();
                }
                // Ascending attributes are the cells' order; a past is in any order.
                for (c, a) in past.iter_mut().zip(attrs) {
                    c.attr_n = a;
                }
                let n = cells.len();
                for (i, chain) in chained.into_iter().enumerate().take(n + past.len()) {
                    let all: Vec<&Cell> = cells.iter().chain(&past).collect();
                    if let Some(j) = superseded(&all, n, i).filter(|_| chain) {
                        let old = all[j].new_value.clone();
                        if i < n { &mut cells[i] } else { &mut past[i - n] }.old_value = old;
                    }
                }
                (cells, past)
            },
        )
    }

    proptest! {
        /// A record gives back the cells it was made of.
        #[test]
        fn a_record_decodes_to_the_cells_it_was_encoded_from(cells in any_cells()) {
            prop_assert_eq!(decode(&encode(&cells)).unwrap(), cells);
        }

        /// A record keeping a past gives back its cells and its past, in the
        /// past's order, and without the past it is the record of its cells.
        #[test]
        fn a_record_with_a_past_decodes_to_its_cells_and_past(row in any_row()) {
            let bytes = encode_row(&row.0, &row.1);
            prop_assert_eq!(decode_row(&bytes).unwrap(), row.clone());
            prop_assert_eq!(decode(&bytes).unwrap(), row.0.clone());
            prop_assert_eq!(&*without_past(&bytes).unwrap(), &encode(&row.0)[..]);
        }

        /// Damaged bytes (a record with bytes changed, cut or added) are an error
        /// or some cells, never a panic, and whatever decodes encodes back to the
        /// same bytes in form 1, 2 or 3: one form per record.
        #[test]
        fn damaged_bytes_decode_to_an_error_or_to_cells_that_encode_back_to_them(
            row in any_row(),
            changes in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..4),
        ) {
            let mut bytes = encode_row(&row.0, &row.1);
            for (at, byte, how) in changes {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, byte & 0x80),
                }
            }
            if let Ok((cells, past)) = decode_row(&bytes) {
                let form_1 = past.is_empty() && encode_form_1(&cells) == bytes;
                let form_2 = encode_form_2(&cells, &past) == bytes;
                prop_assert!(encode_row(&cells, &past) == bytes || form_1 || form_2, "{:?} {:?}", cells, past);
            }
        }
    }

    proptest! {
        /// A record written in form 1 (local schema 6, or a process of that
        /// build still writing after the upgrade) reads back as its cells.
        #[test]
        fn a_form_1_record_decodes_to_the_cells_it_was_encoded_from(cells in any_cells()) {
            prop_assert_eq!(decode(&encode_form_1(&cells)).unwrap(), cells);
        }

        /// Form 2 is never longer than form 1.
        #[test]
        fn form_2_is_never_longer_than_form_1(cells in any_cells()) {
            prop_assert!(encode_form_2(&cells, &[]).len() <= encode_form_1(&cells).len());
        }

        /// A record written in form 2 (local schema 7 and 8, or a process of
        /// those builds still writing after the upgrade) reads back as its
        /// cells and past.
        #[test]
        fn a_form_2_record_decodes_to_its_cells_and_past(row in any_row()) {
            prop_assert_eq!(decode_row(&encode_form_2(&row.0, &row.1)).unwrap(), row);
        }

        /// Form 3 is form 2 less two bytes or more for each change with the
        /// author and transaction of the change before it, and one or more
        /// for each old value that is its superseded change's new value.
        #[test]
        fn form_3_leaves_out_the_numbers_and_old_values_a_change_repeats(row in any_row()) {
            let all: Vec<&Cell> = row.0.iter().chain(&row.1).collect();
            let repeats = all.windows(2).filter(|w| (w[0].author_n, w[0].tx_n) == (w[1].author_n, w[1].tx_n)).count();
            let olds = (0..all.len()).filter(|&i| old_kept(&all, row.0.len(), i)).count();
            let (two, three) = (encode_form_2(&row.0, &row.1).len(), encode_row(&row.0, &row.1).len());
            prop_assert!(three + 2 * repeats + olds <= two, "{} repeats, {} old values: {} bytes in form 3, {} in form 2", repeats, olds, three, two);
            prop_assert_eq!(repeats + olds == 0, three == two);
        }
    }

    /// A cell with NULL values whose id is one clock's (node 0xabcd), `ms`
    /// milliseconds after the first and with `counter`.
    fn clock_cell(attr_n: u64, ms: u128, counter: u128) -> Cell {
        let v = ((0x0190_a000_0000 + ms) << 48 | 0x7000_8000_0000 | counter) << NODE_BITS | 0xabcd;
        Cell { attr_n, id: Id::Uuid(v.to_be_bytes()), author_n: 1, tx_n: 1, old_value: None, new_value: None }
    }

    /// The bench's row after an update of its middle column: the next column's
    /// id, older than the update's, is a difference from the row's first id,
    /// and the update's, a second later, is its milliseconds and counter.
    #[test]
    fn a_row_with_its_middle_column_updated_costs_a_few_bytes_an_id() {
        let cells = [clock_cell(2, 0, 10), clock_cell(3, 0, 11), clock_cell(4, 1000, 3), clock_cell(5, 0, 13)];
        let (one, four) = (encode(&cells[..1]).len(), encode(&cells).len());
        // Attribute, tag, two values (the author and transaction are the
        // first cell's): 4 bytes; the ids: 1, 2 + 1 (1000 ms; counters 11 and
        // 3, 8 apart in their bits), 1.
        assert_eq!(four - one, 3 * 4 + 5, "{one} bytes for one cell, {four} for four");
        assert_eq!(encode_form_1(&cells).len() - one, 3 * 6 + 1 + 9 + 16, "form 1: 9 and 16 bytes");
        assert_eq!(decode(&encode(&cells)).unwrap(), cells);
    }

    /// The change an update supersedes, its row's insert of the column, stays
    /// in the record for a few bytes: its id is a difference from the
    /// record's first, its numbers the last cell's, and the update's old
    /// value is its new value, written once.
    #[test]
    fn a_superseded_change_kept_in_its_record_costs_a_few_bytes() {
        let value = |c: Cell, old: Option<&str>, new: &str| Cell {
            old_value: old.map(str::to_owned),
            new_value: Some(new.to_owned()),
            ..c
        };
        let cells = [
            value(clock_cell(2, 0, 10), None, "\"name 7\""),
            value(clock_cell(3, 0, 11), None, "7"),
            value(clock_cell(4, 1000, 3), Some("7.5"), "-8"),
            value(clock_cell(5, 0, 13), None, "true"),
        ];
        let past = [value(clock_cell(4, 0, 12), None, "7.5")];
        let (without, with) = (encode(&cells).len(), encode_row(&cells, &past).len());
        // The mark, then attribute, tag, difference, no old value, the new
        // value (1 + 3 bytes); less the update's old value (1 + 3).
        assert_eq!(with - without, 1 + 3 + 1 + 4 - 4, "{without} bytes without the past, {with} with it");
        assert_eq!(decode_row(&encode_row(&cells, &past)).unwrap(), (cells.to_vec(), past.to_vec()));
        assert_eq!(&*without_past(&encode_row(&cells, &past)).unwrap(), &encode(&cells)[..], "its old value again");
    }

    /// An old value left to a change the record does not keep, or written
    /// where form 3 leaves it out, is refused.
    #[test]
    fn an_old_value_left_to_no_change_or_written_in_form_3_is_refused() {
        let with_old = |c: Cell, old: &str| Cell { old_value: Some(old.to_owned()), ..c };
        let with_new = |c: Cell, new: &str| Cell { new_value: Some(new.to_owned()), ..c };
        let cells = [clock_cell(2, 0, 10), with_old(clock_cell(3, 1000, 3), "x")];
        let past = [with_new(clock_cell(3, 0, 11), "x")];
        let row = encode_row(&cells, &past);
        assert_eq!(decode_row(&row).unwrap(), (cells.to_vec(), past.to_vec()));
        // The update's tag, and where its cell ends in each record.
        let at = encode(&cells[..1]).len() + 1;
        assert_ne!(row[at] & OLD_KEPT, 0, "the update leaves its old value to the past");
        // The cells alone, the old value still left to the past.
        let lost = &row[..encode(&cells).len() - 2];
        assert!(decode_row(&row[..lost.len() + 1]).is_err(), "a past mark and no past");
        assert!(decode_row(lost).is_err(), "its past is gone: {lost:?}");
        let mut written = row.clone();
        written[at] &= !OLD_KEPT;
        // Before the update's new value (NULL, its last byte among the cells).
        let new_at = lost.len() - 1;
        written.splice(new_at..new_at, [2, b'x']);
        assert_eq!(decode_row(&written[..new_at + 3]).unwrap().0, cells, "the cells alone, its old value written");
        assert!(decode_row(&written).is_err(), "written, in a record of form 3: {written:?}");
        assert!(decode_keys(&written).is_err(), "refused without its values read too");
        assert!(decode_keys(lost).is_err());
        assert_eq!(encode_form_2(&cells, &past)[at] & (OLD_KEPT | SAME_TX), 0);
        assert_eq!(decode_row(&encode_form_2(&cells, &past)).unwrap(), (cells.to_vec(), past.to_vec()));
    }

    /// Form 1 never writes a record's past: a past after cells in form 1 is
    /// refused.
    #[test]
    fn a_past_after_form_1_cells_is_refused() {
        let cells = [clock_cell(2, 0, 10), clock_cell(3, 1000, 3)];
        let past = [clock_cell(3, 0, 11)];
        let form_2 = encode_row(&cells, &past);
        let mut mixed = encode_form_1(&cells);
        mixed.extend_from_slice(&form_2[encode(&cells).len()..]);
        assert!(decode_row(&form_2).is_ok());
        assert!(decode_row(&mixed).is_err(), "form 1 cells with a past: {mixed:?}");
    }

    /// A record is in one form throughout: ids written each in the form only
    /// form 1 gives it and only form 3 (as 2) gives it, in one record, are
    /// refused.
    #[test]
    fn a_record_mixing_forms_1_and_3_is_refused() {
        // The second id is written differently by the two forms, and so is the third.
        let cells = [clock_cell(2, 0, 10), clock_cell(3, 1000, 3), clock_cell(4, 0, 13)];
        let (one, two) = (encode_form_1(&cells), encode(&cells));
        // Where the third cell starts in each.
        let (at_1, at_2) = (encode_form_1(&cells[..2]).len(), encode(&cells[..2]).len());
        assert_eq!(encode_form_1(&cells[..1]), encode(&cells[..1]), "the first id is in full in both");
        assert!(one[..at_1] != two[..at_2] && one[at_1..] != two[at_2..], "the others differ");
        assert_eq!(decode(&one).unwrap(), cells);
        assert_eq!(decode(&two).unwrap(), cells);
        assert!(decode(&[&two[..at_2], &one[at_1..]].concat()).is_err(), "form 3 then form 1 in one record");
        assert!(decode(&[&one[..at_1], &two[at_2..]].concat()).is_err(), "form 1 then form 3 in one record");
    }

    /// Form 3 leaves out every repeated author and transaction, form 2 none:
    /// a record leaving out some and writing others is refused, and so is a
    /// first change said to repeat the one before it.
    #[test]
    fn a_record_leaving_out_some_repeated_numbers_and_writing_others_is_refused() {
        let cells = [clock_cell(2, 0, 10), clock_cell(3, 0, 11), clock_cell(4, 0, 12)];
        let (two, three) = (encode_form_2(&cells, &[]), encode(&cells));
        let (at_2, at_3) = (encode_form_2(&cells[..2], &[]).len(), encode(&cells[..2]).len());
        assert_eq!(two.len() - three.len(), 4, "two cells repeat the first one's numbers");
        assert_eq!(decode(&two).unwrap(), cells);
        assert_eq!(decode(&three).unwrap(), cells);
        assert!(decode(&[&three[..at_3], &two[at_2..]].concat()).is_err(), "left out, then written");
        assert!(decode(&[&two[..at_2], &three[at_3..]].concat()).is_err(), "written, then left out");
        let mut first = encode(&cells[..1]);
        first[1] |= SAME_TX;
        first.drain(first.len() - 4..first.len() - 2);
        assert!(decode(&first).is_err(), "nothing before the first change: {first:?}");
    }

    /// A cell with NULL values, its id given as the bytes after the attribute.
    fn raw_cell(attr_n: u8, id: &[u8]) -> Vec<u8> {
        [&[attr_n][..], id, &[1, attr_n, 0, 0]].concat()
    }

    #[test]
    fn a_number_written_with_a_trailing_zero_group_is_refused() {
        let id = [&[FULL][..], &[7u8; 16]].concat();
        assert!(decode(&raw_cell(2, &id)).is_ok());
        let long = [&[0x82, 0x00][..], &id, &[1, 1, 0, 0]].concat();
        assert!(decode(&long).is_err(), "2 written in two bytes");
    }

    #[test]
    fn an_id_that_could_be_a_difference_written_in_full_is_refused() {
        let a = (0x0190_a000_0000_7000_8000_0000u128 << NODE_BITS) | 0xabcd;
        let b = a + (5 << NODE_BITS);
        let full = |v: u128| [&[FULL][..], &v.to_be_bytes()].concat();
        let canonical = encode(&decode(&[raw_cell(2, &full(a)), raw_cell(3, &[DELTA, 5])].concat()).unwrap());
        assert_eq!(canonical, [raw_cell(2, &full(a)), raw_cell(3, &[DELTA, 5])].concat());
        assert!(decode(&[raw_cell(2, &full(a)), raw_cell(3, &full(b))].concat()).is_err());
        // From another node, or smaller, it can only be written in full.
        assert!(decode(&[raw_cell(2, &full(a)), raw_cell(3, &full(b ^ 1))].concat()).is_ok());
        assert!(decode(&[raw_cell(2, &full(b)), raw_cell(3, &full(a))].concat()).is_ok());
    }

    proptest! {
        /// Merged change by change into a record, a cell keeps as its winner the
        /// greatest change by the merge order a batch uses in memory
        /// ([`crate::log::merge_order`]): a change wins exactly when it is greater
        /// than the winner, and is a repeat exactly when it is the winner.
        #[test]
        fn a_cell_keeps_the_greatest_change_by_the_merge_order(
            changes in proptest::collection::vec((crate::log::tests::any_id(), "[a-c]{1,2}"), 1..12)
        ) {
            let authors: Vec<&str> = vec!["a", "b", "c", "aa", "ab", "ac", "ba", "bb", "bc", "ca", "cb", "cc"];
            let author_n = |a: &str| authors.iter().position(|x| *x == a).unwrap() as u64;
            let mut cells = Vec::new();
            let mut best: Option<(&str, &str)> = None;
            for (id, author) in &changes {
                let cell = Cell { attr_n: 1, id: Id::of(id), author_n: author_n(author), tx_n: 1, old_value: None, new_value: None };
                let merged = merge(&mut cells, cell, |a, b| authors[a as usize].cmp(authors[b as usize]));
                let expected = best.map(|(i, a)| crate::log::merge_order(id, author, i, a));
                let agrees = match (&merged, expected) {
                    (Merged::Won(_), None | Some(std::cmp::Ordering::Greater)) => true,
                    (Merged::Duplicate, Some(std::cmp::Ordering::Equal)) => true,
                    (Merged::Lost(c), Some(std::cmp::Ordering::Less)) => c.id == Id::of(id),
                    _ => false,
                };
                prop_assert!(agrees, "{} by {}: the record says {:?}, the order {:?}", id, author, merged, expected);
                if matches!(merged, Merged::Won(_)) {
                    best = Some((id, author));
                }
            }
            let (id, author) = best.unwrap();
            prop_assert_eq!(cells.len(), 1);
            prop_assert_eq!(&cells[0].id, &Id::of(id));
            prop_assert_eq!(authors[cells[0].author_n as usize], author);
        }
    }

    #[test]
    fn ids_of_one_transaction_cost_a_few_bytes_after_the_first() {
        let id = |counter: u128| {
            Id::Uuid(((0x0190_a000_0000_7000_8000_0000u128 + counter) << NODE_BITS | 0xabcd).to_be_bytes())
        };
        let cell =
            |attr_n, counter| Cell { attr_n, id: id(counter), author_n: 1, tx_n: 1, old_value: None, new_value: None };
        let one = encode(&[cell(2, 1)]).len();
        let four = encode(&[cell(2, 1), cell(3, 2), cell(4, 3), cell(5, 4)]).len();
        // Attribute, tag, difference, two values (the author and transaction
        // are the first cell's): 5 bytes a cell, where the id alone is 16 in full.
        assert_eq!(four - one, 3 * 5, "{one} bytes for one cell, {four} for four");
    }
}
