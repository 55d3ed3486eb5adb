//! The stored forms of the log's ids, and rows of the log (or of a batch file)
//! read as [`Change`]s: what every reader of the log shares, apart from how
//! changes are merged into it.

use super::Change;
use crate::error::{Error, Result};
use crate::record::Id;
use rusqlite::types::Value;

/// The SQL expression rendering the 16-byte id in column `col` as canonical text.
pub fn id_text_sql(col: &str) -> String {
    format!(
        "lower(substr(hex({col}), 1, 8) || '-' || substr(hex({col}), 9, 4) || '-' || substr(hex({col}), 13, 4) \
         || '-' || substr(hex({col}), 17, 4) || '-' || substr(hex({col}), 21))"
    )
}

/// The SQL expression turning canonical id text in `col` into its 16 bytes.
pub fn id_blob_sql(col: &str) -> String {
    format!("unhex(replace({col}, '-', ''))")
}

/// The stored form of an id: its 16 bytes when it is a canonical UUID (bytewise
/// order is then the order of the text), else the text itself. Change ids are
/// always canonical (checked before anything is applied); a transaction id from a
/// batch is not checked, and is kept as it came.
pub fn id_value(id: &str) -> Value {
    match crate::layout::uuid_bytes(id) {
        Some(b) => Value::Blob(b.to_vec()),
        None => Value::Text(id.to_owned()),
    }
}

/// The canonical text of a stored id ([`id_value`] backwards).
pub fn id_string(v: Value) -> String {
    match v {
        Value::Blob(b) => blob_id_string(&b),
        Value::Text(t) => t,
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Null => String::new(),
    }
}

/// Stored id bytes as text: a UUID's canonical form, other bytes in hex.
pub(super) fn blob_id_string(b: &[u8]) -> String {
    uuid::Uuid::from_slice(b).map(|u| u.to_string()).unwrap_or_else(|_| crate::codec::hex(b))
}

/// The id in column `i`: bytes rendered as text, text as it is (an error, never a
/// panic, when it is not UTF-8: batch files are remote input).
fn id_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Blob(b) => Ok(blob_id_string(b)),
        _ => r.get(i),
    }
}

/// Reads whole changes in the seed's columns, in the order [`row_to_change`]
/// expects: append joins or `WHERE`/`ORDER BY` on `l` (the log row).
pub const SELECT: &str = "SELECT l.id, x.id, t.name, l.entity_id, c.name, l.old_value, l.new_value, a.id
     FROM ZV_LOG l JOIN ZV_NAME t ON t.n = l.type_n JOIN ZV_NAME c ON c.n = l.attr_n
     JOIN ZV_TX x ON x.n = l.tx_n JOIN ZV_AUTHOR a ON a.n = l.author_n";

/// A change from a row of [`SELECT`], or from a batch file's text columns in the
/// same order.
pub fn row_to_change(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    Ok(Change {
        id: id_at(r, 0)?,
        transaction_id: id_at(r, 1)?,
        entity_type: r.get(2)?,
        entity_id: r.get(3)?,
        attribute: r.get(4)?,
        old_value: r.get(5)?,
        new_value: r.get(6)?,
        author: r.get(7)?,
    })
}

/// [`row_to_change`] into `c`, reusing its strings: a pull reads millions of
/// changes, and the merging thread freed each one's eight strings (4% of its time).
/// Anything but valid text is read as [`row_to_change`] reads it, errors included.
pub fn row_into_change(r: &rusqlite::Row<'_>, c: &mut Change) -> rusqlite::Result<()> {
    use rusqlite::types::ValueRef;
    // Each column is asked for once (its type, then its bytes): a pull reads
    // eight a change, and asking twice for ids and values was a tenth of its
    // checking thread.
    fn text(r: &rusqlite::Row<'_>, i: usize, v: ValueRef<'_>, out: &mut String) -> rusqlite::Result<()> {
        match v {
            ValueRef::Text(t) if let Ok(s) = std::str::from_utf8(t) => {
                out.clear();
                out.push_str(s);
            }
            _ => *out = r.get(i)?,
        }
        Ok(())
    }
    fn maybe(r: &rusqlite::Row<'_>, i: usize, out: &mut Option<String>) -> rusqlite::Result<()> {
        match r.get_ref(i)? {
            ValueRef::Null => *out = None,
            v => text(r, i, v, out.get_or_insert_with(String::new))?,
        }
        Ok(())
    }
    fn id(r: &rusqlite::Row<'_>, i: usize, out: &mut String) -> rusqlite::Result<()> {
        match r.get_ref(i)? {
            ValueRef::Blob(b) => *out = blob_id_string(b),
            v => text(r, i, v, out)?,
        }
        Ok(())
    }
    fn plain(r: &rusqlite::Row<'_>, i: usize, out: &mut String) -> rusqlite::Result<()> {
        text(r, i, r.get_ref(i)?, out)
    }
    id(r, 0, &mut c.id)?;
    id(r, 1, &mut c.transaction_id)?;
    plain(r, 2, &mut c.entity_type)?;
    plain(r, 3, &mut c.entity_id)?;
    plain(r, 4, &mut c.attribute)?;
    maybe(r, 5, &mut c.old_value)?;
    maybe(r, 6, &mut c.new_value)?;
    plain(r, 7, &mut c.author)
}

/// An id of a record in the log's stored form ([`id_value`]).
pub(super) fn stored_id(id: &Id) -> Value {
    match id {
        Id::Uuid(b) => Value::Blob(b.to_vec()),
        Id::Text(t) => Value::Text(t.clone()),
    }
}

/// A stored id ([`id_value`]) as a record holds it.
pub(super) fn stored_to_id(v: Value) -> Result<Id> {
    match v {
        Value::Blob(b) if b.len() == 16 => Ok(Id::Uuid(b.try_into().expect("16 bytes"))),
        Value::Text(t) => Ok(Id::Text(t)),
        _ => Err(Error::Invalid("a change id in the log is neither 16 bytes nor text".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rusqlite::Connection;

    /// A cell of a batch's row as remote input may hold it: mostly text, as a
    /// good batch does (so that most rows read as changes), else any type, and
    /// text that is not UTF-8 (`Err`: those bytes cast to TEXT).
    fn any_cell() -> impl Strategy<Value = std::result::Result<Value, Vec<u8>>> {
        prop_oneof![
            30 => ".{0,12}".prop_map(|t| Ok(Value::Text(t))),
            1 => Just(Ok(Value::Null)),
            1 => any::<i64>().prop_map(|i| Ok(Value::Integer(i))),
            1 => any::<f64>().prop_map(|f| Ok(Value::Real(f))),
            1 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| Ok(Value::Blob(b))),
            1 => proptest::collection::vec(0x80u8..=0xff, 1..8).prop_map(Err),
        ]
    }

    proptest! {
        /// Reading a row into a change that held another one gives what reading it
        /// afresh gives: the same change, or an error where that is one.
        #[test]
        fn a_row_read_into_a_used_change_is_the_row_read_afresh(
            cells in proptest::collection::vec(any_cell(), 8),
            before in proptest::collection::vec(proptest::option::of(".{0,6}"), 8),
        ) {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch("CREATE TABLE r(a, b, c, d, e, f, g, h)").unwrap();
            let slots: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| if c.is_err() { format!("CAST(?{} AS TEXT)", i + 1) } else { format!("?{}", i + 1) })
                .collect();
            let values: Vec<Value> = cells.into_iter().map(|c| c.unwrap_or_else(Value::Blob)).collect();
            conn.execute(&format!("INSERT INTO r VALUES ({})", slots.join(", ")), rusqlite::params_from_iter(&values))
                .unwrap();
            let text = |i: usize| before[i].clone().unwrap_or_default();
            let mut used = Change {
                id: text(0),
                transaction_id: text(1),
                entity_type: text(2),
                entity_id: text(3),
                attribute: text(4),
                old_value: before[5].clone(),
                new_value: before[6].clone(),
                author: text(7),
            };
            let (afresh, into) = conn
                .query_row("SELECT * FROM r", [], |r| {
                    Ok((row_to_change(r).map_err(|e| e.to_string()), row_into_change(r, &mut used).map_err(|e| e.to_string())))
                })
                .unwrap();
            match afresh {
                Ok(c) => prop_assert_eq!((into, used), (Ok(()), c)),
                Err(e) => prop_assert_eq!(into, Err(e)),
            }
        }
    }
}
