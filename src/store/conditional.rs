//! The two conditional writes dimple needs, each with its "did my earlier attempt
//! land?" re-read written once. A write that timed out may have landed: a retry
//! then meets its own object, and must tell it from someone else's.

use super::{Got, PutMode, Store, StoreError, StoreResult};

/// How a conditional write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// This call wrote the object; its ETag.
    Now(String),
    /// The object already held what we meant to write (our earlier attempt landed).
    Already(String),
}

impl Written {
    pub fn etag(&self) -> &str {
        match self {
            Written::Now(e) | Written::Already(e) => e,
        }
    }
}

/// Creates `key`. When it already exists, `ours(existing)` decides: our own earlier
/// write is success, anything else is [`StoreError::PreconditionFailed`].
pub async fn create_or_accept(
    store: &dyn Store,
    key: &str,
    bytes: Vec<u8>,
    ours: impl Fn(&[u8]) -> bool,
) -> StoreResult<Written> {
    match store.put(key, bytes, PutMode::Create).await {
        Ok(etag) => Ok(Written::Now(etag)),
        Err(StoreError::PreconditionFailed(why)) => match store.get(key, None).await {
            Ok(Got::Found { bytes, etag }) if ours(&bytes) => Ok(Written::Already(etag)),
            Ok(_) | Err(StoreError::NotFound(_)) => Err(StoreError::PreconditionFailed(why)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Writes `key` under `mode` (create or If-Match). On a failed precondition it
/// re-reads the object: identical bytes are our own earlier write (success); bytes
/// that `stale_but_ours` recognises (our previous version, rewritten with a new
/// ETag by a restore) are replaced once under the new ETag; anything else is
/// [`StoreError::PreconditionFailed`]: someone else wrote there.
pub async fn update_or_recognise(
    store: &dyn Store,
    key: &str,
    bytes: Vec<u8>,
    mode: PutMode,
    stale_but_ours: impl Fn(&[u8]) -> bool,
) -> StoreResult<Written> {
    match store.put(key, bytes.clone(), mode).await {
        Ok(etag) => Ok(Written::Now(etag)),
        Err(StoreError::PreconditionFailed(why)) => match store.get(key, None).await {
            Ok(Got::Found { bytes: found, etag }) if found == bytes => Ok(Written::Already(etag)),
            Ok(Got::Found { bytes: found, etag }) if stale_but_ours(&found) => {
                Ok(Written::Now(store.put(key, bytes, PutMode::Update(etag)).await?))
            }
            Ok(_) | Err(StoreError::NotFound(_)) => Err(StoreError::PreconditionFailed(why)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}
