//! Durable usage records in SQLite or PostgreSQL, written in batches, and daily rollups.
//!
//! [`SqlUsageWriter`] is a [`UsageSink`](super::UsageSink): `record` puts the event on a
//! bounded queue and a background task writes the queue to a [`UsageRecordStore`] in
//! batches, flushing when a batch is full (500 events by default), when the oldest queued
//! event has waited the flush interval (1 s), when asked ([`SqlUsageWriter::flush`]) and on
//! [`SqlUsageWriter::shutdown`], which drains everything accepted before it returns.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use relay_usage::sink::sql::sqlite::{self, SqliteUsageStore};
//! use relay_usage::sink::{SqlUsageWriter, UsageRecordStore, WriterConfig};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite://relay.db?mode=rwc").await?;
//! sqlite::migrate(&pool).await?;
//! let store = Arc::new(SqliteUsageStore::new(pool));
//! let writer = SqlUsageWriter::spawn(store.clone(), WriterConfig::default());
//! // Hand `Arc::new(writer.clone())` to the metering layer as its `UsageSink`; then,
//! // once the server has drained its requests:
//! let report = writer.shutdown().await?;
//! println!("{} usage records written", report.written);
//! // A periodic job:
//! store.rollup_day(chrono::Utc::now().date_naive()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Exactly once
//!
//! Every record is keyed by its request id (`PRIMARY KEY`, inserted with
//! `ON CONFLICT DO NOTHING`), so a batch that is retried after an ambiguous failure (the
//! commit happened but its answer was lost) never counts an event twice. The
//! [`FlushReport`] tells new rows from duplicates.
//!
//! ## When the database is slow or down
//!
//! * A failed write is retried with exponential backoff (50 ms doubling to 5 s by default),
//!   keeping the batch; while it retries the writer takes nothing new from the queue.
//! * The queue is bounded (10 000 events by default), so once it is full `record` **waits
//!   for room** (back-pressure reaches the responses being metered) instead of dropping
//!   events or growing without bound. At most `queue_capacity + max_batch` events are
//!   held in memory.
//! * A batch refused for a reason retrying cannot fix (a constraint or data error, say)
//!   is split and written event by event, so one bad event never blocks the others; an
//!   event the database refuses on its own is logged at `error` level with all its
//!   fields and counted as [`FlushReport::rejected`].
//! * [`SqlUsageWriter::shutdown`] keeps retrying until its deadline (30 s by default);
//!   events still unwritten then are handed back in [`SinkError::Unflushed`] so the caller
//!   can keep them elsewhere. Nothing accepted is dropped silently. Events recorded after
//!   shutdown began are refused, logged and counted in [`FlushReport::refused`]: shut the
//!   writer down after the server has drained its requests.
//!
//! ## Storage
//!
//! Tables `usage_records` (one row per request) and `usage_daily` (one row per UTC day,
//! user, key, model and currency), created by [`sqlite::migrate`] / [`postgres::migrate`],
//! which record their version in `usage_schema_migrations` (not sqlx's shared table).
//! Costs are exact decimals: `TEXT` in SQLite, unconstrained `NUMERIC` in PostgreSQL (any
//! scale `rust_decimal` can hold round-trips). Token counts are `BIGINT`; counts above
//! `i64::MAX` are stored as `i64::MAX`. Times are Unix milliseconds (UTC): an event's
//! timestamp comes back truncated to the millisecond. NUL characters in model names
//! (which PostgreSQL text cannot hold) are stored as U+FFFD.
//!
//! ## Rollups
//!
//! [`UsageRecordStore::rollup_day`] (and the free functions `sqlite::rollup_day`,
//! `postgres::rollup_day`) recomputes one UTC day of `usage_daily` from the records and
//! replaces that day's rows in one transaction, so running it again (or late, after
//! delayed records arrived) is always safe. The query helpers read `usage_daily` only,
//! so a server runs the rollup for the current day periodically and once more for the
//! previous day after midnight.

mod error;
mod row;
mod writer;

#[cfg(feature = "test-utils")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
use chrono::NaiveDate;
use relay_core::{ApiKeyId, Currency, RequestId, Usage, UserId};
use rust_decimal::Decimal;

pub use error::SinkError;
pub use writer::{FlushReport, SqlUsageWriter, WriterConfig};

use super::UsageEvent;

/// Longest date range [`UsageRecordStore::usage_by_day_and_model`] answers (inclusive).
pub const MAX_DAILY_RANGE_DAYS: i64 = 366;

/// Usage of one user on one UTC day with one model, summed over the user's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyModelUsage {
    /// The UTC day.
    pub day: NaiveDate,
    /// The model.
    pub model: String,
    /// The currency of `cost`.
    pub currency: Currency,
    /// Token sums; `requests` is the sum of the records' request counts.
    pub usage: Usage,
    /// Number of usage records.
    pub events: u64,
    /// Exact cost sum.
    pub cost: Decimal,
}

/// Usage of one key over a date range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotals {
    /// The key.
    pub key_id: ApiKeyId,
    /// The currency of `cost`.
    pub currency: Currency,
    /// Token sums and request count.
    pub usage: Usage,
    /// Number of usage records.
    pub events: u64,
    /// Exact cost sum.
    pub cost: Decimal,
}

/// Where durable usage records live: implemented for SQLite and PostgreSQL.
#[async_trait]
pub trait UsageRecordStore: Send + Sync + std::fmt::Debug + 'static {
    /// Insert events in one transaction, skipping request ids already stored. Returns how
    /// many rows were new.
    async fn insert_batch(&self, events: &[UsageEvent]) -> Result<u64, SinkError>;

    /// The stored record of a request.
    async fn record(&self, request_id: &RequestId) -> Result<Option<UsageEvent>, SinkError>;

    /// Number of stored records.
    async fn record_count(&self) -> Result<u64, SinkError>;

    /// Recompute `usage_daily` for one UTC day from the records and replace the day's
    /// rows (idempotent). Returns the number of rollup rows the day now has.
    async fn rollup_day(&self, day: NaiveDate) -> Result<u64, SinkError>;

    /// A user's usage per UTC day and model over `from..=to` (at most
    /// [`MAX_DAILY_RANGE_DAYS`] days), from the rollups, ordered by day then model.
    async fn usage_by_day_and_model(
        &self,
        user: &UserId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyModelUsage>, SinkError>;

    /// Totals of each of a user's keys over `from..=to`, from the rollups, ordered by key.
    async fn totals_by_key(
        &self,
        user: &UserId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<KeyTotals>, SinkError>;
}

/// Check a date range; `max_days` bounds its length.
pub(crate) fn check_range(
    from: NaiveDate,
    to: NaiveDate,
    max_days: Option<i64>,
) -> Result<(), SinkError> {
    if from > to {
        return Err(SinkError::InvalidInput(format!(
            "date range starts ({from}) after it ends ({to})"
        )));
    }
    if let Some(max) = max_days {
        let days = (to - from).num_days() + 1;
        if days > max {
            return Err(SinkError::InvalidInput(format!(
                "date range covers {days} days; at most {max} are allowed"
            )));
        }
    }
    Ok(())
}
