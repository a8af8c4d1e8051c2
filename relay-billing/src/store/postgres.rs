//! PostgreSQL backend: production.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::Executor;

use super::sql::{Dialect, SqlBillingStore};
use crate::error::{BillingError, Result};

/// Connect to PostgreSQL at `url` and apply the migrations. With `schema`, every
/// connection uses it as its `search_path` (created if missing); tests use this to
/// isolate runs.
pub async fn connect(
    url: &str,
    schema: Option<&str>,
    max_connections: u32,
) -> Result<SqlBillingStore> {
    sqlx::any::install_default_drivers();
    if let Some(s) = schema {
        check_schema(s)?;
    }
    let options = AnyConnectOptions::from_str(url)
        .map_err(|e| BillingError::InvalidInput(format!("bad PostgreSQL url: {e}")))?;
    let schema = schema.map(str::to_owned);
    if let Some(s) = &schema {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {s}").as_str())
            .await?;
        pool.close().await;
    }
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(60))
        .after_connect(move |conn, _meta| {
            let schema = schema.clone();
            Box::pin(async move {
                if let Some(s) = schema {
                    conn.execute(format!("SET search_path TO {s}").as_str())
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    let store = SqlBillingStore::from_pool(pool, Dialect::Postgres);
    store.migrate().await?;
    Ok(store)
}

/// Drop a schema made for a test run.
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    check_schema(schema)?;
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await?;
    pool.close().await;
    Ok(())
}

/// Apply the postgres migrations to `pool` (what [`connect`] does at start-up).
pub async fn migrate(pool: &sqlx::AnyPool) -> Result<()> {
    SqlBillingStore::from_pool(pool.clone(), Dialect::Postgres)
        .migrate()
        .await
}

/// Schema names are interpolated into SQL, so only plain identifiers are accepted.
fn check_schema(s: &str) -> Result<()> {
    let plain = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(BillingError::InvalidInput(
            "schema name must be 1 to 63 lower-case letters, digits and underscores".into(),
        ))
    }
}
