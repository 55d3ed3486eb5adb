mod s3_store;
mod store_contract;
