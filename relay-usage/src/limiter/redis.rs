//! Redis limiter: limits shared by every gateway instance.
//!
//! Each admission is one `EVALSHA` of `admit.lua` and each settlement one of `settle.lua`,
//! so check and increment can never interleave with another instance's.
//!
//! ## Data layout
//!
//! A key's whole state (every window's two buckets, every budget's period and spend, and
//! its live leases) is **one Redis string**: a flat msgpack array that the scripts decode and
//! encode with Redis's built-in `cmsgpack`. Each script therefore runs exactly two commands
//! (`GET`, then `SET` with the expiry inline), and builds no strings in Lua: the first
//! version of these scripts used a hash with a field per counter plus a sorted set of
//! leases, and spent most of its time formatting field names and in eight commands; see
//! the README for the measured difference. The key is `{prefix}:rl:{<key id>}`, its hash
//! tag the key id, so the scripts run unchanged on Redis Cluster. Lease ids are 52 bits of
//! the request id (exact in Lua's doubles).
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
    cost_units, lease_id, static_checks, AdmissionRequest, Denial, Limiter, LimiterError,
    SettleOutcome, Ticket, WindowCap,
};

const ADMIT: &str = include_str!("redis/admit.lua");
const SETTLE: &str = include_str!("redis/settle.lua");
const HEARTBEAT: &str = include_str!("redis/heartbeat.lua");
const IN_FLIGHT: &str = include_str!("redis/in_flight.lua");

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
    in_flight: Arc<Script>,
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

fn period_code(p: BudgetPeriod) -> u8 {
    match p {
        BudgetPeriod::Daily => 1,
        BudgetPeriod::Weekly => 2,
        BudgetPeriod::Monthly => 3,
        BudgetPeriod::Total => 4,
    }
}

/// Encode a flat array of integers as msgpack: the scripts' single argument, decoded by
/// Redis's C `cmsgpack` instead of one Lua string and `tonumber` per value.
fn msgpack_ints(values: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + values.len() * 9);
    match u16::try_from(values.len()) {
        Ok(n) if n < 16 => out.push(0x90 | u8::try_from(n).unwrap_or(0)),
        Ok(n) => {
            out.push(0xdc);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => {
            out.push(0xdd);
            out.extend_from_slice(
                &u32::try_from(values.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
        }
    }
    for &v in values {
        if (0..=127).contains(&v) {
            out.push(u8::try_from(v).unwrap_or(0));
        } else if (-32..0).contains(&v) {
            out.push(0xe0 | u8::try_from(v + 32).unwrap_or(0));
        } else {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
            in_flight: Arc::new(Script::new(IN_FLIGHT)),
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

    /// The Redis key holding `key`'s state (for tests and tooling).
    pub fn redis_key(&self, key: &ApiKeyId) -> String {
        format!("{}:rl:{{{}}}", self.prefix, key)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, LimiterError> {
        let mut conn = self.conn.clone();
        let deadline = tokio::time::Instant::now() + self.timeout;
        // `invoke_async` loads the script on NOSCRIPT and retries once; a `SCRIPT FLUSH`
        // landing between that load and the retry (or a failover to a replica without the
        // script) gets two more tries. Scripts are idempotent until they run, so retrying
        // a NOSCRIPT is safe.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match tokio::time::timeout_at(deadline, inv.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if e.kind() == redis::ErrorKind::NoScriptError && attempts < 3 => {}
                Ok(Err(e)) => return Err(LimiterError::Unavailable(e.to_string())),
                Err(_) => {
                    return Err(LimiterError::Unavailable(format!(
                        "redis did not answer within {:?}",
                        self.timeout
                    )))
                }
            }
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
                return 0;
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
        let opt = |v: Option<u64>| v.map_or(-1, int);
        let mut args =
            Vec::with_capacity(10 + 4 * (policy.rate_windows.len() + policy.budgets.len()));
        args.extend([
            now,
            self.lease_ttl_ms,
            int(lease_id(req.request_id)),
            i64::from(policy.concurrency.unwrap_or(0)),
            int(tokens),
            int(cost),
            self.expire_ms(policy, now),
            int(policy.rate_windows.len() as u64),
        ]);
        for w in &policy.rate_windows {
            args.extend([
                window_ms(w),
                opt(w.max_requests),
                opt(w.max_tokens),
                opt(w.max_cost.map(|m| cost_units(m.amount()))),
            ]);
        }
        args.push(int(policy.budgets.len() as u64));
        for b in &policy.budgets {
            let (start, end) = period_bounds(policy, b.period, now);
            args.extend([
                i64::from(period_code(b.period)),
                start,
                end,
                int(cost_units(b.cap.amount())),
            ]);
        }
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.redis_key(req.key)).arg(msgpack_ints(&args));
        let ticket = Ticket::reserve(req, now, tokens, cost);
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
        let mut args = vec![
            self.clock.now_millis(),
            int(lease_id(&ticket.request_id)),
            ticket.admitted_at_ms,
            delta(tokens, ticket.reserved_tokens),
            delta(cost_units, ticket.reserved_cost_units),
            int(policy.budgets.len() as u64),
        ];
        for b in &policy.budgets {
            let (start, _) = period_bounds(policy, b.period, ticket.admitted_at_ms);
            args.extend([i64::from(period_code(b.period)), start]);
        }
        let mut inv = self.settle.prepare_invoke();
        inv.key(self.redis_key(&ticket.key))
            .arg(msgpack_ints(&args));
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
        let mut inv = self.heartbeat.prepare_invoke();
        inv.key(self.redis_key(&ticket.key))
            .arg(self.clock.now_millis())
            .arg(self.lease_ttl_ms)
            .arg(lease_id(&ticket.request_id));
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn in_flight(&self, key: &ApiKeyId) -> Result<u32, LimiterError> {
        let mut inv = self.in_flight.prepare_invoke();
        inv.key(self.redis_key(key)).arg(self.clock.now_millis());
        self.run::<u32>(inv).await
    }
}
