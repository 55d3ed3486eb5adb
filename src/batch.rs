//! Batch files: immutable SQLite files holding consecutive transactions of one
//! replica, each naming the sha256 of its predecessor.
//!
//! Everything read from a batch is untrusted: `open` checks the header, the ids and
//! the authors before any change is handed to the merger.

use crate::clock::parse_id;
use crate::codec::{self, Kind};
use crate::error::{Error, Result};
use crate::merge::Change;
use crate::FORMAT;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use uuid::Uuid;

const SCHEMA: &str = include_str!("../schema/batch.sql");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format: i64,
    pub replica: String,
    pub batch_id: String,
    pub prev_batch_id: Option<String>,
    pub prev_sha256: Option<String>,
    pub first_change_id: String,
    pub last_change_id: String,
    pub transaction_count: i64,
    pub change_count: i64,
}

pub use crate::codec::sha256_hex;

/// The SQLite file inside a stored batch (see [`crate::codec`]).
pub fn unpack<'b>(stored: &'b [u8], origin: &str) -> Result<std::borrow::Cow<'b, [u8]>> {
    codec::Codec::Plain.decode(Kind::Batch, origin, stored)
}

/// Writes a batch to `path` (replacing it) as it is stored in the bucket, and
/// returns those bytes. `changes` are whole transactions in id order, all authored
/// by `header.replica`.
pub fn write(path: &Path, header: &Header, changes: &[Change], codec: &codec::Codec) -> Result<Vec<u8>> {
    let written = write_with(path, &header.replica, codec, |add| {
        changes.iter().try_for_each(add)?;
        Ok(Some(header.clone()))
    })?;
    Ok(written.map(|(_, bytes)| bytes).unwrap_or_default())
}

/// [`write()`] with the changes fed one at a time by `fill`, which hands each to the
/// function it is given and then says what the batch holds (None: nothing, and no
/// batch is written). A push reads its outbox once this way and never holds a
/// whole batch in memory, however large the transaction (a burst of writes
/// captured at once is one). Returns the header and the stored bytes.
///
/// The changes are written into the file by a thread of its own, [`PIECE`] at
/// a time, while `fill` reads the next ones: reading the outbox (its packets
/// decompressed, their changes read) was about a fifth of a push of 500k
/// changes, and SQLite writing them about three fifths, on one core.
pub fn write_with(
    path: &Path,
    replica: &str,
    codec: &codec::Codec,
    fill: impl FnOnce(&mut dyn FnMut(&Change) -> Result<()>) -> Result<Option<Header>>,
) -> Result<Option<(Header, Vec<u8>)>> {
    let sqlite = path.with_extension("sqlite");
    let _ = std::fs::remove_file(&sqlite);
    let written = std::thread::scope(|s| -> Result<Option<(Connection, Header)>> {
        // Two pieces in flight at most, their changes' strings going back to be reused.
        let (to, pieces) = std::sync::mpsc::sync_channel::<(Vec<Change>, usize)>(1);
        let (back, returned) = std::sync::mpsc::channel::<Vec<Change>>();
        let writer = std::thread::Builder::new()
            .name("dimple-batch".into())
            .spawn_scoped(s, || write_pieces(&sqlite, replica, pieces, back))
            .map_err(|e| Error::Invalid(format!("could not start writing a batch: {e}")))?;
        let (mut piece, mut used) = (Vec::with_capacity(PIECE), 0);
        let header = fill(&mut |c: &Change| {
            match piece.get_mut(used) {
                Some(slot) => copy_change(slot, c),
                None => piece.push(c.clone()),
            }
            used += 1;
            if used == PIECE {
                let next = returned.try_recv().unwrap_or_else(|_| Vec::with_capacity(PIECE));
                // The writer stopped: its error is what the batch fails with.
                to.send((std::mem::replace(&mut piece, next), used)).map_err(|_| writer_stopped())?;
                used = 0;
            }
            Ok(())
        });
        let sent = match used {
            0 => Ok(()),
            _ => to.send((piece, used)).map_err(|_| writer_stopped()),
        };
        drop(to);
        let (conn, n) = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let header = header?;
        sent?;
        let Some(header) = header else { return Ok(None) };
        if n != header.change_count || header.replica != replica {
            return Err(Error::Invalid(format!(
                "batch {} was to hold {} changes of {} but was given {n} of {replica}",
                header.batch_id, header.change_count, header.replica
            )));
        }
        Ok(Some((conn, header)))
    });
    // Nothing to write, or the changes could not be read: no file is left.
    let (conn, header) = match written {
        Ok(Some(written)) => written,
        other => {
            let _ = std::fs::remove_file(&sqlite);
            return other.map(|_| None);
        }
    };
    let finished = (|| -> Result<()> {
        conn.execute(
            "INSERT INTO ZV_BATCH VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                header.format,
                header.replica,
                header.batch_id,
                header.prev_batch_id,
                header.prev_sha256,
                header.first_change_id,
                header.last_change_id,
                header.transaction_count,
                header.change_count
            ],
        )?;
        Ok(conn.execute_batch("COMMIT")?)
    })();
    drop(conn);
    if let Err(e) = finished {
        let _ = std::fs::remove_file(&sqlite);
        return Err(e);
    }
    let key = crate::layout::batch_key(&header.replica, &header.batch_id);
    let stored = codec.encode_batch_file(&key, &sqlite)?;
    std::fs::write(path, &stored).map_err(|e| Error::io(path, e))?;
    let _ = std::fs::remove_file(&sqlite);
    Ok(Some((header, stored)))
}

/// Changes handed to the thread writing a batch file at a time.
const PIECE: usize = 1024;

/// The writing thread of [`write_with`]: a new batch file at `sqlite`, the first
/// `used` changes of each piece inserted as they come (each piece then handed
/// `back`), in one transaction left open. Returns the connection and how many
/// changes it wrote.
fn write_pieces(
    sqlite: &Path,
    replica: &str,
    pieces: std::sync::mpsc::Receiver<(Vec<Change>, usize)>,
    back: std::sync::mpsc::Sender<Vec<Change>>,
) -> Result<(Connection, i64)> {
    let conn = Connection::open(sqlite)?;
    // The largest page: the file is written once, in key order, and read whole,
    // so fewer, fuller pages cost less to build (0.80 -> 0.72 s for a push of
    // 500k changes) and compress better (5.9 -> 5.2 MB); readers take any size.
    conn.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=65536;")?;
    conn.execute_batch("BEGIN")?;
    conn.execute_batch(SCHEMA)?;
    let mut n: i64 = 0;
    {
        let mut txn = conn.prepare("INSERT OR IGNORE INTO ZV_TRANSACTION(id, author) VALUES (?1, ?2)")?;
        let mut chg = conn.prepare("INSERT INTO ZV_CHANGE VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        // A transaction's changes come together: its row is written once.
        let mut last_txn = String::new();
        for (piece, used) in pieces {
            for c in &piece[..used] {
                if n == 0 || last_txn != c.transaction_id {
                    txn.execute(params![c.transaction_id, replica])?;
                    last_txn.clone_from(&c.transaction_id);
                }
                chg.execute(c.as_row())?;
                n += 1;
            }
            let _ = back.send(piece);
        }
    }
    Ok((conn, n))
}

/// `c` into `slot`, whose strings take its text in place.
fn copy_change(slot: &mut Change, c: &Change) {
    slot.id.clone_from(&c.id);
    slot.transaction_id.clone_from(&c.transaction_id);
    slot.entity_type.clone_from(&c.entity_type);
    slot.entity_id.clone_from(&c.entity_id);
    slot.attribute.clone_from(&c.attribute);
    slot.old_value.clone_from(&c.old_value);
    slot.new_value.clone_from(&c.new_value);
    slot.author.clone_from(&c.author);
}

fn writer_stopped() -> Error {
    Error::Invalid("the batch file's writer stopped".into())
}

/// An opened, checked batch.
pub struct Batch {
    conn: Connection,
    pub header: Header,
    origin: String,
}

fn bad(origin: &str, reason: impl Into<String>) -> Error {
    Error::bad(origin, reason)
}

/// Opens the batch at `path` (downloaded from `origin`) and checks that it is a
/// dimple batch of format 1 by `replica`.
pub fn open(path: &Path, origin: &str, replica: &str) -> Result<Batch> {
    let sqlerr = |e: rusqlite::Error| bad(origin, format!("not a readable batch file: {e}"));
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sqlerr)?;
    // Only plain tables are read: a hostile file could define ZV_CHANGE as a view
    // over an endless recursive query, or as a virtual table of some module.
    conn.pragma_update(None, "trusted_schema", false).map_err(sqlerr)?;
    let odd: Option<String> = conn
        .query_row(
            "SELECT type || ' ' || name FROM sqlite_master
             WHERE type IN ('view', 'trigger') OR (type = 'table' AND sql LIKE 'CREATE VIRTUAL%') LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sqlerr)?;
    if let Some(odd) = odd {
        return Err(bad(origin, format!("batch holds a {odd}: only plain tables are allowed")));
    }
    let header = conn
        .query_row(
            "SELECT format, replica, batch_id, prev_batch_id, prev_sha256, first_change_id, last_change_id,
                    transaction_count, change_count, (SELECT count(*) FROM ZV_BATCH) FROM ZV_BATCH",
            [],
            |r| {
                Ok((
                    Header {
                        format: r.get(0)?,
                        replica: r.get(1)?,
                        batch_id: r.get(2)?,
                        prev_batch_id: r.get(3)?,
                        prev_sha256: r.get(4)?,
                        first_change_id: r.get(5)?,
                        last_change_id: r.get(6)?,
                        transaction_count: r.get(7)?,
                        change_count: r.get(8)?,
                    },
                    r.get::<_, i64>(9)?,
                ))
            },
        )
        .optional()
        .map_err(sqlerr)?;
    let Some((header, rows)) = header else { return Err(bad(origin, "batch header is missing")) };
    if rows != 1 {
        return Err(bad(origin, "batch header must have exactly one row"));
    }
    if header.format != FORMAT {
        return Err(bad(origin, format!("unknown batch format {} (this dimple reads format {FORMAT})", header.format)));
    }
    if header.replica != replica {
        return Err(bad(origin, format!("batch belongs to replica {}, not {replica}", header.replica)));
    }
    for id in [
        Some(&header.batch_id),
        Some(&header.first_change_id),
        Some(&header.last_change_id),
        header.prev_batch_id.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if parse_id(id).is_none() {
            return Err(bad(origin, format!("{id:?} is not a UUIDv7 id")));
        }
    }
    Ok(Batch { conn, header, origin: origin.to_owned() })
}

impl Batch {
    /// Every change in id order, after checking that each belongs to a transaction of
    /// this batch authored by its replica and that the header's counts and bounds are true.
    pub fn changes(&self) -> Result<Vec<Change>> {
        let mut out: Vec<Change> = Vec::with_capacity(self.header.change_count.clamp(0, 1 << 20) as usize);
        self.each_change(|c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Batch::changes`] handed to `f` one at a time, never all in memory: a
    /// batch can hold a whole burst of writes (one transaction is never split).
    /// The header is checked against the contents at the end: a caller that acts
    /// on the changes as they come must be able to undo it (a transaction it rolls
    /// back) when this fails.
    pub fn each_change(&self, mut f: impl FnMut(Change) -> Result<()>) -> Result<()> {
        self.each_change_reusing(Vec::new(), |c, _| f(c))
    }

    /// [`Batch::each_change`], each change read into one taken from `spare` while
    /// it has any (their strings reused) and handed over to `f` with its id read.
    pub fn each_change_reusing(&self, mut spare: Vec<Change>, f: impl FnMut(Change, Uuid) -> Result<()>) -> Result<()> {
        self.each_change_from(|| spare.pop(), f)
    }

    /// [`Batch::each_change`], each change read into one `spare` gives while it
    /// gives any (their strings reused) and handed over to `f` with its id read.
    pub fn each_change_from(
        &self,
        mut spare: impl FnMut() -> Option<Change>,
        mut f: impl FnMut(Change, Uuid) -> Result<()>,
    ) -> Result<()> {
        let origin = &self.origin;
        let sqlerr = |e: rusqlite::Error| bad(origin, format!("unreadable batch: {e}"));
        let foreign: Option<String> = self
            .conn
            .query_row("SELECT author FROM ZV_TRANSACTION WHERE author <> ?1 LIMIT 1", [&self.header.replica], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sqlerr)?;
        if let Some(author) = foreign {
            return Err(bad(
                origin,
                format!("batch holds a transaction authored by {author}, not by {}", self.header.replica),
            ));
        }
        // The transactions are few: read once, rather than joined to every change.
        let txns: std::collections::HashSet<String> = self
            .conn
            .prepare("SELECT id FROM ZV_TRANSACTION")
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
            .map_err(sqlerr)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, transaction_id, entity_type, entity_id, attribute, old_value, new_value, ?1
                 FROM ZV_CHANGE ORDER BY id",
            )
            .map_err(sqlerr)?;
        let mut rows = stmt.query([&self.header.replica]).map_err(sqlerr)?;
        // The transaction id of the change before, already found and parsed.
        let mut last_txn: Option<String> = None;
        let (mut count, mut first, mut last) = (0i64, None::<String>, String::new());
        while let Some(r) = rows.next().map_err(sqlerr)? {
            let c = match spare() {
                Some(mut c) => {
                    crate::log::row_into_change(r, &mut c).map_err(sqlerr)?;
                    c
                }
                None => crate::log::row_to_change(r).map_err(sqlerr)?,
            };
            let Some(id) = parse_id(&c.id) else {
                return Err(bad(origin, format!("change id {:?} is not a UUIDv7 id", c.id)));
            };
            if last_txn.as_deref() != Some(c.transaction_id.as_str()) {
                if !txns.contains(&c.transaction_id) {
                    return Err(bad(origin, format!("change {} names a transaction that is not in the batch", c.id)));
                }
                if parse_id(&c.transaction_id).is_none() {
                    return Err(bad(origin, format!("change id {:?} is not a UUIDv7 id", c.transaction_id)));
                }
                last_txn = Some(c.transaction_id.clone());
            }
            count += 1;
            if first.is_none() {
                first = Some(c.id.clone());
            }
            last.clone_from(&c.id);
            f(c, id)?;
        }
        let h = &self.header;
        if count != h.change_count
            || txns.len() as i64 != h.transaction_count
            || first.as_deref() != Some(h.first_change_id.as_str())
            || last != h.last_change_id
        {
            return Err(bad(origin, "batch header does not match its contents (counts or first/last change id)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const REPLICA: &str = "01900000-0000-7000-8000-0000000000aa";

    /// `n` changes of transactions of 1-7 changes, as a push hands them over:
    /// old and new values any text (quotes, newlines, any length to 300 bytes)
    /// or none, so that a reused change's strings meet longer, shorter and
    /// absent ones.
    fn changes(n: usize, seed: u64) -> (Header, Vec<Change>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let id = |i: usize| format!("01900000-0000-7000-8000-{:012x}", i + 1);
        let value = |rng: &mut rand::rngs::StdRng| -> Option<String> {
            let len = rng.gen_range(0..300);
            rng.gen_bool(0.8).then(|| (0..len).map(|_| rng.gen_range(' '..='\u{3ff}')).collect())
        };
        let (mut out, mut txn, mut txns) = (Vec::with_capacity(n), String::new(), 0);
        for i in 0..n {
            if i == 0 || rng.gen_range(0..4) == 0 {
                txn = id(i);
                txns += 1;
            }
            out.push(Change {
                id: id(i),
                transaction_id: txn.clone(),
                entity_type: ["t", "notes"][rng.gen_range(0..2)].into(),
                entity_id: format!("k{}", rng.gen_range(0..n)),
                attribute: ["*", "a", "body"][rng.gen_range(0..3)].into(),
                old_value: value(&mut rng),
                new_value: value(&mut rng),
                author: REPLICA.into(),
            });
        }
        let header = Header {
            format: FORMAT,
            replica: REPLICA.into(),
            batch_id: id(n + 1),
            prev_batch_id: None,
            prev_sha256: None,
            first_change_id: id(0),
            last_change_id: id(n.saturating_sub(1)),
            transaction_count: txns,
            change_count: n as i64,
        };
        (header, out)
    }

    /// The batch file is written by a thread of its own, a piece of changes at
    /// a time, each piece's strings reused for the next: whatever the count
    /// against the piece's size, the file holds every change as it was given.
    /// (Pieces are reused once the writer has given one back: from the third
    /// of twenty on, as the reading side waits to hand each over.)
    #[test]
    fn a_batch_of_many_pieces_holds_every_change_as_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        for (n, seed) in [(1, 1), (PIECE - 1, 2), (PIECE, 3), (PIECE + 1, 4), (20 * PIECE + 17, 5)] {
            let (header, given) = changes(n, seed);
            let path = dir.path().join(format!("b{n}.db"));
            let stored = write(&path, &header, &given, &codec::Codec::Plain).unwrap();
            std::fs::write(dir.path().join("plain.db"), unpack(&stored, "b").unwrap()).unwrap();
            let batch = open(&dir.path().join("plain.db"), "b", REPLICA).unwrap();
            assert_eq!(batch.header, header);
            assert!(batch.changes().unwrap() == given, "{n} changes read back as given");
        }
    }

    /// A change the batch file refuses (here an id given twice) fails the
    /// batch with SQLite's reason, and leaves no file behind: refused in the
    /// first piece, while the reading side is still handing pieces over (it
    /// then stops: the writer's reason is the one given, not its "stopped"),
    /// and in the last.
    #[test]
    fn a_change_the_file_refuses_fails_the_batch_with_its_reason_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        for late in [20, 3 * PIECE - 7] {
            let (header, mut given) = changes(3 * PIECE, 6);
            given[late].id = given[10].id.clone();
            let path = dir.path().join("b.db");
            let err = write(&path, &header, &given, &codec::Codec::Plain).unwrap_err().to_string();
            assert!(err.contains("UNIQUE constraint failed"), "{err}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file is left");
        }
    }

    /// The reading side failing after several pieces fails the batch with its
    /// own error and leaves no file behind.
    #[test]
    fn a_fill_failing_midway_fails_the_batch_with_its_own_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, given) = changes(3 * PIECE, 7);
        let path = dir.path().join("b.db");
        let written = write_with(&path, REPLICA, &codec::Codec::Plain, |add| {
            given[..2 * PIECE + 5].iter().try_for_each(add)?;
            Err(Error::Invalid("the outbox could not be read".into()))
        });
        let err = written.expect_err("the batch fails").to_string();
        assert!(err.contains("the outbox could not be read"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file is left");
    }

    #[test]
    fn stored_batches_are_compressed_and_plain_ones_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let id = "01900000-0000-7000-8000-000000000001".to_owned();
        let header = Header {
            format: FORMAT,
            replica: id.clone(),
            batch_id: id.clone(),
            prev_batch_id: None,
            prev_sha256: None,
            first_change_id: id.clone(),
            last_change_id: id.clone(),
            transaction_count: 1,
            change_count: 1,
        };
        let change = Change {
            id: id.clone(),
            transaction_id: id.clone(),
            entity_type: "t".into(),
            entity_id: "k".into(),
            attribute: "*".into(),
            old_value: None,
            new_value: Some("true".into()),
            author: id.clone(),
        };
        let stored =
            write(&dir.path().join("b.db"), &header, std::slice::from_ref(&change), &codec::Codec::Plain).unwrap();
        assert!(stored.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]), "a zstd frame");
        assert_eq!(std::fs::read(dir.path().join("b.db")).unwrap(), stored, "the outbox holds what is uploaded");
        let sqlite = unpack(&stored, "b").unwrap().into_owned();
        assert!(sqlite.starts_with(b"SQLite format 3\0"));
        assert!(matches!(unpack(&sqlite, "b").unwrap(), std::borrow::Cow::Borrowed(_)));
        std::fs::write(dir.path().join("plain.db"), &sqlite).unwrap();
        let batch = open(&dir.path().join("plain.db"), "b", &id).unwrap();
        assert_eq!(batch.header, header);
        assert_eq!(batch.changes().unwrap(), vec![change]);
        assert!(unpack(&stored[..stored.len() / 2], "b").is_err(), "a truncated frame is refused");
    }
}
