//! Fetching a replica's new batches and verifying the hash chain that links them to
//! its signed head and back to the batch we applied last.

use crate::batch;
use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::head::HeadBody;
use crate::layout;
use crate::peers::Peer;
use crate::replica::Replica;
use crate::store::{get_bytes, Store, StoreError};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Batches fetched at once when the head lists them.
const FETCH_CONCURRENCY: usize = 8;

/// One verified batch of the chain, waiting in the spool to be applied.
pub struct Link {
    /// The SQLite file of the batch.
    pub path: PathBuf,
    pub key: String,
    /// The sha256 of the batch as stored, which the chain covers.
    pub sha256: String,
}

/// A downloaded batch in the spool: the SQLite file inside it (decoded once, on
/// arrival), the sha256 of the bytes as stored, and whether decoding failed
/// (reported only once the hash has been checked, so an altered batch is refused
/// for its hash first).
struct Fetched {
    path: PathBuf,
    sha256: String,
    decoded: Result<()>,
}

/// A walk down a chain that did not end at the cursor: why, and the error that
/// says so (a refusal of the replica's head, or a failure to reach the store).
/// Callers that only refuse turn it into its error with `?`; the pull and the
/// catch-up tell the first two kinds apart by `short`, never by the text.
#[derive(Debug)]
pub struct Stopped {
    pub short: Short,
    pub error: Error,
}

/// Why a walk down a chain stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// A batch on the way is not in the store: pruned by a compaction (the
    /// newest snapshot covers it) or never uploaded.
    Missing,
    /// The chain does not lead to the cursor: it starts over first, or names the
    /// cursor's batch under another hash. History was rewritten, or the cursor
    /// was never on it.
    Elsewhere,
    /// Anything else: a batch that is there and wrong, or the store failing.
    Failed,
}

impl From<Error> for Stopped {
    fn from(error: Error) -> Self {
        Stopped { short: Short::Failed, error }
    }
}

impl From<Stopped> for Error {
    fn from(s: Stopped) -> Self {
        s.error
    }
}

fn stopped(short: Short, key: &str, reason: impl Into<String>) -> Stopped {
    Stopped { short, error: Error::bad(key, reason) }
}

async fn download(
    store: &dyn Store,
    codec: &Codec,
    spool: &Path,
    id: &str,
    batch_id: &str,
    max: usize,
) -> Result<Fetched, Stopped> {
    let bytes = get(store, id, batch_id, max).await?;
    Ok(decode(codec, spool, id, batch_id, &bytes)?)
}

/// The bytes of a batch as stored.
async fn get(store: &dyn Store, id: &str, batch_id: &str, max: usize) -> Result<Vec<u8>, Stopped> {
    let key = layout::batch_key(id, batch_id);
    let bytes = match get_bytes(store, &key).await {
        Ok((b, _)) => b,
        Err(StoreError::NotFound(_)) => {
            return Err(stopped(Short::Missing, &key, "batch is missing from the chain (deleted or never uploaded)"))
        }
        Err(e) => return Err(Error::from(e).into()),
    };
    if bytes.len() > max {
        return Err(Error::bad(&key, format!("batch is {} bytes, over the cap of {max} bytes", bytes.len())).into());
    }
    Ok(bytes)
}

/// A downloaded batch into the spool: its SQLite file, and the hash of `bytes`.
fn decode(codec: &Codec, spool: &Path, id: &str, batch_id: &str, bytes: &[u8]) -> Result<Fetched> {
    let key = layout::batch_key(id, batch_id);
    let path = spool.join(format!("{id}-{batch_id}.db"));
    let decoded = codec.decode_batch_to_file(&key, bytes, &path);
    if decoded.is_err() {
        // Kept as it came: it is refused for its hash first, if that is wrong.
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    Ok(Fetched { path, sha256: codec::sha256_hex(bytes), decoded })
}

/// [`decode`] of each downloaded batch, half of them on a second thread: the
/// merge waits for a replica's whole chain, and decompressing and writing it
/// was about an eighth of a fresh pull's merging thread, with the other core
/// idle. One window of downloads at a time, so memory stays at a window's bytes.
fn decode_all(codec: &Codec, spool: &Path, id: &str, got: &[(String, Vec<u8>)]) -> Vec<(String, Result<Fetched>)> {
    let one = |(b, bytes): &(String, Vec<u8>)| (b.clone(), decode(codec, spool, id, b, bytes));
    let every_other = |from: usize| got.iter().skip(from).step_by(2).map(one).collect::<Vec<_>>();
    if got.len() < 2 {
        return every_other(0);
    }
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new().name("dimple-decode".into()).spawn_scoped(scope, || every_other(1));
        let mut done = every_other(0);
        done.extend(match helper {
            Ok(h) => h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: decoded here too.
            Err(_) => every_other(1),
        });
        done
    })
}

/// Whether the chain ending at `head` passes through the batch `batch_id`
/// stored with `sha256` (a snapshot's cursor for that replica). Walks down from
/// the head as [`fetch`] does; false when the walk meets a missing batch, the
/// chain's start or that batch under another hash without meeting it. The
/// batches it downloads are not kept: this runs only before a catch-up, which is
/// rare, and the pull after it fetches them again.
pub async fn reaches(
    r: &Replica,
    store: &dyn Store,
    codec: &Codec,
    id: &str,
    head: &HeadBody,
    batch_id: &str,
    sha256: &str,
) -> Result<bool> {
    if head.batch_id == batch_id {
        return Ok(head.sha256 == sha256);
    }
    let cursor = Peer { batch_id: Some(batch_id.to_owned()), batch_sha256: Some(sha256.to_owned()), ..Peer::default() };
    match fetch(r, store, codec, id, head, &cursor).await {
        Ok(links) => {
            for l in links {
                let _ = std::fs::remove_file(l.path);
            }
            Ok(true)
        }
        Err(Stopped { short: Short::Missing | Short::Elsewhere, .. }) => Ok(false),
        Err(Stopped { short: Short::Failed, error }) => Err(error),
    }
}

/// Downloads the batches between our cursor (`known`) and `head` and verifies the
/// chain from the head back to the cursor. Batches the head lists are fetched
/// concurrently first; the walk then checks each link (and fetches, one by one, any
/// older batch the head did not list). Returns the links newest first.
pub async fn fetch(
    r: &Replica,
    store: &dyn Store,
    codec: &Codec,
    id: &str,
    head: &HeadBody,
    known: &Peer,
) -> Result<Vec<Link>, Stopped> {
    let spool = r.side().spool()?;
    let recent = &head.recent_batch_ids;
    let listed = match known.batch_id.as_ref().and_then(|b| recent.iter().position(|x| x == b)) {
        Some(p) => &recent[p + 1..],
        None => &recent[..],
    };
    let max = r.opts.max_batch_bytes;
    let mut prefetched: HashMap<String, Fetched> = HashMap::new();
    for window in listed.chunks(FETCH_CONCURRENCY) {
        let mut downloads = futures::stream::iter(
            window.iter().map(|b| async move { get(store, id, b, max).await.map(|bytes| (b.clone(), bytes)) }),
        )
        .buffer_unordered(FETCH_CONCURRENCY);
        let mut got = Vec::with_capacity(window.len());
        while let Some(done) = downloads.next().await {
            got.push(done?);
        }
        for (b, d) in decode_all(codec, &spool, id, &got) {
            prefetched.insert(b, d?);
        }
    }
    let mut chain = Vec::new();
    let (mut want_id, mut want_sha) = (head.batch_id.clone(), head.sha256.clone());
    loop {
        let key = layout::batch_key(id, &want_id);
        let Fetched { path, sha256: sha, decoded } = match prefetched.remove(&want_id) {
            Some(d) => d,
            None => download(store, codec, &spool, id, &want_id, max).await?,
        };
        if sha != want_sha {
            return Err(Error::bad(
                &key,
                format!("sha256 is {sha}, but the chain says {want_sha}: batch altered or replaced"),
            )
            .into());
        }
        decoded?;
        let header = batch::open(&path, &key, id)?.header;
        if header.batch_id != want_id {
            return Err(
                Error::bad(&key, format!("batch says it is {}, but is stored as {want_id}", header.batch_id)).into()
            );
        }
        chain.push(Link { path, key: key.clone(), sha256: sha });
        if header.prev_batch_id == known.batch_id {
            if header.prev_sha256 != known.batch_sha256 {
                return Err(stopped(
                    Short::Elsewhere,
                    &key,
                    "previous-batch hash does not match the batch we applied: history was rewritten",
                ));
            }
            // Listed but not on the chain from our cursor: nothing to apply.
            for f in prefetched.into_values() {
                let _ = std::fs::remove_file(f.path);
            }
            return Ok(chain);
        }
        match (header.prev_batch_id, header.prev_sha256) {
            (Some(p), Some(s)) => (want_id, want_sha) = (p, s),
            _ => {
                return Err(stopped(
                    Short::Elsewhere,
                    &key,
                    "chain starts over without reaching the last batch we applied: history was rewritten",
                ))
            }
        }
    }
}
