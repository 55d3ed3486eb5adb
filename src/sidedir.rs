//! `<db>.dimple/`: the replica's private files beside its database, every path in
//! one place. The directory is owner-only (0700): it holds the private key.
//!
//! ```text
//! replica.key        the ed25519 private key (0600), never uploaded or logged
//! replica.key.next   a new key while `dimple fork` swaps it in
//! exchange.key       the X25519 key the group's keys are wrapped to (0600; encrypted groups)
//! group.keys         the group's keys, one per epoch (0600; encrypted groups), never uploaded as is
//! outbox/            the batch of an in-flight push
//! spool/             pulled batches waiting to be verified and applied
//! blobs/out/         large values captured here, until the batch naming them is pushed
//! blobs/in/          large values downloaded, until written into their rows
//! agent.lock         held by the running agent
//! agent.json         the agent's last state, for `dimple status`
//! snapshot-*.db, clone-*.db   snapshot files being written or loaded
//! ```

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const BLOBS_OUT: &str = "blobs/out";
const BLOBS_IN: &str = "blobs/in";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideDir(PathBuf);

impl SideDir {
    /// The side directory of database `db`.
    pub fn of(db: &Path) -> SideDir {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".dimple");
        SideDir(db.with_file_name(name))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the directory, owner-only.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.0).map_err(|e| Error::io(&self.0, e))?;
        std::fs::set_permissions(&self.0, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| Error::io(&self.0, e))
    }

    pub fn key(&self) -> PathBuf {
        self.0.join("replica.key")
    }

    pub fn next_key(&self) -> PathBuf {
        self.0.join("replica.key.next")
    }

    pub fn exchange_key(&self) -> PathBuf {
        self.0.join("exchange.key")
    }

    pub fn group_keys(&self) -> PathBuf {
        self.0.join("group.keys")
    }

    /// The outbox directory, created when missing.
    pub fn outbox(&self) -> Result<PathBuf> {
        self.subdir("outbox")
    }

    /// The spool directory, created when missing.
    pub fn spool(&self) -> Result<PathBuf> {
        self.subdir("spool")
    }

    /// Large values captured here and not yet pushed (see [`crate::blob`]), created
    /// when missing.
    pub fn blobs_out(&self) -> Result<PathBuf> {
        self.subdir(BLOBS_OUT)
    }

    /// Large values downloaded and checked, waiting to be written into rows,
    /// created when missing.
    pub fn blobs_in(&self) -> Result<PathBuf> {
        self.subdir(BLOBS_IN)
    }

    /// [`SideDir::blobs_out`] without creating it (for reading).
    pub fn blobs_out_path(&self) -> PathBuf {
        self.0.join(BLOBS_OUT)
    }

    /// [`SideDir::blobs_in`] without creating it (for reading).
    pub fn blobs_in_path(&self) -> PathBuf {
        self.0.join(BLOBS_IN)
    }

    pub fn agent_lock(&self) -> PathBuf {
        self.0.join("agent.lock")
    }

    pub fn agent_state(&self) -> PathBuf {
        self.0.join("agent.json")
    }

    /// A working file directly in the directory (snapshots being written, loaded).
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Finishes a fork's key swap (see [`crate::fork`]): moves `replica.key.next`
    /// into place when it is the key the database names (`public`), removes it when
    /// it is not (a fork that crashed before its commit).
    pub fn finish_key_swap(&self, public: &str) -> Result<()> {
        let (key, next) = (self.key(), self.next_key());
        if !next.exists() {
            return Ok(());
        }
        if crate::trust::public_b64(&crate::trust::load(&next)?) == public {
            std::fs::rename(&next, &key).map_err(|e| Error::io(&key, e))
        } else {
            std::fs::remove_file(&next).map_err(|e| Error::io(&next, e))
        }
    }

    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }
}
