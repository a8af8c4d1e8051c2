//! PostgreSQL [`WebhookEventStore`]: production.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Row};

use crate::store::{Claim, ClaimToken, StoreError, WebhookEventRecord, WebhookEventStore};

const MIGRATIONS: &[&str] = &[include_str!(
    "../../migrations/postgres/0001_payment_webhook_events.sql"
)];

/// Create this crate's tables if they are missing. Idempotent; the statements are
/// `CREATE ... IF NOT EXISTS`, so the crate shares a database with others without sharing
/// a migration history table.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    for sql in MIGRATIONS {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
    }
    Ok(())
}

#[allow(clippy::needless_pass_by_value)] // shaped for `map_err(backend)`
fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Dedupe records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresWebhookEventStore {
    pool: PgPool,
}

impl PostgresWebhookEventStore {
    /// A store on `pool`; call [`migrate`] first.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl WebhookEventStore for PostgresWebhookEventStore {
    async fn claim(
        &self,
        provider: &str,
        event_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = ClaimToken::new();
        let now_ms = now.timestamp_millis();
        let until = (now + lease).timestamp_millis();
        // One statement: insert, or take over a released or expired claim. Concurrent
        // callers serialise on the row lock and re-check the WHERE, so exactly one gets a
        // row back.
        let won = sqlx::query(
            "INSERT INTO payment_webhook_events
                 (provider, event_id, processed, claim_token, claimed_until, attempts, first_seen_at)
             VALUES ($1, $2, FALSE, $3, $4, 1, $5)
             ON CONFLICT (provider, event_id) DO UPDATE
                 SET claim_token = excluded.claim_token,
                     claimed_until = excluded.claimed_until,
                     attempts = payment_webhook_events.attempts + 1
                 WHERE payment_webhook_events.processed = FALSE
                   AND payment_webhook_events.claimed_until <= $5
             RETURNING attempts",
        )
        .bind(provider)
        .bind(event_id)
        .bind(&token.0)
        .bind(until)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if won.is_some() {
            return Ok(Claim::Claimed(token));
        }
        let processed: Option<bool> = sqlx::query_scalar(
            "SELECT processed FROM payment_webhook_events WHERE provider = $1 AND event_id = $2",
        )
        .bind(provider)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(if processed == Some(true) {
            Claim::AlreadyProcessed
        } else {
            Claim::InProgress
        })
    }

    async fn complete(
        &self,
        provider: &str,
        event_id: &str,
        token: &ClaimToken,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE payment_webhook_events
                SET processed = TRUE, outcome = $4, claim_token = NULL, processed_at = $5
              WHERE provider = $1 AND event_id = $2 AND claim_token = $3 AND processed = FALSE",
        )
        .bind(provider)
        .bind(event_id)
        .bind(&token.0)
        .bind(outcome)
        .bind(now.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(
        &self,
        provider: &str,
        event_id: &str,
        token: &ClaimToken,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE payment_webhook_events
                SET claim_token = NULL, claimed_until = $4
              WHERE provider = $1 AND event_id = $2 AND claim_token = $3 AND processed = FALSE",
        )
        .bind(provider)
        .bind(event_id)
        .bind(&token.0)
        .bind(i64::MIN)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn prune_processed_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM payment_webhook_events WHERE processed = TRUE AND processed_at < $1",
        )
        .bind(before.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn get(
        &self,
        provider: &str,
        event_id: &str,
    ) -> Result<Option<WebhookEventRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT processed, outcome, attempts FROM payment_webhook_events
              WHERE provider = $1 AND event_id = $2",
        )
        .bind(provider)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(WebhookEventRecord {
                provider: provider.to_owned(),
                event_id: event_id.to_owned(),
                processed: r.try_get("processed").map_err(backend)?,
                outcome: r.try_get("outcome").map_err(backend)?,
                attempts: r.try_get("attempts").map_err(backend)?,
            })
        })
        .transpose()
    }
}
