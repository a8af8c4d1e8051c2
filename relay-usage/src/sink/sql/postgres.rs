//! PostgreSQL backend of the usage records: production.
//!
//! Costs are unconstrained `NUMERIC`, summed exactly by PostgreSQL and read back as text
//! (so no value is rounded on the way to `rust_decimal`; one it cannot hold is an error).

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use relay_core::{RequestId, UserId};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::row::{
    by_day_and_model, by_key, clean_model, day_bounds_ms, parse_decimal, usage_to_db, DailyRow,
    StoredRecord, RECORD_COLUMNS,
};
use super::{
    check_range, DailyModelUsage, KeyTotals, SinkError, UsageRecordStore, MAX_DAILY_RANGE_DAYS,
};
use crate::sink::UsageEvent;

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_usage_records.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_drop_unread_record_indexes.sql"),
    ),
];

/// Advisory-lock class of relay-usage's migrations and rollups ("us" in ASCII).
const LOCK_CLASS: i32 = 0x7573;

/// Create or update relay-usage's tables (`usage_*`) in the connection's `search_path`;
/// safe to run at every start-up and from several instances at once (an advisory lock
/// serialises them). Applied versions are kept in `usage_schema_migrations`.
pub async fn migrate(pool: &PgPool) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_CLASS)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS usage_schema_migrations \
         (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    for (version, sql) in MIGRATIONS {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT version FROM usage_schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO usage_schema_migrations (version, applied_at_ms) VALUES ($1, $2)")
            .bind(version)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Recompute one UTC day of `usage_daily` (see [`UsageRecordStore::rollup_day`]).
/// Rollups of the same day are serialised by an advisory lock.
pub async fn rollup_day(pool: &PgPool, day: NaiveDate) -> Result<u64, SinkError> {
    let (start, end) = day_bounds_ms(day)?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(day.num_days_from_ce())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM usage_daily WHERE day = $1")
        .bind(day)
        .execute(&mut *tx)
        .await?;
    // Sums of BIGINT are NUMERIC; saturate at i64::MAX like the SQLite backend.
    let cap = |c: &str| format!("LEAST(SUM({c}), 9223372036854775807)::BIGINT");
    let sql = format!(
        "INSERT INTO usage_daily (day, user_id, key_id, model, currency, input_tokens, \
         output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, \
         requests, events, cost) \
         SELECT $1, user_id, key_id, model, currency, {}, {}, {}, {}, {}, {}, COUNT(*), SUM(cost) \
         FROM usage_records WHERE at_ms >= $2 AND at_ms < $3 \
         GROUP BY user_id, key_id, model, currency",
        cap("input_tokens"),
        cap("output_tokens"),
        cap("cache_write_5m_tokens"),
        cap("cache_write_1h_tokens"),
        cap("cache_read_tokens"),
        cap("requests"),
    );
    let done = sqlx::query(&sql)
        .bind(day)
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// Usage records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgUsageStore {
    pool: PgPool,
}

fn counts(row: &PgRow, first: usize) -> Result<[i64; 6], SinkError> {
    let mut counts = [0i64; 6];
    for (i, c) in counts.iter_mut().enumerate() {
        *c = row.try_get(first + i)?;
    }
    Ok(counts)
}

impl PgUsageStore {
    /// A store on a migrated pool (see [`migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn daily_rows(
        &self,
        user: &UserId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyRow>, SinkError> {
        let rows = sqlx::query(
            "SELECT day, key_id, model, currency, input_tokens, output_tokens, \
             cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, requests, \
             events, cost::TEXT FROM usage_daily \
             WHERE user_id = $1 AND day >= $2 AND day <= $3",
        )
        .bind(user.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DailyRow {
                    day: row.try_get(0)?,
                    key_id: row.try_get(1)?,
                    model: row.try_get(2)?,
                    currency: row.try_get(3)?,
                    counts: counts(row, 4)?,
                    events: row.try_get(10)?,
                    cost: parse_decimal(row.try_get::<&str, _>(11)?)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl UsageRecordStore for PgUsageStore {
    async fn insert_batch(&self, events: &[UsageEvent]) -> Result<u64, SinkError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut qb: QueryBuilder<'_, Postgres> =
            QueryBuilder::new(format!("INSERT INTO usage_records ({RECORD_COLUMNS}) "));
        qb.push_values(events, |mut b, e| {
            b.push_bind(e.request_id.as_str())
                .push_bind(e.user_id.as_str())
                .push_bind(e.key_id.as_str())
                .push_bind(e.service.as_str())
                .push_bind(clean_model(&e.model));
            for c in usage_to_db(&e.usage) {
                b.push_bind(c);
            }
            b.push_bind(e.cost.amount())
                .push_bind(e.cost.currency().code())
                .push_bind(e.outcome.as_str())
                .push_bind(i32::from(e.status))
                .push_bind(e.at.timestamp_millis());
        });
        qb.push(" ON CONFLICT (request_id) DO NOTHING");
        let done = qb.build().execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn record(&self, request_id: &RequestId) -> Result<Option<UsageEvent>, SinkError> {
        let row = sqlx::query(
            "SELECT request_id, user_id, key_id, service, model, input_tokens, output_tokens, \
             cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, requests, \
             cost::TEXT, currency, outcome, status, at_ms \
             FROM usage_records WHERE request_id = $1",
        )
        .bind(request_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        StoredRecord {
            request_id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            key_id: row.try_get(2)?,
            service: row.try_get(3)?,
            model: row.try_get(4)?,
            counts: counts(&row, 5)?,
            cost: parse_decimal(row.try_get::<&str, _>(11)?)?,
            currency: row.try_get(12)?,
            outcome: row.try_get(13)?,
            status: i64::from(row.try_get::<i32, _>(14)?),
            at_ms: row.try_get(15)?,
        }
        .into_event()
        .map(Some)
    }

    async fn record_count(&self) -> Result<u64, SinkError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn rollup_day(&self, day: NaiveDate) -> Result<u64, SinkError> {
        rollup_day(&self.pool, day).await
    }

    async fn usage_by_day_and_model(
        &self,
        user: &UserId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyModelUsage>, SinkError> {
        check_range(from, to, Some(MAX_DAILY_RANGE_DAYS))?;
        by_day_and_model(&self.daily_rows(user, from, to).await?)
    }

    async fn totals_by_key(
        &self,
        user: &UserId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<KeyTotals>, SinkError> {
        check_range(from, to, None)?;
        by_key(&self.daily_rows(user, from, to).await?)
    }
}
