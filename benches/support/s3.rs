//! The S3 server the benches talk to: DIMPLE_TEST_S3_ENDPOINT when set (as
//! scripts/test sets it), otherwise the test server started here and stopped when
//! the returned guard goes.

use std::path::Path;
use std::process::Command;

pub struct Server {
    pub endpoint: String,
    started: bool,
}

impl Server {
    pub fn start() -> Server {
        if let Ok(endpoint) = std::env::var("DIMPLE_TEST_S3_ENDPOINT") {
            return Server { endpoint, started: false };
        }
        // Volumes of 1 GiB, not the tests' 16 MiB: the tests create many buckets,
        // a bench writes gigabytes to one, and with small volumes the server spends
        // the upload allocating new ones (the SDK alone uploaded at 80-92 MB/s with
        // them, 137 MB/s with these).
        let volume_mb = std::env::var("DIMPLE_S3_VOLUME_MB").unwrap_or_else(|_| "1024".to_owned());
        let out =
            Command::new("bash").arg(script()).arg("start").env("DIMPLE_S3_VOLUME_MB", volume_mb).output().unwrap();
        assert!(out.status.success(), "could not start the S3 test server: {}", String::from_utf8_lossy(&out.stderr));
        std::env::set_var("AWS_ACCESS_KEY_ID", "testkey");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testsecret");
        std::env::set_var("AWS_REGION", "us-east-1");
        Server { endpoint: "http://127.0.0.1:9000".to_owned(), started: true }
    }

    /// A new bucket on the server.
    pub async fn bucket(&self, name: &str) -> String {
        let bucket = format!("{name}-{:08x}", rand::random::<u32>());
        let raw = dimple::store::S3Store::open(&format!("s3://{bucket}/x"), Some(&self.endpoint)).await.unwrap();
        raw.client().create_bucket().bucket(&bucket).send().await.unwrap();
        bucket
    }
}

impl Server {
    /// Empties and deletes a bucket made by [`Server::bucket`]: the test server's
    /// volumes are few and small, and a bench writes gigabytes.
    pub async fn drop_bucket(&self, bucket: &str) {
        let raw = dimple::store::S3Store::open(&format!("s3://{bucket}/x"), Some(&self.endpoint)).await.unwrap();
        let client = raw.client();
        loop {
            let page = client.list_objects_v2().bucket(bucket).send().await.unwrap();
            if page.contents().is_empty() {
                break;
            }
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let _ = client.delete_object().bucket(bucket).key(k).send().await;
                }
            }
        }
        let _ = client.delete_bucket().bucket(bucket).send().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new("bash").arg(script()).arg("stop").output();
        }
    }
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server")
}
