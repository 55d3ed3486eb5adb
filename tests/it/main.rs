//! One integration-test binary (one link of aws-sdk-s3), one module per subject.

mod capture;
mod concurrency;
mod convergence;
mod crash;
mod fuzz;
mod hostile;
mod merge_rules;
mod requests;
mod s3_store;
mod store_contract;
mod support;
mod trust;
