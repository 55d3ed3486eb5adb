//! How a pull commits (docs/protocol.md, pull step 4): consecutive batches share
//! a transaction, yet a batch refused halfway leaves nothing of itself while the
//! batches before it stay applied, no transaction is open across a request, and
//! a process killed inside such a transaction leaves none of its batches, nor of
//! a large batch merged piece by piece.

use crate::support::*;
use rand::{Rng, SeedableRng};

/// The reader's table refuses names of `LIMIT` characters or more, which the
/// writer's accepts: a batch can be refused here by a local constraint, after
/// some of its changes were merged.
const LIMIT: usize = 20;

fn name(rng: &mut rand::rngs::StdRng, len: usize) -> String {
    (0..len).map(|_| rng.gen_range('a'..='z')).collect()
}

#[test]
fn a_batch_refused_halfway_leaves_nothing_of_itself_and_the_batches_before_it_applied() -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut b = dimple::Replica::init(&g.db("b"), Some(&g.bucket_url()), Some("b"), g.opts())?;
    b.conn().execute_batch(&format!(
        "CREATE TABLE t(id TEXT PRIMARY KEY, a, b TEXT CHECK (length(b) < {LIMIT}), c REAL)"
    ))?;
    b.track("t", false)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let store = g.store();
    // Batches of good rows, one push each, then one whose last row breaks the
    // reader's constraint after good ones, then more good rows.
    let before = rng.gen_range(2..6);
    let mut expected = Vec::new();
    for batch in 0..before {
        for i in 0..rng.gen_range(1..20) {
            let id = format!("ok-{batch}-{i}");
            a.conn().execute("INSERT INTO t VALUES (?1, ?2, ?3, NULL)", rusqlite::params![id, i, name(&mut rng, 5)])?;
            expected.push(id);
        }
        block_on(dimple::push(&mut a, &store))?;
    }
    // Rows are written up to 32 to a statement: the breaking row may be in
    // such a statement or written alone, anywhere among the batch's rows.
    let good = rng.gen_range(1..100);
    let breaks_at = rng.gen_range(0..=good);
    for i in 0..=good {
        let (id, b) = if i == breaks_at {
            let len = LIMIT + rng.gen_range(0..10);
            ("breaks".to_owned(), name(&mut rng, len))
        } else {
            (format!("bad-{i}"), "x".to_owned())
        };
        a.conn().execute("INSERT INTO t VALUES (?1, ?2, ?3, NULL)", rusqlite::params![id, i, b])?;
    }
    block_on(dimple::push(&mut a, &store))?;
    a.conn().execute("INSERT INTO t VALUES ('after', 0, 'y', NULL)", [])?;
    block_on(dimple::push(&mut a, &store))?;

    for attempt in 0..2 {
        let report = block_on(dimple::pull(&mut b, &store))?;
        assert_eq!(report.problems.len(), 1, "attempt {attempt}: {:?}", report.problems);
        assert!(report.problems[0].contains("cannot be applied here"), "{:?}", report.problems);
        let held: Vec<String> =
            b.conn().prepare("SELECT id FROM t ORDER BY id")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        expected.sort();
        assert_eq!(held, expected, "attempt {attempt}: the batches before the refused one, and nothing else");
    }
    Ok(())
}

/// Whether another connection can start a write on `db` right now, without waiting.
fn writable(db: &std::path::Path) -> bool {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(std::time::Duration::ZERO).unwrap();
    let free = c.execute_batch("BEGIN IMMEDIATE").is_ok();
    if free {
        c.execute_batch("ROLLBACK").unwrap();
    }
    free
}

#[test]
fn no_store_request_is_made_while_a_pull_holds_the_write_lock() -> TestResult {
    use dimple::store::faulty::{Fault, Faulty};
    use rand::RngCore;
    let g = Group::new();
    let mut a = g.replica("a");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let store = g.store();
    // Batches of plain rows and batches with values stored out of line (which a
    // pull downloads between batches): a plain one, one with a value, then at random.
    for batch in 0..6 {
        let id = format!("r{batch}");
        if batch == 1 || (batch > 1 && rng.gen_bool(0.5)) {
            let mut value = vec![0u8; rng.gen_range(70_000..150_000)];
            rng.fill_bytes(&mut value);
            a.conn().execute("INSERT INTO t VALUES (?1, ?2, 'v', NULL)", rusqlite::params![id, value])?;
        } else {
            a.conn().execute("INSERT INTO t VALUES (?1, 1, 'p', NULL)", [id])?;
        }
        block_on(dimple::push(&mut a, &store))?;
    }
    // Every store call of a pull in turn never returns; while it waits, an app
    // can write.
    let mut n = 0;
    loop {
        let _ = std::fs::remove_file(g.db("b"));
        let _ = std::fs::remove_dir_all(dimple::replica::side_dir(&g.db("b")));
        let mut b = g.replica("b");
        let (faulty, plan) = Faulty::new(g.raw_store());
        plan.fail_nth(n, Fault::Hang);
        let waited = block_on(async {
            tokio::select! {
                out = dimple::pull(&mut b, &faulty) => { out.unwrap(); None }
                _ = plan.hung() => Some(writable(&g.db("b"))),
            }
        });
        match waited {
            Some(free) => assert!(free, "store call {n} was made while the pull held the write lock"),
            None => break,
        }
        n += 1;
    }
    assert!(n > 6, "the pull made {n} store calls");
    Ok(())
}

/// The rerun that finished delivered everything `a` wrote to `b` (at `db`), each
/// change once.
fn assert_delivered_once(g: &Group, a: &dimple::Replica, db: &std::path::Path, writer: &str) -> TestResult {
    let b = g.reopen("b");
    assert_eq!(rows(b.conn(), "t"), rows(a.conn(), "t"));
    assert_eq!(change_ids(b.conn()), change_ids(a.conn()));
    assert_eq!(held_and_recorded(db, writer).1, change_ids(a.conn()).len() as i64, "a batch was applied twice");
    assert!(dimple::status::status(&b)?.problems.is_empty());
    Ok(())
}

/// Inserts row `key` of generated values: arbitrary bytes, text and float bits.
fn insert_generated(conn: &rusqlite::Connection, rng: &mut rand::rngs::StdRng, key: &str) -> rusqlite::Result<()> {
    use rand::RngCore;
    let mut blob = vec![0u8; rng.gen_range(0..48)];
    rng.fill_bytes(&mut blob);
    let text: String = (0..rng.gen_range(0..24)).map(|_| rng.gen_range('\u{1}'..='\u{10ffff}')).collect();
    let real = f64::from_bits(rng.next_u64());
    let real = if real.is_nan() { 0.25 } else { real };
    conn.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", rusqlite::params![key, blob, text, real]).map(drop)
}

/// The changes of replica `of` that `db` holds, and the change count its cursor
/// for `of` records, read from another connection while a pull may run.
fn held_and_recorded(db: &std::path::Path, of: &str) -> (i64, i64, Option<String>, Option<String>) {
    let c = rusqlite::Connection::open(db).unwrap();
    dimple::log::register(&c).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let (held, newest): (i64, Option<String>) = c
        .query_row(
            "SELECT count(*), max(c.id) FROM ZV_CHANGE c JOIN ZV_AUTHOR a ON a.n = c.author_n WHERE a.id = ?1",
            [of],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (recorded, last): (i64, Option<String>) = c
        .query_row(
            "SELECT coalesce(max(change_count), 0), max(last_change_id) FROM ZV_REPLICA WHERE id = ?1",
            [of],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (held, recorded, newest, last)
}

#[test]
fn a_pull_killed_while_a_group_of_batches_is_open_leaves_none_of_the_group_and_the_rerun_applies_each_once(
) -> TestResult {
    let g = Group::new();
    let opts = dimple::Options { batch_changes: 400, ..g.opts() };
    let mut a = dimple::Replica::init(&g.db("a"), Some(&g.bucket_url()), Some("a"), opts)?;
    a.conn().execute_batch(TABLE_SQL)?;
    a.track("t", false)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    // Generated rows (arbitrary bytes, text and float bits), one dimple
    // transaction per 100 rows: a batch each, and more changes than one group takes.
    let transactions = rng.gen_range(300..340);
    for tx in 0..transactions {
        for i in 0..100 {
            insert_generated(a.conn(), &mut rng, &format!("k{tx:03}-{i:03}"))?;
        }
        a.capture()?;
    }
    let store = g.store();
    let pushed = block_on(dimple::push(&mut a, &store))?;
    assert!(pushed.batches >= 40, "{pushed:?}");
    let writer = a.id().to_owned();
    drop(g.replica("b"));

    let bin = env!("CARGO_BIN_EXE_dimple");
    let db = g.db("b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut kills_in_a_group = 0;
    loop {
        let mut child = std::process::Command::new(bin)
            .args(["pull", db.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let (_, before, ..) = held_and_recorded(&db, &writer);
        // Killed once a group of this run committed and the next one holds the
        // write lock: inside an open group, after others of the run.
        let finished = loop {
            assert!(std::time::Instant::now() < deadline, "the pull neither finished nor reached a group");
            if child.try_wait()?.is_some() {
                break true;
            }
            if held_and_recorded(&db, &writer).1 > before && !writable(&db) {
                child.kill()?;
                child.wait()?;
                break false;
            }
        };
        // Whatever the moment: the changes held are exactly those of the batches
        // the cursor records, none of a batch it does not.
        let (held, recorded, newest, last) = held_and_recorded(&db, &writer);
        assert_eq!(held, recorded, "changes held against the changes of the batches recorded");
        assert_eq!(newest, last, "the newest change held is the last of the last batch recorded");
        if finished {
            break;
        }
        kills_in_a_group += 1;
    }
    assert!(kills_in_a_group > 0, "no pull was killed inside a group");
    assert_delivered_once(&g, &a, &db, &writer)
}

/// A batch of more than 10,000 changes (a burst captured at once) is merged
/// piece by piece while its check goes on, in its group's transaction: a pull
/// killed meanwhile leaves none of it, and the rerun applies it once.
#[test]
fn a_pull_killed_while_a_large_batch_is_merged_piece_by_piece_leaves_none_of_it_and_the_rerun_applies_it_once(
) -> TestResult {
    let g = Group::new();
    let mut a = g.replica("a");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    // Generated rows, each burst captured at once: one batch of 4 changes a row.
    let bursts = rng.gen_range(2..4);
    for burst in 0..bursts {
        for i in 0..rng.gen_range(5_000..6_000) {
            insert_generated(a.conn(), &mut rng, &format!("k{burst}-{i:04}"))?;
        }
        a.capture()?;
    }
    let store = g.store();
    let pushed = block_on(dimple::push(&mut a, &store))?;
    // Two or three pieces a batch: most of its merge is after a piece.
    assert!(pushed.batches == bursts && pushed.changes > bursts * 20_000, "{pushed:?}");
    let writer = a.id().to_owned();
    drop(g.replica("b"));

    let bin = env!("CARGO_BIN_EXE_dimple");
    let pull = |db: &std::path::Path| {
        std::process::Command::new(bin)
            .args(["pull", db.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    };
    // How long a whole pull takes here, on a replica of its own: the kills
    // land anywhere in the first half of such a span after the pull took the
    // write lock (a fraction of the whole span missed the merge on a busy
    // host, where the download and the decompression before it took longer).
    drop(g.replica("probe"));
    let started = std::time::Instant::now();
    assert!(pull(&g.db("probe"))?.wait()?.success());
    let span = started.elapsed();
    let db = g.db("b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    // Killed midway: holding the write lock, with changes not committed yet.
    let (wanted, mut killed_midway) = (rng.gen_range(3..5), 0);
    for run in 0.. {
        let mut child = pull(&db)?;
        let kill_after = (killed_midway < wanted && run < 20).then(|| span.mul_f64(rng.gen_range(0.0..0.5)));
        let mut locked_at = None;
        let killed = loop {
            assert!(std::time::Instant::now() < deadline, "the pull did not finish");
            if child.try_wait()?.is_some() {
                break None;
            }
            if kill_after.is_some() && locked_at.is_none() && !writable(&db) {
                locked_at = Some(std::time::Instant::now());
            }
            if locked_at.zip(kill_after).is_some_and(|(at, after)| at.elapsed() >= after) {
                let locked = !writable(&db);
                child.kill()?;
                child.wait()?;
                break Some(locked);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let (held, recorded, newest, last) = held_and_recorded(&db, &writer);
        assert_eq!(held, recorded, "run {run}: changes held against the changes of the batches recorded");
        assert_eq!(newest, last, "run {run}: the newest change held is the last of the last batch recorded");
        match killed {
            None => break,
            Some(locked) => killed_midway += usize::from(locked && (recorded as usize) < pushed.changes),
        }
    }
    assert!(killed_midway > 0, "no pull was killed midway");
    assert_delivered_once(&g, &a, &db, &writer)
}
