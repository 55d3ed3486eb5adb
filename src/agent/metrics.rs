//! The agent's figures for Prometheus (`dimple agent --metrics-addr`), per
//! database, named `dimple_*`, encoded by `prometheus-client` in the OpenMetrics
//! text format. The agent records each step's outcome here; [`serve`] answers
//! `GET /metrics` on a loopback address.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

type Labels = Vec<(String, String)>;

fn db(db: &str) -> Labels {
    vec![("db".to_owned(), db.to_owned())]
}

fn db_and(db: &str, key: &str, value: &str) -> Labels {
    vec![("db".to_owned(), db.to_owned()), (key.to_owned(), value.to_owned())]
}

/// One agent's metrics, shared by its databases' threads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pending: Family<Labels, Gauge>,
    changes: Family<Labels, Counter>,
    batches: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    problems: Family<Labels, Gauge>,
    since_push: Family<Labels, Gauge<f64, AtomicU64>>,
    since_pull: Family<Labels, Gauge<f64, AtomicU64>>,
    pull_interval: Family<Labels, Gauge<f64, AtomicU64>>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    last: Mutex<HashMap<(String, &'static str), Instant>>,
}

/// What one step did, as the metrics see it.
#[derive(Debug, Default, Clone)]
pub struct StepFigures {
    pub pulled: usize,
    pub pushed: usize,
    pub pulled_batches: usize,
    pub pushed_batches: usize,
    pub requests: crate::store::RequestStats,
    pub error_kind: Option<crate::error::ErrorKind>,
    pub seconds: f64,
    /// Whether the step was a sync (pull and push) or a push alone.
    pub pulls: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dimple");
        let m = Metrics {
            pending: Family::default(),
            changes: Family::default(),
            batches: Family::default(),
            requests: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            problems: Family::default(),
            since_push: Family::default(),
            since_pull: Family::default(),
            pull_interval: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.0, 14))),
            last: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register("pending_changes", "Local changes not yet pushed", m.pending.clone());
        registry.register("changes", "Changes pushed or pulled (direction label)", m.changes.clone());
        registry.register("batches", "Batches pushed or pulled (direction label)", m.batches.clone());
        registry.register("requests", "Requests to the bucket by kind", m.requests.clone());
        registry.register("bytes", "Bytes sent to or read from the bucket (direction up or down)", m.bytes.clone());
        registry.register("errors", "Failed steps by error kind", m.errors.clone());
        registry.register(
            "problems",
            "Refused input from the bucket, kept until its cause goes away",
            m.problems.clone(),
        );
        registry.register(
            "seconds_since_last_push",
            "Seconds since the last successful push (absent before the first)",
            m.since_push.clone(),
        );
        registry.register(
            "seconds_since_last_pull",
            "Seconds since the last successful pull (absent before the first)",
            m.since_pull.clone(),
        );
        registry.register(
            "pull_interval_seconds",
            "Current time between pulls (stretched by a request budget)",
            m.pull_interval.clone(),
        );
        registry.register("sync_duration_seconds", "Duration of each sync or push step", m.duration.clone());
        Metrics { registry, ..m }
    }

    /// Records one step of database `name`.
    pub fn step(&self, name: &str, f: &StepFigures) {
        let counted = [
            (&self.changes, "direction", "pushed", f.pushed as u64),
            (&self.changes, "direction", "pulled", f.pulled as u64),
            (&self.batches, "direction", "pushed", f.pushed_batches as u64),
            (&self.batches, "direction", "pulled", f.pulled_batches as u64),
            (&self.requests, "kind", "list", f.requests.list),
            (&self.requests, "kind", "get", f.requests.get),
            (&self.requests, "kind", "put", f.requests.put),
            (&self.requests, "kind", "head", f.requests.head),
            (&self.requests, "kind", "delete", f.requests.delete),
            (&self.bytes, "direction", "up", f.requests.bytes_up),
            (&self.bytes, "direction", "down", f.requests.bytes_down),
        ];
        for (family, key, value, n) in counted {
            family.get_or_create(&db_and(name, key, value)).inc_by(n);
        }
        self.duration.get_or_create(&db(name)).observe(f.seconds);
        match f.error_kind {
            Some(kind) => {
                let kind =
                    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                self.errors.get_or_create(&db_and(name, "kind", &kind)).inc();
            }
            None => {
                let mut last = self.last.lock().expect("not poisoned");
                let now = Instant::now();
                if f.pulls {
                    last.insert((name.to_owned(), "pull"), now);
                }
                if f.pushed > 0 || f.pulls {
                    last.insert((name.to_owned(), "push"), now);
                }
            }
        }
    }

    pub fn set_pending(&self, name: &str, n: i64) {
        self.pending.get_or_create(&db(name)).set(n);
    }

    pub fn set_problems(&self, name: &str, n: i64) {
        self.problems.get_or_create(&db(name)).set(n);
    }

    pub fn set_pull_interval(&self, name: &str, secs: f64) {
        self.pull_interval.get_or_create(&db(name)).set(secs);
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let now = Instant::now();
        for ((name, what), at) in self.last.lock().expect("not poisoned").iter() {
            let family = if *what == "pull" { &self.since_pull } else { &self.since_push };
            family.get_or_create(&db(name)).set(now.duration_since(*at).as_secs_f64());
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. A deliberately
/// small HTTP/1.1 responder: one request per connection, then close.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            // Read the request head (bounded); the body of a GET is empty.
            while got < buf.len() {
                match conn.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, kind) = if head.starts_with("GET ") && (path == "/metrics" || path == "/") {
                ("200 OK", metrics.encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
            } else {
                ("404 Not Found", "only GET /metrics here\n".to_owned(), "text/plain")
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
