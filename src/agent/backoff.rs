//! When to try again after a failed step.
//!
//! A laptop goes offline for hours: transient failures back off exponentially so the
//! agent does not spin, and jitter spreads many devices' retries so they do not hit
//! the bucket together when it comes back. Failures that waiting will not fix (bad
//! credentials, a missing bucket, a copied replica) are retried slowly, because a
//! person may fix them without restarting the agent.

use crate::ErrorKind;
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BackoffPolicy {
    /// Delay after the first transient failure; doubles on each further one.
    pub first: Duration,
    pub max: Duration,
    /// Delay after a failure that needs a person (invalid set-up, conflict, bad data).
    pub slow: Duration,
    /// Fraction of every delay added or removed at random (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
            slow: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

/// Consecutive failures so far, and the delay they earn.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff { policy, failures: 0 }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn on_failure(&mut self, kind: ErrorKind) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = match kind {
            ErrorKind::Unavailable | ErrorKind::Internal => {
                let doublings = (self.failures - 1).min(30);
                self.policy.first.saturating_mul(1 << doublings).min(self.policy.max)
            }
            ErrorKind::Invalid | ErrorKind::Conflict | ErrorKind::Data => self.policy.slow,
        };
        jittered(base, self.policy.jitter)
    }

    /// A success: the next failure starts from the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `d` scaled by a random factor in [1 - frac, 1 + frac].
pub fn jittered(d: Duration, frac: f64) -> Duration {
    if frac <= 0.0 {
        return d;
    }
    d.mul_f64(rand::thread_rng().gen_range(1.0 - frac..=1.0 + frac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_double_up_to_the_cap_and_reset() {
        let policy = BackoffPolicy { jitter: 0.0, ..Default::default() };
        let mut b = Backoff::new(policy);
        let delays: Vec<u64> = (0..12).map(|_| b.on_failure(ErrorKind::Unavailable).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        b.reset();
        assert_eq!(b.on_failure(ErrorKind::Unavailable), Duration::from_secs(1));
    }

    #[test]
    fn failures_a_person_must_fix_are_retried_slowly() {
        let mut b = Backoff::new(BackoffPolicy { jitter: 0.0, ..Default::default() });
        for kind in [ErrorKind::Invalid, ErrorKind::Conflict, ErrorKind::Data] {
            assert_eq!(b.on_failure(kind), Duration::from_secs(300));
        }
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.2);
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
        }
    }
}
