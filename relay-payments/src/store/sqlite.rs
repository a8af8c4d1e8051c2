//! SQLite [`WebhookEventStore`]: the embedded durable default.
//!
//! [`WebhookEventStore`]: crate::store::WebhookEventStore

use sqlx::SqlitePool;

use crate::store::StoreError;

const MIGRATIONS: &[&str] = &[include_str!(
    "../../migrations/sqlite/0001_payment_webhook_events.sql"
)];

/// Create this crate's tables if they are missing. Idempotent; the statements are
/// `CREATE ... IF NOT EXISTS`, so the crate shares a database with others without sharing
/// a migration history table.
pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    for sql in MIGRATIONS {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
    }
    Ok(())
}

fn q(sql: &str) -> String {
    sql.replace('$', "?")
}

super::sql_impl::webhook_event_store!(
    SqliteWebhookEventStore,
    SqlitePool,
    "Dedupe records in SQLite."
);
