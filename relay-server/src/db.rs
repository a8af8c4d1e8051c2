//! The durable store: SQLite (embedded default) or PostgreSQL, with every crate's
//! migrations applied at start-up.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use relay_auth::store::AuthStore;
use relay_payments::store::WebhookEventStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::config::DatabaseUrl;

const SQLITE_MIGRATIONS: &str = include_str!("../migrations/sqlite/0001_upstream_accounts.sql");
const POSTGRES_MIGRATIONS: &str = include_str!("../migrations/postgres/0001_upstream_accounts.sql");

fn other(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Migrate(Box::new(sqlx::migrate::MigrateError::Source(
        e.to_string().into(),
    )))
}

/// relay-auth's, relay-usage's and relay-payments' tables on SQLite.
async fn migrate_sqlite(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    relay_auth::store::sqlite::migrate(pool).await?;
    relay_usage::sink::sql::sqlite::migrate(pool)
        .await
        .map_err(other)?;
    relay_payments::store::sqlite::migrate(pool)
        .await
        .map_err(other)?;
    sqlx::query(USAGE_CHARGED).execute(pool).await?;
    Ok(())
}

/// relay-auth's, relay-usage's and relay-payments' tables on PostgreSQL.
async fn migrate_postgres(pool: &PgPool) -> Result<(), sqlx::Error> {
    relay_auth::store::postgres::migrate(pool).await?;
    relay_usage::sink::sql::postgres::migrate(pool)
        .await
        .map_err(other)?;
    relay_payments::store::postgres::migrate(pool)
        .await
        .map_err(other)?;
    sqlx::query(USAGE_CHARGED).execute(pool).await?;
    Ok(())
}

/// Usage records already charged to billing (see [`crate::usage_charges`]); same text on
/// both databases.
const USAGE_CHARGED: &str = "CREATE TABLE IF NOT EXISTS server_usage_charged (\
     request_id TEXT PRIMARY KEY NOT NULL, charged_at_ms BIGINT NOT NULL)";

/// Run relay-auth's (and relay-usage's and relay-payments') migrations on a short-lived connection of their own, on a blocking
/// thread with its own small runtime. Their futures are `Send` in fact, but rustc cannot
/// prove it once they are awaited inside another `Send` future (sqlx's "`Executor` is not
/// general enough" limitation with `&mut *tx`), and the server's start-up must be `Send`.
/// (A `sqlite::memory:` database would be a different one per connection: use a file.)
async fn migrate_auth(url: DatabaseUrl) -> Result<(), sqlx::Error> {
    let job = move || -> Result<(), sqlx::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(sqlx::Error::Io)?;
        rt.block_on(async {
            match &url {
                DatabaseUrl::Sqlite(u) => {
                    let opts = SqliteConnectOptions::from_str(u)?
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .busy_timeout(Duration::from_secs(10));
                    let pool = SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await?;
                    let done = migrate_sqlite(&pool).await;
                    pool.close().await;
                    done
                }
                DatabaseUrl::Postgres(u) => {
                    let pool = PgPoolOptions::new()
                        .max_connections(1)
                        .connect_with(PgConnectOptions::from_str(u)?)
                        .await?;
                    let done = migrate_postgres(&pool).await;
                    pool.close().await;
                    done
                }
            }
        })
    };
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e.to_string())))?
}

/// Drive `make()`'s future to completion on a blocking thread with this runtime's handle
/// (its I/O stays on this runtime). For start-up steps whose futures are `Send` in fact but
/// not provably so inside the server's `Send` start-up (sqlx `AnyPool` migrations, see
/// [`migrate_auth`]).
pub(crate) async fn off_the_async_path<T, F, M>(make: M) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
    M: FnOnce() -> F + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(make())).await
}

/// An open database.
#[derive(Debug, Clone)]
pub enum Database {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Database {
    /// Connect (creating an SQLite file if missing) and migrate relay-auth's, relay-usage's
    /// and relay-payments' tables and the server's own.
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, sqlx::Error> {
        migrate_auth(url.clone()).await?;
        match url {
            DatabaseUrl::Sqlite(url) => {
                let opts = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10))
                    // Statement journals in memory: the usage writer's multi-statement
                    // transactions otherwise wrote a temporary file page by page (about
                    // one 4 KiB write per two relayed requests).
                    .pragma("temp_store", "memory");
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(opts)
                    .await?;
                sqlx::query(SQLITE_MIGRATIONS).execute(&pool).await?;
                Ok(Database::Sqlite(pool))
            }
            DatabaseUrl::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await?;
                sqlx::query(POSTGRES_MIGRATIONS).execute(&pool).await?;
                Ok(Database::Postgres(pool))
            }
        }
    }

    /// relay-auth's stores on this database.
    pub fn auth_store(&self) -> Arc<dyn AuthStore> {
        match self {
            Database::Sqlite(p) => Arc::new(relay_auth::store::sqlite::SqliteStore::new(p.clone())),
            Database::Postgres(p) => Arc::new(relay_auth::store::postgres::PgStore::new(p.clone())),
        }
    }

    /// relay-usage's durable usage records on this database (migrated by `connect`).
    pub fn usage_store(&self) -> Arc<dyn relay_usage::sink::UsageRecordStore> {
        use relay_usage::sink::sql::{postgres, sqlite};
        match self {
            Database::Sqlite(p) => Arc::new(sqlite::SqliteUsageStore::new(p.clone())),
            Database::Postgres(p) => Arc::new(postgres::PgUsageStore::new(p.clone())),
        }
    }

    /// relay-payments' webhook event store on this database (migrated by `connect`).
    pub fn webhook_events(&self) -> Arc<dyn WebhookEventStore> {
        use relay_payments::store::{postgres, sqlite};
        match self {
            Database::Sqlite(p) => Arc::new(sqlite::SqliteWebhookEventStore::new(p.clone())),
            Database::Postgres(p) => Arc::new(postgres::PostgresWebhookEventStore::new(p.clone())),
        }
    }

    /// Is the database answering?
    pub async fn ping(&self) -> bool {
        match self {
            Database::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
            Database::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
        }
    }

    /// relay-billing's store on the database of `url` (its own `AnyPool`: billing is written
    /// against sqlx's `Any` driver), migrated. Driven by this runtime's handle from a
    /// blocking thread, for the same reason as [`migrate_auth`]: its migration future is
    /// `Send` in fact but not provably so inside the server's start-up. The pool stays on
    /// this runtime.
    pub async fn billing_store(
        url: &DatabaseUrl,
    ) -> Result<relay_billing::store::SqlBillingStore, relay_billing::BillingError> {
        let url = url.clone();
        off_the_async_path(move || async move {
            match &url {
                DatabaseUrl::Sqlite(u) => relay_billing::store::sqlite::open(u).await,
                DatabaseUrl::Postgres(u) => {
                    relay_billing::store::postgres::connect(u, None, 8).await
                }
            }
        })
        .await
        .map_err(|e| relay_billing::BillingError::Store(format!("billing store start-up: {e}")))?
    }

    /// Close every connection.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(p) => p.close().await,
            Database::Postgres(p) => p.close().await,
        }
    }
}
