//! dimple: offline-first SQLite replicas that sync through an object-storage bucket.
//!
//! Every write to a tracked table becomes attribute-level changes in `ZV_CHANGE`
//! (captured by triggers, so any SQLite client's writes count). A push uploads new
//! changes as an immutable batch file plus a signed `LATEST.json` under the
//! replica's own prefix; a pull fetches other replicas' new batches and merges them
//! last-writer-wins per (entity, attribute), ordered by hybrid-logical-clock UUIDv7s.
//!
//! ```no_run
//! # async fn demo() -> dimple::Result<()> {
//! use dimple::{Replica, Options};
//! let mut r = Replica::init("notes.db".as_ref(), Some("file:///tmp/bucket"), Some("laptop"), Options::default())?;
//! r.conn().execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)")?;
//! r.track("notes", false)?;
//! r.transaction(|tx| Ok(tx.execute("INSERT INTO notes VALUES ('n1', 'hello')", [])?))?;
//! let store = dimple::open_store(&r.bucket()?.unwrap(), None).await?;
//! dimple::sync(&mut r, &store).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `replica`: opening a replica, tracking tables, the transaction API
//! - `track`: key validation and the capture triggers
//! - `changelog`: captured writes into changes with ids; reading the log
//! - `log`: the change log's compact storage (names, authors, transactions
//!   numbered; ids as bytes; a record per row of its winners, a history of the
//!   rest; `log::register` makes its views readable on an app's connection);
//!   `record`: the byte form of those records and `dimple_cells`, which reads them
//!   in SQL
//! - `outbox`: this replica's changes waiting for the push, in packets (`packed`:
//!   the byte form of those packets and of `record`'s records)
//! - `merge`: last-writer-wins and writing winners into tables
//! - `migrate`: upgrades of dimple's own tables in an existing replica
//! - `schema`: the tracked tables' shape as it travels (publish, compare, follow);
//!   `ddl`: checking remote CREATE TABLE and building ADD COLUMN
//! - `clock`: the hybrid logical clock and UUIDv7 ids
//! - `value`: exact encoding of SQLite values
//! - `codec`: the bytes of every object in the bucket; `hash`: sha256 as hex
//! - `batch`, `head`, `trust`: the bucket's objects, signatures and keys
//! - `seal`, `group`: encrypted groups: the sealed envelope, who holds the keys
//!   and how a device comes to (`secret`: owner-only key files)
//! - `sync`: push, pull, the chain of batches, the atomic apply
//! - `problems`: refused input, rows that cannot sync (docs/trust.md)
//! - `meta`: dimple's own state in `ZV_METADATA` (typed push state)
//! - `peers`: the other replicas (`ZV_REPLICA`): keys, trust, cursors
//! - `store`: the bucket as a key space (local directory, S3, retries, fault
//!   injection, metering); `layout`: every bucket key
//! - `status`: what `dimple status` reports; `retention`: pruning superseded history
//! - `direction`: push-only, pull-only or both
//! - `export`: tracked tables to and from CSV/JSON files
//! - `fork`: a copied database goes on as a new replica, keeping its writes
//! - `verify`: tables against the log, digests against other replicas
//! - `snapshot`: compaction into `snapshots/`, and (`snapshot::inspect`) the checks
//!   of a downloaded snapshot as remote input; `clone`: a new replica from a bucket
//! - `agent`: the background sync loop, its lock and state file, metrics, budget
//! - `config`: `dimple.toml` for the agent; `doctor`: checks a bucket's server
//! - `sidedir`: the replica's private files beside its database
//! - `blob`: large values stored out of line (capture, resumable transfer, lazy
//!   fetch, garbage collection)

pub mod agent;
pub mod batch;
pub mod blob;
pub mod catchup;
pub mod changelog;
pub mod clock;
pub mod clone;
pub mod codec;
pub mod config;
pub mod ddl;
pub mod direction;
pub mod doctor;
pub mod error;
pub mod export;
pub mod fork;
pub mod group;
pub mod hash;
pub mod head;
pub mod layout;
pub mod log;
pub mod merge;
pub mod meta;
pub mod migrate;
pub mod outbox;
mod packed;
pub mod peers;
pub mod problems;
mod record;
pub mod replica;
pub mod retention;
pub mod schema;
pub mod seal;
mod secret;
pub mod sidedir;
pub mod snapshot;
mod sql;
pub mod status;
pub mod store;
pub mod sync;
pub mod track;
pub mod trust;
pub mod value;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
pub use replica::{Options, Replica};
pub use sync::{fetch, pull, push, sync, PullReport, PushReport, SyncReport};

/// The bucket and batch format this build reads and writes (SPEC 5).
pub const FORMAT: i64 = 1;

/// The store for a bucket URL (`file:///path`, a plain path, or `s3://bucket/prefix`),
/// with retries for transient failures, counted once per logical request.
pub async fn open_store(url: &str, endpoint: Option<&str>) -> Result<store::Metered<dyn store::Store>> {
    let inner = store::open_url(url, endpoint).await?;
    let retrying: Box<dyn store::Store> = Box::new(store::Retrying::new(inner, store::RetryPolicy::default()));
    Ok(store::Metered::new(retrying))
}
