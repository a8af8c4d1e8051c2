//! The durable outbox: notifications are rows first, deliveries second.
//!
//! A row is claimed with a lease (one atomic `UPDATE ... RETURNING`, so two workers never
//! hold the same row), sent, then marked sent. A failed attempt is retried after an
//! exponential backoff until `max_attempts`; a permanent refusal ends it at once. Delivery
//! is at least once: a worker that crashes between sending and marking leaves the row to
//! be sent again when its lease runs out. Bodies are blanked once sent, so tokens do not
//! stay at rest longer than needed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_core::SharedClock;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::template::Rendered;
use super::NotifyError;
use crate::audit::sql::{self, Dialect};

const SQLITE: &str = include_str!("../../migrations/server/sqlite/outbox.sql");
const POSTGRES: &str = include_str!("../../migrations/server/postgres/outbox.sql");

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A mail to `recipient`.
    Email,
    /// A signed POST to the configured webhook URL.
    Webhook,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

/// Where a row is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for (another) attempt.
    Pending,
    /// Delivered.
    Sent,
    /// Given up on (permanent refusal, or out of attempts).
    Dead,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        match s {
            "pending" => Some(Status::Pending),
            "sent" => Some(Status::Sent),
            "dead" => Some(Status::Dead),
            _ => None,
        }
    }
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a row is dead (at least 1).
    pub max_attempts: u32,
    /// Delay after the first failure; doubled after each further one.
    pub base_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// How long a claimed row is reserved for its worker.
    pub lease: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            lease: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempts` (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// One outbox row.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Row id.
    pub id: i64,
    /// Where it goes.
    pub channel: Channel,
    /// The mail address (or the event name for webhooks).
    pub recipient: String,
    /// The template kind (`verification`, ...).
    pub kind: String,
    /// The mail (empty once sent).
    pub mail: Rendered,
    /// The webhook JSON body (`{}` for mails, and once sent).
    pub payload: String,
    /// Where it is.
    pub status: Status,
    /// Attempts made (counting one in progress).
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub sent_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxItem")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// The outbox table. Clones share the pool.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: AnyPool,
    clock: SharedClock,
    policy: RetryPolicy,
}

/// Create the outbox table if missing (idempotent). [`Outbox::open`] calls it.
pub async fn migrate(pool: &AnyPool) -> Result<(), NotifyError> {
    let dialect = sql::dialect(pool).await?;
    let text = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    sql::apply(pool, dialect, "outbox", text).await?;
    Ok(())
}

const COLUMNS: &str = "id, channel, recipient, kind, subject, body_text, body_html, payload, \
                       status, attempts, last_error, sent_at";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Outbox {
    /// The outbox in `pool`'s database, migrated, with the default [`RetryPolicy`].
    pub async fn open(pool: AnyPool, clock: SharedClock) -> Result<Self, NotifyError> {
        migrate(&pool).await?;
        Ok(Self {
            pool,
            clock,
            policy: RetryPolicy::default(),
        })
    }

    /// Use `policy` for retries. `max_attempts` of 0 is taken as 1.
    pub fn with_retry(mut self, mut policy: RetryPolicy) -> Self {
        policy.max_attempts = policy.max_attempts.max(1);
        self.policy = policy;
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Queue a row. With `dedupe_key`, a second row with the same key is not added
    /// (returns `None`): callers use it to make "notify once per event" idempotent.
    pub async fn enqueue(
        &self,
        channel: Channel,
        recipient: &str,
        kind: &str,
        mail: &Rendered,
        payload: &str,
        dedupe_key: Option<&str>,
    ) -> Result<Option<i64>, NotifyError> {
        if recipient.trim().is_empty() || recipient.len() > 320 {
            return Err(NotifyError::Invalid(
                "recipient must be 1 to 320 characters".into(),
            ));
        }
        if let Some(k) = dedupe_key {
            if k.trim().is_empty() || k.len() > 200 {
                return Err(NotifyError::Invalid(
                    "dedupe key must be 1 to 200 characters".into(),
                ));
            }
        }
        let now = self.clock.now().timestamp_millis();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO server_outbox (channel, recipient, kind, subject, body_text, body_html, \
             payload, dedupe_key, status, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9) \
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(channel.as_str())
        .bind(recipient)
        .bind(kind)
        .bind(&mail.subject)
        .bind(&mail.text)
        .bind(&mail.html)
        .bind(payload)
        .bind(dedupe_key)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    /// Claim the oldest due row for one attempt (counting it), or `None`.
    pub async fn claim(&self) -> Result<Option<OutboxItem>, NotifyError> {
        let now = self.clock.now().timestamp_millis();
        let lease_until = now.saturating_add(millis(self.policy.lease));
        // The outer conditions repeat the inner ones: under concurrency PostgreSQL
        // re-checks them on the locked row, so a row is claimed by one worker only.
        let row = sqlx::query(&format!(
            "UPDATE server_outbox SET attempts = attempts + 1, lease_until = $1 \
             WHERE id = (SELECT id FROM server_outbox WHERE status = 'pending' \
                 AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until <= $2) \
                 ORDER BY id LIMIT 1) \
             AND status = 'pending' AND (lease_until IS NULL OR lease_until <= $2) \
             RETURNING {COLUMNS}"
        ))
        .bind(lease_until)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(item).transpose()
    }

    /// The claimed row was delivered.
    pub async fn mark_sent(&self, id: i64) -> Result<(), NotifyError> {
        let now = self.clock.now().timestamp_millis();
        sqlx::query(
            "UPDATE server_outbox SET status = 'sent', sent_at = $1, lease_until = NULL, \
             body_text = '', body_html = '', payload = '{}' WHERE id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The claimed row's attempt failed. Permanent failures and the last attempt make it
    /// dead; otherwise it is due again after the backoff. Returns the new status.
    pub async fn mark_failed(
        &self,
        item: &OutboxItem,
        error: &str,
        permanent: bool,
    ) -> Result<Status, NotifyError> {
        let now = self.clock.now();
        let dead = permanent || item.attempts >= self.policy.max_attempts;
        let next = now
            .timestamp_millis()
            .saturating_add(millis(self.policy.delay(item.attempts)));
        let error: String = error.chars().take(500).collect();
        sqlx::query(
            "UPDATE server_outbox SET status = $1, next_attempt_at = $2, lease_until = NULL, \
             last_error = $3 WHERE id = $4 AND status = 'pending'",
        )
        .bind(if dead { "dead" } else { "pending" })
        .bind(next)
        .bind(error)
        .bind(item.id)
        .execute(&self.pool)
        .await?;
        Ok(if dead { Status::Dead } else { Status::Pending })
    }

    /// One row by id.
    pub async fn get(&self, id: i64) -> Result<Option<OutboxItem>, NotifyError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM server_outbox WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(item).transpose()
    }

    /// Rows in `status`, oldest first (at most `limit`).
    pub async fn list(&self, status: Status, limit: u32) -> Result<Vec<OutboxItem>, NotifyError> {
        let status = match status {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Dead => "dead",
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM server_outbox WHERE status = $1 ORDER BY id LIMIT $2"
        ))
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(item).collect()
    }
}

fn item(row: &AnyRow) -> Result<OutboxItem, NotifyError> {
    let channel: String = row.try_get("channel")?;
    let status: String = row.try_get("status")?;
    let attempts: i64 = row.try_get("attempts")?;
    let sent_at: Option<i64> = row.try_get("sent_at")?;
    Ok(OutboxItem {
        id: row.try_get("id")?,
        channel: match channel.as_str() {
            "email" => Channel::Email,
            "webhook" => Channel::Webhook,
            other => return Err(NotifyError::Corrupt(format!("channel `{other}`"))),
        },
        recipient: row.try_get("recipient")?,
        kind: row.try_get("kind")?,
        mail: Rendered {
            subject: row.try_get("subject")?,
            text: row.try_get("body_text")?,
            html: row.try_get("body_html")?,
        },
        payload: row.try_get("payload")?,
        status: Status::parse(&status)
            .ok_or_else(|| NotifyError::Corrupt(format!("status `{status}`")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| NotifyError::Corrupt(format!("attempts {attempts}")))?,
        last_error: row.try_get("last_error")?,
        sent_at: sent_at.and_then(sql::time),
    })
}
