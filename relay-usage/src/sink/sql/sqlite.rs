//! SQLite backend of the usage records: the embedded default.
//!
//! SQLite cannot sum `TEXT` decimals exactly (it would go through floating point), so
//! rollups and range queries read the rows and sum costs in Rust with `rust_decimal`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use async_trait::async_trait;
use chrono::NaiveDate;
use futures_util::TryStreamExt;
use relay_core::{RequestId, UserId};
use rust_decimal::Decimal;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::row::{
    by_day_and_model, by_key, clean_model, day_bounds_ms, parse_decimal, usage_to_db, DailyRow,
    StoredRecord, RECORD_COLUMNS,
};
use super::{
    check_range, DailyModelUsage, KeyTotals, SinkError, UsageRecordStore, MAX_DAILY_RANGE_DAYS,
};
use crate::sink::UsageEvent;

/// Most rows per INSERT statement (see `insert_batch`); well under SQLite's limit on bound
/// parameters, and few enough statement forms to stay in the statement cache.
const INSERT_CHUNK: usize = 32;

/// The INSERT of `rows` records (1 to [`INSERT_CHUNK`]), its text made once: formatting the
/// placeholders for every batch (sqlx's `QueryBuilder`) cost more than binding the values.
fn insert_sql(rows: usize) -> &'static str {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        let columns = RECORD_COLUMNS.split(',').count();
        let row = format!("({})", vec!["?"; columns].join(", "));
        (1..=INSERT_CHUNK)
            .map(|n| {
                format!(
                    "INSERT INTO usage_records ({RECORD_COLUMNS}) VALUES {} \
                     ON CONFLICT (request_id) DO NOTHING",
                    vec![row.as_str(); n].join(", ")
                )
            })
            .collect()
    });
    &texts[rows.clamp(1, INSERT_CHUNK) - 1]
}

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../migrations/sqlite/0001_usage_records.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_drop_unread_record_indexes.sql"),
    ),
];

/// Create or update relay-usage's tables (`usage_*`); safe to run at every start-up.
/// Applied versions are kept in `usage_schema_migrations`.
pub async fn migrate(pool: &SqlitePool) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS usage_schema_migrations \
         (version INTEGER PRIMARY KEY NOT NULL, applied_at_ms INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    for (version, sql) in MIGRATIONS {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT version FROM usage_schema_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO usage_schema_migrations (version, applied_at_ms) VALUES (?, ?)")
            .bind(version)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Recompute one UTC day of `usage_daily` (see [`UsageRecordStore::rollup_day`]).
pub async fn rollup_day(pool: &SqlitePool, day: NaiveDate) -> Result<u64, SinkError> {
    let (start, end) = day_bounds_ms(day)?;
    #[derive(Default)]
    struct Agg {
        counts: [i64; 6],
        events: i64,
        cost: Decimal,
    }
    let mut groups: BTreeMap<(String, String, String, String), Agg> = BTreeMap::new();
    {
        let mut rows = sqlx::query(
            "SELECT user_id, key_id, model, currency, input_tokens, output_tokens, \
             cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, requests, cost \
             FROM usage_records WHERE at_ms >= ? AND at_ms < ?",
        )
        .bind(start)
        .bind(end)
        .fetch(pool);
        while let Some(row) = rows.try_next().await? {
            let cost = parse_decimal(row.try_get::<&str, _>(10)?)?;
            let agg = groups
                .entry((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
                .or_default();
            for (i, c) in agg.counts.iter_mut().enumerate() {
                *c = c.saturating_add(row.try_get::<i64, _>(4 + i)?);
            }
            agg.events = agg.events.saturating_add(1);
            agg.cost = agg
                .cost
                .checked_add(cost)
                .ok_or_else(|| SinkError::Corrupt(format!("cost sum of {day} overflows")))?;
        }
    }
    let day_text = day.format("%Y-%m-%d").to_string();
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM usage_daily WHERE day = ?")
        .bind(&day_text)
        .execute(&mut *tx)
        .await?;
    let groups: Vec<_> = groups.into_iter().collect();
    for chunk in groups.chunks(500) {
        let mut qb: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
            "INSERT INTO usage_daily (day, user_id, key_id, model, currency, input_tokens, \
             output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, \
             requests, events, cost) ",
        );
        qb.push_values(chunk, |mut b, ((user, key, model, currency), agg)| {
            b.push_bind(&day_text)
                .push_bind(user)
                .push_bind(key)
                .push_bind(model)
                .push_bind(currency);
            for c in agg.counts {
                b.push_bind(c);
            }
            b.push_bind(agg.events).push_bind(agg.cost.to_string());
        });
        // A concurrent rollup of the same day may have inserted in between: replace.
        qb.push(
            " ON CONFLICT (day, user_id, key_id, model, currency) DO UPDATE SET \
             input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
             cache_write_5m_tokens = excluded.cache_write_5m_tokens, \
             cache_write_1h_tokens = excluded.cache_write_1h_tokens, \
             cache_read_tokens = excluded.cache_read_tokens, requests = excluded.requests, \
             events = excluded.events, cost = excluded.cost",
        );
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(u64::try_from(groups.len()).unwrap_or(u64::MAX))
}

/// Usage records in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteUsageStore {
    pool: SqlitePool,
}

impl SqliteUsageStore {
    /// A store on a migrated pool (see [`migrate`]).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
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
             events, cost FROM usage_daily WHERE user_id = ? AND day >= ? AND day <= ?",
        )
        .bind(user.as_str())
        .bind(from.format("%Y-%m-%d").to_string())
        .bind(to.format("%Y-%m-%d").to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let day: &str = row.try_get(0)?;
                let mut counts = [0i64; 6];
                for (i, c) in counts.iter_mut().enumerate() {
                    *c = row.try_get(4 + i)?;
                }
                Ok(DailyRow {
                    day: NaiveDate::parse_from_str(day, "%Y-%m-%d")
                        .map_err(|e| SinkError::Corrupt(format!("day {day:?}: {e}")))?,
                    key_id: row.try_get(1)?,
                    model: row.try_get(2)?,
                    currency: row.try_get(3)?,
                    counts,
                    events: row.try_get(10)?,
                    cost: parse_decimal(row.try_get::<&str, _>(11)?)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl UsageRecordStore for SqliteUsageStore {
    async fn insert_batch(&self, events: &[UsageEvent]) -> Result<u64, SinkError> {
        if events.is_empty() {
            return Ok(0);
        }
        // Rows go in chunks of at most INSERT_CHUNK, so the statement text takes at most
        // INSERT_CHUNK forms and each is prepared once per connection (sqlx's statement
        // cache): one multi-row INSERT per batch had a new text for every batch size and
        // SQLite parsed and planned it every time, which cost more than the inserts. One
        // transaction keeps the batch all-or-nothing, as the single statement was.
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut query = sqlx::query(insert_sql(chunk.len()));
            for e in chunk {
                query = query
                    .bind(e.request_id.as_str())
                    .bind(e.user_id.as_str())
                    .bind(e.key_id.as_str())
                    .bind(e.service.as_str())
                    .bind(clean_model(&e.model));
                for c in usage_to_db(&e.usage) {
                    query = query.bind(c);
                }
                query = query
                    .bind(e.cost.amount().to_string())
                    .bind(e.cost.currency().code())
                    .bind(e.outcome.as_str())
                    .bind(i64::from(e.status))
                    .bind(e.at.timestamp_millis());
            }
            inserted += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn record(&self, request_id: &RequestId) -> Result<Option<UsageEvent>, SinkError> {
        let row = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM usage_records WHERE request_id = ?"
        ))
        .bind(request_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut counts = [0i64; 6];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = row.try_get(5 + i)?;
        }
        StoredRecord {
            request_id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            key_id: row.try_get(2)?,
            service: row.try_get(3)?,
            model: row.try_get(4)?,
            counts,
            cost: parse_decimal(row.try_get::<&str, _>(11)?)?,
            currency: row.try_get(12)?,
            outcome: row.try_get(13)?,
            status: row.try_get(14)?,
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
