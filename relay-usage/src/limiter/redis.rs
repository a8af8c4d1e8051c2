//! Redis limiter: limits shared by every gateway instance.
//!
//! Each admission is one `EVALSHA` of `admit.lua` and each settlement one of `settle.lua`,
//! so check and increment can never interleave with another instance's. A key's state is two
//! Redis keys sharing the hash tag `{<key id>}` (so the scripts run unchanged on Redis
//! Cluster): one hash holding every window and budget counter (seven fields per window,
//! two per budget) and one sorted set of leases scored by expiry. One `HMGET` and one `HSET`
//! move all counters, instead of a command per counter.
//!
//! Time comes from the caller's [`Clock`](relay_core::Clock), so instances should run NTP;
//! a lagging instance's older budget period never resets a newer one's spend.
//!
//! `NOSCRIPT` (after a Redis restart or `SCRIPT FLUSH`) is handled by loading the script and
//! retrying. Every call has a timeout; when Redis cannot be reached the limiter either fails
//! closed ([`LimiterError::Unavailable`], which the policy layer answers with 503) or, when
//! configured with [`FailMode::Open`], admits and logs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;
use relay_core::{ApiKeyId, BudgetPeriod, KeyPolicy, SharedClock};

use super::window::{delta, window_ms};
use super::{
    cost_units, static_checks, AdmissionRequest, Denial, Limiter, LimiterError, SettleOutcome,
    Ticket, WindowCap,
};

const ADMIT: &str = include_str!("redis/admit.lua");
const SETTLE: &str = include_str!("redis/settle.lua");
const HEARTBEAT: &str = include_str!("redis/heartbeat.lua");

/// What to do when Redis cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Refuse requests (the policy layer answers 503). The safe default for paid access.
    #[default]
    Closed,
    /// Admit requests without counting them, and log a warning.
    Open,
}

/// The Redis [`Limiter`].
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    clock: SharedClock,
    prefix: Arc<str>,
    lease_ttl_ms: i64,
    timeout: Duration,
    fail_mode: FailMode,
    admit: Arc<Script>,
    settle: Arc<Script>,
    heartbeat: Arc<Script>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("timeout", &self.timeout)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn period_tag(p: BudgetPeriod) -> &'static str {
    match p {
        BudgetPeriod::Daily => "d",
        BudgetPeriod::Weekly => "w",
        BudgetPeriod::Monthly => "m",
        BudgetPeriod::Total => "t",
    }
}

/// (start, end) of the budget period containing `at`; a total budget is (0, -1).
fn period_bounds(policy: &KeyPolicy, period: BudgetPeriod, at: i64) -> (i64, i64) {
    let Some(at) = chrono::DateTime::from_timestamp_millis(at) else {
        return (0, -1);
    };
    let s = &policy.budget_schedule;
    match (s.period_start(period, at), s.period_end(period, at)) {
        (Some(start), Some(end)) => (start.timestamp_millis(), end.timestamp_millis()),
        _ => (0, -1),
    }
}

impl RedisLimiter {
    /// A limiter on an open connection manager.
    pub fn new(conn: ConnectionManager, clock: SharedClock) -> Self {
        Self {
            conn,
            clock,
            prefix: Arc::from("relay"),
            lease_ttl_ms: millis(super::memory::DEFAULT_LEASE_TTL),
            timeout: Duration::from_millis(250),
            fail_mode: FailMode::Closed,
            admit: Arc::new(Script::new(ADMIT)),
            settle: Arc::new(Script::new(SETTLE)),
            heartbeat: Arc::new(Script::new(HEARTBEAT)),
        }
    }

    /// Connect to `url` (`redis://host:port`).
    pub async fn connect(url: &str, clock: SharedClock) -> Result<Self, LimiterError> {
        let client =
            redis::Client::open(url).map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        Ok(Self::new(conn, clock))
    }

    /// Prefix of every Redis key (default `relay`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Lease lifetime without a heartbeat.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl_ms = millis(ttl).max(1);
        self
    }

    /// Timeout of each Redis call (default 250 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fail closed (default) or open when Redis is unreachable.
    pub fn with_fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    fn keys(&self, key: &ApiKeyId) -> (String, String) {
        let counters = format!("{}:rl:{{{}}}", self.prefix, key);
        let leases = format!("{counters}:l");
        (counters, leases)
    }

    /// The Redis keys holding `key`'s counters and leases (for tests and tooling).
    pub fn redis_keys(&self, key: &ApiKeyId) -> (String, String) {
        self.keys(key)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, LimiterError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LimiterError::Unavailable(e.to_string())),
            Err(_) => Err(LimiterError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn expire_ms(&self, policy: &KeyPolicy, now: i64) -> i64 {
        let mut expire = policy
            .rate_windows
            .iter()
            .map(|w| window_ms(w).saturating_mul(2))
            .max()
            .unwrap_or(0);
        for b in &policy.budgets {
            let (_, end) = period_bounds(policy, b.period, now);
            if end < 0 {
                return -1;
            }
            expire = expire.max(end - now + 1000);
        }
        expire.max(1)
    }
}

fn denial(policy: &KeyPolicy, r: &[i64]) -> Result<Denial, LimiterError> {
    let get = |i: usize| r.get(i).copied().unwrap_or(0);
    let idx = usize::try_from(get(2) - 1).unwrap_or(usize::MAX);
    let wait = Duration::from_millis(u64::try_from(get(4)).unwrap_or(0));
    match get(1) {
        1 => Ok(Denial::Concurrency {
            limit: u32::try_from(get(2)).unwrap_or(u32::MAX),
            retry_after: wait,
        }),
        2 => {
            let w = policy
                .rate_windows
                .get(idx)
                .ok_or_else(|| LimiterError::Unavailable("bad script reply".into()))?;
            let cap = match get(3) {
                1 => WindowCap::Requests,
                2 => WindowCap::Tokens,
                _ => WindowCap::Cost,
            };
            Ok(Denial::RateLimited {
                window_secs: w.window_secs,
                cap,
                retry_after: wait,
            })
        }
        _ => {
            let b = policy
                .budgets
                .get(idx)
                .ok_or_else(|| LimiterError::Unavailable("bad script reply".into()))?;
            Ok(Denial::Budget {
                period: b.period,
                retry_after: (get(4) >= 0).then_some(wait),
            })
        }
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(
        &self,
        req: &AdmissionRequest<'_>,
    ) -> Result<Result<Ticket, Denial>, LimiterError> {
        if let Err(d) = static_checks(req) {
            return Ok(Err(d));
        }
        let policy = req.policy;
        let now = self.clock.now_millis();
        let tokens = req.estimated_tokens;
        let cost = cost_units(req.estimated_cost);
        let (h, l) = self.keys(req.key);
        let mut inv = self.admit.prepare_invoke();
        inv.key(&h).key(&l);
        inv.arg(now)
            .arg(self.lease_ttl_ms)
            .arg(req.request_id.as_str())
            .arg(policy.concurrency.unwrap_or(0))
            .arg(tokens)
            .arg(cost)
            .arg(self.expire_ms(policy, now))
            .arg(policy.rate_windows.len());
        for w in &policy.rate_windows {
            let opt = |v: Option<u64>| v.map_or(-1i128, i128::from);
            inv.arg(window_ms(w))
                .arg(opt(w.max_requests).to_string())
                .arg(opt(w.max_tokens).to_string())
                .arg(opt(w.max_cost.map(|m| cost_units(m.amount()))).to_string());
        }
        inv.arg(policy.budgets.len());
        for b in &policy.budgets {
            let (start, end) = period_bounds(policy, b.period, now);
            inv.arg(period_tag(b.period))
                .arg(start)
                .arg(end)
                .arg(cost_units(b.cap.amount()));
        }
        let ticket = Ticket {
            key: req.key.clone(),
            request_id: req.request_id.clone(),
            policy: Arc::clone(policy),
            admitted_at_ms: now,
            reserved_tokens: tokens,
            reserved_cost_units: cost,
        };
        match self.run::<Vec<i64>>(inv).await {
            Ok(r) if r.first() == Some(&1) => Ok(Ok(ticket)),
            Ok(r) => Ok(Err(denial(policy, &r)?)),
            Err(e) if self.fail_mode == FailMode::Open => {
                tracing::warn!(error = %e, "redis limiter unavailable; failing open");
                Ok(Ok(ticket))
            }
            Err(e) => Err(e),
        }
    }

    async fn settle(
        &self,
        ticket: &Ticket,
        tokens: u64,
        cost_units: u64,
    ) -> Result<SettleOutcome, LimiterError> {
        let policy = &ticket.policy;
        let (h, l) = self.keys(&ticket.key);
        let mut inv = self.settle.prepare_invoke();
        inv.key(&h).key(&l);
        inv.arg(self.clock.now_millis())
            .arg(ticket.request_id.as_str())
            .arg(ticket.admitted_at_ms)
            .arg(delta(tokens, ticket.reserved_tokens))
            .arg(delta(cost_units, ticket.reserved_cost_units))
            .arg(policy.rate_windows.len());
        for w in &policy.rate_windows {
            inv.arg(window_ms(w));
        }
        inv.arg(policy.budgets.len());
        for b in &policy.budgets {
            let (start, _) = period_bounds(policy, b.period, ticket.admitted_at_ms);
            inv.arg(period_tag(b.period)).arg(start);
        }
        match self.run::<i64>(inv).await {
            Ok(1) => Ok(SettleOutcome::Settled),
            Ok(_) => Ok(SettleOutcome::NotFound),
            Err(e) if self.fail_mode == FailMode::Open => {
                tracing::warn!(error = %e, "redis limiter unavailable; settlement dropped");
                Ok(SettleOutcome::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    async fn heartbeat(&self, ticket: &Ticket) -> Result<bool, LimiterError> {
        let (_, l) = self.keys(&ticket.key);
        let mut inv = self.heartbeat.prepare_invoke();
        inv.key(&l)
            .arg(self.clock.now_millis())
            .arg(self.lease_ttl_ms)
            .arg(ticket.request_id.as_str());
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn in_flight(&self, key: &ApiKeyId) -> Result<u32, LimiterError> {
        let (_, l) = self.keys(key);
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZCOUNT");
        cmd.arg(&l)
            .arg(format!("({}", self.clock.now_millis()))
            .arg("+inf");
        let fut = cmd.query_async::<u32>(&mut conn);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(LimiterError::Unavailable(e.to_string())),
            Err(_) => Err(LimiterError::Unavailable("redis timeout".into())),
        }
    }
}
