//! The numbers the log gives names (tables and columns) and authors, which its
//! records hold instead of the text, and the memory of those met recently.

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension};
use std::cell::RefCell;
use std::collections::HashMap;

/// Numbers remembered by name. A batch names one table, a few columns and one
/// author change after change: the last few met are compared first, before a
/// hash of the name (hashing was about 4% of a fresh pull's merging thread).
/// Each row of a batch names its columns in the same order, so the name after
/// the last one found is compared first.
#[derive(Default)]
pub(super) struct Memo {
    /// At most [`RECENT`], the last one met last.
    recent: Vec<(String, i64)>,
    all: HashMap<String, i64>,
    /// Where in `recent` the last name was found.
    last: usize,
}

const RECENT: usize = 8;

impl Memo {
    fn note(&mut self, key: &str, n: i64) {
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push((key.to_owned(), n));
        self.last = self.recent.len() - 1;
    }
}

/// `key`'s number from `memo`, or from `look` the first time.
pub(super) fn remembered(memo: &RefCell<Memo>, key: &str, look: impl FnOnce() -> Result<i64>) -> Result<i64> {
    {
        let mut m = memo.borrow_mut();
        let len = m.recent.len();
        let next = if m.last + 1 < len { m.last + 1 } else { 0 };
        let found =
            [next, m.last].into_iter().chain((0..len).rev()).find(|&i| m.recent.get(i).is_some_and(|(k, _)| k == key));
        if let Some(i) = found {
            m.last = i;
            return Ok(m.recent[i].1);
        }
    }
    let known = memo.borrow().all.get(key).copied();
    let n = match known {
        Some(n) => n,
        None => {
            let n = look()?;
            memo.borrow_mut().all.insert(key.to_owned(), n);
            n
        }
    };
    memo.borrow_mut().note(key, n);
    Ok(n)
}

/// The number of `value` in an interning table (`n INTEGER PRIMARY KEY`, `col`
/// UNIQUE), added when absent.
pub(super) fn intern(conn: &Connection, table: &str, col: &str, value: &str) -> Result<i64> {
    if let Some(n) = conn
        .prepare_cached(&format!("SELECT n FROM {table} WHERE {col} = ?1"))?
        .query_row([value], |r| r.get(0))
        .optional()?
    {
        return Ok(n);
    }
    conn.prepare_cached(&format!("INSERT INTO {table}({col}) VALUES (?1)"))?.execute([value])?;
    Ok(conn.last_insert_rowid())
}

/// The number of a name already in the log, if any (lookups never add one).
pub fn known_name(conn: &Connection, name: &str) -> Result<Option<i64>> {
    Ok(conn.prepare_cached("SELECT n FROM ZV_NAME WHERE name = ?1")?.query_row([name], |r| r.get(0)).optional()?)
}

/// The number of replica `id` among the log's authors, if it is one (lookups
/// never add one).
pub(super) fn known_author(conn: &Connection, id: &str) -> Result<Option<i64>> {
    Ok(conn.prepare_cached("SELECT n FROM ZV_AUTHOR WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?)
}

/// The replica id of author number `n` of this log.
pub(super) fn author_of(conn: &Connection, n: u64) -> Result<String> {
    Ok(conn.prepare_cached("SELECT id FROM ZV_AUTHOR WHERE n = ?1")?.query_row([n as i64], |r| r.get(0))?)
}
