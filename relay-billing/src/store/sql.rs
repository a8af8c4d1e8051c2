//! The SQL implementation of [`BillingStore`], shared by SQLite and PostgreSQL through
//! sqlx's `Any` driver.
//!
//! Portable choices keep one code path: amounts are decimal `TEXT` (exact in both; never a
//! float), times are `BIGINT` Unix milliseconds, flags `BIGINT` 0/1, and sums are taken in
//! Rust with `rust_decimal`. The dialects differ in two places:
//!
//! * the wallet balance guard: PostgreSQL does it in one statement,
//!   `UPDATE … SET balance = balance + Δ WHERE … AND balance + Δ >= -credit_limit`
//!   (casting the text to `numeric`, exact), which row-locks and re-checks under
//!   concurrency; SQLite reads, checks in Rust and writes with a compare-and-set on the
//!   old balance. SQLite pools have one connection, so transactions are serialised anyway
//!   (SQLite has one writer); the compare-and-set keeps the guard sound even so.
//! * job leader locks: PostgreSQL advisory locks; SQLite a process-local set.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use relay_core::{Currency, InvoiceId, Money, OrderId, PlanId, SubscriptionId, UserId};
use rust_decimal::Decimal;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Row};

use super::BillingStore;
use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::events::{AuditRecord, BillingEvent};
use crate::invoice::{Invoice, LineItem};
use crate::ledger::{Account, NewTransaction, Posted, Transaction, Wallet};
use crate::lock::JobLock;
use crate::order::{Applied, Order, OrderPurpose, PaymentNotice};
use crate::plan::{Plan, PlanSpec};
use crate::redemption::RedemptionCode;
use crate::reports::{OverdueItem, PlanCount, RevenueLine, UserPlanMargin};
use crate::subscription::{Subscription, SubscriptionChange};
use crate::usage::{UsageBatch, UsageCharge, UsageTotal};

mod codes;
mod invoices;
mod ledger;
mod orders;
mod plans;
mod renewals;
mod reports;
mod subscriptions;
mod usage;

/// Which SQL database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

/// The billing store on SQLite or PostgreSQL. Clones share the pool.
#[derive(Debug, Clone)]
pub struct SqlBillingStore {
    pool: AnyPool,
    dialect: Dialect,
    local_locks: Arc<Mutex<HashSet<String>>>,
}

const SQLITE_MIGRATIONS: &[(i64, &str)] =
    &[(1, include_str!("../../migrations/sqlite/0001_init.sql"))];
const POSTGRES_MIGRATIONS: &[(i64, &str)] =
    &[(1, include_str!("../../migrations/postgres/0001_init.sql"))];

impl SqlBillingStore {
    pub(crate) fn from_pool(pool: AnyPool, dialect: Dialect) -> Self {
        Self {
            pool,
            dialect,
            local_locks: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Billing events after `seq` (exclusive), oldest first, at most `limit`: for
    /// consumers that tail the log (notifications) with a cursor of their own.
    pub async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<BillingEvent>> {
        let rows = sqlx::query(
            "SELECT seq, kind, subject, user_id, detail, at FROM billing_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Trialing or active subscriptions whose current period ends in `(from, to]`
    /// (reminders before a plan ends).
    pub async fn subscriptions_ending_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Subscription>> {
        let mut c = self.pool.acquire().await?;
        subscriptions::ending_between(&mut c, from, to).await
    }

    /// Apply the schema migrations that have not been applied yet. Safe to call at every
    /// start-up, from several instances at once.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS billing_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let migrations = match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS,
            Dialect::Postgres => POSTGRES_MIGRATIONS,
        };
        for (version, text) in migrations {
            let mut tx = self.pool.begin().await?;
            if self.dialect == Dialect::Postgres {
                // Serialise concurrent migrations of several instances.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(crate::lock::lock_key("migrate"))
                    .execute(&mut *tx)
                    .await?;
            }
            let done = sqlx::query("SELECT version FROM billing_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            for statement in text.split("\n--;\n") {
                if statement.trim().is_empty() {
                    continue;
                }
                sqlx::raw_sql(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO billing_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(Utc::now().timestamp_millis())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Retry an operation that lost a race (a unique key or version taken by a concurrent
/// transaction); the retry sees the winner's result.
macro_rules! retrying {
    ($e:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $e.await {
                Err(BillingError::Conflict(_)) if attempt < 5 => attempt += 1,
                other => break other,
            }
        }
    }};
}

// ----- row helpers -----

pub(crate) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ts(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| BillingError::Corrupt(format!("timestamp {ms} out of range")))
}

pub(crate) fn dec(text: &str) -> Result<Decimal> {
    Decimal::from_str_exact(text.trim())
        .or_else(|_| Decimal::from_str(text.trim()))
        .map_err(|_| BillingError::Corrupt(format!("`{text}` is not a decimal")))
}

pub(crate) fn money(amount: &str, currency: &str) -> Result<Money> {
    let c = Currency::from_str(currency).map_err(|e| BillingError::Corrupt(e.to_string()))?;
    Ok(Money::new(dec(amount)?, c))
}

pub(crate) fn parse<T: FromStr>(text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>()
        .map_err(|e| BillingError::Corrupt(format!("`{text}`: {e}")))
}

pub(crate) fn s(row: &AnyRow, col: &str) -> Result<String> {
    row.try_get::<String, _>(col).map_err(BillingError::from)
}

pub(crate) fn opt_s(row: &AnyRow, col: &str) -> Result<Option<String>> {
    row.try_get::<Option<String>, _>(col)
        .map_err(BillingError::from)
}

pub(crate) fn i(row: &AnyRow, col: &str) -> Result<i64> {
    row.try_get::<i64, _>(col).map_err(BillingError::from)
}

pub(crate) fn opt_i(row: &AnyRow, col: &str) -> Result<Option<i64>> {
    row.try_get::<Option<i64>, _>(col)
        .map_err(BillingError::from)
}

pub(crate) fn opt_ts(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    opt_i(row, col)?.map(from_ts).transpose()
}

/// Lock a row for the rest of the transaction (PostgreSQL `FOR UPDATE`), so concurrent
/// operations on the same order or invoice queue instead of both acting on what they
/// read. SQLite transactions are serialised already.
pub(crate) async fn lock_row(
    c: &mut AnyConnection,
    d: Dialect,
    table: &str,
    id: &str,
) -> Result<()> {
    if d == Dialect::Postgres {
        sqlx::query(&format!("SELECT id FROM {table} WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?;
    }
    Ok(())
}

/// `prefix_` and 32 random hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    // Borrow relay-core's id generator (128 random bits) and swap the prefix.
    let order = OrderId::new();
    let hex = order.as_str().trim_start_matches("ord_");
    format!("{prefix}_{hex}")
}

/// Append a billing event in the current transaction.
pub(crate) async fn record_event_in(
    c: &mut AnyConnection,
    kind: &str,
    subject: &str,
    user: Option<&UserId>,
    detail: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO billing_events (kind, subject, user_id, detail, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(kind)
    .bind(subject)
    .bind(user.map(|u| u.as_str().to_owned()))
    .bind(detail.to_string())
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Append an audit record in the current transaction.
pub(crate) async fn audit_in(
    c: &mut AnyConnection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO billing_audit (actor, action, subject, detail, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail.to_string())
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    Ok(())
}

fn event_from_row(row: &AnyRow) -> Result<BillingEvent> {
    Ok(BillingEvent {
        seq: i(row, "seq")?,
        kind: s(row, "kind")?,
        subject: s(row, "subject")?,
        user_id: opt_s(row, "user_id")?.map(|u| parse(&u)).transpose()?,
        detail: serde_json::from_str(&s(row, "detail")?)?,
        at: from_ts(i(row, "at")?)?,
    })
}

#[async_trait]
impl BillingStore for SqlBillingStore {
    async fn post(&self, tx: &NewTransaction, now: DateTime<Utc>) -> Result<Posted> {
        retrying!(self.post_once(tx, now))
    }
    async fn transaction_by_key(&self, key: &str) -> Result<Option<Transaction>> {
        let mut c = self.pool.acquire().await?;
        Ok(ledger::load_by_key(&mut c, key).await?.map(|(t, _)| t))
    }
    async fn transactions(&self, user: Option<&UserId>) -> Result<Vec<Transaction>> {
        self.transactions_impl(user).await
    }
    async fn refund_charge(
        &self,
        charge_key: &str,
        amount: Money,
        reason: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Posted> {
        retrying!(self.refund_charge_impl(charge_key, amount, reason, key, now))
    }
    async fn wallet(&self, user: &UserId, currency: Currency) -> Result<Wallet> {
        let mut c = self.pool.acquire().await?;
        ledger::read_wallet(&mut c, user, currency).await
    }
    async fn wallets(&self) -> Result<Vec<Wallet>> {
        self.wallets_impl().await
    }
    async fn set_credit_limit(
        &self,
        user: &UserId,
        limit: Money,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Wallet> {
        self.set_credit_limit_impl(user, limit, actor, now).await
    }
    async fn derived_balance(&self, account: &Account, currency: Currency) -> Result<Money> {
        self.derived_balance_impl(account, currency).await
    }

    async fn create_order(
        &self,
        user: &UserId,
        purpose: OrderPurpose,
        amount: Money,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Order> {
        self.create_order_impl(user, purpose, amount, expires_at, now)
            .await
    }
    async fn order(&self, id: &OrderId) -> Result<Option<Order>> {
        let mut c = self.pool.acquire().await?;
        orders::load_order(&mut c, id).await
    }
    async fn apply_payment(
        &self,
        notice: &PaymentNotice,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<(Applied, Option<SubscriptionChange>)> {
        notice.validate()?;
        retrying!(self.apply_payment_once(notice, config, now))
    }
    async fn apply_refund(&self, notice: &PaymentNotice, now: DateTime<Utc>) -> Result<Applied> {
        notice.validate()?;
        retrying!(self.apply_refund_once(notice, now))
    }
    async fn expire_orders(&self, now: DateTime<Utc>) -> Result<u64> {
        self.expire_orders_impl(now).await
    }

    async fn create_plan(&self, spec: &PlanSpec, now: DateTime<Utc>) -> Result<Plan> {
        self.create_plan_impl(spec, now).await
    }
    async fn revise_plan(&self, id: &PlanId, spec: &PlanSpec, now: DateTime<Utc>) -> Result<Plan> {
        retrying!(self.revise_plan_impl(id, spec, now))
    }
    async fn archive_plan(&self, id: &PlanId) -> Result<Plan> {
        self.archive_plan_impl(id).await
    }
    async fn plan(&self, id: &PlanId) -> Result<Option<Plan>> {
        let mut c = self.pool.acquire().await?;
        plans::load_plan(&mut c, id).await
    }
    async fn plans(&self, include_archived: bool) -> Result<Vec<Plan>> {
        self.plans_impl(include_archived).await
    }

    async fn subscribe(
        &self,
        user: &UserId,
        plan: &PlanId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        retrying!(self.subscribe_impl(user, plan, config, now))
    }
    async fn subscription(&self, id: &SubscriptionId) -> Result<Option<Subscription>> {
        let mut c = self.pool.acquire().await?;
        subscriptions::load_sub(&mut c, id).await
    }
    async fn latest_subscription(&self, user: &UserId) -> Result<Option<Subscription>> {
        let mut c = self.pool.acquire().await?;
        subscriptions::latest_sub(&mut c, user).await
    }
    async fn cancel(
        &self,
        id: &SubscriptionId,
        at_period_end: bool,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        retrying!(self.cancel_impl(id, at_period_end, actor, now))
    }
    async fn extend(
        &self,
        id: &SubscriptionId,
        days: u32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        retrying!(self.extend_impl(id, days, actor, now))
    }
    async fn upgrade(
        &self,
        id: &SubscriptionId,
        plan: &PlanId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        retrying!(self.upgrade_impl(id, plan, config, now))
    }
    async fn schedule_downgrade(
        &self,
        id: &SubscriptionId,
        plan: &PlanId,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        retrying!(self.schedule_downgrade_impl(id, plan, now))
    }
    async fn due_for_renewal(&self, now: DateTime<Utc>) -> Result<Vec<SubscriptionId>> {
        self.due_for_renewal_impl(now).await
    }
    async fn renew(
        &self,
        id: &SubscriptionId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<SubscriptionChange>> {
        retrying!(self.renew_impl(id, config, now))
    }
    async fn due_for_dunning(&self, now: DateTime<Utc>) -> Result<Vec<SubscriptionId>> {
        self.due_for_dunning_impl(now).await
    }
    async fn dun(
        &self,
        id: &SubscriptionId,
        force: bool,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<SubscriptionChange>> {
        retrying!(self.dun_impl(id, force, config, now))
    }
    async fn events(&self, subject: Option<&str>) -> Result<Vec<BillingEvent>> {
        let rows = match subject {
            Some(subj) => {
                sqlx::query(
                    "SELECT seq, kind, subject, user_id, detail, at FROM billing_events WHERE subject = $1 ORDER BY seq",
                )
                .bind(subj)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT seq, kind, subject, user_id, detail, at FROM billing_events ORDER BY seq",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(event_from_row).collect()
    }
    async fn audit(&self, subject: &str) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, actor, action, subject, detail, at FROM billing_audit WHERE subject = $1 ORDER BY seq",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    seq: i(row, "seq")?,
                    actor: s(row, "actor")?,
                    action: s(row, "action")?,
                    subject: s(row, "subject")?,
                    detail: serde_json::from_str(&s(row, "detail")?)?,
                    at: from_ts(i(row, "at")?)?,
                })
            })
            .collect()
    }
    async fn record_event(
        &self,
        kind: &str,
        subject: &str,
        user: Option<&UserId>,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut c = self.pool.acquire().await?;
        record_event_in(&mut c, kind, subject, user, &detail, now).await
    }

    async fn create_draft_invoice(
        &self,
        user: &UserId,
        currency: Currency,
        lines: Vec<LineItem>,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        self.create_draft_impl(user, currency, lines, config, now)
            .await
    }
    async fn add_invoice_line(&self, id: &InvoiceId, line: LineItem) -> Result<Invoice> {
        self.add_line_impl(id, line).await
    }
    async fn finalize_invoice(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice> {
        retrying!(self.finalize_impl(id, now))
    }
    async fn pay_invoice(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice> {
        retrying!(self.pay_invoice_impl(id, now))
    }
    async fn void_invoice(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice> {
        retrying!(self.close_invoice_impl(id, false, now))
    }
    async fn mark_uncollectible(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice> {
        retrying!(self.close_invoice_impl(id, true, now))
    }
    async fn credit_note(
        &self,
        id: &InvoiceId,
        lines: Vec<LineItem>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        retrying!(self.credit_note_impl(id, &lines, reason, now))
    }
    async fn invoice(&self, id: &InvoiceId) -> Result<Option<Invoice>> {
        let mut c = self.pool.acquire().await?;
        invoices::load_invoice(&mut c, id).await
    }
    async fn invoices(&self, user: &UserId) -> Result<Vec<Invoice>> {
        self.invoices_impl(user).await
    }

    async fn create_codes(
        &self,
        batch_id: &str,
        codes: &[String],
        value: Money,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.create_codes_impl(batch_id, codes, value, expires_at, now)
            .await
    }
    async fn redeem_code(&self, code: &str, user: &UserId, now: DateTime<Utc>) -> Result<Posted> {
        retrying!(self.redeem_impl(code, user, now))
    }
    async fn code(&self, code: &str) -> Result<Option<RedemptionCode>> {
        self.code_impl(code).await
    }

    async fn charge_usage(&self, batch: &UsageBatch, now: DateTime<Utc>) -> Result<UsageCharge> {
        batch.validate()?;
        retrying!(self.charge_usage_once(batch, now))
    }

    async fn invoice_usage(
        &self,
        user: &UserId,
        currency: Currency,
        until: DateTime<Utc>,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<Invoice>> {
        retrying!(self.invoice_usage_impl(user, currency, until, config, now))
    }

    async fn usage_totals(&self) -> Result<Vec<UsageTotal>> {
        let rows =
            sqlx::query("SELECT user_id, currency, cost, charged FROM billing_usage_batches")
                .fetch_all(&self.pool)
                .await?;
        let mut sums: std::collections::BTreeMap<(String, String), (Decimal, Decimal)> =
            std::collections::BTreeMap::new();
        for r in &rows {
            let e = sums
                .entry((s(r, "user_id")?, s(r, "currency")?))
                .or_default();
            e.0 += dec(&s(r, "cost")?)?;
            e.1 += dec(&s(r, "charged")?)?;
        }
        sums.into_iter()
            .map(|((user, currency), (cost, charged))| {
                let c: Currency = parse(&currency)?;
                Ok(UsageTotal {
                    user_id: parse(&user)?,
                    cost: Money::new(cost, c),
                    charged: Money::new(charged, c),
                })
            })
            .collect()
    }

    async fn usage_cost(&self, user: &UserId, currency: Currency) -> Result<Money> {
        let rows = sqlx::query(
            "SELECT cost FROM billing_usage_batches WHERE user_id = $1 AND currency = $2",
        )
        .bind(user.as_str())
        .bind(currency.code())
        .fetch_all(&self.pool)
        .await?;
        let mut sum = Decimal::ZERO;
        for r in &rows {
            sum += dec(&s(r, "cost")?)?;
        }
        Ok(Money::new(sum, currency))
    }

    async fn revenue(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<RevenueLine>> {
        self.revenue_impl(from, to).await
    }
    async fn active_subscriptions_by_plan(&self) -> Result<Vec<PlanCount>> {
        self.active_by_plan_impl().await
    }
    async fn usage_vs_revenue(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UserPlanMargin>> {
        self.usage_vs_revenue_impl(from, to).await
    }
    async fn overdue(&self, now: DateTime<Utc>) -> Result<Vec<OverdueItem>> {
        self.overdue_impl(now).await
    }

    async fn try_job_lock(&self, job: &str) -> Result<Option<JobLock>> {
        match self.dialect {
            Dialect::Sqlite => Ok(JobLock::try_local(&self.local_locks, job)),
            Dialect::Postgres => self.try_pg_lock(job).await,
        }
    }
}

impl SqlBillingStore {
    #[cfg(feature = "postgres")]
    async fn try_pg_lock(&self, job: &str) -> Result<Option<JobLock>> {
        let key = crate::lock::lock_key(job);
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then(|| JobLock::postgres(conn, key)))
    }

    #[cfg(not(feature = "postgres"))]
    async fn try_pg_lock(&self, job: &str) -> Result<Option<JobLock>> {
        Ok(JobLock::try_local(&self.local_locks, job))
    }
}
