//! The agent's files beside the database: `agent.lock` and `agent.json`.
//!
//! The lock (an OS file lock, released by the kernel when the process dies, even on
//! SIGKILL) is the truth about whether an agent runs; `agent.json` is what that agent
//! last said about itself. A stale `agent.json` left by a killed agent is therefore
//! harmless: `dimple status` trusts it only while the lock is held.

use crate::error::{Error, Result};
use crate::sidedir::SideDir;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Held for the agent's whole life: proof that it is the only agent for its database.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
    db: PathBuf,
}

impl AgentLock {
    pub fn db(&self) -> &Path {
        &self.db
    }
}

/// Takes `<db>.dimple/agent.lock`, or says which agent holds it.
pub fn lock(db: &Path) -> Result<AgentLock> {
    let side = SideDir::of(db);
    std::fs::create_dir_all(side.path()).map_err(|e| Error::io(side.path(), e))?;
    let path = side.agent_lock();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim();
            let pid = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(Error::Invalid(format!(
                "another dimple agent is already running for {}{pid}; lock {}",
                db.display(),
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    // The pid is only a hint for the message above; the lock itself is the proof.
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| Error::io(&path, e))?;
    Ok(AgentLock { _file: file, db: db.to_owned() })
}

/// Whether some process holds the agent lock of `db` right now.
pub fn lock_held(db: &Path) -> bool {
    let Ok(file) = File::open(SideDir::of(db).agent_lock()) else { return false };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    BackingOff,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::BackingOff => "backing off",
            Phase::Stopped => "stopped",
        }
    }
}

/// What the agent writes to `agent.json` after every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub pid: u32,
    pub state: Phase,
    pub started_at: String,
    pub updated_at: String,
    pub interval_secs: f64,
    pub last_sync: Option<String>,
    pub last_push: Option<String>,
    pub last_error: Option<String>,
    /// What kind of error `last_error` is (snake_case in the file).
    pub last_error_kind: Option<crate::error::ErrorKind>,
    pub consecutive_failures: u32,
    pub next_attempt: Option<String>,
    pub pending_changes: i64,
    /// The request budget, if any (`--max-requests-per-hour`).
    #[serde(default)]
    pub max_requests_per_hour: Option<u64>,
    /// Set when the budget stretched the time between pulls: the current one.
    #[serde(default)]
    pub pull_interval_secs: Option<f64>,
}

/// Replaces `agent.json` whole (temp file + rename), so a reader never sees half.
pub fn write(db: &Path, st: &AgentState) -> Result<()> {
    let dest = SideDir::of(db).agent_state();
    let tmp = dest.with_file_name(format!(".agent.json.tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(st).expect("serializes");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))
}

pub fn read(db: &Path) -> Option<AgentState> {
    let bytes = std::fs::read(SideDir::of(db).agent_state()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The agent as `dimple status` reports it.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    /// The lock is held and the pid in `agent.json` is alive.
    pub running: bool,
    /// The last state the agent wrote (possibly from an agent that is gone).
    #[serde(flatten)]
    pub last: Option<AgentState>,
}

pub fn inspect(db: &Path) -> AgentStatus {
    let last = read(db);
    let running = lock_held(db) && last.as_ref().is_some_and(|s| pid_alive(s.pid));
    AgentStatus { running, last }
}

/// Without /proc (macOS) the lock alone decides.
fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}
