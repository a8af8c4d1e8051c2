//! In-memory limiter: one process, no shared state.
//!
//! Keys live in a sharded map ([`DashMap`]): an admission locks one shard for a few hundred
//! nanoseconds and never across an `.await` (the trait methods do their work synchronously
//! before returning), so there is no global lock on the hot path. The map is keyed by the
//! API key id's 128 random bits, passed through as the hash (see `key.rs`).
//!
//! Each policy is laid out once in a shared plan (`plan.rs`): its caps in counting units,
//! the kinds each window counts (only capped ones), and the current budget periods, so the
//! timezone arithmetic runs once per period and policy rather than per key or request. A
//! key holds the plan and its counters in one allocation sized by it (`state.rs`).
//!
//! ## Memory
//!
//! A tracked key with the benchmark's full policy (a 60 s window capping requests and
//! tokens, a 1 h window capping cost, a daily and a monthly budget, concurrency 8) takes
//! 279 bytes, measured over 1M keys by the `limiter_footprint` bench (resident set size
//! before and after; 701 bytes with the earlier layout of four allocations per key). It
//! is the map slot (56 bytes: the id's 128 bits, the shared plan, the last-seen time, the
//! counters and the lease overflow pointer), which at 1M keys, just past one of the hash
//! table's power-of-two growth steps, sits in a half-empty table (about 120 bytes per key),
//! and one 160-byte allocation for 18 counter words: 5 and 3 for the windows (the bucket,
//! then the previous and current count of each capped kind; uncapped kinds are not
//! counted), 3 per budget (period start, end, spend) and 2 per inline lease slot (two
//! slots; more leases go to a vector allocated only while they exist). At 100k keys the
//! table is fuller and a key takes about 240 bytes. Caps, layout and budget periods live
//! once per policy.
//!
//! [`MemoryLimiter::sweep`] drops keys idle for longer than the idle TTL whose windows
//! have aged out and which hold no lease and no unexpired budget spend;
//! [`MemoryLimiter::spawn_sweeper`] runs it periodically. Spend against a `total` budget is
//! kept while the process lives: for durable totals use the Redis limiter, or seed from the
//! ledger.

mod key;
mod plan;
mod state;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use relay_core::{ApiKeyId, KeyPolicy, SharedClock};

use self::key::{lease_bits, BuildKeyHasher, KeyBits};
use self::plan::Plan;
use self::state::KeyState;
use super::window::{delta, units_of};
use super::{
    static_checks, AdmissionRequest, Counts, Denial, Limiter, LimiterError, SettleOutcome, Ticket,
};

/// Lease lifetime without a heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(120);
/// How long a key may stay idle before [`MemoryLimiter::sweep`] may drop it.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(3600);

/// Shards of the key map: enough that two threads rarely want the same one.
const SHARDS: usize = 64;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The in-memory [`Limiter`].
#[derive(Debug)]
pub struct MemoryLimiter {
    clock: SharedClock,
    keys: DashMap<KeyBits, KeyState, BuildKeyHasher>,
    /// Plans by the address of their policy (held alive by the plan's `Weak`).
    plans: DashMap<usize, Arc<Plan>, foldhash::fast::RandomState>,
    lease_ttl_ms: i64,
    idle_ttl_ms: i64,
}

impl MemoryLimiter {
    /// A limiter reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            keys: DashMap::with_hasher_and_shard_amount(BuildKeyHasher::default(), SHARDS),
            plans: DashMap::default(),
            lease_ttl_ms: millis(DEFAULT_LEASE_TTL),
            idle_ttl_ms: millis(DEFAULT_IDLE_TTL),
        }
    }

    /// Lease lifetime without a heartbeat.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl_ms = millis(ttl).max(1);
        self
    }

    /// How long a key may stay idle before a sweep may drop it.
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl_ms = millis(ttl);
        self
    }

    /// Number of keys tracked.
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    /// The shared plan of `policy`, built on first use.
    fn plan_for(&self, policy: &Arc<KeyPolicy>) -> Arc<Plan> {
        let addr = Arc::as_ptr(policy) as usize;
        if let Some(plan) = self.plans.get(&addr) {
            if plan.is_for(policy) {
                return Arc::clone(&plan);
            }
        }
        let plan = Arc::new(Plan::new(policy));
        self.plans.insert(addr, Arc::clone(&plan));
        plan
    }

    /// Drop idle keys that hold nothing worth keeping, and plans of policies no longer in
    /// use. Returns how many keys were dropped.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_millis();
        let before = self.keys.len();
        self.keys.retain(|_, s| {
            let idle = now - s.last_seen_ms > self.idle_ttl_ms;
            !(s.is_empty(now) && idle)
        });
        self.plans.retain(|_, p| p.is_live());
        before - self.keys.len()
    }

    /// Run [`sweep`](Self::sweep) every `every` on the current Tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                limiter.sweep();
            }
        })
    }

    /// Admit synchronously (what [`Limiter::admit`] does, without the future).
    pub fn admit_now(&self, req: &AdmissionRequest<'_>) -> Result<Ticket, Denial> {
        static_checks(req)?;
        let now = self.clock.now_millis();
        let policy = req.policy;
        let add = Counts {
            requests: 1,
            tokens: req.estimated_tokens,
            cost: units_of(req.estimated_cost),
        };
        let bits = KeyBits::of(req.key);
        let mut entry = match self.keys.get_mut(&bits) {
            Some(e) => e,
            None => {
                let plan = self.plan_for(policy);
                self.keys
                    .entry(bits)
                    .or_insert_with(|| KeyState::new(plan, now))
            }
        };
        let state = entry.value_mut();
        if !state.plan.is_for(policy) {
            state.replan(&self.plan_for(policy), now);
        }
        state.last_seen_ms = now;
        let (live, soonest) = state.count_leases(now);
        if let Some(limit) = state.plan.concurrency {
            if live >= usize::try_from(limit).unwrap_or(usize::MAX) {
                let wait = if live == 0 { 1 } else { soonest - now };
                return Err(Denial::Concurrency {
                    limit,
                    retry_after: Duration::from_millis(
                        u64::try_from(wait.clamp(1, 1000)).unwrap_or(1000),
                    ),
                });
            }
        }
        state.try_add(policy, now, &add)?;
        state.push_lease((lease_bits(req.request_id), now + self.lease_ttl_ms), now);
        drop(entry);
        Ok(Ticket::reserve(req, now, add.tokens, add.cost))
    }

    /// Settle synchronously (what [`Limiter::settle`] does, without the future).
    pub fn settle_now(&self, ticket: &Ticket, tokens: u64, cost_units: u64) -> SettleOutcome {
        let now = self.clock.now_millis();
        let Some(mut entry) = self.keys.get_mut(&KeyBits::of(&ticket.key)) else {
            return SettleOutcome::NotFound;
        };
        let state = entry.value_mut();
        match state.take_lease(lease_bits(&ticket.request_id)) {
            Some(expiry) if expiry > now => {}
            _ => return SettleOutcome::NotFound,
        }
        state.adjust(
            ticket.admitted_at_ms,
            delta(tokens, ticket.reserved_tokens),
            delta(cost_units, ticket.reserved_cost_units),
        );
        SettleOutcome::Settled
    }

    fn heartbeat_now(&self, ticket: &Ticket) -> bool {
        let now = self.clock.now_millis();
        let Some(mut entry) = self.keys.get_mut(&KeyBits::of(&ticket.key)) else {
            return false;
        };
        entry.extend_lease(lease_bits(&ticket.request_id), now, now + self.lease_ttl_ms)
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn admit(
        &self,
        request: &AdmissionRequest<'_>,
    ) -> Result<Result<Ticket, Denial>, LimiterError> {
        Ok(self.admit_now(request))
    }

    async fn settle(
        &self,
        ticket: &Ticket,
        tokens: u64,
        cost_units: u64,
    ) -> Result<SettleOutcome, LimiterError> {
        Ok(self.settle_now(ticket, tokens, cost_units))
    }

    async fn heartbeat(&self, ticket: &Ticket) -> Result<bool, LimiterError> {
        Ok(self.heartbeat_now(ticket))
    }

    async fn in_flight(&self, key: &ApiKeyId) -> Result<u32, LimiterError> {
        let now = self.clock.now_millis();
        Ok(self.keys.get_mut(&KeyBits::of(key)).map_or(0, |mut s| {
            u32::try_from(s.count_leases(now).0).unwrap_or(u32::MAX)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use relay_core::{
        Budget, BudgetPeriod, Currency, ManualClock, Money, RateWindow, RequestId, Service,
    };
    use rust_decimal::Decimal;

    #[test]
    fn idle_keys_are_swept_but_not_those_holding_leases_or_spend() {
        let clock = ManualClock::new(
            Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0)
                .single()
                .unwrap_or_default(),
        );
        let limiter = MemoryLimiter::new(Arc::new(clock.clone()))
            .with_idle_ttl(Duration::from_secs(600))
            // Long enough that the held lease outlives the test.
            .with_lease_ttl(Duration::from_secs(3 * 86_400));
        let windowed = Arc::new(KeyPolicy {
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(10),
                max_tokens: None,
                max_cost: None,
            }],
            ..KeyPolicy::default()
        });
        let budgeted = Arc::new(KeyPolicy {
            budgets: vec![Budget {
                period: BudgetPeriod::Daily,
                cap: Money::new(Decimal::TEN, Currency::USD),
            }],
            ..KeyPolicy::default()
        });
        let admit = |key: &ApiKeyId, policy: &Arc<KeyPolicy>, cost: Decimal| {
            let rid = RequestId::new();
            let req = AdmissionRequest {
                key,
                policy,
                service: Service::Openai,
                model: "m",
                user_agent: None,
                ip: None,
                estimated_tokens: 0,
                estimated_cost: cost,
                min_cost: Decimal::ZERO,
                request_id: &rid,
            };
            limiter.admit_now(&req).expect("admitted")
        };
        let (idle, leased, spent) = (ApiKeyId::new(), ApiKeyId::new(), ApiKeyId::new());
        let t = admit(&idle, &windowed, Decimal::ZERO);
        assert_eq!(limiter.settle_now(&t, 0, 0), SettleOutcome::Settled);
        let _held = admit(&leased, &windowed, Decimal::ZERO);
        let t = admit(&spent, &budgeted, Decimal::ONE);
        limiter.settle_now(&t, 0, crate::limiter::cost_units(Decimal::ONE));
        assert_eq!(limiter.sweep(), 0, "nothing is idle yet");
        clock.advance(chrono::Duration::minutes(11));
        assert_eq!(limiter.sweep(), 1);
        assert_eq!(limiter.tracked_keys(), 2);
        // The next day the spend belongs to a past period and may go.
        clock.advance(chrono::Duration::hours(14));
        assert_eq!(limiter.sweep(), 1);
        assert_eq!(limiter.tracked_keys(), 1);
    }

    fn request<'a>(
        key: &'a ApiKeyId,
        policy: &'a Arc<KeyPolicy>,
        rid: &'a RequestId,
    ) -> AdmissionRequest<'a> {
        AdmissionRequest {
            key,
            policy,
            service: Service::Openai,
            model: "m",
            user_agent: None,
            ip: None,
            estimated_tokens: 0,
            estimated_cost: Decimal::ZERO,
            min_cost: Decimal::ZERO,
            request_id: rid,
        }
    }

    #[tokio::test]
    async fn leases_beyond_the_inline_slots_spill_and_are_released() {
        let clock = ManualClock::new(
            Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0)
                .single()
                .unwrap_or_default(),
        );
        let limiter =
            MemoryLimiter::new(Arc::new(clock.clone())).with_lease_ttl(Duration::from_secs(60));
        for concurrency in [None, Some(5)] {
            let policy = Arc::new(KeyPolicy {
                concurrency,
                ..KeyPolicy::default()
            });
            let key = ApiKeyId::new();
            let rids: Vec<RequestId> = (0..6).map(|_| RequestId::new()).collect();
            let mut tickets = Vec::new();
            for rid in &rids[..5] {
                tickets.push(
                    limiter
                        .admit_now(&request(&key, &policy, rid))
                        .expect("room"),
                );
            }
            assert_eq!(limiter.in_flight(&key).await.ok(), Some(5));
            let sixth = limiter.admit_now(&request(&key, &policy, &rids[5]));
            assert_eq!(sixth.is_err(), concurrency.is_some(), "{concurrency:?}");
            if let Ok(t) = sixth {
                tickets.push(t);
            }
            // A spilled lease is extended like an inline one.
            let last = tickets.last().expect("admitted");
            clock.advance(chrono::Duration::seconds(40));
            assert!(limiter.heartbeat_now(last));
            clock.advance(chrono::Duration::seconds(30));
            // Every other lease expired (70 s > 60 s): settling them changes nothing.
            let (last, expired) = tickets.split_last().expect("admitted");
            for t in expired {
                assert_eq!(limiter.settle_now(t, 0, 0), SettleOutcome::NotFound);
            }
            assert_eq!(limiter.in_flight(&key).await.ok(), Some(1));
            assert_eq!(limiter.settle_now(last, 0, 0), SettleOutcome::Settled);
            assert_eq!(limiter.settle_now(last, 0, 0), SettleOutcome::NotFound);
            assert_eq!(limiter.in_flight(&key).await.ok(), Some(0));
        }
    }

    #[test]
    fn keys_of_one_policy_share_its_plan_until_it_is_dropped() {
        let clock = ManualClock::new(
            Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0)
                .single()
                .unwrap_or_default(),
        );
        let limiter = MemoryLimiter::new(Arc::new(clock.clone())).with_idle_ttl(Duration::ZERO);
        let policy = Arc::new(KeyPolicy::default());
        let keys: Vec<ApiKeyId> = (0..3).map(|_| ApiKeyId::new()).collect();
        for key in &keys {
            let rid = RequestId::new();
            let t = limiter
                .admit_now(&request(key, &policy, &rid))
                .expect("admitted");
            limiter.settle_now(&t, 0, 0);
        }
        assert_eq!(limiter.plans.len(), 1);
        let plan = limiter.plans.iter().next().map(|p| Arc::clone(p.value()));
        // The map's entry and the three keys.
        assert_eq!(plan.as_ref().map(Arc::strong_count), Some(5));
        drop(plan);
        drop(policy);
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(limiter.sweep(), 3);
        assert_eq!(limiter.plans.len(), 0, "a dropped policy's plan goes too");
    }
}
