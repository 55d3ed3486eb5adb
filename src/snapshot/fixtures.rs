//! Snapshot files for unit tests: generated changes, written in each form a
//! snapshot has had.

use rusqlite::Connection;
use std::path::Path;

/// Changes with generated text: ids in order, a few authors, transactions,
/// tables, rows and columns, values NULL or arbitrary text.
pub(crate) fn changes(seed: u64, n: usize) -> Vec<crate::merge::Change> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let author = format!("0190{:04x}-0000-7000-8000-{:012x}", next() % 3, 7);
            let value = |v: u64| (!v.is_multiple_of(4)).then(|| format!("\"{}\u{e9}\\u0000{}\"", v, v % 97));
            crate::merge::Change {
                // Few nodes: a row's cells often have ids of one node.
                id: format!("0190{:04x}-{:04x}-7000-8000-{:012x}", i / 65536, i % 65536, next() % 3),
                transaction_id: format!("0190{:04x}-0000-7000-8000-{:012x}", i / 7, 1),
                entity_type: ["t", "u", "\u{1F600} table"][(next() % 3) as usize].to_owned(),
                entity_id: format!("row {}", next() % 50),
                attribute: ["*", "a", "b c", "\"d\""][(next() % 4) as usize].to_owned(),
                old_value: value(next()),
                new_value: value(next()),
                author,
            }
        })
        .collect()
}

pub(crate) fn replica_tables() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(crate::migrate::SCHEMA).unwrap();
    crate::log::register(&c).unwrap();
    c
}

/// A snapshot file holding `changes` in the compact form (as compaction writes
/// it now) or in the text form of earlier builds.
pub(crate) fn snapshot_file(dir: &Path, changes: &[crate::merge::Change], compact: bool) -> std::path::PathBuf {
    let path = dir.join(if compact { "compact.db" } else { "text.db" });
    let c = Connection::open(&path).unwrap();
    if compact {
        c.execute_batch(include_str!("../../schema/snapshot_log.sql")).unwrap();
        // Numbered by a replica's log, then written a row per change.
        let scratch = replica_tables();
        let log = crate::log::Log::new(&scratch).unwrap();
        for ch in changes {
            log.merge(ch).unwrap();
        }
        scratch.execute("ATTACH ?1 AS snap", [path.display().to_string()]).unwrap();
        scratch
            .execute_batch(
                "INSERT INTO snap.ZV_AUTHOR SELECT * FROM ZV_AUTHOR; INSERT INTO snap.ZV_NAME SELECT * FROM ZV_NAME;
                 INSERT INTO snap.ZV_TX SELECT * FROM ZV_TX; INSERT INTO snap.ZV_LOG SELECT * FROM ZV_LOG;",
            )
            .unwrap();
    } else {
        c.execute_batch(include_str!("../../schema/wire_log.sql")).unwrap();
        for ch in changes {
            c.execute("INSERT OR IGNORE INTO ZV_AUTHOR(id) VALUES (?1)", [&ch.author]).unwrap();
            c.execute("INSERT OR IGNORE INTO ZV_TRANSACTION VALUES (?1, ?2)", [&ch.transaction_id, &ch.author])
                .unwrap();
            let mut row = ch.as_row().to_vec();
            let n: i64 = c.query_row("SELECT n FROM ZV_AUTHOR WHERE id = ?1", [&ch.author], |r| r.get(0)).unwrap();
            row.push(&n);
            c.execute("INSERT INTO ZV_CHANGE VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", row.as_slice()).unwrap();
        }
    }
    path
}

/// A snapshot in the replica's own form (format 4), written by compaction's
/// [`crate::log::copy_winners`] from a log of `changes`; the source log's path
/// too.
pub(crate) fn records_file(dir: &Path, changes: &[crate::merge::Change]) -> (std::path::PathBuf, std::path::PathBuf) {
    let (source, path) = (dir.join("source.db"), dir.join("records.db"));
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(&path);
    let src = Connection::open(&source).unwrap();
    src.execute_batch(crate::migrate::SCHEMA).unwrap();
    let log = crate::log::Log::new(&src).unwrap();
    for ch in changes {
        log.merge(ch).unwrap();
    }
    let s = Connection::open(&path).unwrap();
    crate::log::register(&s).unwrap();
    s.execute_batch(crate::snapshot::SCHEMA).unwrap();
    s.execute("ATTACH ?1 AS src", [source.display().to_string()]).unwrap();
    crate::log::copy_winners(&s, "src").unwrap();
    s.execute(
        "INSERT INTO ZV_SNAPSHOT(format, snapshot_id, source_replica, created_at) VALUES (?1, 'x', 'y', 'z')",
        [crate::snapshot::SNAPSHOT_FORMAT],
    )
    .unwrap();
    (path, source)
}
