//! When the inbox runs a delivery again, and the clock it reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// The time the inbox schedules by: due times, claims, retention.
///
/// [`WallClock`] in production; a [`ManualClock`] makes the retry schedule
/// testable without waiting for it.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to. Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The longest first delay or cap a [`RetrySchedule`] accepts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How the inbox retries a delivery whose run failed: exponential backoff
/// with jitter, up to a number of attempts, after which the delivery is
/// dead.
///
/// After failed attempt `n` (1 is the first run) the delivery is due again
/// after `first × 2ⁿ⁻¹`, capped, then shortened by up to the jitter
/// fraction. The jitter is a hash of the seed, the delivery id and `n`:
/// replicas agree on it, a burst of failures spreads out, and a test can
/// compute it with [`delay`](Self::delay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySchedule {
    first: Duration,
    cap: Duration,
    max_attempts: u32,
    jitter: f64,
    seed: u64,
}

impl Default for RetrySchedule {
    /// 10 s, doubling, capped at 1 h, 10 attempts, up to 20 % jitter.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(10),
            cap: Duration::from_secs(3600),
            max_attempts: 10,
            jitter: 0.2,
            seed: 0,
        }
    }
}

impl RetrySchedule {
    /// The default schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// The wait after the first failed attempt (default 10 s).
    ///
    /// # Panics
    ///
    /// If `first` is over [`MAX_RETRY_DELAY`].
    #[must_use]
    pub fn first_delay(mut self, first: Duration) -> Self {
        assert!(
            first <= MAX_RETRY_DELAY,
            "the first delay must be at most {MAX_RETRY_DELAY:?}, not {first:?}"
        );
        self.first = first;
        self
    }

    /// The longest wait between attempts (default 1 h). It bounds a
    /// handler's `retry_later(after)` as well.
    ///
    /// # Panics
    ///
    /// If `cap` is over [`MAX_RETRY_DELAY`].
    #[must_use]
    pub fn cap(mut self, cap: Duration) -> Self {
        assert!(
            cap <= MAX_RETRY_DELAY,
            "the cap must be at most {MAX_RETRY_DELAY:?}, not {cap:?}"
        );
        self.cap = cap;
        self
    }

    /// How many runs a delivery gets before it is dead (default 10).
    ///
    /// # Panics
    ///
    /// If `attempts` is 0.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        assert!(attempts > 0, "a delivery needs at least one attempt");
        self.max_attempts = attempts;
        self
    }

    /// The largest fraction a wait is shortened by at random (default 0.2;
    /// 0 for none).
    ///
    /// # Panics
    ///
    /// If `fraction` is not within `0.0..=1.0`.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&fraction),
            "the jitter is a fraction within 0..=1, not {fraction}"
        );
        self.jitter = fraction;
        self
    }

    /// Seeds the jitter (default 0).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The first delay and the cap, for the claim's own (unjittered)
    /// due time.
    pub(super) fn backoff_bounds(&self) -> (Duration, Duration) {
        (self.first, self.cap)
    }

    /// How many runs a delivery gets.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait after failed attempt `attempt` of `delivery_id`.
    pub fn delay(&self, delivery_id: &str, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(63);
        let backoff = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.first.checked_mul(factor))
            .map_or(self.cap, |delay| delay.min(self.cap));
        if self.jitter == 0.0 {
            return backoff;
        }
        let unit = self.unit(delivery_id, attempt);
        backoff.mul_f64(1.0 - self.jitter * unit)
    }

    /// The wait a handler asked for with `retry_later(after)`, within the cap.
    pub fn retry_later(&self, after: Duration) -> Duration {
        after.min(self.cap)
    }

    /// A number in `[0, 1)` from the seed, the id and the attempt (FNV-1a).
    fn unit(&self, delivery_id: &str, attempt: u32) -> f64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed;
        let bytes = delivery_id.bytes().chain(attempt.to_le_bytes());
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let schedule = RetrySchedule::new().jitter(0.0);
        let delays: Vec<u64> = (1..=10)
            .map(|n| schedule.delay("evt_1", n).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]);
        assert_eq!(schedule.delay("evt_1", u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction_and_is_reproducible() {
        let schedule = RetrySchedule::new().jitter(0.5).seed(7);
        let mut distinct = std::collections::HashSet::new();
        for n in 0..200 {
            let id = format!("evt_{n}");
            let delay = schedule.delay(&id, 3);
            assert!(delay <= Duration::from_secs(40) && delay >= Duration::from_secs(20));
            assert_eq!(delay, schedule.delay(&id, 3));
            distinct.insert(delay);
        }
        assert!(distinct.len() > 150, "spread out: {}", distinct.len());
        assert_ne!(
            schedule.delay("evt_1", 3),
            schedule.seed(8).delay("evt_1", 3)
        );
    }

    #[test]
    fn retry_later_is_honoured_within_the_cap() {
        let schedule = RetrySchedule::new().cap(Duration::from_secs(60));
        assert_eq!(
            schedule.retry_later(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            schedule.retry_later(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
    }
}
