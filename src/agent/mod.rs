//! The background sync agent: keeps one replica in sync without anyone typing
//! `dimple sync`.
//!
//! Every `poll` the agent reads `PRAGMA data_version` (a counter SQLite bumps when
//! another connection commits; one cheap query, no file-system watcher to port). A
//! change that then stays quiet for `debounce` and holds local changes is pushed, so
//! a burst of app writes becomes one batch. Every `interval` (±jitter, so a fleet of
//! laptops does not stampede the bucket) it syncs: pull, then push.
//!
//! A failed step never ends the loop: the agent backs off (see [`backoff`]) and, while
//! backing off, leaves local writes for the retry, which syncs everything at once.
//! Shutdown is a future (as in mini-redis) so tests stop the agent deterministically;
//! a step already under way gets `grace` to finish. Cancelling it after that is safe
//! too: every SQLite transaction of a step begins and commits between two awaits, and
//! an interrupted push is finished by the next one from its saved in-flight state.

pub mod backoff;
pub mod budget;
mod each;
pub mod metrics;
pub mod state;

use crate::clock;
use crate::error::{ErrorKind, Result};
use crate::replica::Replica;
use crate::store::{Metered, Store};
use backoff::{jittered, Backoff, BackoffPolicy};
use state::{AgentState, Phase};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

pub use each::{run_each, OpenStore, Target};
pub use state::{inspect, lock, lock_held, AgentLock, AgentStatus};

/// The CLI's default `--interval`: a minute's staleness at worst on a laptop, and 120
/// LISTs an hour per device, which costs nothing on any bucket.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Config {
    /// Time between syncs (pull + push) when nothing fails.
    pub interval: Duration,
    /// Fraction of `interval` added or removed at random.
    pub jitter: f64,
    /// How often to look for local writes.
    pub poll: Duration,
    /// Quiet time after the last local write before pushing.
    pub debounce: Duration,
    /// Push anyway once writes have kept coming for this long.
    pub max_delay: Duration,
    pub backoff: BackoffPolicy,
    /// How long a step under way may finish after shutdown is requested.
    pub grace: Duration,
    /// Where each step's outcome goes (tests, embedding apps).
    pub reports: Option<UnboundedSender<Report>>,
    /// Called after a pull applied remote changes (`--on-change`).
    pub on_change: Option<OnChange>,
    /// Where each step is counted (`--metrics-addr`).
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// At most this many requests an hour for this database (see [`budget`]).
    pub max_requests_per_hour: Option<u64>,
}

/// What an app is told after remote changes were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub db: std::path::PathBuf,
    /// The tables the applied changes touch, sorted.
    pub tables: Vec<String>,
    pub changes: usize,
}

/// A callback run after remote changes were applied, on the database's agent
/// thread: it should return quickly (hand the work to another thread).
#[derive(Clone)]
pub struct OnChange(pub Arc<dyn Fn(&Changed) + Send + Sync>);

impl std::fmt::Debug for OnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnChange(..)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: DEFAULT_INTERVAL,
            jitter: 0.2,
            poll: Duration::from_millis(200),
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            backoff: BackoffPolicy::default(),
            grace: Duration::from_secs(3),
            reports: None,
            on_change: None,
            metrics: None,
            max_requests_per_hour: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sync,
    Push,
}

/// One step's outcome.
#[derive(Debug, Clone)]
pub struct Report {
    /// The database the step was for.
    pub db: std::path::PathBuf,
    pub step: Step,
    pub started: Instant,
    pub pulled: usize,
    pub pushed: usize,
    pub error: Option<(ErrorKind, String)>,
    /// Failures in a row, this one included (0 after a success).
    pub failures: u32,
    /// Time until the next attempt when this step failed.
    pub retry_in: Option<Duration>,
}

/// What the loop remembers between ticks.
struct Loop {
    backoff: Backoff,
    next_sync: Instant,
    /// First and latest time a local write was noticed and not yet pushed.
    dirty: Option<(Instant, Instant)>,
    data_version: Option<i64>,
    file: AgentState,
    db: std::path::PathBuf,
    budget: Option<budget::Budget>,
    /// The budget moved the coming sync later.
    postponed: bool,
}

/// Runs the agent for `r` until `shutdown` completes. Returns an error only if the
/// agent cannot start; failures of individual steps are retried, never returned.
pub async fn run(
    r: &mut Replica,
    store: &Metered<dyn Store>,
    lock: AgentLock,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let span = tracing::info_span!("agent", db = %lock.db().display());
    run_inner(r, store, lock, cfg, shutdown).instrument(span).await
}

async fn run_inner(
    r: &mut Replica,
    store: &Metered<dyn Store>,
    lock: AgentLock,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let db = lock.db().to_owned();
    let now = Instant::now();
    let wall = clock::rfc3339(r.opts.clock.now_ms());
    let mut lp = Loop {
        backoff: Backoff::new(cfg.backoff.clone()),
        next_sync: now,
        dirty: None,
        data_version: None,
        db: db.clone(),
        budget: cfg.max_requests_per_hour.map(|n| budget::Budget::new(n, now)),
        postponed: false,
        file: AgentState {
            pid: std::process::id(),
            state: Phase::Running,
            started_at: wall.clone(),
            updated_at: wall.clone(),
            interval_secs: cfg.interval.as_secs_f64(),
            last_sync: None,
            last_push: None,
            last_error: None,
            last_error_kind: None,
            consecutive_failures: 0,
            next_attempt: Some(wall),
            pending_changes: pending(r).unwrap_or(0),
            max_requests_per_hour: cfg.max_requests_per_hour,
            pull_interval_secs: None,
        },
    };
    state::write(&db, &lp.file)?;
    tracing::info!(bucket = %store.describe(), interval = ?cfg.interval, "agent started");
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(cfg.poll);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let Some(step) = lp.due(r, &cfg) else { continue };
        let started = Instant::now();
        let before = store.stats();
        let (outcome, stop) = {
            let work = do_step(r, store, step);
            tokio::pin!(work);
            tokio::select! {
                biased;
                out = &mut work => (Some(out), false),
                _ = &mut shutdown => match tokio::time::timeout(cfg.grace, &mut work).await {
                    Ok(out) => (Some(out), true),
                    Err(_) => (None, true),
                },
            }
        };
        match outcome {
            Some(out) => lp.record(r, &cfg, step, started, out, store.stats().since(&before)),
            None => tracing::warn!("shutdown interrupted a {step:?}; the next run finishes it"),
        }
        if stop {
            break;
        }
        if let Err(e) = state::write(&db, &lp.file) {
            tracing::warn!(error = %e, "cannot write the agent state file");
        }
    }
    lp.file.state = Phase::Stopped;
    lp.file.next_attempt = None;
    lp.file.updated_at = clock::rfc3339(r.opts.clock.now_ms());
    lp.file.pending_changes = pending(r).unwrap_or(lp.file.pending_changes);
    state::write(&db, &lp.file)?;
    tracing::info!("agent stopped");
    Ok(())
}

/// Local changes not yet pushed, captured-but-unnumbered ones included.
fn pending(r: &Replica) -> Result<i64> {
    Ok(r.pending_captured()? + r.unpushed()?)
}

/// What a step did.
#[derive(Debug, Default)]
struct Done {
    pull: crate::PullReport,
    push: crate::PushReport,
}

async fn do_step(r: &mut Replica, store: &Metered<dyn Store>, step: Step) -> Result<Done> {
    match step {
        Step::Sync => crate::sync(r, store).await.map(|s| Done { pull: s.pull, push: s.push }),
        Step::Push => crate::push(r, store).await.map(|push| Done { push, ..Done::default() }),
    }
}

impl Loop {
    /// The step to take now, if any.
    fn due(&mut self, r: &Replica, cfg: &Config) -> Option<Step> {
        let now = Instant::now();
        match r.conn().query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0)) {
            Ok(v) if self.data_version != Some(v) => {
                // The first read only sets the baseline; the start-up sync pushes anyway.
                if self.data_version.is_some() {
                    let first = self.dirty.map_or(now, |(first, _)| first);
                    self.dirty = Some((first, now));
                }
                self.data_version = Some(v);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read data_version"),
        }
        if now >= self.next_sync {
            let ready = self.budget.as_mut().map_or(now, |b| b.ready_at(now, Step::Sync));
            if ready <= now {
                if !std::mem::take(&mut self.postponed) {
                    self.file.pull_interval_secs = None;
                }
                return Some(Step::Sync);
            }
            // Over budget: the pull waits (and says so in status and metrics).
            self.postponed = true;
            self.next_sync = ready;
            self.file.pull_interval_secs = Some(ready.duration_since(now).as_secs_f64() + cfg.interval.as_secs_f64());
        }
        if self.backoff.failures() > 0 {
            return None; // the retry will push too
        }
        let (first, last) = self.dirty?;
        if now.duration_since(last) < cfg.debounce && now.duration_since(first) < cfg.max_delay {
            return None;
        }
        if let Some(b) = self.budget.as_mut() {
            if b.ready_at(now, Step::Push) > now && now.duration_since(first) < budget::MAX_PUSH_DELAY {
                return None;
            }
        }
        self.dirty = None;
        // Our own commits bump data_version too; only real local changes are worth a push.
        match pending(r) {
            Ok(0) => None,
            Ok(_) => Some(Step::Push),
            Err(e) => {
                tracing::debug!(error = %e, "cannot count pending changes; pushing to find out");
                Some(Step::Push)
            }
        }
    }

    fn record(
        &mut self,
        r: &Replica,
        cfg: &Config,
        step: Step,
        started: Instant,
        out: Result<Done>,
        used: crate::store::RequestStats,
    ) {
        let now = Instant::now();
        if let Some(b) = self.budget.as_mut() {
            b.spend(now, step, used.total);
        }
        let name = self.db.display().to_string();
        if let Some(m) = &cfg.metrics {
            let (pulled, pushed, pulled_batches, pushed_batches) = match &out {
                Ok(d) => (d.pull.changes, d.push.changes, d.pull.batches, d.push.batches),
                Err(_) => (0, 0, 0, 0),
            };
            m.step(
                &name,
                &metrics::StepFigures {
                    pulled,
                    pushed,
                    pulled_batches,
                    pushed_batches,
                    requests: used,
                    error_kind: out.as_ref().err().map(|e| e.kind()),
                    seconds: now.duration_since(started).as_secs_f64(),
                    pulls: step == Step::Sync,
                },
            );
            if let Ok(n) = crate::problems::list(r.conn()) {
                m.set_problems(&name, n.len() as i64);
            }
        }
        if let (Some(f), Ok(d)) = (&cfg.on_change, &out) {
            if d.pull.changes > 0 {
                (f.0)(&Changed { db: self.db.clone(), tables: d.pull.tables.clone(), changes: d.pull.changes });
            }
        }
        let out = out.map(|d| (d.pull.changes, d.push.changes));
        let now_ms = r.opts.clock.now_ms();
        let wall = clock::rfc3339(now_ms);
        let mut report = Report {
            db: self.db.clone(),
            step,
            started,
            pulled: 0,
            pushed: 0,
            error: None,
            failures: 0,
            retry_in: None,
        };
        match out {
            Ok((pulled, pushed)) => {
                if self.backoff.failures() > 0 {
                    tracing::info!(after_failures = self.backoff.failures(), "sync works again");
                }
                self.backoff.reset();
                self.dirty = None;
                if step == Step::Sync {
                    self.next_sync = now + jittered(cfg.interval, cfg.jitter);
                    self.file.last_sync = Some(wall.clone());
                }
                if pushed > 0 {
                    self.file.last_push = Some(wall.clone());
                }
                if pulled + pushed > 0 {
                    tracing::info!(pulled, pushed, "{step:?} done");
                } else {
                    tracing::debug!("{step:?}: nothing to do");
                }
                self.file.state = Phase::Running;
                self.file.last_error = None;
                self.file.last_error_kind = None;
                (report.pulled, report.pushed) = (pulled, pushed);
            }
            Err(e) => {
                let kind = e.kind();
                let delay = self.backoff.on_failure(kind);
                self.next_sync = now + delay;
                let failures = self.backoff.failures();
                match kind {
                    ErrorKind::Unavailable => {
                        tracing::warn!(error = %e, failures, retry_in = ?delay, "{step:?} failed; will retry")
                    }
                    ErrorKind::Conflict => tracing::error!(
                        error = %e, retry_in = ?delay,
                        "REPLICA CONFLICT: another device uses this replica id; nothing will sync until it is resolved"
                    ),
                    _ => {
                        tracing::error!(error = %e, ?kind, failures, retry_in = ?delay, "{step:?} failed; needs attention")
                    }
                }
                self.file.state = Phase::BackingOff;
                self.file.last_error = Some(e.to_string());
                self.file.last_error_kind = Some(kind);
                report.error = Some((kind, e.to_string()));
                report.retry_in = Some(delay);
                report.failures = failures;
            }
        }
        self.file.consecutive_failures = self.backoff.failures();
        self.file.updated_at = wall;
        let until_next = self.next_sync.saturating_duration_since(now);
        self.file.next_attempt = Some(clock::rfc3339(now_ms + until_next.as_millis() as u64));
        match pending(r) {
            Ok(n) => self.file.pending_changes = n,
            Err(e) => tracing::debug!(error = %e, "cannot count pending changes"),
        }
        if let Some(m) = &cfg.metrics {
            m.set_pending(&name, self.file.pending_changes);
            m.set_pull_interval(&name, self.file.pull_interval_secs.unwrap_or(cfg.interval.as_secs_f64()));
        }
        if let Some(tx) = &cfg.reports {
            let _ = tx.send(report);
        }
    }
}
