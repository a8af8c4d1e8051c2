//! Redis limiter: limits shared by every gateway instance.
//!
//! Each admission is one `EVALSHA` of the admission script generated for the policy's
//! shape, so check and increment can never interleave with another instance's. Each
//! settlement is one plain `APPEND` of a 32-byte settlement note, which the key's next
//! admission applies exactly once (a duplicate or late settlement is ignored then), so
//! [`Limiter::settle`] answers [`SettleOutcome::Queued`].
//!
//! ## Data layout
//!
//! A key's whole state (every window's two buckets, every budget's period and spend, and
//! its lease records) is **one Redis string** of little-endian doubles, at
//! `{prefix}:rl:{<key id>}` (the hash tag is the key id, so the scripts run unchanged on
//! Redis Cluster). The admission script is generated per shape of policy and keeps every
//! value in a Lua local; settlement notes are appended to the same string, and the next
//! admission folds them in. The layout, and why it is laid out so, are documented in
//! `limiter/redis/shape.rs`. Each admission runs two commands (`GET`, then `SETRANGE` of
//! the counters or `SET` of the whole state), each settlement one (`APPEND`): at most four
//! commands per relayed request, heartbeats of long streams aside; see the README for the
//! measured cost against a raw one-`INCR` script. Lease ids are 52 bits of the request id
//! (exact in Lua's doubles).
//!
//! Limits of this backend: at most 8 rate windows and 8 budgets per policy (more is
//! refused as [`LimiterError::Unavailable`]); a window counts only the dimensions it caps,
//! so a cap added to an existing window counts from the change on; a settlement of a
//! request admitted under an earlier policy corrects the budgets whose current period it
//! was admitted in, matched by period rather than by the old policy's list. A state in an
//! unknown format (for example one written by an older version of these scripts) makes
//! the admission fail rather than be misread; a string of settlement notes only (appended
//! after the state expired) is no state.
//!
//! Time comes from the caller's [`Clock`](relay_core::Clock), so instances should run NTP;
//! a lagging instance's older budget period never resets a newer one's spend.
//!
//! `NOSCRIPT` (after a Redis restart or `SCRIPT FLUSH`) is handled by loading the script and
//! retrying. Every call has a timeout; when Redis cannot be reached the limiter either fails
//! closed ([`LimiterError::Unavailable`], which the policy layer answers with 503) or, when
//! configured with [`FailMode::Open`], admits and logs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use relay_core::{ApiKeyId, BudgetPeriod, KeyPolicy, SharedClock};

use super::window::{delta, window_ms};
use super::{
    cost_units, lease_id, static_checks, AdmissionRequest, Denial, Limiter, LimiterError,
    SettleOutcome, Ticket, WindowCap,
};

mod per_thread;
mod shape;

use per_thread::PerThreadConnections;

use shape::Shape;

const DROP_ORPHAN: &str = include_str!("redis/drop_orphan.lua");
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
    /// Set by [`RedisLimiter::with_connection_per_thread`].
    per_thread: Option<PerThreadConnections>,
    clock: SharedClock,
    prefix: Arc<str>,
    lease_ttl_ms: i64,
    timeout: Duration,
    fail_mode: FailMode,
    /// Admission scripts by policy shape (a handful per deployment).
    admit: Arc<RwLock<HashMap<Shape, Arc<Script>>>>,
    drop_orphan: Arc<Script>,
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

/// Little-endian doubles: the scripts decode them with `struct.unpack` in C. Every value
/// is an integer below 2^53 (counts, nano-units, milliseconds), so the conversion is exact;
/// saturated values beyond that only ever compare as "huge".
fn doubles(values: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for &v in values {
        out.extend_from_slice(&(v as f64).to_le_bytes());
    }
    out
}

/// Bytes of a settlement note (four doubles).
const NOTE_BYTES: u64 = 32;

/// How a lease id is stored in its record: negative, so it never equals a counter.
fn stored_lease_id(id: u64) -> i64 {
    -2 - int(id)
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
            per_thread: None,
            clock,
            prefix: Arc::from("relay"),
            lease_ttl_ms: millis(super::memory::DEFAULT_LEASE_TTL),
            timeout: Duration::from_millis(250),
            fail_mode: FailMode::Closed,
            admit: Arc::new(RwLock::new(HashMap::new())),
            drop_orphan: Arc::new(Script::new(DROP_ORPHAN)),
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

    /// Open a connection per calling thread (on first use, on that thread's runtime) from
    /// `client`, and use the shared one only when that fails. For servers that run a
    /// single-threaded runtime per thread: a command on the shared connection goes through
    /// the thread driving it and back. Costs one connection per thread per limiter.
    pub fn with_connection_per_thread(mut self, client: redis::Client) -> Self {
        self.per_thread = Some(PerThreadConnections::new(client));
        self
    }

    /// The connection for this call: this thread's own when so configured.
    async fn connection(&self) -> ConnectionManager {
        if let Some(per_thread) = &self.per_thread {
            if let Some(conn) = per_thread.get(self.timeout).await {
                return conn;
            }
        }
        self.conn.clone()
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
        let mut conn = self.connection().await;
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

    /// One plain command, with the call timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LimiterError> {
        let mut conn = self.connection().await;
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LimiterError::Unavailable(e.to_string())),
            Err(_) => Err(LimiterError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// How long the key must live after an admission at `now` (0 = forever): two of the
    /// longest window, the current budget periods, and twice the lease TTL.
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
        expire.max(self.lease_ttl_ms.saturating_mul(2))
    }

    /// The admission script for `shape`, generated once.
    fn admit_script(&self, shape: &Shape) -> Arc<Script> {
        if let Some(s) = self.admit.read().get(shape) {
            return Arc::clone(s);
        }
        let script = Arc::new(Script::new(&shape.admit_script()));
        self.admit
            .write()
            .entry(shape.clone())
            .or_insert(script)
            .clone()
    }
}

fn bad_reply() -> LimiterError {
    LimiterError::Unavailable("unexpected reply from the admission script".into())
}

fn denial(policy: &KeyPolicy, r: &[i64], now: i64) -> Result<Denial, LimiterError> {
    let get = |i: usize| r.get(i).copied().unwrap_or(0);
    let idx = usize::try_from(get(2) - 1).unwrap_or(usize::MAX);
    let wait = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    match get(1) {
        1 => Ok(Denial::Concurrency {
            limit: u32::try_from(get(2)).unwrap_or(u32::MAX),
            retry_after: wait(get(4)),
        }),
        2 => {
            let w = policy.rate_windows.get(idx).ok_or_else(bad_reply)?;
            let cap = match get(3) {
                1 => WindowCap::Requests,
                2 => WindowCap::Tokens,
                _ => WindowCap::Cost,
            };
            Ok(Denial::RateLimited {
                window_secs: w.window_secs,
                cap,
                retry_after: wait(get(4)),
            })
        }
        3 => {
            let b = policy.budgets.get(idx).ok_or_else(bad_reply)?;
            let (_, end) = period_bounds(policy, b.period, now);
            Ok(Denial::Budget {
                period: b.period,
                retry_after: (end >= 0).then(|| wait(end - now)),
            })
        }
        _ => Err(bad_reply()),
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
        let shape = Shape::of(policy).ok_or_else(|| {
            LimiterError::Unavailable(format!(
                "the Redis limiter supports at most {} rate windows and {} budgets per policy",
                shape::MAX_WINDOWS,
                shape::MAX_BUDGETS
            ))
        })?;
        let now = self.clock.now_millis();
        let tokens = req.estimated_tokens;
        let cost = cost_units(req.estimated_cost);
        let opt = |v: Option<u64>| v.map_or(-1, int);
        let mut args =
            Vec::with_capacity(7 + 4 * policy.rate_windows.len() + 2 * policy.budgets.len());
        args.extend([
            now,
            now.saturating_add(self.lease_ttl_ms),
            stored_lease_id(lease_id(req.request_id)),
            i64::from(policy.concurrency.unwrap_or(0)),
            int(tokens),
            int(cost),
            self.expire_ms(policy, now),
        ]);
        for w in &policy.rate_windows {
            args.push(window_ms(w));
            // Only the caps the window has: its shape says which.
            for cap in [
                w.max_requests,
                w.max_tokens,
                w.max_cost.map(|m| cost_units(m.amount())),
            ]
            .into_iter()
            .flatten()
            {
                args.push(opt(Some(cap)));
            }
        }
        for b in &policy.budgets {
            let (start, _) = period_bounds(policy, b.period, now);
            args.extend([start, int(cost_units(b.cap.amount()))]);
        }
        let script = self.admit_script(&shape);
        let mut inv = script.prepare_invoke();
        inv.key(self.redis_key(req.key)).arg(doubles(&args));
        let ticket = Ticket::reserve(req, now, tokens, cost);
        match self.run::<Value>(inv).await {
            Ok(Value::Int(1)) => Ok(Ok(ticket)),
            Ok(Value::Array(items)) => {
                let r: Vec<i64> = items
                    .iter()
                    .map(|v| match v {
                        Value::Int(n) => Ok(*n),
                        _ => Err(bad_reply()),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Err(denial(policy, &r, now)?))
            }
            Ok(_) => Err(bad_reply()),
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
        // The note's settle time is negative, which tells it from a live lease's expiry.
        let note = doubles(&[
            stored_lease_id(lease_id(&ticket.request_id)),
            -1 - self.clock.now_millis().max(0),
            delta(tokens, ticket.reserved_tokens),
            delta(cost_units, ticket.reserved_cost_units),
        ]);
        let key = self.redis_key(&ticket.key);
        let mut append = redis::cmd("APPEND");
        append.arg(&key).arg(note);
        match self.query::<u64>(&append).await {
            Ok(len) => {
                if len == NOTE_BYTES {
                    // The key held nothing: the state is gone, so this settlement is late
                    // and ignored anyway. Delete the note rather than leave it without TTL.
                    let mut inv = self.drop_orphan.prepare_invoke();
                    inv.key(&key);
                    if let Err(e) = self.run::<i64>(inv).await {
                        tracing::debug!(error = %e, "could not drop an orphan settlement note");
                    }
                }
                Ok(SettleOutcome::Queued)
            }
            Err(e) if self.fail_mode == FailMode::Open => {
                tracing::warn!(error = %e, "redis limiter unavailable; settlement dropped");
                Ok(SettleOutcome::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    async fn heartbeat(&self, ticket: &Ticket) -> Result<bool, LimiterError> {
        let now = self.clock.now_millis();
        let mut inv = self.heartbeat.prepare_invoke();
        inv.key(self.redis_key(&ticket.key))
            .arg(doubles(&[stored_lease_id(lease_id(&ticket.request_id))]))
            .arg(doubles(&[
                now,
                now.saturating_add(self.lease_ttl_ms),
                self.lease_ttl_ms,
            ]));
        Ok(self.run::<i64>(inv).await? == 1)
    }

    async fn in_flight(&self, key: &ApiKeyId) -> Result<u32, LimiterError> {
        let mut inv = self.in_flight.prepare_invoke();
        inv.key(self.redis_key(key)).arg(self.clock.now_millis());
        self.run::<u32>(inv).await
    }
}
