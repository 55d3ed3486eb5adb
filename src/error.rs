//! Errors: detailed variants inside, a coarse [`ErrorKind`] that tells a caller what
//! to do about them (fix the input, retry later, resolve a conflict, inspect the data).

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request or the local set-up is wrong; retrying will not help.
    Invalid,
    /// The bucket or the database is busy or unreachable; retry later.
    Unavailable,
    /// Someone else wrote where we expected to be alone (a copied replica).
    Conflict,
    /// Stored or remote data is malformed or fails verification.
    Data,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a dimple replica: {0} (run `dimple init` first)")]
    NotInitialized(String),
    #[error("replica id {0} is in use by another device: its head changed under us (was this database copied?); run `dimple fork DB` to go on as a new replica that keeps and pushes this copy's unpushed writes")]
    ReplicaConflict(String),
    /// An encrypted group's device that holds no group key yet.
    #[error("{0}")]
    AwaitingKey(String),
    #[error("bad data from {origin}: {reason}")]
    BadData { origin: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::NotInitialized(_) => ErrorKind::Invalid,
            Error::Sqlite(e) if is_busy(e) => ErrorKind::Unavailable,
            Error::Sqlite(_) | Error::Io { .. } => ErrorKind::Internal,
            Error::Store(e) if e.is_retryable() => ErrorKind::Unavailable,
            Error::Store(StoreError::Refused(_)) => ErrorKind::Invalid,
            Error::Store(_) => ErrorKind::Internal,
            Error::ReplicaConflict(_) => ErrorKind::Conflict,
            // Retried by the agent: a member's grant ends the wait.
            Error::AwaitingKey(_) => ErrorKind::Unavailable,
            Error::BadData { .. } => ErrorKind::Data,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    pub(crate) fn bad(origin: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadData { origin: origin.into(), reason: reason.into() }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}
