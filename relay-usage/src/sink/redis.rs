//! Real-time usage aggregates in Redis, shared by every gateway instance.
//!
//! [`RedisUsageAggregates`] counts tokens, requests and cost per API key, user and model,
//! in hourly, daily and monthly buckets (UTC): one Redis hash per (scope, granularity,
//! bucket), with a field per token kind, `req`, and the cost as integer nano-units of its
//! currency (`cost:USD`, ...; see [`cost_units`]: each event's cost is rounded **up** to
//! the nano-unit, so a total is at most one nano-unit per event above the exact sum kept
//! in the SQL records).
//!
//! ## Batching in process
//!
//! `record` does not talk to Redis. It adds the event to in-process sums keyed by Redis
//! hash, and a background task writes the sums every flush interval (1 s by default),
//! sooner when 100 000 events are waiting, as **one `EVALSHA` per flush** (per 400 distinct
//! hashes). Each event touches nine hashes and up to seven fields in each, so one script
//! per event would cost Redis tens of microseconds per request on the same thread that
//! runs every admission; merged sums cost one short script per interval however many
//! requests there were, and scale with the number of distinct keys, users and models
//! active in an interval, not with traffic. The price is that totals lag by up to the
//! flush interval, and that a crashed instance loses at most that much (the SQL records
//! are the truth; these counters are a cache).
//!
//! ## Retries count once
//!
//! Each flush carries a unique id. The script first sets a marker key for it with `SET NX`
//! (kept a day) and applies nothing if the marker exists, so a flush retried after an
//! ambiguous failure (a timeout after Redis ran it) never counts twice. A failed flush is
//! retried with backoff, keeping its id; meanwhile new events keep accumulating, and once
//! 100 000 distinct hashes are waiting, `record` waits for room (back-pressure, never
//! drops). [`RedisUsageAggregates::shutdown`] writes everything, retrying until its
//! deadline.
//!
//! ## Keys
//!
//! `{<prefix>:usage}:agg:<h|d|m>:<bucket>:<k|u|m>:<id>`, e.g.
//! `{relay:usage}:agg:h:2025030913:m:claude-sonnet-4-5`. Every key shares the hash tag
//! `{<prefix>:usage}`, so the script runs unchanged on Redis Cluster (at the cost of
//! keeping one deployment's aggregates in one slot, which the batching keeps cheap).
//! Hashes expire after their retention (default: hourly 8 days, daily 400 days, monthly
//! 5 years), refreshed on each write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Script;
use relay_core::{Currency, Usage};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Granularity, Scope, Totals, UsageEvent, UsageSink};
use crate::limiter::{cost_from_units, cost_units};

const APPLY: &str = r"
-- KEYS[1]: this flush's marker; KEYS[2..]: aggregate hashes.
-- ARGV[1]: marker ttl; then per hash: its ttl, the number of fields n, n field/increment pairs.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local a = 2
for i = 2, #KEYS do
  local ttl = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
return 1
";

/// Token fields of an aggregate hash, in [`Usage`] order, then `req`.
const FIELDS: [&str; 6] = ["in", "out", "cw5m", "cw1h", "cr", "req"];

/// Errors of the Redis aggregates.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// Redis refused or could not be reached in time.
    #[error("redis: {0}")]
    Redis(String),
    /// The caller's input is not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored aggregate could not be read.
    #[error("corrupt aggregate {key}: {detail}")]
    Corrupt {
        /// The Redis key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The aggregates were already shut down.
    #[error("the usage aggregates are shut down")]
    Closed,
    /// Shutdown reached its deadline with sums still unwritten (Redis stayed unreachable).
    #[error("{events} usage events were not added to the Redis aggregates before the deadline")]
    Unflushed {
        /// Events known not to be written yet (those held by a concurrent flush that is
        /// still retrying are not counted).
        events: u64,
    },
}

/// What the aggregates have done since they started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AggregateStats {
    /// Events recorded.
    pub events: u64,
    /// Events whose sums are in Redis.
    pub flushed_events: u64,
    /// Scripts that applied a flush.
    pub flushes: u64,
    /// Script calls, retries included (the round trips).
    pub round_trips: u64,
    /// Failed calls that were retried.
    pub retries: u64,
}

#[derive(Default)]
struct Pending {
    sums: HashMap<String, Sums>,
    events: u64,
}

#[derive(Default, Clone)]
struct Sums {
    ttl_secs: u64,
    counts: [u64; 6],
    /// Nano-units per currency.
    costs: Vec<(Currency, u64)>,
}

impl Sums {
    fn add(&mut self, usage: &Usage, currency: Currency, units: u64) {
        let u = [
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_write_5m_tokens,
            usage.cache_write_1h_tokens,
            usage.cache_read_tokens,
            usage.requests,
        ];
        for (c, v) in self.counts.iter_mut().zip(u) {
            *c = c.saturating_add(v);
        }
        match self.costs.iter_mut().find(|(c, _)| *c == currency) {
            Some((_, total)) => *total = total.saturating_add(units),
            None => self.costs.push((currency, units)),
        }
    }
}

/// One script call's worth of sums, with the id that makes it apply once.
struct Chunk {
    id: String,
    events: u64,
    sums: Vec<(String, Sums)>,
}

struct Inner {
    conn: ConnectionManager,
    base: String,
    currency: Currency,
    retention: [u64; 3],
    flush_interval: Duration,
    flush_events: u64,
    max_pending_hashes: usize,
    chunk_hashes: usize,
    timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
    script: Script,
    pending: Mutex<Pending>,
    /// Chunks taken from `pending` and not yet applied; only the flusher touches it.
    unfinished: tokio::sync::Mutex<Vec<Chunk>>,
    wake_flusher: Notify,
    room: Notify,
    next_chunk: AtomicU64,
    instance: String,
    events: AtomicU64,
    flushed_events: AtomicU64,
    flushes: AtomicU64,
    round_trips: AtomicU64,
    retries: AtomicU64,
}

/// Real-time aggregates in Redis; see the [module docs](self).
///
/// Clones share the sums and the background task.
#[derive(Clone)]
pub struct RedisUsageAggregates {
    inner: Arc<Inner>,
    shutdown: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for RedisUsageAggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsageAggregates")
            .field("base", &self.inner.base)
            .field("flush_interval", &self.inner.flush_interval)
            .finish_non_exhaustive()
    }
}

fn granularity_index(g: Granularity) -> usize {
    match g {
        Granularity::Hourly => 0,
        Granularity::Daily => 1,
        Granularity::Monthly => 2,
    }
}

fn bucket_label(g: Granularity, at: DateTime<Utc>) -> String {
    match g {
        Granularity::Hourly => format!("h:{}", at.format("%Y%m%d%H")),
        Granularity::Daily => format!("d:{}", at.format("%Y%m%d")),
        Granularity::Monthly => format!("m:{}", at.format("%Y%m")),
    }
}

fn scope_label(scope: &Scope) -> (char, &str) {
    match scope {
        Scope::Key(id) => ('k', id),
        Scope::User(id) => ('u', id),
        Scope::Model(id) => ('m', id),
    }
}

/// Settings, with defaults; consumed by [`RedisUsageAggregates::start`].
#[derive(Debug, Clone)]
pub struct AggregatesConfig {
    prefix: String,
    currency: Currency,
    retention: [Duration; 3],
    flush_interval: Duration,
    flush_events: u64,
    max_pending_hashes: usize,
    timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
}

impl Default for AggregatesConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            prefix: "relay".into(),
            currency: Currency::USD,
            retention: [
                Duration::from_secs(8 * DAY),
                Duration::from_secs(400 * DAY),
                Duration::from_secs(5 * 366 * DAY),
            ],
            // The script runs an HINCRBY per field and an EXPIRE per hash (about 45 commands
            // for one key, user and model): every 100 ms that was 0.05 Redis commands per
            // relayed request at 9k requests/s; every second it is 0.005.
            flush_interval: Duration::from_secs(1),
            flush_events: 100_000,
            max_pending_hashes: 100_000,
            timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl AggregatesConfig {
    /// Prefix of every Redis key (default `relay`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The currency [`RedisUsageAggregates::totals`] reports cost in (default USD).
    pub fn with_currency(mut self, currency: Currency) -> Self {
        self.currency = currency;
        self
    }

    /// How long buckets of `granularity` are kept after their last write (at least 1 s).
    pub fn with_retention(mut self, granularity: Granularity, keep: Duration) -> Self {
        self.retention[granularity_index(granularity)] = keep.max(Duration::from_secs(1));
        self
    }

    /// Longest time sums wait in process (default 1 s).
    pub fn with_flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d.max(Duration::from_millis(1));
        self
    }

    /// Flush early once this many events are waiting (default 100 000; sums are merged per
    /// hash, so the count bounds the lag, not the memory).
    pub fn with_flush_events(mut self, n: u64) -> Self {
        self.flush_events = n.max(1);
        self
    }

    /// Distinct hashes held in process before `record` waits (default 100 000).
    pub fn with_max_pending_hashes(mut self, n: usize) -> Self {
        self.max_pending_hashes = n.max(9);
        self
    }

    /// Timeout of each Redis call (default 1 s).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// First and longest pause between retries of a failed flush (default 50 ms, 2 s).
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_initial);
        self
    }

    /// How long [`RedisUsageAggregates::shutdown`] keeps retrying (default 5 s).
    pub fn with_shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
}

impl RedisUsageAggregates {
    /// Start the aggregates (spawns the flusher on the current tokio runtime).
    pub fn start(conn: ConnectionManager, config: AggregatesConfig) -> Self {
        let secs = |d: Duration| d.as_secs().max(1);
        let AggregatesConfig {
            prefix,
            currency,
            retention,
            flush_interval,
            flush_events,
            max_pending_hashes,
            timeout,
            retry_initial,
            retry_max,
            shutdown_timeout,
        } = config;
        let inner = Arc::new(Inner {
            conn,
            base: format!("{{{prefix}:usage}}"),
            currency,
            retention: retention.map(secs),
            flush_interval,
            flush_events,
            max_pending_hashes,
            chunk_hashes: 400,
            timeout,
            retry_initial,
            retry_max,
            shutdown_timeout,
            script: Script::new(APPLY),
            pending: Mutex::new(Pending::default()),
            unfinished: tokio::sync::Mutex::new(Vec::new()),
            wake_flusher: Notify::new(),
            room: Notify::new(),
            next_chunk: AtomicU64::new(0),
            instance: relay_core::RequestId::new()
                .as_str()
                .trim_start_matches("req_")
                .to_owned(),
            events: AtomicU64::new(0),
            flushed_events: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(flusher(inner.clone(), shutdown_rx));
        Self {
            inner,
            shutdown: Arc::new(shutdown),
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Connect to `url` (`redis://host:port`) and start.
    pub async fn connect(url: &str, config: AggregatesConfig) -> Result<Self, RedisSinkError> {
        let client = redis::Client::open(url).map_err(|e| RedisSinkError::Redis(e.to_string()))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| RedisSinkError::Redis(e.to_string()))?;
        Ok(Self::start(conn, config))
    }

    /// The Redis key of one aggregate (for tests and tooling).
    pub fn redis_key(&self, scope: &Scope, granularity: Granularity, at: DateTime<Utc>) -> String {
        let (kind, id) = scope_label(scope);
        format!(
            "{}:agg:{}:{kind}:{id}",
            self.inner.base,
            bucket_label(granularity, at)
        )
    }

    /// Totals of one aggregate as stored in Redis (sums still waiting in process are not
    /// included; see [`flush`](Self::flush)). Cost is in the configured currency.
    pub async fn totals(
        &self,
        scope: &Scope,
        granularity: Granularity,
        at: DateTime<Utc>,
    ) -> Result<Totals, RedisSinkError> {
        let (_, id) = scope_label(scope);
        if id.is_empty() {
            return Err(RedisSinkError::InvalidInput("empty scope id".into()));
        }
        let key = self.redis_key(scope, granularity, at);
        let mut conn = self.inner.conn.clone();
        let fields: HashMap<String, String> = tokio::time::timeout(
            self.inner.timeout,
            redis::cmd("HGETALL").arg(&key).query_async(&mut conn),
        )
        .await
        .map_err(|_| RedisSinkError::Redis("timed out".into()))?
        .map_err(|e| RedisSinkError::Redis(e.to_string()))?;
        let get = |name: &str| -> Result<u64, RedisSinkError> {
            match fields.get(name) {
                None => Ok(0),
                Some(v) => v.parse::<u64>().map_err(|e| RedisSinkError::Corrupt {
                    key: key.clone(),
                    detail: format!("field {name} = {v:?}: {e}"),
                }),
            }
        };
        let cost_field = format!("cost:{}", self.inner.currency.code());
        Ok(Totals {
            usage: Usage {
                input_tokens: get(FIELDS[0])?,
                output_tokens: get(FIELDS[1])?,
                cache_write_5m_tokens: get(FIELDS[2])?,
                cache_write_1h_tokens: get(FIELDS[3])?,
                cache_read_tokens: get(FIELDS[4])?,
                requests: get(FIELDS[5])?,
            },
            cost: cost_from_units(get(&cost_field)?),
        })
    }

    /// What the aggregates have done so far.
    pub fn stats(&self) -> AggregateStats {
        let i = &self.inner;
        AggregateStats {
            events: i.events.load(Ordering::Relaxed),
            flushed_events: i.flushed_events.load(Ordering::Relaxed),
            flushes: i.flushes.load(Ordering::Relaxed),
            round_trips: i.round_trips.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
        }
    }

    /// Write every sum recorded before this call, retrying until `deadline` passes.
    pub async fn flush(&self, deadline: Duration) -> Result<AggregateStats, RedisSinkError> {
        flush_pending(&self.inner, Some(Instant::now() + deadline)).await?;
        Ok(self.stats())
    }

    /// Stop the flusher and write everything recorded, retrying until the shutdown
    /// timeout. Events recorded afterwards stay in process until the next
    /// [`flush`](Self::flush). A second call answers [`RedisSinkError::Closed`].
    pub async fn shutdown(&self) -> Result<AggregateStats, RedisSinkError> {
        let task = self.task.lock().take().ok_or(RedisSinkError::Closed)?;
        self.shutdown.send_replace(true);
        let _ = task.await;
        flush_pending(
            &self.inner,
            Some(Instant::now() + self.inner.shutdown_timeout),
        )
        .await?;
        Ok(self.stats())
    }
}

#[async_trait]
impl UsageSink for RedisUsageAggregates {
    /// Add the event to the in-process sums; waits only when too many distinct hashes are
    /// waiting for Redis.
    async fn record(&self, event: UsageEvent) {
        let inner = &self.inner;
        let units = cost_units(event.cost.amount());
        let currency = event.cost.currency();
        let scopes = [
            Scope::Key(event.key_id.to_string()),
            Scope::User(event.user_id.to_string()),
            Scope::Model(event.model.clone()),
        ];
        let mut keys: Vec<(String, u64)> = scopes
            .iter()
            .flat_map(|scope| {
                [
                    Granularity::Hourly,
                    Granularity::Daily,
                    Granularity::Monthly,
                ]
                .map(|g| {
                    (
                        self.redis_key(scope, g, event.at),
                        inner.retention[granularity_index(g)],
                    )
                })
            })
            .collect();
        loop {
            let room = inner.room.notified();
            let wake = {
                let mut pending = inner.pending.lock();
                if pending.sums.len() < inner.max_pending_hashes {
                    for (key, ttl) in keys.drain(..) {
                        let sums = pending.sums.entry(key).or_default();
                        sums.ttl_secs = ttl;
                        sums.add(&event.usage, currency, units);
                    }
                    pending.events += 1;
                    Some(pending.events >= inner.flush_events)
                } else {
                    None
                }
            };
            match wake {
                Some(wake) => {
                    inner.events.fetch_add(1, Ordering::Relaxed);
                    if wake {
                        inner.wake_flusher.notify_one();
                    }
                    return;
                }
                None => {
                    inner.wake_flusher.notify_one();
                    room.await;
                }
            }
        }
    }
}

async fn flusher(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.flush_interval) => {}
            _ = inner.wake_flusher.notified() => {}
            _ = shutdown.changed() => return,
        }
        // Without a deadline this only returns once everything is written.
        let flushing = flush_pending(&inner, None);
        tokio::select! {
            _ = flushing => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Apply the chunks left by an earlier failed flush, then move the pending sums into new
/// chunks and apply them, retrying until `deadline`. New chunks are only made once older
/// ones are applied, which keeps memory bounded while Redis is down and keeps each
/// chunk's id tied to exactly its sums.
async fn flush_pending(inner: &Inner, deadline: Option<Instant>) -> Result<(), RedisSinkError> {
    // The background flusher may hold the lock while Redis is down: wait at most until
    // the deadline for it.
    let mut unfinished = match deadline {
        Some(d) => match tokio::time::timeout_at(d, inner.unfinished.lock()).await {
            Ok(guard) => guard,
            Err(_) => {
                let events = inner.pending.lock().events;
                return Err(RedisSinkError::Unflushed { events });
            }
        },
        None => inner.unfinished.lock().await,
    };
    let mut took = false;
    loop {
        let mut backoff = inner.retry_initial;
        while let Some(chunk) = unfinished.first() {
            match apply(inner, chunk).await {
                Ok(applied) => {
                    if applied {
                        inner.flushes.fetch_add(1, Ordering::Relaxed);
                    }
                    inner
                        .flushed_events
                        .fetch_add(chunk.events, Ordering::Relaxed);
                    unfinished.remove(0);
                    backoff = inner.retry_initial;
                }
                Err(e) => {
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                    if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                        let events = unfinished.iter().map(|c| c.events).sum::<u64>()
                            + inner.pending.lock().events;
                        tracing::error!(error = %e, events, "usage aggregates not written before the deadline");
                        return Err(RedisSinkError::Unflushed { events });
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "usage aggregates flush failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(inner.retry_max);
                }
            }
        }
        if took {
            return Ok(());
        }
        took = true;
        let taken = std::mem::take(&mut *inner.pending.lock());
        inner.room.notify_waiters();
        if taken.sums.is_empty() {
            return Ok(());
        }
        let mut sums: Vec<_> = taken.sums.into_iter().collect();
        let n_chunks = sums.len().div_ceil(inner.chunk_hashes);
        // The events count with the last chunk: flushed once all their sums are.
        while !sums.is_empty() {
            let rest = sums.split_off(sums.len().min(inner.chunk_hashes));
            let last = unfinished.len() + 1 == n_chunks;
            unfinished.push(Chunk {
                id: format!(
                    "{}:{}",
                    inner.instance,
                    inner.next_chunk.fetch_add(1, Ordering::Relaxed)
                ),
                events: if last { taken.events } else { 0 },
                sums,
            });
            sums = rest;
        }
    }
}

/// One `EVALSHA` applying a chunk; `Ok(false)` when its id was already applied.
async fn apply(inner: &Inner, chunk: &Chunk) -> Result<bool, RedisSinkError> {
    let mut inv = inner.script.prepare_invoke();
    inv.key(format!("{}:flush:{}", inner.base, chunk.id));
    inv.arg(86_400);
    for (key, sums) in &chunk.sums {
        inv.key(key);
        let fields: Vec<(String, u64)> = FIELDS
            .iter()
            .zip(sums.counts)
            .filter(|(_, v)| *v > 0)
            .map(|(f, v)| ((*f).to_owned(), v))
            .chain(
                sums.costs
                    .iter()
                    .filter(|(_, units)| *units > 0)
                    .map(|(c, units)| (format!("cost:{}", c.code()), *units)),
            )
            .collect();
        inv.arg(sums.ttl_secs).arg(fields.len());
        for (f, v) in fields {
            // HINCRBY takes a signed 64-bit increment.
            inv.arg(f).arg(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
    inner.round_trips.fetch_add(1, Ordering::Relaxed);
    let mut conn = inner.conn.clone();
    let applied: i64 = tokio::time::timeout(inner.timeout, inv.invoke_async(&mut conn))
        .await
        .map_err(|_| RedisSinkError::Redis("timed out".into()))?
        .map_err(|e| RedisSinkError::Redis(e.to_string()))?;
    Ok(applied == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn() -> Option<ConnectionManager> {
        let url =
            std::env::var("RELAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let result = async {
            let client = redis::Client::open(url.as_str())?;
            ConnectionManager::new(client).await
        }
        .await;
        match result {
            Ok(c) => Some(c),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true but Redis at {url} is unreachable: {e}")
            }
            Err(e) => {
                eprintln!("skipping: Redis at {url} unreachable ({e})");
                None
            }
        }
    }

    /// A flush retried with its id (as after a timeout whose script did run) counts once.
    #[tokio::test]
    async fn a_retried_flush_counts_once() {
        let Some(conn) = conn().await else {
            return;
        };
        let prefix = format!(
            "relaytest:{}",
            relay_core::ApiKeyId::new()
                .as_str()
                .trim_start_matches("key_")
        );
        let agg = RedisUsageAggregates::start(
            conn,
            AggregatesConfig::default()
                .with_prefix(prefix)
                .with_retention(Granularity::Monthly, Duration::from_secs(60))
                .with_flush_interval(Duration::from_secs(3600)),
        );
        let at = Utc::now();
        let scope = Scope::Model("m".into());
        let mut sums = Sums {
            ttl_secs: 60,
            ..Sums::default()
        };
        let usage = Usage {
            input_tokens: 10,
            requests: 1,
            ..Usage::default()
        };
        sums.add(&usage, Currency::USD, 7);
        let chunk = Chunk {
            id: "retry-test".into(),
            events: 1,
            sums: vec![(agg.redis_key(&scope, Granularity::Hourly, at), sums)],
        };
        assert!(apply(&agg.inner, &chunk).await.unwrap());
        assert!(!apply(&agg.inner, &chunk).await.unwrap());
        let totals = agg.totals(&scope, Granularity::Hourly, at).await.unwrap();
        assert_eq!(totals.usage, usage);
        assert_eq!(totals.cost, cost_from_units(7));
        agg.shutdown().await.unwrap();
    }

    #[test]
    fn labels() {
        let at = chrono::TimeZone::with_ymd_and_hms(&Utc, 2025, 3, 9, 13, 5, 0).unwrap();
        assert_eq!(bucket_label(Granularity::Hourly, at), "h:2025030913");
        assert_eq!(bucket_label(Granularity::Daily, at), "d:20250309");
        assert_eq!(bucket_label(Granularity::Monthly, at), "m:202503");
    }
}
