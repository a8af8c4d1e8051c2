//! Sliding-window counter arithmetic shared by the backends (the Redis scripts mirror it).
//!
//! A window keeps, per counted kind, the total of the current fixed bucket and of the one
//! before it; [`estimate`] weighs the previous bucket by how much of it still overlaps the
//! sliding window.

use std::time::Duration;

use relay_core::RateWindow;
use rust_decimal::Decimal;

use super::cost_units;

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

pub(crate) fn window_ms(w: &RateWindow) -> i64 {
    i64::try_from(w.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
}

/// [`cost_units`] on the hot path: a cost with a mantissa within 64 bits (any cost below
/// 18 billion at nano precision) is scaled with one integer multiply or division instead of
/// decimal arithmetic. Anything else takes the decimal path; both round up.
pub(crate) fn units_of(cost: Decimal) -> u64 {
    const POW10: [u64; 20] = {
        let mut t = [1u64; 20];
        let mut i = 1;
        while i < 20 {
            t[i] = t[i - 1] * 10;
            i += 1;
        }
        t
    };
    if let Ok(m) = u64::try_from(cost.mantissa()) {
        let scale = cost.scale() as usize;
        if let Some(&p) = POW10.get(9usize.wrapping_sub(scale)) {
            if let Some(v) = m.checked_mul(p) {
                return v;
            }
        } else if let Some(&p) = POW10.get(scale.wrapping_sub(9)) {
            return m.div_ceil(p);
        }
    }
    cost_units(cost)
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
///
/// `elapsed` is the time since the current bucket started (`0..len`); outside that range
/// it is clamped. The product fits 64 bits for any realistic count, so the 128-bit
/// division (several times slower) only runs when it does not.
pub(crate) fn estimate(prev: u64, cur: u64, elapsed: i64, len: i64) -> u64 {
    if prev == 0 {
        return cur;
    }
    let len = len.max(1);
    let remaining = (len - elapsed).clamp(0, len).unsigned_abs();
    let len = len.unsigned_abs();
    let weighted = match prev.checked_mul(remaining) {
        Some(p) => p.div_ceil(len),
        None => {
            let w = (u128::from(prev) * u128::from(remaining)).div_ceil(u128::from(len));
            u64::try_from(w).unwrap_or(u64::MAX)
        }
    };
    weighted.saturating_add(cur)
}

/// How long until adding `add` would fit, assuming no other traffic.
pub(crate) fn retry_after(
    cap: u64,
    prev: u64,
    cur: u64,
    add: u64,
    elapsed: i64,
    len: i64,
) -> Duration {
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

    #[test]
    fn previous_bucket_decays_linearly_and_rounds_up() {
        // 10 in the previous bucket: all of it at the start, half of it half-way through.
        assert_eq!(estimate(10, 0, 0, 60_000), 10);
        assert_eq!(estimate(10, 3, 30_000, 60_000), 8);
        assert_eq!(estimate(10, 0, 59_999, 60_000), 1, "rounds up");
        assert_eq!(estimate(10, 2, 60_000, 60_000), 2);
        // Out-of-range elapsed times are clamped, not wrapped.
        assert_eq!(estimate(10, 0, -5, 60_000), 10);
        assert_eq!(estimate(10, 0, 90_000, 60_000), 0);
    }

    #[test]
    fn huge_counts_take_the_wide_path_and_saturate() {
        // prev * remaining overflows 64 bits: the 128-bit path gives the exact answer.
        assert_eq!(estimate(u64::MAX, 0, 30_000, 60_000), u64::MAX / 2 + 1);
        assert_eq!(estimate(u64::MAX, u64::MAX, 0, 60_000), u64::MAX);
        assert_eq!(
            estimate(1 << 60, 0, 1, 3_600_000),
            (1u64 << 60) - (1 << 60) / 3_600_000
        );
    }

    #[test]
    fn retry_hint_points_at_when_it_fits() {
        // 10 of 10 used in the previous bucket at 30 s into the current one: the previous
        // 10 must decay to 9, at 6 s into the current bucket: already past, so 1 ms.
        assert_eq!(
            retry_after(10, 10, 0, 1, 30_000, 60_000),
            Duration::from_millis(1)
        );
        // 10 used in the current bucket at 30 s: needs the next bucket (30 s away) and then
        // those 10 to decay to 9, another 6 s.
        assert_eq!(
            retry_after(10, 0, 10, 1, 30_000, 60_000),
            Duration::from_millis(36_000)
        );
        // More than the cap can never fit: a whole window.
        assert_eq!(
            retry_after(10, 0, 0, 11, 0, 60_000),
            Duration::from_millis(60_000)
        );
    }

    #[test]
    fn units_of_agrees_with_the_decimal_path() {
        let mut cases = vec![
            Decimal::ZERO,
            Decimal::ONE,
            Decimal::NEGATIVE_ONE,
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(5, 2),
            Decimal::new(1, 28),
            Decimal::new(-1, 28),
            Decimal::new(i64::MAX, 0),
            Decimal::new(i64::MAX, 28),
            Decimal::new(18_446_744_073, 0),
            Decimal::new(18_446_744_074, 0),
            Decimal::from_i128_with_scale(i128::from(u64::MAX), 9),
            Decimal::from_i128_with_scale(i128::from(u64::MAX) + 1, 9),
            Decimal::from_i128_with_scale(i128::from(u64::MAX), 19),
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for scale in 0..=28 {
            for _ in 0..50 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                cases.push(Decimal::from_i128_with_scale(
                    i128::from(x >> (x % 64)),
                    scale,
                ));
            }
        }
        for c in cases {
            assert_eq!(units_of(c), cost_units(c), "{c}");
        }
    }

    #[test]
    fn deltas_saturate_both_ways() {
        assert_eq!(delta(5, 3), 2);
        assert_eq!(delta(3, 5), -2);
        assert_eq!(delta(u64::MAX, 0), i64::MAX);
        assert_eq!(delta(0, u64::MAX), -i64::MAX);
        assert_eq!(apply_delta(5, -10), 0);
        assert_eq!(apply_delta(u64::MAX - 1, 10), u64::MAX);
    }
}
