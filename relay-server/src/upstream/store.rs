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

/// Every stored account, opened; accounts that do not open are returned apart.
pub async fn load(
    db: &Database,
    cipher: &CredentialCipher,
) -> Result<(Vec<Arc<Account>>, Vec<Unreadable>), AccountStoreError> {
    let rows: Vec<Row> = match db {
        Database::Sqlite(p) => {
            sqlx::query_as(
                "SELECT name, service, base_url, weight, sealed_key FROM relay_upstream_accounts ORDER BY name",
            )
            .fetch_all(p)
            .await?
        }
        Database::Postgres(p) => {
            let rows: Vec<(String, String, String, i32, Vec<u8>)> = sqlx::query_as(
                "SELECT name, service, base_url, weight, sealed_key FROM relay_upstream_accounts ORDER BY name",
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
