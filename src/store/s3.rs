//! A bucket on S3 or an S3-compatible server (MinIO, SeaweedFS), through aws-sdk-s3.
//!
//! Configuration comes from the standard AWS chain (environment, profiles, SSO,
//! instance metadata), so dimple needs no credentials settings of its own. The SDK
//! makes exactly one attempt per call: retries belong to [`super::Retrying`], which
//! knows which writes are safe to repeat and how to recognise one that landed.
//!
//! ETags are stored without their surrounding quotes (as [`super::LocalStore`]'s are)
//! and quoted again when sent in `If-Match` / `If-None-Match`, so a value read from a
//! LIST, a GET or a PUT can be handed back unchanged. S3 ETags of simple uploads are
//! the MD5 of the content: writing identical bytes again keeps the ETag.

use super::{Got, ObjectMeta, Part, PutMode, Store, StoreError, StoreResult, LIST_PAGE};
use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::time::Duration;

/// Chunks of a download queued between the task receiving them and the thread
/// writing them: a few hundred KiB per download at most.
const DOWNLOAD_CHUNKS_QUEUED: usize = 2;

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    endpoint: Option<String>,
    /// Set once the server answered 501 to a conditional put (some S3-compatible
    /// servers do not implement If-None-Match/If-Match on PUT).
    no_conditions: std::sync::atomic::AtomicBool,
}

/// Where a bucket URL points: `s3://bucket/optional/prefix`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BucketUrl {
    pub bucket: String,
    pub prefix: String,
}

impl BucketUrl {
    pub fn parse(url: &str) -> StoreResult<BucketUrl> {
        let bad = |why: &str| StoreError::Refused(format!("invalid bucket URL {url:?}: {why}"));
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(bad("prefix has empty, '.' or '..' segments"));
        }
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(BucketUrl { bucket: bucket.to_owned(), prefix })
    }
}

impl S3Store {
    /// Opens `s3://bucket/prefix`. `endpoint` (or `AWS_ENDPOINT_URL`) selects an
    /// S3-compatible server. Nothing is sent to the server here: opening works offline.
    pub async fn open(url: &str, endpoint: Option<&str>) -> StoreResult<S3Store> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(e) = endpoint {
            loader = loader.endpoint_url(e);
        }
        Self::from_config(url, &loader.load().await)
    }

    /// Opens `s3://bucket/prefix` with an explicit AWS configuration (tests use it
    /// to pass credentials without touching the process environment). A custom
    /// endpoint gets path-style addressing, because S3-compatible servers rarely have
    /// wildcard DNS for virtual-hosted buckets, and a default region of `us-east-1`,
    /// because SigV4 needs one even where the server ignores it.
    pub fn from_config(url: &str, shared: &SdkConfig) -> StoreResult<S3Store> {
        let BucketUrl { bucket, prefix } = BucketUrl::parse(url)?;
        let endpoint = shared.endpoint_url().map(str::to_owned);
        let mut conf = aws_sdk_s3::config::Builder::from(shared)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .build(),
            )
            // The default (checksums on every put) breaks older S3-compatible servers;
            // integrity is checked end to end by the batch hash chain anyway.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if endpoint.is_some() {
            conf = conf.force_path_style(true);
            if shared.region().is_none() {
                conf = conf.region(Region::new("us-east-1"));
            }
        }
        let client = Client::from_conf(conf.build());
        Ok(S3Store { client, bucket, prefix, endpoint, no_conditions: Default::default() })
    }

    /// The SDK client, for set-up work outside the [`Store`] contract (tests create
    /// buckets with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The server's clock minus this machine's, in ms (to within a second: S3
    /// keeps Last-Modified in whole seconds), from an object written at `key` and
    /// removed again (`dimple doctor`).
    pub async fn clock_skew_ms(&self, key: &str) -> StoreResult<i64> {
        use crate::clock::Clock;
        let before = crate::clock::SystemClock.now_ms() as i64;
        self.put(key, b"clock".to_vec(), PutMode::Overwrite).await?;
        let after = crate::clock::SystemClock.now_ms() as i64;
        let full = self.full_key(key);
        let head = self.client.head_object().bucket(&self.bucket).key(&full).send().await;
        let _ = self.delete(key).await;
        let head = head.map_err(|e| map_err("head", &full, e).1)?;
        let server = head
            .last_modified()
            .map(|t| t.secs() * 1000)
            .ok_or_else(|| StoreError::Io(format!("head {full}: no Last-Modified")))?;
        // Last-Modified is truncated to the second: compare with the middle of it.
        Ok(server + 500 - (before + after) / 2)
    }
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

fn quote(etag: &str) -> String {
    if etag == "*" || etag.starts_with('"') {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

/// What an S3 error means to dimple, before it becomes a [`StoreError`].
#[derive(Debug, PartialEq, Eq)]
enum Class {
    NotFound,
    NotModified,
    Precondition,
    Refused,
    Unavailable,
    /// 501: the server does not implement what was asked (a conditional put).
    Unsupported,
}

/// Classifies a server answer. The error code wins over the status, because a few
/// codes share a status with a different meaning (`NoSuchBucket` is a 404 that no
/// retry or re-read will fix; `RequestTimeout` is a 400 worth retrying).
fn classify(status: u16, code: Option<&str>) -> Class {
    match code {
        Some("NoSuchKey" | "NoSuchUpload") => return Class::NotFound,
        Some("NotImplemented") => return Class::Unsupported,
        Some("PreconditionFailed" | "ConditionalRequestConflict") => return Class::Precondition,
        Some(
            "NoSuchBucket"
            | "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidBucketName"
            | "AuthorizationHeaderMalformed"
            | "ExpiredToken"
            | "InvalidToken"
            | "AllAccessDisabled",
        ) => return Class::Refused,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "OperationAborted",
        ) => return Class::Unavailable,
        _ => {}
    }
    match status {
        304 => Class::NotModified,
        404 => Class::NotFound,
        409 | 412 => Class::Precondition,
        501 => Class::Unsupported,
        408 | 429 => Class::Unavailable,
        s if s >= 500 => Class::Unavailable,
        _ => Class::Refused,
    }
}

/// The error's chain of causes as one line of their messages, skipping repeats
/// (the SDK's own context printer ends with a multi-line Debug dump).
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !line.contains(&msg) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&msg);
        }
        next = e.source();
    }
    line
}

/// A failed conditional PUT as the contract has it: a precondition failure (412).
/// AWS answers If-Match on a missing key with 404; one MinIO release answers a
/// failed If-None-Match with 304.
fn failed_condition(mode: &PutMode, failed: (Class, StoreError)) -> (Class, StoreError) {
    match failed {
        (Class::NotFound, StoreError::NotFound(m)) if matches!(mode, PutMode::Update(_)) => {
            (Class::Precondition, StoreError::PreconditionFailed(m))
        }
        (Class::NotModified, StoreError::Unavailable(m)) if *mode != PutMode::Overwrite => {
            (Class::Precondition, StoreError::PreconditionFailed(m))
        }
        other => other,
    }
}

/// Turns an SDK error into a [`StoreError`]. Messages carry the operation, the key,
/// the HTTP status and the S3 error code/message: never request headers, which hold
/// the signature and possibly a session token.
fn map_err<E>(op: &str, key: &str, err: SdkError<E, HttpResponse>) -> (Class, StoreError)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let what = format!("{op} {key}");
    let (class, detail) = match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let e = ctx.err();
            let detail =
                format!("HTTP {status} {}: {}", e.code().unwrap_or("(no code)"), e.message().unwrap_or("(no message)"));
            (classify(status, e.code()), detail)
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let class = match classify(status, None) {
                // An unparseable 2xx/4xx body is most likely a proxy or a cut connection.
                Class::Refused if status < 400 => Class::Unavailable,
                c => c,
            };
            (class, format!("HTTP {status}, unreadable response: {}", causes(&err)))
        }
        SdkError::TimeoutError(_) => (Class::Unavailable, "timed out".to_owned()),
        SdkError::DispatchFailure(d) => {
            let class = if d.is_user() || missing_credentials(&err) { Class::Refused } else { Class::Unavailable };
            (class, format!("request not sent: {}", causes(&err)))
        }
        SdkError::ConstructionFailure(_) => (Class::Refused, format!("could not build the request: {}", causes(&err))),
        _ => (Class::Unavailable, causes(&err)),
    };
    let msg = format!("{what}: {detail}");
    let store_err = match class {
        Class::NotFound => StoreError::NotFound(msg),
        Class::Precondition => StoreError::PreconditionFailed(msg),
        Class::Refused => StoreError::Refused(msg),
        Class::Unsupported => StoreError::Refused(format!("{msg} (not supported by this server)")),
        Class::NotModified | Class::Unavailable => StoreError::Unavailable(msg),
    };
    (class, store_err)
}

/// No credentials anywhere in the chain (or a broken profile) is a configuration
/// problem: retrying would only hide it. Providers that time out or fail on the
/// network, such as instance metadata while offline, stay retryable.
fn missing_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return matches!(c, CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_));
        }
        cur = e.source();
    }
    false
}

impl S3Store {
    /// Streams an object into `path`, with its sha256 (hex) when `hash` is set.
    ///
    /// The file is written and hashed on a blocking thread fed through a short
    /// channel, not by the task that receives: a pull's downloads are polled
    /// together on one thread, which then did all their hashing and writing and
    /// was the bottleneck of large values (`cargo bench --bench blobs`: the
    /// pull's download and check went from 0.65-0.75x the SDK alone to
    /// 0.70-0.85x on a 2-core host). The channel bounds the memory to a few
    /// chunks per download.
    async fn download(&self, key: &str, path: &std::path::Path, hash: bool) -> StoreResult<(u64, Option<String>)> {
        let full = self.full_key(key);
        let mut resp = match self.client.get_object().bucket(&self.bucket).key(&full).send().await {
            Ok(r) => r,
            Err(e) => return Err(map_err("get", &full, e).1),
        };
        let (chunks, mut arriving) = tokio::sync::mpsc::channel::<bytes::Bytes>(DOWNLOAD_CHUNKS_QUEUED);
        let dest = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Option<String>)> {
            use sha2::Digest;
            use std::io::Write;
            let mut file = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&dest)?);
            let mut hasher = hash.then(sha2::Sha256::new);
            let mut size = 0u64;
            while let Some(chunk) = arriving.blocking_recv() {
                file.write_all(&chunk)?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                size += chunk.len() as u64;
            }
            file.flush()?;
            Ok((size, hasher.map(|h| crate::hash::hex(&h.finalize()))))
        });
        let received = async {
            while let Some(chunk) = resp
                .body
                .try_next()
                .await
                .map_err(|e| StoreError::Unavailable(format!("get {full}: body cut short: {e}")))?
            {
                if chunks.send(chunk).await.is_err() {
                    break; // the writer stopped on an error, returned below
                }
            }
            Ok(())
        }
        .await;
        drop(chunks);
        // Awaited even when the body was cut short, so that the file is closed
        // before the caller removes it.
        let written = writer.await.map_err(|e| StoreError::Io(format!("{}: writer stopped: {e}", path.display())))?;
        received?;
        written.map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))
    }

    /// The documented fallback for servers without conditional writes: read, compare,
    /// then write unconditionally. Correct for one writer per replica id (the normal
    /// case); two devices racing on one id may go undetected here.
    async fn put_checked_by_reading(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        let current = match self.get(key, None).await {
            Ok(Got::Found { etag, .. }) => Some(etag),
            Ok(Got::NotModified) => None,
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let ok = match &mode {
            PutMode::Create => current.is_none(),
            PutMode::Update(expected) => current.as_deref() == Some(expected.as_str()),
            PutMode::Overwrite => true,
        };
        if !ok {
            return Err(StoreError::PreconditionFailed(format!("put {key}: changed since it was read")));
        }
        self.put(key, bytes, PutMode::Overwrite).await
    }
}

#[async_trait]
impl Store for S3Store {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        let full_prefix = self.full_key(prefix);
        // A start key below the prefix excludes nothing; dropping it also avoids
        // SeaweedFS answering such a request with an empty page (its issue #11321).
        let start_after = start_after.map(|a| self.full_key(a)).filter(|a| *a >= full_prefix);
        let resp = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .set_start_after(start_after)
            .max_keys(LIST_PAGE as i32)
            .send()
            .await
            .map_err(|e| map_err("list", &full_prefix, e).1)?;
        let mut page = Vec::with_capacity(resp.contents().len());
        for obj in resp.contents() {
            let Some(key) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
            page.push(ObjectMeta {
                key: key.to_owned(),
                etag: obj.e_tag().map(unquote).unwrap_or_default(),
                size: obj.size().unwrap_or(0).max(0) as u64,
                modified_ms: obj.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0).max(0) as u64,
            });
        }
        Ok((page, resp.is_truncated().unwrap_or(false)))
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        let full = self.full_key(key);
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_if_none_match(if_none_match.map(quote))
            .send()
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                return match map_err("get", &full, e) {
                    (Class::NotModified, _) => Ok(Got::NotModified),
                    (_, err) => Err(err),
                }
            }
        };
        let etag = resp.e_tag().map(unquote).unwrap_or_default();
        let bytes = resp
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable(format!("get {full}: body cut short: {e}")))?
            .into_bytes()
            .to_vec();
        Ok(Got::Found { bytes, etag })
    }

    async fn put_file(&self, key: &str, path: &std::path::Path, mode: PutMode) -> StoreResult<String> {
        if mode != PutMode::Overwrite && self.no_conditions.load(std::sync::atomic::Ordering::Relaxed) {
            let bytes = std::fs::read(path).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            return self.put(key, bytes, mode).await;
        }
        let full = self.full_key(key);
        let body = ByteStream::from_path(path).await.map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let mut req = self.client.put_object().bucket(&self.bucket).key(&full).body(body);
        req = match &mode {
            PutMode::Overwrite => req,
            PutMode::Create => req.if_none_match("*"),
            PutMode::Update(etag) => req.if_match(quote(etag)),
        };
        match req.send().await.map_err(|e| failed_condition(&mode, map_err("put", &full, e))) {
            Ok(resp) => resp
                .e_tag()
                .map(unquote)
                .ok_or_else(|| StoreError::Io(format!("put {full}: the server returned no ETag"))),
            // Rare: let the in-memory path handle the fallback and its warning.
            Err((Class::Unsupported, _)) if mode != PutMode::Overwrite => {
                let bytes = std::fs::read(path).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
                self.put(key, bytes, mode).await
            }
            Err((_, err)) => Err(err),
        }
    }

    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> StoreResult<u64> {
        Ok(self.download(key, path, false).await?.0)
    }

    async fn get_to_file_hashed(&self, key: &str, path: &std::path::Path) -> StoreResult<(u64, String)> {
        let (size, sha) = self.download(key, path, true).await?;
        Ok((size, sha.unwrap_or_default()))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        let full = self.full_key(key);
        if mode != PutMode::Overwrite && self.no_conditions.load(std::sync::atomic::Ordering::Relaxed) {
            return self.put_checked_by_reading(key, bytes, mode).await;
        }
        let mut req = self.client.put_object().bucket(&self.bucket).key(&full).body(ByteStream::from(bytes.clone()));
        req = match &mode {
            PutMode::Overwrite => req,
            PutMode::Create => req.if_none_match("*"),
            PutMode::Update(etag) => req.if_match(quote(etag)),
        };
        let resp = match req.send().await.map_err(|e| failed_condition(&mode, map_err("put", &full, e))) {
            Ok(resp) => resp,
            Err((Class::Unsupported, _)) if mode != PutMode::Overwrite => {
                tracing::warn!(
                    store = %self.describe(),
                    "the server does not support conditional writes (If-None-Match/If-Match); \
                     falling back to read-then-write, which cannot detect two devices racing on one replica id"
                );
                self.no_conditions.store(true, std::sync::atomic::Ordering::Relaxed);
                return self.put_checked_by_reading(key, bytes, mode).await;
            }
            Err((_, err)) => return Err(err),
        };
        resp.e_tag().map(unquote).ok_or_else(|| StoreError::Io(format!("put {full}: the server returned no ETag")))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let full = self.full_key(key);
        match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
            Ok(_) => Ok(()),
            Err(e) => match map_err("delete", &full, e) {
                (Class::NotFound, StoreError::NotFound(_)) => Ok(()),
                (_, err) => Err(err),
            },
        }
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let full = self.full_key(key);
        match self.client.head_object().bucket(&self.bucket).key(&full).send().await {
            Ok(resp) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                etag: resp.e_tag().map(unquote).unwrap_or_default(),
                size: resp.content_length().unwrap_or(0).max(0) as u64,
                modified_ms: resp.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0).max(0) as u64,
            })),
            Err(e) => match map_err("head", &full, e) {
                (Class::NotFound, _) => Ok(None),
                (_, err) => Err(err),
            },
        }
    }

    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        let full = self.full_key(key);
        let resp = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| map_err("start upload", &full, e).1)?;
        resp.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Io(format!("start upload {full}: the server returned no upload id")))
    }

    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        let full = self.full_key(key);
        let resp = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload)
            .part_number(number as i32)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| map_err("upload part", &full, e).1)?;
        resp.e_tag().map(unquote).ok_or_else(|| StoreError::Io(format!("upload part {full}: no ETag returned")))
    }

    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        let full = self.full_key(key);
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| map_err("list parts", &full, e).1)?;
            for p in resp.parts() {
                parts.push(Part {
                    number: p.part_number().unwrap_or(0).max(0) as u32,
                    size: p.size().unwrap_or(0).max(0) as u64,
                    etag: p.e_tag().map(unquote).unwrap_or_default(),
                });
            }
            match (resp.is_truncated(), resp.next_part_number_marker()) {
                (Some(true), Some(m)) if !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let full = self.full_key(key);
        let done = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| CompletedPart::builder().part_number(p.number as i32).e_tag(quote(&p.etag)).build())
                    .collect(),
            ))
            .build();
        let resp = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload)
            .multipart_upload(done)
            .send()
            .await
            .map_err(|e| map_err("finish upload", &full, e).1)?;
        Ok(resp.e_tag().map(unquote).unwrap_or_default())
    }

    async fn multipart_abort(&self, key: &str, upload: &str) -> StoreResult<()> {
        let full = self.full_key(key);
        match self.client.abort_multipart_upload().bucket(&self.bucket).key(&full).upload_id(upload).send().await {
            Ok(_) => Ok(()),
            Err(e) => match map_err("abort upload", &full, e) {
                (Class::NotFound, _) => Ok(()),
                (_, err) => Err(err),
            },
        }
    }

    fn describe(&self) -> String {
        let url = format!("s3://{}/{}", self.bucket, self.prefix);
        match &self.endpoint {
            Some(e) => format!("{url} at {e}"),
            None => url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_condition_in_any_of_its_server_dialects_is_a_precondition_failure() {
        let nf = || (Class::NotFound, StoreError::NotFound("k".into()));
        let nm = || (Class::NotModified, StoreError::Unavailable("HTTP 304".into()));
        assert!(matches!(failed_condition(&PutMode::Update("e".into()), nf()).1, StoreError::PreconditionFailed(_)));
        assert!(matches!(failed_condition(&PutMode::Create, nm()).1, StoreError::PreconditionFailed(_)));
        assert!(matches!(failed_condition(&PutMode::Create, nf()).1, StoreError::NotFound(_)));
        assert!(matches!(failed_condition(&PutMode::Overwrite, nm()).1, StoreError::Unavailable(_)));
    }

    #[test]
    fn bucket_urls_split_into_bucket_and_slash_terminated_prefix() {
        let p = |u| BucketUrl::parse(u).map(|b| (b.bucket, b.prefix)).ok();
        assert_eq!(p("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(p("s3://b/"), Some(("b".into(), "".into())));
        assert_eq!(p("s3://b/team/app"), Some(("b".into(), "team/app/".into())));
        assert_eq!(p("s3://b/team/app/"), Some(("b".into(), "team/app/".into())));
        assert_eq!(p("s3:///x"), None);
        assert_eq!(p("file:///x"), None);
        assert_eq!(p("s3://b/a/../c"), None);
    }

    #[test]
    fn error_codes_win_over_statuses() {
        assert_eq!(classify(404, Some("NoSuchBucket")), Class::Refused);
        assert_eq!(classify(404, Some("NoSuchKey")), Class::NotFound);
        assert_eq!(classify(400, Some("RequestTimeout")), Class::Unavailable);
        assert_eq!(classify(409, Some("ConditionalRequestConflict")), Class::Precondition);
        assert_eq!(classify(503, Some("SlowDown")), Class::Unavailable);
        assert_eq!(classify(412, None), Class::Precondition);
        assert_eq!(classify(304, None), Class::NotModified);
        assert_eq!(classify(429, None), Class::Unavailable);
        assert_eq!(classify(500, None), Class::Unavailable);
        assert_eq!(classify(403, None), Class::Refused);
        assert_eq!(classify(401, None), Class::Refused);
    }

    #[test]
    fn etags_round_trip_through_quoting() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("\"abc\""), "\"abc\"");
        assert_eq!(quote("*"), "*");
    }
}
