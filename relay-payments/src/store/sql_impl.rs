//! The SQL of the webhook-event store, written once and stamped out for SQLite and
//! PostgreSQL (as relay-auth's stores are): statements use `$N` placeholders, which each
//! backend's `q` adapts, and `TRUE`/`FALSE`, which SQLite reads as 1/0.

macro_rules! webhook_event_store {
    ($store:ident, $pool:ty, $doc:literal) => {
        use async_trait::async_trait;
        use chrono::{DateTime, Duration, Utc};
        use sqlx::Row;

        use crate::store::{Claim, ClaimToken, WebhookEventRecord, WebhookEventStore};

        #[allow(clippy::needless_pass_by_value)] // shaped for `map_err(backend)`
        fn backend(e: sqlx::Error) -> StoreError {
            StoreError::Backend(e.to_string())
        }

        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $store {
            pool: $pool,
        }

        impl $store {
            /// A store on `pool`; call `migrate` first.
            pub fn new(pool: $pool) -> Self {
                Self { pool }
            }
        }

        #[async_trait]
        impl WebhookEventStore for $store {
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
                // One statement: insert, or take over a released or expired claim. PostgreSQL
                // serialises concurrent callers on the row lock and re-checks the WHERE; SQLite
                // runs it under its write lock: either way exactly one caller gets a row back.
                let won = sqlx::query(&q("INSERT INTO payment_webhook_events
                         (provider, event_id, processed, claim_token, claimed_until, attempts, first_seen_at)
                     VALUES ($1, $2, FALSE, $3, $4, 1, $5)
                     ON CONFLICT (provider, event_id) DO UPDATE
                         SET claim_token = excluded.claim_token,
                             claimed_until = excluded.claimed_until,
                             attempts = payment_webhook_events.attempts + 1
                         WHERE payment_webhook_events.processed = FALSE
                           AND payment_webhook_events.claimed_until <= $5
                     RETURNING attempts"))
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
                let processed: Option<bool> = sqlx::query_scalar(&q("SELECT processed FROM payment_webhook_events WHERE provider = $1 AND event_id = $2"))
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
                let done = sqlx::query(&q("UPDATE payment_webhook_events
                        SET processed = TRUE, outcome = $4, claim_token = NULL, processed_at = $5
                      WHERE provider = $1 AND event_id = $2 AND claim_token = $3 AND processed = FALSE"))
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
                let done = sqlx::query(&q("UPDATE payment_webhook_events
                        SET claim_token = NULL, claimed_until = $4
                      WHERE provider = $1 AND event_id = $2 AND claim_token = $3 AND processed = FALSE"))
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
                let done = sqlx::query(&q("DELETE FROM payment_webhook_events WHERE processed = TRUE AND processed_at < $1"))
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
                let row = sqlx::query(&q("SELECT processed, outcome, attempts FROM payment_webhook_events
                      WHERE provider = $1 AND event_id = $2"))
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
    };
}

pub(crate) use webhook_event_store;
