//! Upstream accounts at rest: one row per account, its credential sealed with
//! AES-256-GCM ([`CredentialCipher`]); the plaintext never reaches the database.

use std::sync::Arc;

use relay_core::Service;

use super::crypto::{CredentialCipher, CryptoError};
use super::pool::{Account, Credential};
use crate::config::AccountConfig;
use crate::db::Database;

/// Why accounts could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AccountStoreError {
    /// The database failed.
    #[error("upstream account store: {0}")]
    Database(#[from] sqlx::Error),
    /// Sealing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A stored account whose credential could not be opened, skipped at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The account.
    pub name: String,
    /// Why.
    pub reason: String,
}

type Row = (String, String, String, i64, Vec<u8>);

/// One stored account as the admin API lists it: never its credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountInfo {
    /// Unique name.
    pub name: String,
    /// The API it serves.
    pub service: String,
    /// Base URL.
    pub base_url: String,
    /// Share of traffic.
    pub weight: u32,
    /// In the pool (a disabled account stays stored, out of the pool).
    pub enabled: bool,
    /// Last change, milliseconds since the epoch.
    pub updated_at_ms: i64,
}

/// A change to a stored account; `None` leaves a setting alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountChange {
    /// New weight (1 or more).
    pub weight: Option<u32>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

const DISABLED_TABLE: &str = "CREATE TABLE IF NOT EXISTS relay_upstream_disabled (\
     name TEXT PRIMARY KEY, disabled_at BIGINT NOT NULL)";

/// Create the table of disabled accounts if missing (idempotent; [`load`] and the admin
/// operations call it). A table of its own, as SQLite cannot add a column idempotently.
pub async fn migrate(db: &Database) -> Result<(), AccountStoreError> {
    match db {
        Database::Sqlite(p) => sqlx::query(DISABLED_TABLE)
            .execute(p)
            .await?
            .rows_affected(),
        Database::Postgres(p) => sqlx::query(DISABLED_TABLE)
            .execute(p)
            .await?
            .rows_affected(),
    };
    Ok(())
}

/// Store a new account, sealing its key; `false` (nothing written) when the name is
/// taken.
pub async fn insert(
    db: &Database,
    cipher: &CredentialCipher,
    account: &AccountConfig,
) -> Result<bool, AccountStoreError> {
    let sealed = cipher.seal(account.key.as_bytes(), &account.name)?;
    let now = chrono::Utc::now().timestamp_millis();
    let sql = "INSERT INTO relay_upstream_accounts (name, service, base_url, weight, sealed_key, updated_at) \
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING";
    let done = match db {
        Database::Sqlite(p) => sqlx::query(sql)
            .bind(&account.name)
            .bind(account.service.as_str())
            .bind(account.base_url())
            .bind(i64::from(account.weight))
            .bind(&sealed)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected(),
        Database::Postgres(p) => sqlx::query(sql)
            .bind(&account.name)
            .bind(account.service.as_str())
            .bind(account.base_url())
            .bind(i32::try_from(account.weight).unwrap_or(i32::MAX))
            .bind(&sealed)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected(),
    };
    Ok(done == 1)
}

/// Every stored account, without credentials, by name.
pub async fn list(db: &Database) -> Result<Vec<AccountInfo>, AccountStoreError> {
    migrate(db).await?;
    let sql = "SELECT a.name, a.service, a.base_url, CAST(a.weight AS BIGINT), \
               CASE WHEN d.name IS NULL THEN 1 ELSE 0 END, a.updated_at \
               FROM relay_upstream_accounts a LEFT JOIN relay_upstream_disabled d ON d.name = a.name \
               ORDER BY a.name";
    let rows: Vec<(String, String, String, i64, i32, i64)> = match db {
        Database::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await?,
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await?,
    };
    Ok(rows
        .into_iter()
        .map(
            |(name, service, base_url, weight, enabled, updated_at_ms)| AccountInfo {
                name,
                service,
                base_url,
                weight: u32::try_from(weight).unwrap_or(1),
                enabled: enabled == 1,
                updated_at_ms,
            },
        )
        .collect())
}

/// Apply `change` to account `name`; `false` when there is no such account.
pub async fn change(
    db: &Database,
    name: &str,
    change: AccountChange,
) -> Result<bool, AccountStoreError> {
    migrate(db).await?;
    let now = chrono::Utc::now().timestamp_millis();
    // One transaction: the weight and the flag change together or not at all.
    macro_rules! apply {
        ($pool:expr, $weight:expr) => {{
            let mut tx = $pool.begin().await?;
            let found = sqlx::query(
                "UPDATE relay_upstream_accounts SET weight = COALESCE($2, weight), updated_at = $3 WHERE name = $1",
            )
            .bind(name)
            .bind($weight)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if found {
                match change.enabled {
                    Some(false) => {
                        sqlx::query(
                            "INSERT INTO relay_upstream_disabled (name, disabled_at) VALUES ($1, $2) \
                             ON CONFLICT (name) DO NOTHING",
                        )
                        .bind(name)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Some(true) => {
                        sqlx::query("DELETE FROM relay_upstream_disabled WHERE name = $1")
                            .bind(name)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {}
                }
            }
            tx.commit().await?;
            found
        }};
    }
    let found = match db {
        Database::Sqlite(p) => apply!(p, change.weight.map(i64::from)),
        Database::Postgres(p) => apply!(
            p,
            change.weight.map(|w| i32::try_from(w).unwrap_or(i32::MAX))
        ),
    };
    Ok(found)
}

/// Delete account `name`; `false` when there is no such account.
pub async fn delete(db: &Database, name: &str) -> Result<bool, AccountStoreError> {
    migrate(db).await?;
    macro_rules! apply {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await?;
            sqlx::query("DELETE FROM relay_upstream_disabled WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM relay_upstream_accounts WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n == 1
        }};
    }
    Ok(match db {
        Database::Sqlite(p) => apply!(p),
        Database::Postgres(p) => apply!(p),
    })
}

/// Insert or update `account` (by name), sealing its key.
pub async fn upsert(
    db: &Database,
    cipher: &CredentialCipher,
    account: &AccountConfig,
) -> Result<(), AccountStoreError> {
    let sealed = cipher.seal(account.key.as_bytes(), &account.name)?;
    let now = chrono::Utc::now().timestamp_millis();
    let sql = "INSERT INTO relay_upstream_accounts (name, service, base_url, weight, sealed_key, updated_at) \
               VALUES ($1, $2, $3, $4, $5, $6) \
               ON CONFLICT (name) DO UPDATE SET service = excluded.service, base_url = excluded.base_url, \
               weight = excluded.weight, sealed_key = excluded.sealed_key, updated_at = excluded.updated_at";
    let weight = i64::from(account.weight);
    match db {
        Database::Sqlite(p) => {
            sqlx::query(sql)
                .bind(&account.name)
                .bind(account.service.as_str())
                .bind(account.base_url())
                .bind(weight)
                .bind(&sealed)
                .bind(now)
                .execute(p)
                .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(sql)
                .bind(&account.name)
                .bind(account.service.as_str())
                .bind(account.base_url())
                .bind(i32::try_from(weight).unwrap_or(i32::MAX))
                .bind(&sealed)
                .bind(now)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

/// Every enabled stored account, opened; accounts that do not open are returned apart.
pub async fn load(
    db: &Database,
    cipher: &CredentialCipher,
) -> Result<(Vec<Arc<Account>>, Vec<Unreadable>), AccountStoreError> {
    migrate(db).await?;
    let rows: Vec<Row> =
        match db {
            Database::Sqlite(p) => sqlx::query_as(
                "SELECT name, service, base_url, weight, sealed_key FROM relay_upstream_accounts \
                 WHERE name NOT IN (SELECT name FROM relay_upstream_disabled) ORDER BY name",
            )
            .fetch_all(p)
            .await?,
            Database::Postgres(p) => {
                let rows: Vec<(String, String, String, i32, Vec<u8>)> = sqlx::query_as(
                "SELECT name, service, base_url, weight, sealed_key FROM relay_upstream_accounts \
                 WHERE name NOT IN (SELECT name FROM relay_upstream_disabled) ORDER BY name",
            )
            .fetch_all(p)
            .await?;
                rows.into_iter()
                    .map(|(a, b, c, w, e)| (a, b, c, i64::from(w), e))
                    .collect()
            }
        };
    let mut accounts = Vec::new();
    let mut unreadable = Vec::new();
    for (name, service, base_url, weight, sealed) in rows {
        let service: Service = match service.parse() {
            Ok(s) => s,
            Err(e) => {
                unreadable.push(Unreadable {
                    name,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let key = match cipher.open(&sealed, &name).map(String::from_utf8) {
            Ok(Ok(k)) => k,
            Ok(Err(_)) => {
                unreadable.push(Unreadable {
                    name,
                    reason: "credential is not UTF-8".into(),
                });
                continue;
            }
            Err(e) => {
                unreadable.push(Unreadable {
                    name,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        accounts.push(Arc::new(Account::new(
            name,
            service,
            base_url,
            Credential::new(key),
            u32::try_from(weight).unwrap_or(1),
        )));
    }
    Ok((accounts, unreadable))
}

/// The stored sealed bytes of `name` (tests check nothing readable is stored).
pub async fn sealed_bytes(db: &Database, name: &str) -> Result<Option<Vec<u8>>, AccountStoreError> {
    let sql = "SELECT sealed_key FROM relay_upstream_accounts WHERE name = $1";
    let row: Option<(Vec<u8>,)> = match db {
        Database::Sqlite(p) => sqlx::query_as(sql).bind(name).fetch_optional(p).await?,
        Database::Postgres(p) => sqlx::query_as(sql).bind(name).fetch_optional(p).await?,
    };
    Ok(row.map(|r| r.0))
}
