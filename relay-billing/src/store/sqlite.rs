//! SQLite backend: the embedded durable default.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::sql::{Dialect, SqlBillingStore};
use crate::error::{BillingError, Result};

/// Open (creating if missing) the SQLite database at `url` (`sqlite://relay.db`,
/// `sqlite::memory:`) and apply the migrations.
///
/// The pool has a single connection: SQLite has one writer, and serialising billing's
/// short transactions in the pool avoids `SQLITE_BUSY` on lock upgrades.
pub async fn open(url: &str) -> Result<SqlBillingStore> {
    sqlx::any::install_default_drivers();
    let url = if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    let options = AnyConnectOptions::from_str(&url)
        .map_err(|e| BillingError::InvalidInput(format!("bad SQLite url: {e}")))?;
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await?;
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&pool)
        .await?;
    let store = SqlBillingStore::from_pool(pool, Dialect::Sqlite);
    store.migrate().await?;
    Ok(store)
}

/// Apply the sqlite migrations to `pool` (what [`open`] does at start-up).
pub async fn migrate(pool: &sqlx::AnyPool) -> Result<()> {
    SqlBillingStore::from_pool(pool.clone(), Dialect::Sqlite)
        .migrate()
        .await
}
