//! Sliding-window counter arithmetic shared by the backends (the Redis scripts mirror it).

use std::time::Duration;

use relay_core::RateWindow;

use super::{cost_units, WindowCap};

/// Requests, tokens and cost units counted in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests.
    pub requests: u64,
    /// Tokens.
    pub tokens: u64,
    /// Cost in nano-units.
    pub cost: u64,
}

/// One window's state: the current fixed bucket and the one before it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WindowState {
    pub(crate) len_ms: i64,
    pub(crate) bucket: i64,
    pub(crate) prev: Counts,
    pub(crate) cur: Counts,
}

/// A window's caps in counting units.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Caps {
    pub(crate) requests: Option<u64>,
    pub(crate) tokens: Option<u64>,
    pub(crate) cost: Option<u64>,
}

impl Caps {
    pub(crate) fn of(w: &RateWindow) -> Caps {
        Caps {
            requests: w.max_requests,
            tokens: w.max_tokens,
            cost: w.max_cost.as_ref().map(|m| cost_units(m.amount())),
        }
    }
}

pub(crate) fn window_ms(w: &RateWindow) -> i64 {
    i64::try_from(w.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
}

impl WindowState {
    pub(crate) fn new(len_ms: i64) -> Self {
        Self {
            len_ms,
            ..Self::default()
        }
    }

    /// Move to the bucket containing `now`. A clock that went backwards keeps the newest
    /// bucket rather than resurrecting old counts.
    pub(crate) fn roll(&mut self, now: i64) {
        let bucket = now.div_euclid(self.len_ms);
        if bucket == self.bucket {
            return;
        }
        if bucket == self.bucket + 1 {
            self.prev = self.cur;
        } else if bucket > self.bucket + 1 {
            self.prev = Counts::default();
        } else {
            return;
        }
        self.cur = Counts::default();
        self.bucket = bucket;
    }

    /// Check adding `add` against `caps` at `now` (after [`roll`](Self::roll)).
    pub(crate) fn check(
        &self,
        now: i64,
        caps: &Caps,
        add: &Counts,
    ) -> Result<(), (WindowCap, Duration)> {
        let elapsed = now - self.bucket * self.len_ms;
        let kinds = [
            (
                WindowCap::Requests,
                caps.requests,
                self.prev.requests,
                self.cur.requests,
                add.requests,
            ),
            (
                WindowCap::Tokens,
                caps.tokens,
                self.prev.tokens,
                self.cur.tokens,
                add.tokens,
            ),
            (
                WindowCap::Cost,
                caps.cost,
                self.prev.cost,
                self.cur.cost,
                add.cost,
            ),
        ];
        for (kind, cap, prev, cur, add) in kinds {
            let Some(cap) = cap else { continue };
            if estimate(prev, cur, elapsed, self.len_ms).saturating_add(add) > cap {
                return Err((kind, retry_after(cap, prev, cur, add, elapsed, self.len_ms)));
            }
        }
        Ok(())
    }

    pub(crate) fn add(&mut self, add: &Counts) {
        self.cur.requests = self.cur.requests.saturating_add(add.requests);
        self.cur.tokens = self.cur.tokens.saturating_add(add.tokens);
        self.cur.cost = self.cur.cost.saturating_add(add.cost);
    }

    /// Correct a reservation made in bucket `admitted_bucket` by a signed delta.
    pub(crate) fn adjust(&mut self, admitted_bucket: i64, d_tokens: i64, d_cost: i64) {
        let target = if admitted_bucket == self.bucket {
            &mut self.cur
        } else if admitted_bucket + 1 == self.bucket {
            &mut self.prev
        } else {
            return;
        };
        target.tokens = apply_delta(target.tokens, d_tokens);
        target.cost = apply_delta(target.cost, d_cost);
    }
}

pub(crate) fn apply_delta(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d.unsigned_abs())
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

/// Signed difference `actual - reserved`, saturating.
pub(crate) fn delta(actual: u64, reserved: u64) -> i64 {
    if actual >= reserved {
        i64::try_from(actual - reserved).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(reserved - actual).unwrap_or(i64::MAX)
    }
}

/// `ceil(prev * (len - elapsed) / len) + cur`: rounding up never under-counts.
fn estimate(prev: u64, cur: u64, elapsed: i64, len: i64) -> u64 {
    let remaining = u128::try_from((len - elapsed).clamp(0, len)).unwrap_or(0);
    let len = u128::try_from(len.max(1)).unwrap_or(1);
    let weighted = (u128::from(prev) * remaining).div_ceil(len);
    u64::try_from(weighted)
        .unwrap_or(u64::MAX)
        .saturating_add(cur)
}

/// How long until adding `add` would fit, assuming no other traffic.
fn retry_after(cap: u64, prev: u64, cur: u64, add: u64, elapsed: i64, len: i64) -> Duration {
    let len_u = u128::try_from(len.max(1)).unwrap_or(1);
    let ms = if add > cap {
        // Can never fit in this window; the best hint is a full window.
        len
    } else if cur.saturating_add(add) <= cap {
        // Wait for the previous bucket's weight to decay enough within this bucket.
        let room = u128::from(cap - cur - add);
        let t = if prev == 0 {
            0
        } else {
            len_u.saturating_sub(room * len_u / u128::from(prev))
        };
        i64::try_from(t).unwrap_or(len) - elapsed
    } else {
        // Needs the next bucket, where the current one becomes the previous.
        let room = u128::from(cap - add);
        let t = if cur == 0 {
            0
        } else {
            len_u.saturating_sub(room * len_u / u128::from(cur))
        };
        (len - elapsed) + i64::try_from(t).unwrap_or(len)
    };
    Duration::from_millis(u64::try_from(ms.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u64) -> Counts {
        Counts {
            requests: n,
            ..Counts::default()
        }
    }

    #[test]
    fn previous_bucket_decays_linearly() {
        let caps = Caps {
            requests: Some(10),
            tokens: None,
            cost: None,
        };
        let mut w = WindowState::new(60_000);
        w.roll(0);
        w.add(&req(10));
        assert!(w.check(59_999, &caps, &req(1)).is_err());
        // Half-way through the next bucket the previous 10 weigh 5.
        w.roll(90_000);
        assert!(w.check(90_000, &caps, &req(5)).is_ok());
        assert!(w.check(90_000, &caps, &req(6)).is_err());
        // Two buckets later everything has aged out.
        w.roll(180_000);
        assert!(w.check(180_000, &caps, &req(10)).is_ok());
    }

    #[test]
    fn retry_hint_points_at_when_it_fits() {
        let caps = Caps {
            requests: Some(10),
            tokens: None,
            cost: None,
        };
        let mut w = WindowState::new(60_000);
        w.roll(0);
        w.add(&req(10));
        // Full at t=30s: needs the next bucket (30 s away) and then the previous 10 to
        // decay to 9, another 6 s.
        let (_, wait) = w.check(30_000, &caps, &req(1)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(36_000));
        w.roll(36_000 + 30_000);
        assert!(w.check(66_000, &caps, &req(1)).is_ok());
    }

    #[test]
    fn adjustments_land_in_the_bucket_they_were_reserved_in() {
        let mut w = WindowState::new(1000);
        w.roll(500);
        w.add(&Counts {
            requests: 1,
            tokens: 100,
            cost: 50,
        });
        w.adjust(0, -60, 25);
        assert_eq!(w.cur.tokens, 40);
        assert_eq!(w.cur.cost, 75);
        w.roll(1500);
        w.adjust(0, -100, -100);
        assert_eq!(w.prev.tokens, 0);
        assert_eq!(w.prev.cost, 0);
        w.roll(5000);
        w.adjust(0, 1000, 1000);
        assert_eq!(w.cur, Counts::default());
        assert_eq!(w.prev, Counts::default());
    }
}
