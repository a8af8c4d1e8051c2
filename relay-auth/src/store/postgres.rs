//! PostgreSQL backend of every auth store (production).

use sqlx::{PgPool, Postgres, Transaction};

use super::sql_impl::sql_store;

/// The migrations, in order: (version, SQL). Each is applied once, in a transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_auth.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_key_limits.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_profile_erasure_limits.sql"),
    ),
];

/// Apply relay-auth's migrations to `pool` (idempotent; the server calls it at start-up).
/// Applied versions are kept in `auth_schema_migrations`, separate from other crates'.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialise concurrent start-ups of several instances.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('relay_auth_migrate'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS auth_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    for (version, sql) in MIGRATIONS {
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM auth_schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_none() {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO auth_schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

/// Every auth store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// A store on an existing pool (run [`migrate`] first).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Under READ COMMITTED a count-then-insert could let two concurrent inserts both see
    /// room; a per-user advisory lock held to the end of the transaction serialises them.
    async fn lock_user(
        tx: &mut Transaction<'_, Postgres>,
        user: &relay_core::UserId,
    ) -> Result<(), super::StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(user.as_str())
            .execute(&mut **tx)
            .await
            .map_err(super::sql::backend)?;
        Ok(())
    }
}

fn q(sql: &str) -> String {
    sql.to_owned()
}

sql_store!(PgStore, Postgres);
