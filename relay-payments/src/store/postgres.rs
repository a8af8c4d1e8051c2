//! PostgreSQL [`WebhookEventStore`]: production.
//!
//! [`WebhookEventStore`]: crate::store::WebhookEventStore

use sqlx::PgPool;

use crate::store::StoreError;

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

fn q(sql: &str) -> String {
    sql.to_owned()
}

super::sql_impl::webhook_event_store!(
    PostgresWebhookEventStore,
    PgPool,
    "Dedupe records in PostgreSQL."
);
