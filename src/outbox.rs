//! This replica's own changes that wait for a push (`ZV_OUTBOX`), kept whole in
//! packets, and the one module that knows their form.
//!
//! Why packets: with a row per change, the outbox was a second index of every
//! captured change. Capture paid a b-tree insert for each (0.4 s of the 1.6 s a
//! burst of 500k changes took to get ids), the push a seek into the log for each
//! (half its time), and once pushed the rows left about 23 MB of free pages in the
//! file. A packet holds up to [`PACKET_CHANGES`] consecutive changes in id order,
//! each with every column the batch needs, zstd-compressed: capture appends one
//! row per packet, and the push reads the changes back without touching the log.
//!
//! The outbox holds exactly this replica's changes after the push cursor (the last
//! change id a completed push carried): [`pushed`] drops the packets a push
//! finished, and a packet that a push carried only in part stays, its changes up
//! to the cursor skipped when read. Own change ids only grow (the hybrid logical
//! clock never goes back), so packets in insertion order are in id order.

use crate::error::{Error, Result};
use crate::merge::Change;
use rusqlite::{params, Connection, OptionalExtension};

/// Changes per packet: enough that compression sees the repeated names and keys,
/// few enough that a push of 10,000 changes decodes little beyond what it sends.
pub const PACKET_CHANGES: usize = 4096;
/// A packet is also closed at this many bytes before compression, so that values
/// just under the large-value threshold never gather into a huge one.
const PACKET_BYTES: usize = 1 << 20;
/// zstd level: the fastest, as a packet lives only until the next push.
const LEVEL: i32 = 1;
/// A packet never unpacks to more than this (a packet holds at most one value
/// beyond [`PACKET_BYTES`], and a value is capped well below this).
const MAX_UNPACKED: usize = 1 << 30;

/// Collects own changes as they are recorded and writes them as packets. The
/// caller must call [`Packer::finish`] before its transaction commits, or the last
/// packet's changes would be in the log but never pushed.
#[derive(Default)]
pub struct Packer {
    buf: Vec<u8>,
    count: usize,
    first_id: String,
    last_id: String,
    last_tx: String,
}

impl Packer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `c` (a change of this replica just stored in the log), writing the
    /// packet when it is full.
    pub fn add(&mut self, conn: &Connection, c: &Change) -> Result<()> {
        if self.count == 0 {
            self.first_id.clone_from(&c.id);
            self.last_tx.clear();
        }
        put_id(&mut self.buf, &c.id);
        if self.count > 0 && c.transaction_id == self.last_tx {
            self.buf.push(SAME);
        } else {
            put_id(&mut self.buf, &c.transaction_id);
            self.last_tx.clone_from(&c.transaction_id);
        }
        use crate::packed::{put_opt, put_text};
        put_text(&mut self.buf, &c.entity_type);
        put_text(&mut self.buf, &c.entity_id);
        put_text(&mut self.buf, &c.attribute);
        put_opt(&mut self.buf, c.old_value.as_deref());
        put_opt(&mut self.buf, c.new_value.as_deref());
        self.last_id.clone_from(&c.id);
        self.count += 1;
        if self.count >= PACKET_CHANGES || self.buf.len() >= PACKET_BYTES {
            self.write(conn)?;
        }
        Ok(())
    }

    /// Writes what is collected. Call it before the transaction commits.
    pub fn finish(mut self, conn: &Connection) -> Result<()> {
        self.write(conn)
    }

    fn write(&mut self, conn: &Connection) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let packed = zstd::bulk::compress(&self.buf, LEVEL)
            .map_err(|e| Error::Invalid(format!("cannot compress the outbox: {e}")))?;
        conn.prepare_cached("INSERT INTO ZV_OUTBOX(first_id, last_id, changes, packed) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![
                crate::log::id_value(&self.first_id),
                crate::log::id_value(&self.last_id),
                self.count as i64,
                packed
            ])?;
        self.buf.clear();
        self.count = 0;
        Ok(())
    }
}

/// Tags of an id in a packet.
const TEXT: u8 = 1;
const UUID: u8 = 2;
/// The transaction of the change before.
const SAME: u8 = 3;

/// An id as its 16 bytes when it is a canonical UUID (always, for ids this
/// replica makes), as text otherwise.
fn put_id(buf: &mut Vec<u8>, id: &str) {
    match crate::layout::uuid_bytes(id) {
        Some(b) => {
            buf.push(UUID);
            buf.extend_from_slice(&b);
        }
        _ => {
            buf.push(TEXT);
            crate::packed::put_text(buf, id);
        }
    }
}

/// Reads a packet back; every malformation is an error, never a panic.
struct Reader<'a>(crate::packed::Reader<'a>);

impl Reader<'_> {
    /// Reads an id into `out`; false for [`SAME`] (`out` left as it is).
    fn id_into(&mut self, out: &mut String) -> Result<bool> {
        match self.0.byte().ok_or_else(corrupt)? {
            UUID => {
                let id = uuid::Uuid::from_slice(self.0.bytes(16).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
                out.clear();
                out.push_str(id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
                Ok(true)
            }
            TEXT => self.0.text_into(out).ok_or_else(corrupt).map(|()| true),
            SAME => Ok(false),
            _ => Err(corrupt()),
        }
    }

    /// Reads the next change into `c` (its author left as it is), reusing its
    /// strings: a push of 500k changes otherwise made 4M strings to free again.
    /// `first`: the packet's first change, which cannot repeat a transaction.
    fn change_into(&mut self, c: &mut Change, first: bool) -> Result<()> {
        if !self.id_into(&mut c.id)? {
            return Err(corrupt());
        }
        if !self.id_into(&mut c.transaction_id)? && first {
            return Err(corrupt());
        }
        let r = &mut self.0;
        r.text_into(&mut c.entity_type)
            .and_then(|()| r.text_into(&mut c.entity_id))
            .and_then(|()| r.text_into(&mut c.attribute))
            .and_then(|()| r.opt_into(&mut c.old_value))
            .and_then(|()| r.opt_into(&mut c.new_value))
            .ok_or_else(corrupt)
    }
}

fn corrupt() -> Error {
    Error::Invalid(
        "the outbox (ZV_OUTBOX) is corrupt: a packet of unpushed changes cannot be read \
         (`dimple verify --repair` rebuilds it from the change log)"
            .into(),
    )
}

/// Reads packets one change at a time into one reused [`Change`], with one zstd
/// context and one buffer for all of them: what a push reads its outbox with.
struct Unpacker {
    zstd: zstd::bulk::Decompressor<'static>,
    buf: Vec<u8>,
    change: Change,
}

impl Unpacker {
    fn new() -> Result<Self> {
        let change = Change {
            id: String::new(),
            transaction_id: String::new(),
            entity_type: String::new(),
            entity_id: String::new(),
            attribute: String::new(),
            old_value: None,
            new_value: None,
            author: String::new(),
        };
        Ok(Unpacker { zstd: zstd::bulk::Decompressor::new().map_err(|_| corrupt())?, buf: Vec::new(), change })
    }

    /// Hands each of the packet's `changes` changes, authored by `me`, to `f`
    /// until it returns false. The packet is checked whole only when read to its end.
    fn each(
        &mut self,
        packed: &[u8],
        changes: i64,
        me: &str,
        mut f: impl FnMut(&Change) -> Result<bool>,
    ) -> Result<bool> {
        let size = zstd::bulk::Decompressor::upper_bound(packed).unwrap_or(MAX_UNPACKED).min(MAX_UNPACKED);
        self.buf.clear();
        self.buf.reserve(size);
        self.zstd.decompress_to_buffer(packed, &mut self.buf).map_err(|_| corrupt())?;
        let mut r = Reader(crate::packed::Reader::new(&self.buf));
        let n = usize::try_from(changes).map_err(|_| corrupt())?;
        let c = &mut self.change;
        if c.author != me {
            me.clone_into(&mut c.author);
        }
        for i in 0..n {
            r.change_into(c, i == 0)?;
            if !f(c)? {
                return Ok(false);
            }
        }
        if !r.0.done() {
            return Err(corrupt());
        }
        Ok(true)
    }

    /// How many of the packet's `changes` changes come after `after`, the packet
    /// read whole (an error when any of it cannot be read).
    fn count_after(&mut self, packed: &[u8], changes: i64, after: &str) -> Result<i64> {
        let mut n = 0;
        self.each(packed, changes, "", |c| {
            n += i64::from(c.id.as_str() > after);
            Ok(true)
        })?;
        Ok(n)
    }
}

/// Up to about `limit` of this replica's changes after `after`, in id order, ending
/// at a transaction's end (a transaction is never split, so it may go over).
pub fn unpushed_after(conn: &Connection, me: &str, after: &str, limit: usize) -> Result<Vec<Change>> {
    let mut out: Vec<Change> = Vec::new();
    each_unpushed(conn, me, after, limit, |c| {
        out.push(c.clone());
        Ok(())
    })?;
    Ok(out)
}

/// The packets holding a change after `?1`, in order: (changes, packed).
const PACKETS_AFTER: &str = "SELECT changes, packed FROM ZV_OUTBOX WHERE last_id > ?1 ORDER BY n";

/// What [`each_unpushed`] went through: the span of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first_id: String,
    pub last_id: String,
    pub changes: usize,
    pub transactions: usize,
}

/// Hands this replica's changes after `after` to `f`, in id order, one packet in
/// memory at a time, up to the end of the transaction during which `limit`
/// changes are reached; None when no change waits. A push writes them into its
/// batch file as they come rather than keeping them: a burst captured at once is
/// one transaction, and so one batch, however many changes it has.
pub fn each_unpushed(
    conn: &Connection,
    me: &str,
    after: &str,
    limit: usize,
    mut f: impl FnMut(&Change) -> Result<()>,
) -> Result<Option<Span>> {
    let mut span: Option<Span> = None;
    let mut transactions = std::collections::HashSet::new();
    let mut last_tx = String::new();
    let mut unpacker = Unpacker::new()?;
    let mut stmt = conn.prepare_cached(PACKETS_AFTER)?;
    let mut rows = stmt.query([after_value(after)])?;
    while let Some(r) = rows.next()? {
        let packed = r.get_ref(1)?.as_blob().map_err(|_| corrupt())?;
        let whole = unpacker.each(packed, r.get(0)?, me, |c| {
            if c.id.as_str() <= after {
                return Ok(true);
            }
            if let Some(s) = &span {
                if s.changes >= limit && c.transaction_id != last_tx {
                    return Ok(false);
                }
            }
            f(c)?;
            if c.transaction_id != last_tx {
                transactions.insert(c.transaction_id.clone());
                last_tx.clone_from(&c.transaction_id);
            }
            let s = span.get_or_insert_with(|| Span {
                first_id: c.id.clone(),
                last_id: String::new(),
                changes: 0,
                transactions: 0,
            });
            s.last_id.clone_from(&c.id);
            s.changes += 1;
            s.transactions = transactions.len();
            Ok(true)
        })?;
        if !whole {
            return Ok(span);
        }
    }
    Ok(span)
}

/// How many of this replica's changes after `after` wait for a push.
pub fn unpushed_count(conn: &Connection, after: &str) -> Result<i64> {
    let whole: i64 = conn.query_row(
        "SELECT coalesce(sum(changes), 0) FROM ZV_OUTBOX WHERE first_id > ?1",
        [after_value(after)],
        |r| r.get(0),
    )?;
    // A packet a push carried in part: count what is left of it.
    let straddling: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT changes, packed FROM ZV_OUTBOX WHERE first_id <= ?1 AND last_id > ?1",
            [after_value(after)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let left = match straddling {
        Some((n, packed)) => Unpacker::new()?.count_after(&packed, n, after)?,
        None => 0,
    };
    Ok(whole + left)
}

/// How many changes after `after` the outbox holds in packets that can be read:
/// what a push could send. `verify` compares it with the log, so a packet that
/// cannot be read shows as changes left behind, which `--repair` rebuilds.
pub fn readable_count(conn: &Connection, after: &str) -> Result<i64> {
    let mut stmt = conn.prepare_cached(PACKETS_AFTER)?;
    let mut rows = stmt.query([after_value(after)])?;
    let mut unpacker = Unpacker::new()?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let Ok(packed) = r.get_ref(1)?.as_blob() else { continue };
        n += unpacker.count_after(packed, r.get(0)?, after).unwrap_or(0);
    }
    Ok(n)
}

/// The new values of this replica's changes not pushed yet that `wanted` picks
/// (the references a push still has to send, for the sweep of captured blobs).
pub fn unpushed_values(
    conn: &Connection,
    after: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    each_unpushed(conn, "", after, usize::MAX, |c| {
        out.extend(c.new_value.as_deref().filter(|v| wanted(v)).map(str::to_owned));
        Ok(())
    })?;
    Ok(out)
}

/// The push that carries the changes through `through` is complete: the packets
/// it carried whole leave the outbox.
pub fn pushed(conn: &Connection, through: &str) -> Result<()> {
    if !through.is_empty() {
        conn.prepare_cached("DELETE FROM ZV_OUTBOX WHERE last_id <= ?1")?.execute([crate::log::id_value(through)])?;
    }
    Ok(())
}

/// Whether the outbox of the database attached as `schema` (a name of dimple's
/// own) holds a change after `after`, the cursor of its last push.
pub fn holds_after(conn: &Connection, schema: &str, after: &str) -> Result<bool> {
    let sql = format!("SELECT EXISTS(SELECT 1 FROM {schema}.ZV_OUTBOX WHERE last_id > ?1)");
    Ok(conn.query_row(&sql, [after_value(after)], |r| r.get(0))?)
}

/// Empties the outbox (a fork records what it keeps again, under its new id).
pub fn clear(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM ZV_OUTBOX", [])?;
    Ok(())
}

/// The lower bound for "ids after `id`": empty text means "from the start".
pub fn after_value(id: &str) -> rusqlite::types::Value {
    if id.is_empty() {
        rusqlite::types::Value::Blob(Vec::new())
    } else {
        crate::log::id_value(id)
    }
}

/// Empties the outbox and fills it again from the log: this replica's changes
/// after `through`, in id order (an upgrade from the text log, `verify --repair`).
pub fn rebuild(conn: &Connection, me: &str, through: &str) -> Result<u64> {
    clear(conn)?;
    fill(conn, crate::log::OWN_AFTER, &[&me, &after_value(through)])
}

/// Fills the outbox with the log's changes that `rest` picks and orders (SQL of
/// dimple's own, appended to [`crate::log::SELECT`], binding `params`): the
/// upgrade to local schema 5. Returns how many.
pub fn fill(conn: &Connection, rest: &str, params: &[&dyn rusqlite::ToSql]) -> Result<u64> {
    let mut stmt = conn.prepare(&format!("{} {rest}", crate::log::SELECT))?;
    let mut rows = stmt.query(params)?;
    let mut packer = Packer::new();
    let mut n = 0;
    while let Some(r) = rows.next()? {
        packer.add(conn, &crate::log::row_to_change(r)?)?;
        n += 1;
    }
    packer.finish(conn)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::migrate::SCHEMA).unwrap();
        c
    }

    fn change(i: u64, tx: &str, old: Option<String>, new: Option<String>, text_id: bool) -> Change {
        let id =
            if text_id { format!("not-a-uuid-{i:06}") } else { uuid::Uuid::from_u128(u128::from(i) << 64).to_string() };
        Change {
            id,
            transaction_id: tx.to_owned(),
            entity_type: "t".into(),
            entity_id: format!("k{}", i % 7),
            attribute: "a".into(),
            old_value: old,
            new_value: new,
            author: "me".into(),
        }
    }

    proptest! {
        /// Whatever the values (any text, absent or empty) and transactions, the
        /// changes come back as they went in, in order, across packet ends.
        #[test]
        fn changes_come_back_from_their_packets_exactly(
            values in prop::collection::vec((prop::option::of(".*"), prop::option::of(".*"), 0u8..3, any::<bool>()), 1..300),
        ) {
            let c = conn();
            let mut p = Packer::new();
            let mut tx = 0;
            let mut want = Vec::new();
            for (i, (old, new, next_tx, text_tx)) in values.into_iter().enumerate() {
                tx += u64::from(next_tx == 0);
                let tx_id = if text_tx { format!("tx {tx}") } else { uuid::Uuid::from_u128(u128::from(tx)).to_string() };
                let ch = change(i as u64 + 1, &tx_id, old, new, false);
                p.add(&c, &ch).unwrap();
                want.push(ch);
            }
            p.finish(&c).unwrap();
            prop_assert_eq!(unpushed_after(&c, "me", "", usize::MAX).unwrap(), want.clone());
            prop_assert_eq!(unpushed_count(&c, "").unwrap(), want.len() as i64);
        }
    }

    #[test]
    fn a_packet_a_push_carried_in_part_gives_only_what_is_after_the_cursor() {
        let c = conn();
        let mut p = Packer::new();
        let all: Vec<Change> = (1..=PACKET_CHANGES as u64 + 10)
            .map(|i| {
                change(i, &uuid::Uuid::from_u128(u128::from(i / 100)).to_string(), None, Some(format!("{i}")), false)
            })
            .collect();
        for ch in &all {
            p.add(&c, ch).unwrap();
        }
        p.finish(&c).unwrap();
        let packets: i64 = c.query_row("SELECT count(*) FROM ZV_OUTBOX", [], |r| r.get(0)).unwrap();
        assert_eq!(packets, 2, "a full packet and a short one");
        // Change i is in transaction i / 100: all[98] (i = 99) ends transaction 0.
        let cut = &all[98].id;
        pushed(&c, cut).unwrap();
        let left = unpushed_after(&c, "me", cut, usize::MAX).unwrap();
        assert_eq!(left, all[99..].to_vec());
        assert_eq!(unpushed_count(&c, cut).unwrap(), left.len() as i64);
        let limited = unpushed_after(&c, "me", cut, 150).unwrap();
        assert_eq!(limited, all[99..299].to_vec(), "150 asked: transaction 2 (i = 200..=299) is not split");
        pushed(&c, &all.last().unwrap().id).unwrap();
        assert_eq!(unpushed_count(&c, &all.last().unwrap().id).unwrap(), 0);
        let packets: i64 = c.query_row("SELECT count(*) FROM ZV_OUTBOX", [], |r| r.get(0)).unwrap();
        assert_eq!(packets, 0);
    }

    /// A reading stops at the end of the transaction during which the limit is
    /// reached, and its span says what it handed over.
    #[test]
    fn a_reading_stops_at_the_end_of_the_transaction_that_reaches_the_limit() {
        let c = conn();
        let tx = |i: u64| uuid::Uuid::from_u128(u128::from(i / 10)).to_string();
        let mut p = Packer::new();
        for i in 1..=120 {
            p.add(&c, &change(i, &tx(i), None, Some(format!("{i}")), false)).unwrap();
        }
        p.finish(&c).unwrap();
        let mut first = Vec::new();
        let span = each_unpushed(&c, "me", "", 25, |ch| {
            first.push(ch.clone());
            Ok(())
        })
        .unwrap()
        .unwrap();
        // 25 reached inside transaction 2 (i = 20..=29): it ends at i = 29.
        assert_eq!((span.changes, span.transactions, first.len()), (29, 3, 29));
        assert_eq!((span.first_id.as_str(), span.last_id.as_str()), (first[0].id.as_str(), first[28].id.as_str()));
        let none = each_unpushed(&c, "me", &change(120, "", None, None, false).id, 1, |_| Ok(())).unwrap();
        assert_eq!(none, None, "nothing after the last change");
    }

    #[test]
    fn a_packet_that_cannot_be_read_is_an_error_not_a_panic() {
        let c = conn();
        let mut p = Packer::new();
        for i in 1..50 {
            p.add(&c, &change(i, "tx", None, Some("x".into()), i % 2 == 0)).unwrap();
        }
        p.finish(&c).unwrap();
        let packed: Vec<u8> = c.query_row("SELECT packed FROM ZV_OUTBOX", [], |r| r.get(0)).unwrap();
        let plain = zstd::bulk::decompress(&packed, MAX_UNPACKED).unwrap();
        for cut in [0, 1, plain.len() / 2, plain.len() - 1] {
            let broken = zstd::bulk::compress(&plain[..cut], 1).unwrap();
            c.execute("UPDATE ZV_OUTBOX SET packed = ?1", [broken]).unwrap();
            let err = unpushed_after(&c, "me", "", usize::MAX).unwrap_err();
            assert!(err.to_string().contains("outbox"), "{err}");
        }
        c.execute("UPDATE ZV_OUTBOX SET packed = x'00112233'", []).unwrap();
        assert!(unpushed_count(&c, "").is_ok(), "whole packets are counted without reading them");
        assert!(unpushed_after(&c, "me", "", usize::MAX).is_err());
    }
}
