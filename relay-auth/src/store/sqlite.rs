//! SQLite backend of every auth store (the embedded durable default).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::sql_impl::sql_store;

/// The migrations, in order: (version, SQL). Each is applied once, in a transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_auth.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_key_limits.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_profile_erasure_limits.sql"),
    ),
];

/// Apply relay-auth's migrations to `pool` (idempotent; the server calls it at start-up).
/// Applied versions are kept in `auth_schema_migrations`, separate from other crates'.
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS auth_schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .execute(pool)
        .await?;
    for (version, sql) in MIGRATIONS {
        let mut tx = pool.begin().await?;
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM auth_schema_migrations WHERE version = ?1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_none() {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO auth_schema_migrations (version, applied_at) VALUES (?1, ?2)")
                .bind(version)
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Every auth store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// A store on an existing pool (run [`migrate`] first).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Open (creating if missing) the database at `url` (`sqlite://relay.db`) in WAL mode
    /// with a busy timeout, and migrate it.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// SQLite serialises writers, and the key-limit insert is one statement, so no lock
    /// is needed beyond the one the statement takes.
    async fn lock_user(
        _tx: &mut Transaction<'_, Sqlite>,
        _user: &relay_core::UserId,
    ) -> Result<(), super::StoreError> {
        Ok(())
    }
}

/// `$N` placeholders to SQLite's `?N`.
fn q(sql: &str) -> String {
    sql.replace('$', "?")
}

sql_store!(SqliteStore, Sqlite);
