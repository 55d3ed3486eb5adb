//! A request budget (`--max-requests-per-hour`): the agent stretches its pull
//! interval so that one database's requests stay within N an hour.
//!
//! A token bucket holding at most an hour's worth of requests, refilled evenly:
//! each step spends what it really used (the metering store counts it), and a step
//! starts only when the tokens cover what such a step cost recently. Pulls wait as
//! long as it takes. Pushes of local writes wait too, but never more than
//! [`MAX_PUSH_DELAY`]: a write is never held back longer than that, so pushes
//! alone may go over the budget, by at most one push a minute.

use super::Step;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a budget holds back a push of local writes.
pub const MAX_PUSH_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Budget {
    per_hour: f64,
    tokens: f64,
    at: Instant,
    /// Recent cost of a sync and of a push (moving averages).
    sync_cost: f64,
    push_cost: f64,
}

impl Budget {
    pub fn new(per_hour: u64, now: Instant) -> Budget {
        let per_hour = per_hour as f64;
        Budget { per_hour, tokens: per_hour, at: now, sync_cost: 2.0, push_cost: 3.0 }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_hour / 3600.0).min(self.per_hour);
        self.at = now;
    }

    fn cost(&self, step: Step) -> f64 {
        match step {
            Step::Sync => self.sync_cost,
            Step::Push => self.push_cost,
        }
    }

    /// The earliest time a `step` fits in the budget.
    pub fn ready_at(&mut self, now: Instant, step: Step) -> Instant {
        self.refill(now);
        let missing = self.cost(step) - self.tokens;
        if missing <= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(missing * 3600.0 / self.per_hour)
        }
    }

    /// A `step` used `requests`.
    pub fn spend(&mut self, now: Instant, step: Step, requests: u64) {
        self.refill(now);
        self.tokens -= requests as f64;
        let seen = requests.max(1) as f64;
        match step {
            Step::Sync => self.sync_cost = 0.7 * self.sync_cost + 0.3 * seen,
            Step::Push => self.push_cost = 0.7 * self.push_cost + 0.3 * seen,
        }
    }

    pub fn per_hour(&self) -> u64 {
        self.per_hour as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn steps_wait_until_the_tokens_cover_their_recent_cost() {
        let now = Instant::now();
        let mut b = Budget::new(3600, now); // one request a second
        assert_eq!(b.ready_at(now, Step::Sync), now, "an hour's worth to start with");
        for _ in 0..1800 {
            b.spend(now, Step::Sync, 2);
        }
        // Spent: the next sync (about 2 requests) waits for 2 s of refill.
        let wait = b.ready_at(now, Step::Sync).duration_since(now);
        assert!(wait >= Duration::from_millis(1900) && wait <= Duration::from_millis(2100), "{wait:?}");
        let later = now + Duration::from_secs(60);
        assert_eq!(b.ready_at(later, Step::Sync), later, "a minute refills 60");
    }
}
