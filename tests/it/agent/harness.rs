//! Replicas, real `dimple agent` processes and polling, for the agent tests.
//!
//! A bucket is anything with a URL; the S3 test server will add one that can also be
//! stopped and started, and the process tests then run unchanged over it.

use anyhow::{bail, Context, Result};
use dimple::{Options, Replica};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A replica with one tracked table `notes(id TEXT PRIMARY KEY, body TEXT)`.
pub fn replica(dir: &Path, name: &str, bucket: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.db"));
    Connection::open(&path)?.execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)")?;
    let mut r = Replica::init(&path, Some(bucket), Some(name), Options::default())?;
    r.track("notes", false)?;
    Ok(path)
}

/// A connection like any app's: no dimple involved, only its triggers.
pub fn app(db: &Path) -> Result<Connection> {
    let c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    Ok(c)
}

pub fn insert(db: &Path, id: &str, body: &str) -> Result<()> {
    app(db)?.execute("INSERT INTO notes VALUES (?1, ?2)", [id, body])?;
    Ok(())
}

/// Inserts `n` rows `<prefix>-<i>` in transactions of `per_tx` rows.
pub fn insert_many(db: &Path, prefix: &str, n: usize, per_tx: usize) -> Result<()> {
    let mut c = app(db)?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_tx) {
        let tx = c.transaction()?;
        for i in chunk {
            tx.execute("INSERT INTO notes VALUES (?1, ?2)", [format!("{prefix}-{i:06}"), format!("body {i}")])?;
        }
        tx.commit()?;
    }
    Ok(())
}

pub fn rows(db: &Path) -> Result<Vec<(String, Option<String>)>> {
    let c = app(db)?;
    let mut stmt = c.prepare("SELECT id, body FROM notes ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A count from `db`'s log views (readable once dimple's function is registered).
pub fn count(db: &Path, sql: &str) -> Result<i64> {
    let c = app(db)?;
    dimple::log::register(&c)?;
    Ok(c.query_row(sql, [], |r| r.get(0))?)
}

/// Polls `cond` every 50 ms until it holds; fails with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `dimple agent` process, SIGKILLed if a test ends while it runs.
pub struct Agent {
    child: Child,
    log: PathBuf,
    db: PathBuf,
}

impl Agent {
    /// Spawns with extra environment (an S3 endpoint, say).
    pub fn spawn_with(db: &Path, interval_secs: u32, env: &[(&str, &str)]) -> Result<Agent> {
        Agent::spawn_many(&[db], interval_secs, env)
    }

    /// One agent process for several databases; `db()` of the result is the first.
    pub fn spawn_many(dbs: &[&Path], interval_secs: u32, env: &[(&str, &str)]) -> Result<Agent> {
        let db = dbs[0];
        let log = db.with_extension(format!("agent-{}.log", rand_suffix()));
        let child = Command::new(env!("CARGO_BIN_EXE_dimple"))
            .arg("agent")
            .args(dbs)
            .args(["--interval", &interval_secs.to_string()])
            .envs(env.iter().copied())
            .env("RUST_LOG", "dimple=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning dimple agent")?;
        Ok(Agent { child, log, db: db.to_owned() })
    }

    /// Spawns and waits until the agent holds its lock and has said it runs.
    pub fn start(db: &Path, interval_secs: u32) -> Result<Agent> {
        Agent::start_with(db, interval_secs, &[])
    }

    pub fn start_with(db: &Path, interval_secs: u32, env: &[(&str, &str)]) -> Result<Agent> {
        let mut a = Agent::spawn_with(db, interval_secs, env)?;
        let pid = a.pid();
        let res = wait_for(Duration::from_secs(30), "the agent to start", || {
            if let Some(status) = a.child.try_wait()? {
                bail!("agent exited early with {status}");
            }
            let st = dimple::agent::inspect(&a.db);
            Ok(st.running && st.last.is_some_and(|s| s.pid == pid))
        });
        a.or_log(res)?;
        Ok(a)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Adds the agent's log to a failure, so a red test says what the agent did.
    pub fn or_log<T>(&self, res: Result<T>) -> Result<T> {
        res.with_context(|| format!("agent log of {}:\n{}", self.db.display(), self.log()))
    }

    pub fn sigkill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub fn sigterm(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?.success();
        anyhow::ensure!(ok, "kill -TERM failed");
        let mut status = None;
        wait_for(timeout, "the agent to exit after SIGTERM", || {
            status = self.child.try_wait()?;
            Ok(status.is_some())
        })?;
        Ok(status.expect("waited"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rand_suffix() -> u32 {
    rand::random::<u32>() % 1_000_000
}
