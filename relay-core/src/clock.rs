//! Time as a dependency.
//!
//! Everything in relay that asks "what time is it" asks a [`Clock`], so tests can drive a
//! year of subscription life or a rate window's edge with a [`ManualClock`] instead of
//! sleeping.

use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;

/// A source of the current time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// The current instant as milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// A clock shared between components.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// Straight from the system time: the limiters read it on every call, and going
    /// through a calendar `DateTime` costs more than the clock read itself.
    fn now_millis(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // Before the epoch: round towards the past, as `timestamp_millis` does.
            Err(e) => {
                -i64::try_from(e.duration().as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
            }
        }
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Set the time (it may go backwards, to test how callers cope).
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock() = to;
    }

    /// Move the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        other.advance(Duration::seconds(90));
        assert_eq!(clock.now(), start + Duration::seconds(90));
        assert_eq!(clock.now_millis(), start.timestamp_millis() + 90_000);
        clock.set(start);
        assert_eq!(other.now(), start);
    }

    #[test]
    fn system_clock_is_close_to_now() {
        let a = SystemClock.now();
        let b = Utc::now();
        assert!((b - a).num_seconds().abs() < 5);
        // The direct millisecond read agrees with the calendar one.
        let ms = SystemClock.now_millis();
        assert!((ms - b.timestamp_millis()).abs() < 5_000);
    }
}
