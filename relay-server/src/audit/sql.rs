//! What the server's own tables (audit log, outbox, job runs) share: which database a
//! pool talks to, and applying a migration file.
//!
//! The tables live beside relay-billing's in the same database (the server passes the
//! same `AnyPool`), with a `server_` prefix. Migrations are idempotent
//! (`CREATE ... IF NOT EXISTS`, `CREATE OR REPLACE`), so they run at every start-up
//! without a version table.

use sqlx::AnyPool;

/// Which SQL database a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The dialect of `pool`, asked from one of its connections.
pub(crate) async fn dialect(pool: &AnyPool) -> Result<Dialect, sqlx::Error> {
    let conn = pool.acquire().await?;
    let name = conn.backend_name().to_ascii_lowercase();
    drop(conn);
    if name.contains("postgres") {
        Ok(Dialect::Postgres)
    } else if name.contains("sqlite") {
        Ok(Dialect::Sqlite)
    } else {
        Err(sqlx::Error::Configuration(
            format!("unsupported database backend `{name}`: SQLite or PostgreSQL").into(),
        ))
    }
}

/// Apply one migration text (statements separated by a `--;` line) in a transaction.
/// On PostgreSQL an advisory lock serialises instances starting at the same time
/// (concurrent `CREATE TABLE IF NOT EXISTS` can otherwise collide in the catalog).
pub(crate) async fn apply(
    pool: &AnyPool,
    dialect: Dialect,
    name: &str,
    text: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(name))
            .execute(&mut *tx)
            .await?;
    }
    for statement in text.split("\n--;\n") {
        if statement.trim().is_empty() {
            continue;
        }
        sqlx::raw_sql(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// A stable 64-bit key for a name (FNV-1a), as advisory locks take numbers.
pub(crate) fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("relay-server:{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// Milliseconds since the epoch back to a time; out-of-range values are corrupt rows.
pub(crate) fn time(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}
