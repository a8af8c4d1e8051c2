//! A policy's layout: what each tracked key stores for it, and its caps in counting units.
//!
//! Built once per [`KeyPolicy`] and shared by every key holding that policy, so the caps
//! are converted once and each key carries only its counters.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use relay_core::{BudgetPeriod, KeyPolicy};

use super::super::window::window_ms;
use super::super::{cost_units, WindowCap};

/// Lease slots kept in a key's own words; more leases spill to a vector.
const INLINE_LEASES: usize = 2;

/// One rate window: where its words start and which kinds it counts.
#[derive(Debug)]
pub(super) struct WindowPlan {
    /// Bucket length.
    pub(super) len_ms: i64,
    /// The window's length as the policy states it (for denials).
    pub(super) secs: u64,
    /// First word: the bucket number, then `(previous, current)` per counted kind.
    pub(super) at: usize,
    /// The capped kinds, in word order. Kinds without a cap are not counted at all.
    pub(super) caps: Vec<(WindowCap, u64)>,
}

/// One budget: its words are `start_ms, end_ms, spent` of the period last seen.
#[derive(Debug)]
pub(super) struct BudgetPlan {
    pub(super) period: BudgetPeriod,
    pub(super) cap: u64,
    pub(super) at: usize,
}

/// What every key holding one policy stores, and the policy's caps.
#[derive(Debug)]
pub(super) struct Plan {
    /// The policy this plan was built for. The `Weak` keeps its allocation (not the policy)
    /// alive, so no other policy can take its address while this plan exists, and comparing
    /// addresses identifies it.
    policy: Weak<KeyPolicy>,
    pub(super) windows: Vec<WindowPlan>,
    pub(super) budgets: Vec<BudgetPlan>,
    pub(super) concurrency: Option<u32>,
    /// First word of the inline lease slots (`lease id, expiry` each).
    pub(super) leases_at: usize,
    pub(super) inline_leases: usize,
    /// Words per key.
    pub(super) words: usize,
    /// The current period of each budget, `(start_ms, end_ms)`: every key of the policy
    /// shares the same periods, so the timezone arithmetic runs once per period and policy,
    /// not once per key. Locked only when a key enters a new period.
    periods: Mutex<Vec<(i64, i64)>>,
}

impl Plan {
    /// Lay out `policy`.
    pub(super) fn new(policy: &Arc<KeyPolicy>) -> Self {
        let mut at = 0;
        let windows = policy
            .rate_windows
            .iter()
            .map(|w| {
                let caps: Vec<(WindowCap, u64)> = [
                    (WindowCap::Requests, w.max_requests),
                    (WindowCap::Tokens, w.max_tokens),
                    (
                        WindowCap::Cost,
                        w.max_cost.as_ref().map(|m| cost_units(m.amount())),
                    ),
                ]
                .into_iter()
                .filter_map(|(kind, cap)| cap.map(|c| (kind, c)))
                .collect();
                let plan = WindowPlan {
                    len_ms: window_ms(w).max(1),
                    secs: w.window_secs,
                    at,
                    caps,
                };
                at += 1 + 2 * plan.caps.len();
                plan
            })
            .collect();
        let budgets = policy
            .budgets
            .iter()
            .map(|b| {
                let plan = BudgetPlan {
                    period: b.period,
                    cap: cost_units(b.cap.amount()),
                    at,
                };
                at += 3;
                plan
            })
            .collect();
        let inline_leases = policy
            .concurrency
            .map_or(INLINE_LEASES, |c| (c as usize).min(INLINE_LEASES));
        Plan {
            policy: Arc::downgrade(policy),
            windows,
            budgets,
            concurrency: policy.concurrency,
            leases_at: at,
            inline_leases,
            words: at + 2 * inline_leases,
            periods: Mutex::new(vec![(i64::MAX, i64::MIN); policy.budgets.len()]),
        }
    }

    /// Was this plan built for `policy`?
    pub(super) fn is_for(&self, policy: &Arc<KeyPolicy>) -> bool {
        std::ptr::eq(self.policy.as_ptr(), Arc::as_ptr(policy))
    }

    /// Is the policy still held by anyone other than plans?
    pub(super) fn is_live(&self) -> bool {
        self.policy.strong_count() > 0
    }

    /// The period of budget `i` containing `now`, as `(start_ms, end_ms)`; a total budget
    /// (or a time chrono cannot place) is `(i64::MIN, i64::MAX)`.
    pub(super) fn period(&self, i: usize, now: i64, policy: &KeyPolicy) -> (i64, i64) {
        let mut periods = self.periods.lock();
        let Some(cached) = periods.get_mut(i) else {
            return (i64::MIN, i64::MAX);
        };
        if now >= cached.0 && now < cached.1 {
            return *cached;
        }
        let (Some(b), Some(now_dt)) = (
            self.budgets.get(i),
            chrono::DateTime::from_timestamp_millis(now),
        ) else {
            return (i64::MIN, i64::MAX);
        };
        let schedule = &policy.budget_schedule;
        *cached = match (
            schedule.period_start(b.period, now_dt),
            schedule.period_end(b.period, now_dt),
        ) {
            (Some(s), Some(e)) => (s.timestamp_millis(), e.timestamp_millis()),
            _ => (i64::MIN, i64::MAX),
        };
        *cached
    }
}
