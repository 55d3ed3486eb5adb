//! The background agent, as users run it: real `dimple agent` processes beside apps
//! that write with plain SQL. (The in-process backoff test is in `agent/backoff.rs`.)

mod backoff;
mod fleet;
mod harness;
mod independence;
mod outage;

use anyhow::Result;
use harness::{count, insert, insert_many, replica, rows, wait_for, Agent};
use std::path::Path;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(120);

fn local_bucket(dir: &Path) -> String {
    format!("file://{}", dir.join("bucket").display())
}

fn has(db: &Path, id: &str, body: &str) -> Result<bool> {
    Ok(rows(db)?.iter().any(|(i, b)| i == id && b.as_deref() == Some(body)))
}

/// Converge: equal tables, and equal merged logs (no change lost or applied twice).
fn converged(a: &Path, b: &Path, rows_expected: usize) -> Result<bool> {
    let (ra, rb) = (rows(a)?, rows(b)?);
    Ok(ra.len() == rows_expected
        && ra == rb
        && count(a, "SELECT count(*) FROM ZV_CHANGE")? == count(b, "SELECT count(*) FROM ZV_CHANGE")?)
}

#[test]
fn plain_sql_writes_travel_between_two_agents() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bucket = local_bucket(dir.path());
    let (a, b) = (replica(dir.path(), "a", &bucket)?, replica(dir.path(), "b", &bucket)?);
    let (mut agent_a, mut agent_b) = (Agent::start(&a, 1)?, Agent::start(&b, 1)?);

    insert(&a, "n1", "written in a")?;
    agent_b.or_log(wait_for(CONVERGE, "a's row in b", || has(&b, "n1", "written in a")))?;
    insert(&b, "n2", "written in b")?;
    harness::app(&b)?.execute("UPDATE notes SET body = 'edited in b' WHERE id = 'n1'", [])?;
    agent_a.or_log(wait_for(CONVERGE, "b's writes in a", || {
        Ok(has(&a, "n2", "written in b")? && has(&a, "n1", "edited in b")?)
    }))?;
    wait_for(CONVERGE, "convergence", || converged(&a, &b, 2))?;

    assert!(agent_a.sigterm(Duration::from_secs(10))?.success(), "{}", agent_a.log());
    assert!(agent_b.sigterm(Duration::from_secs(10))?.success(), "{}", agent_b.log());
    Ok(())
}

#[test]
fn sigkill_in_the_middle_of_a_big_sync_loses_and_duplicates_nothing() -> Result<()> {
    const BIG: usize = 20_000;
    let dir = tempfile::tempdir()?;
    let bucket = local_bucket(dir.path());
    let (a, b) = (replica(dir.path(), "a", &bucket)?, replica(dir.path(), "b", &bucket)?);
    let a_id = dimple::Replica::open(&a, Default::default())?.id().to_owned();
    // 2 changes a row (row state, body). Captured after each app transaction, as a
    // running agent would, so that the push needs several batches of 10,000 changes.
    let mut ra = dimple::Replica::open(&a, Default::default())?;
    for k in 0..BIG / 1000 {
        insert_many(&a, &format!("big{k:02}"), 1000, 1000)?;
        ra.capture()?;
    }
    drop(ra);
    let batches = dir.path().join("bucket/batches").join(&a_id);
    let batch_files = || std::fs::read_dir(&batches).map_or(0, |d| d.count());

    let mut agent_b = Agent::start(&b, 1)?;
    let mut agent_a = Agent::start(&a, 1)?;
    // Killed once a head is published (b has something to pull), before the last batch.
    let head = dir.path().join(format!("bucket/replicas/{a_id}/LATEST.json"));
    agent_a.or_log(wait_for(CONVERGE, "a's first head in the bucket", || Ok(head.exists())))?;
    agent_a.sigkill()?;
    eprintln!("killed a with {} batches uploaded", batch_files());
    agent_b.or_log(wait_for(CONVERGE, "b to apply some of a's rows", || {
        Ok(count(&b, "SELECT count(*) FROM notes")? > 0)
    }))?;
    agent_b.sigkill()?;
    eprintln!("killed b with {} rows applied", count(&b, "SELECT count(*) FROM notes")?);

    // Both sides keep writing while their agents are dead.
    insert(&a, "after-a", "a wrote while its agent was dead")?;
    insert(&b, "after-b", "b wrote while its agent was dead")?;
    let (agent_a, agent_b) = (Agent::start(&a, 1)?, Agent::start(&b, 1)?);
    let res = wait_for(CONVERGE, "convergence after restart", || converged(&a, &b, BIG + 2));
    agent_a.or_log(agent_b.or_log(res))?;

    // Exactly once: a's own changes counted on both sides and in a's signed head.
    let own = format!(
        "SELECT count(*) FROM ZV_CHANGE c JOIN ZV_TRANSACTION t ON t.id = c.transaction_id WHERE t.author = '{a_id}'"
    );
    let (own_a, own_b) = (count(&a, &own)?, count(&b, &own)?);
    assert_eq!(own_a, 2 * (BIG as i64 + 1), "a captured each write once");
    assert_eq!(count(&b, "SELECT count(*) FROM ZV_TRANSACTION")?, count(&a, "SELECT count(*) FROM ZV_TRANSACTION")?);
    assert_eq!(own_b, own_a, "b holds a's changes exactly once");
    let head: serde_json::Value = serde_json::from_slice(&std::fs::read(&head)?)?;
    assert_eq!(head["change_count"], own_a, "a's head counts each change once");
    Ok(())
}

#[test]
fn a_second_agent_is_refused_and_sigterm_stops_the_first_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bucket = local_bucket(dir.path());
    let a = replica(dir.path(), "a", &bucket)?;
    let mut first = Agent::start(&a, 1)?;

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_dimple"))
        .arg("agent")
        .arg(&a)
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second agent must fail: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("already running") && stderr.contains(&first.pid().to_string()), "{stderr}");
    assert!(dimple::agent::inspect(&a).running, "the refused agent must not disturb the first");

    let asked = Instant::now();
    let status = first.sigterm(Duration::from_secs(10))?;
    assert!(status.success(), "exit {status}\n{}", first.log());
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    let st = dimple::agent::inspect(&a);
    assert!(!st.running);
    assert_eq!(st.last.map(|s| s.state), Some(dimple::agent::state::Phase::Stopped));
    Ok(())
}

/// One agent process can keep several databases in sync (one loop each).
#[test]
fn one_agent_process_syncs_several_databases() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bucket = local_bucket(dir.path());
    let (a, b, c) =
        (replica(dir.path(), "a", &bucket)?, replica(dir.path(), "b", &bucket)?, replica(dir.path(), "c", &bucket)?);
    let mut both = Agent::spawn_many(&[&a, &b], 1, &[])?;
    let pid = both.pid();
    both.or_log(wait_for(CONVERGE, "the agent to hold both databases", || {
        Ok([&a, &b].iter().all(|db| {
            let st = dimple::agent::inspect(db);
            st.running && st.last.is_some_and(|s| s.pid == pid)
        }))
    }))?;
    let agent_c = Agent::start(&c, 1)?;
    insert(&a, "from-a", "written in a")?;
    insert(&b, "from-b", "written in b")?;
    let res = wait_for(CONVERGE, "c to see both writes", || {
        Ok(has(&c, "from-a", "written in a")? && has(&c, "from-b", "written in b")?)
    });
    both.or_log(agent_c.or_log(res))?;
    assert!(both.sigterm(Duration::from_secs(10))?.success(), "{}", both.log());
    for db in [&a, &b] {
        assert!(!dimple::agent::inspect(db).running, "{} still locked after exit", db.display());
    }
    Ok(())
}
