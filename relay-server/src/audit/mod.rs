//! The audit log: who did what to what, append-only and searchable.
//!
//! Every admin action and every account and billing state change is one
//! [`AuditLog::record`] call. The table refuses `UPDATE` and `DELETE` (and on PostgreSQL
//! `TRUNCATE`) with a trigger, so not even a bug in the server or a hand-typed SQL
//! statement can rewrite history.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::AnyPool) -> Result<(), relay_server::audit::AuditError> {
//! use std::sync::Arc;
//! use relay_server::audit::{AuditFilter, AuditLog};
//!
//! let audit = AuditLog::open(pool, Arc::new(relay_core::SystemClock)).await?;
//! audit
//!     .record("usr_0123456789abcdef0123456789abcdef", "admin.wallet.adjust", "usr_fedcba9876543210fedcba9876543210",
//!         &serde_json::json!({"amount": "5.00", "reason": "goodwill"}))
//!     .await?;
//! let page = audit.search(&AuditFilter::default().with_action("admin.wallet.adjust")).await?;
//! # let _ = page;
//! # Ok(()) }
//! ```

mod filter;
pub(crate) mod sql;

use chrono::{DateTime, Utc};
use relay_core::SharedClock;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

pub use filter::{AuditFilter, MAX_PAGE};
use sql::Dialect;

const SQLITE: &str = include_str!("../../migrations/server/sqlite/audit.sql");
const POSTGRES: &str = include_str!("../../migrations/server/postgres/audit.sql");

/// The longest serialised `details` accepted.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An argument is not acceptable; nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which argument (`actor`, `action`, `target`, `details`, `limit`, `from`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored row could not be read back.
    #[error("corrupt audit record: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("audit store error: {0}")]
    Backend(#[from] sqlx::Error),
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Increasing id (the paging cursor).
    pub id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Who acted: a user id, `system`, or `job:<name>`.
    pub actor: String,
    /// What was done, dotted lower-case (`admin.wallet.adjust`, `account.status`).
    pub action: String,
    /// What it was done to (a user, order, subscription id ...).
    pub target: String,
    /// Anything else worth keeping (a JSON object).
    pub details: serde_json::Value,
}

/// One page of search results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Pass as [`AuditFilter::before`] for the next (older) page; `None` on the last.
    pub next_before: Option<i64>,
}

/// The append-only audit log on SQLite or PostgreSQL. Clones share the pool.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: AnyPool,
    clock: SharedClock,
}

/// Create the audit table and its append-only triggers if missing (idempotent; run at
/// every start-up). [`AuditLog::open`] calls it.
pub async fn migrate(pool: &AnyPool) -> Result<(), AuditError> {
    let dialect = sql::dialect(pool).await?;
    let text = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    sql::apply(pool, dialect, "audit", text).await?;
    Ok(())
}

impl AuditLog {
    /// The audit log in `pool`'s database, migrated.
    pub async fn open(pool: AnyPool, clock: SharedClock) -> Result<Self, AuditError> {
        migrate(&pool).await?;
        Ok(Self { pool, clock })
    }

    /// Append one entry. `actor`, `action` and `target` are validated (see
    /// [`AuditFilter`] for the rules); `details` must be a JSON object (or `null`, stored
    /// as `{}`) of at most [`MAX_DETAILS_BYTES`].
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: &serde_json::Value,
    ) -> Result<AuditEntry, AuditError> {
        filter::check_name("actor", actor)?;
        filter::check_action(action)?;
        filter::check_name("target", target)?;
        let details = match details {
            serde_json::Value::Null => serde_json::json!({}),
            serde_json::Value::Object(_) => details.clone(),
            _ => {
                return Err(AuditError::Invalid {
                    field: "details",
                    reason: "must be a JSON object".into(),
                })
            }
        };
        let text = details.to_string();
        if text.len() > MAX_DETAILS_BYTES {
            return Err(AuditError::Invalid {
                field: "details",
                reason: format!("is {} bytes; at most {MAX_DETAILS_BYTES}", text.len()),
            });
        }
        let at = self.clock.now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO server_audit_log (at, actor, action, target, details) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(at.timestamp_millis())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(&text)
        .fetch_one(&self.pool)
        .await?;
        let at = sql::time(at.timestamp_millis()).unwrap_or(at);
        Ok(AuditEntry {
            id,
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            details,
        })
    }

    /// Entries matching `filter`, newest first, one page at a time.
    pub async fn search(&self, filter: &AuditFilter) -> Result<AuditPage, AuditError> {
        filter.validate()?;
        let limit = filter.limit();
        let mut sql = String::from(
            "SELECT id, at, actor, action, target, details FROM server_audit_log WHERE 1 = 1",
        );
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<(usize, i64)> = Vec::new();
        let mut n = 0usize;
        let mut next = || {
            n += 1;
            n
        };
        for (column, value) in [
            ("actor", &filter.actor),
            ("action", &filter.action),
            ("target", &filter.target),
        ] {
            if let Some(v) = value {
                let i = next();
                sql.push_str(&format!(" AND {column} = ${i}"));
                texts.push(v.clone());
            }
        }
        // Text binds come first ($1..), numbers after, so bind in that order.
        let mut conditions: Vec<(&str, i64)> = Vec::new();
        if let Some(from) = filter.from {
            conditions.push(("at >=", from.timestamp_millis()));
        }
        if let Some(to) = filter.to {
            conditions.push(("at <", to.timestamp_millis()));
        }
        if let Some(before) = filter.before {
            conditions.push(("id <", before));
        }
        for (cond, value) in conditions {
            let i = next();
            sql.push_str(&format!(" AND {cond} ${i}"));
            numbers.push((i, value));
        }
        let i = next();
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${i}"));
        let mut query = sqlx::query(&sql);
        for t in &texts {
            query = query.bind(t.as_str());
        }
        for (_, v) in &numbers {
            query = query.bind(*v);
        }
        // One more than asked tells whether an older page exists.
        query = query.bind(i64::from(limit) + 1);
        let rows = query.fetch_all(&self.pool).await?;
        let mut entries = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        let next_before = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.id)
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_before,
        })
    }
}

fn entry(row: &AnyRow) -> Result<AuditEntry, AuditError> {
    let at: i64 = row.try_get("at")?;
    let details: String = row.try_get("details")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: sql::time(at).ok_or_else(|| AuditError::Corrupt(format!("time {at}")))?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        details: serde_json::from_str(&details)
            .map_err(|e| AuditError::Corrupt(format!("details: {e}")))?,
    })
}
