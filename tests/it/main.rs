//! One integration-test binary (one link of aws-sdk-s3), one module per subject.

mod agent;
mod attachments;
mod bad_input;
mod bounded;
mod capture;
mod concurrency;
mod convergence;
mod crash;
mod direction;
mod encryption;
mod export;
mod fidelity;
mod fuzz;
mod hostile;
mod merge_rules;
mod requests;
mod retention;
mod s3_store;
mod schema;
mod schema_travels;
mod snapshot;
mod store_contract;
mod support;
mod trust;
mod upgrade;
mod verify;
