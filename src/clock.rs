//! Time and ids: a hybrid logical clock that issues UUIDv7 change ids.
//!
//! An id is `unix_ms (48) | version 7 | counter (42, split around the variant) | node (32)`.
//! Ordering ids as text orders them by (ms, counter, node): the HLC guarantees that
//! every id a replica issues is greater than every id it issued or applied before,
//! even when the wall clock steps back, and the node bits (taken from the replica id)
//! keep two replicas from ever issuing the same id.
//!
//! This module is the only place that reads the wall clock or makes ids; tests drive
//! a [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    // The one place that reads the wall clock (clippy.toml forbids it elsewhere).
    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

const COUNTER_BITS: u32 = 42;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;
/// How far in the future a remote id may lie before it is refused (SPEC 4).
pub const DEFAULT_MAX_DRIFT_MS: u64 = 24 * 3600 * 1000;

/// The parts of an HLC id that order it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub ms: u64,
    pub counter: u64,
}

pub fn compose(stamp: Stamp, node: u32) -> Uuid {
    let hi = stamp.counter >> 30;
    let lo = stamp.counter & ((1 << 30) - 1);
    let v: u128 = ((stamp.ms as u128) << 80)
        | (0x7 << 76)
        | ((hi as u128) << 64)
        | (0b10 << 62)
        | ((lo as u128) << 32)
        | node as u128;
    Uuid::from_u128(v)
}

pub fn stamp_of(id: &Uuid) -> Stamp {
    let v = id.as_u128();
    let ms = (v >> 80) as u64;
    let hi = ((v >> 64) & 0xfff) as u64;
    let lo = ((v >> 32) & ((1 << 30) - 1)) as u64;
    Stamp { ms, counter: (hi << 30) | lo }
}

/// The least id of `node` that sorts after `id`, whoever issued `id`.
pub fn after(id: &Uuid, node: u32) -> Uuid {
    let s = stamp_of(id);
    let next = if s.counter < COUNTER_MAX {
        Stamp { ms: s.ms, counter: s.counter + 1 }
    } else {
        Stamp { ms: s.ms + 1, counter: 0 }
    };
    compose(next, node)
}

/// Parses an id from the log or from a bucket: canonical lowercase text, version 7.
pub fn parse_id(s: &str) -> Option<Uuid> {
    let id = Uuid::from_bytes(crate::layout::uuid_bytes(s)?);
    (id.get_version_num() == 7).then_some(id)
}

#[derive(Debug, thiserror::Error)]
#[error("change id {id} lies {ahead_ms} ms in the future (more than the allowed drift of {max_ms} ms)")]
pub struct DriftError {
    pub id: String,
    pub ahead_ms: u64,
    pub max_ms: u64,
}

/// How far ahead of the wall clock an id may be ([`Hlc::drift`]).
#[derive(Clone)]
pub struct Drift {
    clock: Arc<dyn Clock>,
    max_ms: u64,
}

impl Drift {
    /// Refuses an id that lies beyond the limit.
    pub fn check(&self, id: &Uuid) -> Result<(), DriftError> {
        self.check_at(id, self.clock.now_ms())
    }

    /// The wall clock's time, for [`Drift::check_at`].
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// [`Drift::check`] against `now`, read once for many ids: a pull checks
    /// every change it reads, and reading the clock for each was a twentieth
    /// of its checking thread. A `now` read earlier is only stricter.
    pub fn check_at(&self, id: &Uuid, now: u64) -> Result<(), DriftError> {
        let ms = stamp_of(id).ms;
        if ms > now.saturating_add(self.max_ms) {
            return Err(DriftError { id: id.to_string(), ahead_ms: ms - now, max_ms: self.max_ms });
        }
        Ok(())
    }
}

pub struct Hlc {
    clock: Arc<dyn Clock>,
    last: Stamp,
    node: u32,
    max_drift_ms: u64,
}

impl Hlc {
    /// `node` distinguishes this replica's ids; `last` is the persisted state (the
    /// greatest id issued or applied so far).
    pub fn new(clock: Arc<dyn Clock>, replica_id: &Uuid, last: Option<Uuid>, max_drift_ms: u64) -> Self {
        let node = replica_id.as_u128() as u32;
        let last = last.map(|id| stamp_of(&id)).unwrap_or(Stamp { ms: 0, counter: 0 });
        Hlc { clock, last, node, max_drift_ms }
    }

    /// The next id: greater than every id issued or observed so far.
    pub fn tick(&mut self) -> Uuid {
        let now = self.clock.now_ms();
        self.last = if now > self.last.ms {
            Stamp { ms: now, counter: 0 }
        } else if self.last.counter < COUNTER_MAX {
            Stamp { ms: self.last.ms, counter: self.last.counter + 1 }
        } else {
            Stamp { ms: self.last.ms + 1, counter: 0 }
        };
        compose(self.last, self.node)
    }

    /// Refuses an id that lies beyond the drift limit; does not move the clock.
    pub fn check_drift(&self, id: &Uuid) -> Result<(), DriftError> {
        self.drift().check(id)
    }

    /// The drift limit on its own: it reads only the wall clock, so a batch can be
    /// checked against it on another thread while this clock moves on.
    pub fn drift(&self) -> Drift {
        Drift { clock: self.clock.clone(), max_ms: self.max_drift_ms }
    }

    /// Moves the clock past an applied remote id so later local ids sort after it.
    pub fn observe(&mut self, id: &Uuid) {
        let s = stamp_of(id);
        if s > self.last {
            self.last = s;
        }
    }

    /// The least id of this replica that sorts after `id` (another replica's),
    /// observed so that later ids sort after it too: a change taken over from
    /// another id keeps its place in time (`dimple fork`).
    pub fn take_over(&mut self, id: &Uuid) -> Uuid {
        let next = after(id, self.node);
        self.observe(&next);
        next
    }

    /// The id that persists the clock: compose of the last stamp.
    pub fn state(&self) -> Uuid {
        compose(self.last, self.node)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// A fresh random UUIDv7 for things that need no ordering guarantee beyond time
/// (replica ids).
pub fn random_v7(clock: &dyn Clock) -> Uuid {
    let ms = clock.now_ms();
    let r: u128 = rand::random();
    let v = ((ms as u128) << 80) | (0x7 << 76) | (r & (0xfff << 64)) | (0b10 << 62) | (r & ((1u128 << 62) - 1));
    Uuid::from_u128(v)
}

/// RFC 3339 UTC text for a unix time in milliseconds (for people and JSON output).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant): proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }

    use super::*;

    fn hlc(clock: &ManualClock) -> Hlc {
        let rid = random_v7(clock);
        Hlc::new(Arc::new(clock.clone()), &rid, None, DEFAULT_MAX_DRIFT_MS)
    }

    #[test]
    fn ids_are_valid_uuidv7_and_round_trip_their_stamp() {
        let clock = ManualClock::new(1_700_000_000_000);
        let mut h = hlc(&clock);
        let id = h.tick();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(stamp_of(&id), Stamp { ms: 1_700_000_000_000, counter: 0 });
        assert!(parse_id(&id.to_string()).is_some());
        let s = Stamp { ms: 5, counter: COUNTER_MAX };
        assert_eq!(stamp_of(&compose(s, 9)), s);
    }

    #[test]
    fn ids_strictly_increase_when_the_wall_clock_stands_still_or_steps_back() {
        let clock = ManualClock::new(1_000_000);
        let mut h = hlc(&clock);
        let mut prev = h.tick().to_string();
        for step in 0..1000 {
            if step == 500 {
                clock.set(10);
            }
            let id = h.tick().to_string();
            assert!(id > prev, "{id} <= {prev}");
            prev = id;
        }
    }

    #[test]
    fn ids_advance_past_every_observed_remote_id() {
        let clock = ManualClock::new(1_000);
        let mut h = hlc(&clock);
        let remote = compose(Stamp { ms: 50_000, counter: 7 }, 1);
        h.observe(&remote);
        assert!(h.tick().to_string() > remote.to_string());
    }

    #[test]
    fn ids_stay_increasing_across_a_restart_from_persisted_state() {
        let clock = ManualClock::new(1_000);
        let rid = random_v7(&clock);
        let mut a = Hlc::new(Arc::new(clock.clone()), &rid, None, DEFAULT_MAX_DRIFT_MS);
        a.tick();
        let last = a.tick();
        clock.set(0);
        let mut b = Hlc::new(Arc::new(clock.clone()), &rid, Some(a.state()), DEFAULT_MAX_DRIFT_MS);
        assert!(b.tick() > last);
    }

    #[test]
    fn ids_beyond_the_drift_limit_are_refused_and_do_not_move_the_clock() {
        let clock = ManualClock::new(1_000);
        let h = hlc(&clock);
        let far = compose(Stamp { ms: 1_000 + DEFAULT_MAX_DRIFT_MS + 1, counter: 0 }, 1);
        assert!(h.check_drift(&far).is_err());
        let near = compose(Stamp { ms: 1_000 + DEFAULT_MAX_DRIFT_MS, counter: 0 }, 1);
        assert!(h.check_drift(&near).is_ok());
        assert_eq!(stamp_of(&h.state()).ms, 0);
    }

    proptest::proptest! {
        #[test]
        fn the_id_after_another_sorts_after_it_and_no_stamp_lies_between(
            ms in 0u64..(1 << 48) - 1,
            counter in 0..=COUNTER_MAX,
            node in proptest::prelude::any::<u32>(),
            mine in proptest::prelude::any::<u32>(),
        ) {
            let id = compose(Stamp { ms, counter }, node);
            let next = after(&id, mine);
            proptest::prop_assert!(next > id);
            proptest::prop_assert_eq!(next.get_version_num(), 7);
            proptest::prop_assert_eq!(next.as_u128() as u32, mine);
            let (a, b) = (stamp_of(&id), stamp_of(&next));
            let successor = if a.counter == COUNTER_MAX { (a.ms + 1, 0) } else { (a.ms, a.counter + 1) };
            proptest::prop_assert_eq!((b.ms, b.counter), successor);
        }
    }
}
