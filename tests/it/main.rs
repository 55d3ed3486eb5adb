//! One integration-test binary (one link of aws-sdk-s3), one module per subject.

mod capture;
mod convergence;
mod merge_rules;
mod support;
