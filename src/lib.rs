//! dimple: offline-first SQLite replicas that sync through an object-storage bucket.
//!
//! # Layout
//! - `store`: the bucket as a key space (local directory, S3, retries, fault injection, metering)
//! - `layout`: every bucket key

pub mod layout;
pub mod store;
