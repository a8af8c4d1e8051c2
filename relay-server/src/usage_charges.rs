//! Billing's [`UsageSource`] over relay-usage's durable usage records: each record is one
//! usage batch (`usage:<request id>`), charged once by billing's `usage_to_ledger` (the
//! batch id is its idempotency key) and then marked in `server_usage_charged`.

use std::str::FromStr;

use async_trait::async_trait;
use relay_billing::jobs::UsageSource;
use relay_billing::{BillingError, UsageBatch};
use relay_core::{Currency, Money, UserId};
use rust_decimal::Decimal;
use sqlx::Row;

use crate::db::Database;

/// Records not yet charged, oldest first, at most this many per run.
const PAGE: i64 = 500;
const PREFIX: &str = "usage:";

/// Uncharged usage records as billing's usage batches.
#[derive(Debug, Clone)]
pub struct RecordUsageSource {
    db: Database,
}

impl RecordUsageSource {
    /// Over the records in `db` (whose `server_usage_charged` table `Database::connect`
    /// created).
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(store)`
fn store(e: sqlx::Error) -> BillingError {
    BillingError::Store(format!("usage records: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> BillingError {
    BillingError::Corrupt(format!("usage record {what}: {e}"))
}

fn batch(
    request_id: &str,
    user: &str,
    cost: &str,
    currency: &str,
) -> Result<UsageBatch, BillingError> {
    let user_id = UserId::from_str(user).map_err(|e| corrupt("user id", e))?;
    let amount = Decimal::from_str(cost).map_err(|e| corrupt("cost", e))?;
    let currency = Currency::from_str(currency).map_err(|e| corrupt("currency", e))?;
    Ok(UsageBatch {
        batch_id: format!("{PREFIX}{request_id}"),
        user_id,
        cost: Money::new(amount, currency),
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait]
impl UsageSource for RecordUsageSource {
    async fn pending(&self) -> Result<Vec<UsageBatch>, BillingError> {
        let rows: Vec<(String, String, String, String)> = match &self.db {
            Database::Sqlite(p) => sqlx::query(
                "SELECT r.request_id, r.user_id, r.cost, r.currency FROM usage_records r \
                 LEFT JOIN server_usage_charged c ON c.request_id = r.request_id \
                 WHERE c.request_id IS NULL ORDER BY r.at_ms, r.request_id LIMIT ?1",
            )
            .bind(PAGE)
            .fetch_all(p)
            .await
            .map_err(store)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store)?,
            Database::Postgres(p) => sqlx::query(
                "SELECT r.request_id, r.user_id, r.cost::TEXT, r.currency FROM usage_records r \
                 LEFT JOIN server_usage_charged c ON c.request_id = r.request_id \
                 WHERE c.request_id IS NULL ORDER BY r.at_ms, r.request_id LIMIT $1",
            )
            .bind(PAGE)
            .fetch_all(p)
            .await
            .map_err(store)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store)?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for (request_id, user, cost, currency) in rows {
            let b = batch(&request_id, &user, &cost, &currency)?;
            if b.cost.is_zero() {
                // Nothing to charge (a refused or empty call): never offer it again.
                self.confirm(&b.batch_id).await?;
            } else {
                out.push(b);
            }
        }
        Ok(out)
    }

    async fn confirm(&self, batch_id: &str) -> Result<(), BillingError> {
        let request_id = batch_id
            .strip_prefix(PREFIX)
            .ok_or_else(|| BillingError::InvalidInput(format!("not a usage batch: {batch_id}")))?;
        match &self.db {
            Database::Sqlite(p) => sqlx::query(
                "INSERT INTO server_usage_charged (request_id, charged_at_ms) VALUES (?1, ?2) \
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(request_id)
            .bind(now_ms())
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            .map_err(store)?,
            Database::Postgres(p) => sqlx::query(
                "INSERT INTO server_usage_charged (request_id, charged_at_ms) VALUES ($1, $2) \
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(request_id)
            .bind(now_ms())
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            .map_err(store)?,
        };
        Ok(())
    }
}
