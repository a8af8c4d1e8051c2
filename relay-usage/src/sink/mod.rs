//! Where metered usage goes: one [`UsageEvent`] per request, to a [`UsageSink`].
//!
//! [`MemoryUsageSink`] keeps real-time aggregates per key, user and model by hour, day and
//! month (bucketed in UTC) and the last events, for tests, examples and single-instance use.

#[cfg(feature = "test-utils")]
mod gated;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_core::{ApiKeyId, Money, RequestId, Service, Usage, UserId};

#[cfg(feature = "redis")]
pub use self::redis::{AggregateStats, AggregatesConfig, RedisSinkError, RedisUsageAggregates};
#[cfg(feature = "test-utils")]
pub use gated::GatedSink;
pub use memory::{AggregateKey, Granularity, MemoryUsageSink, Scope, Totals};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::{
    DailyModelUsage, FlushReport, KeyTotals, SinkError, SqlUsageWriter, UsageRecordStore,
    WriterConfig,
};

/// How metering of a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterOutcome {
    /// The body completed and carried usage.
    Complete,
    /// The body completed but carried no usage (an OpenAI stream without
    /// `stream_options.include_usage`, or an upstream that omits it): the request's
    /// reservation (estimated prompt and maximum output) is charged and the event flagged.
    UsageMissing,
    /// The usage could not be read (malformed or hostile bytes): charged as
    /// [`UsageMissing`](Self::UsageMissing).
    Malformed,
    /// A non-streamed body was larger than the metering buffer: charged as
    /// [`UsageMissing`](Self::UsageMissing).
    Truncated,
    /// The client went away mid-response: what was seen is charged, at least the input.
    ClientDisconnected,
    /// The upstream body failed mid-way: what was seen is charged, at least the input.
    UpstreamError,
    /// The upstream answered with an error status: nothing is charged.
    UpstreamStatus,
}

impl MeterOutcome {
    /// Snake-case name, as stored and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterOutcome::Complete => "complete",
            MeterOutcome::UsageMissing => "usage_missing",
            MeterOutcome::Malformed => "malformed",
            MeterOutcome::Truncated => "truncated",
            MeterOutcome::ClientDisconnected => "client_disconnected",
            MeterOutcome::UpstreamError => "upstream_error",
            MeterOutcome::UpstreamStatus => "upstream_status",
        }
    }
}

/// One metered request.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// The request (idempotency key of the usage record).
    pub request_id: RequestId,
    /// The key's owner.
    pub user_id: UserId,
    /// The key.
    pub key_id: ApiKeyId,
    /// The service.
    pub service: Service,
    /// The model requested.
    pub model: String,
    /// Tokens consumed.
    pub usage: Usage,
    /// Exact cost, multipliers included, not rounded.
    pub cost: Money,
    /// How metering ended.
    pub outcome: MeterOutcome,
    /// Upstream HTTP status.
    pub status: u16,
    /// When the response ended.
    pub at: DateTime<Utc>,
}

/// Receives usage events. Implementations batch; `record` may wait for room (back-pressure)
/// but must not lose an event it accepted.
#[async_trait]
pub trait UsageSink: Send + Sync + std::fmt::Debug + 'static {
    /// Record one event.
    async fn record(&self, event: UsageEvent);
}
