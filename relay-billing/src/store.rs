//! The billing store: every operation that must be atomic is one method, carried out in
//! one database transaction by the backend.
//!
//! Backends live in [`store`](self)'s submodules behind cargo features: `sqlite`,
//! `postgres`, and `memory` (SQLite's in-memory database; see [`memory`]). All of them
//! are the one SQL implementation [`SqlBillingStore`], which differs per dialect only
//! where the databases do (the balance guard, the leader lock), and all pass the same
//! conformance suite (the `conformance` module, feature `test-utils`).
//!
//! Times are passed in (`now`) rather than read, so the [`crate::Billing`] service and
//! the jobs drive them from a [`relay_core::Clock`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_core::{Currency, InvoiceId, Money, OrderId, PlanId, SubscriptionId, UserId};

use crate::config::BillingConfig;
use crate::error::Result;
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

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlBillingStore;

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Everything billing keeps. Each method is atomic: it either happens completely or
/// changes nothing.
#[async_trait]
pub trait BillingStore: Send + Sync + std::fmt::Debug + 'static {
    // ----- ledger -----

    /// Post a transaction: validated, balanced, idempotent by key (a replay with the same
    /// content returns the original; different content is
    /// [`BillingError::IdempotencyConflict`](crate::BillingError::IdempotencyConflict)),
    /// and guarded wallet debits never take a wallet below minus its credit limit.
    async fn post(&self, tx: &NewTransaction, now: DateTime<Utc>) -> Result<Posted>;
    /// The transaction posted under `key`.
    async fn transaction_by_key(&self, key: &str) -> Result<Option<Transaction>>;
    /// Transactions, oldest first; of one user when given.
    async fn transactions(&self, user: Option<&UserId>) -> Result<Vec<Transaction>>;
    /// Credit back (part of) a charge posted under `charge_key` (a plan or usage charge
    /// paid from a wallet) to the same wallet, from the refunds account. The refunds of
    /// one charge never add up to more than it took; idempotent by `key`.
    async fn refund_charge(
        &self,
        charge_key: &str,
        amount: Money,
        reason: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Posted>;
    /// A user's wallet (zero balance and credit limit when never used).
    async fn wallet(&self, user: &UserId, currency: Currency) -> Result<Wallet>;
    /// Every wallet that has a row.
    async fn wallets(&self) -> Result<Vec<Wallet>>;
    /// Set how far below zero guarded debits may take a wallet (`limit` >= 0).
    async fn set_credit_limit(
        &self,
        user: &UserId,
        limit: Money,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Wallet>;
    /// An account's balance derived from its entries (the truth the cache must equal),
    /// in the account's natural sign.
    async fn derived_balance(&self, account: &Account, currency: Currency) -> Result<Money>;

    // ----- orders -----

    /// Create a pending order.
    async fn create_order(
        &self,
        user: &UserId,
        purpose: OrderPurpose,
        amount: Money,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Order>;
    /// One order.
    async fn order(&self, id: &OrderId) -> Result<Option<Order>>;
    /// Apply a verified payment event (see [`crate::order`]).
    async fn apply_payment(
        &self,
        notice: &PaymentNotice,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<(Applied, Option<SubscriptionChange>)>;
    /// Apply a verified refund event: a refund of an order that was not paid, or for more
    /// than is left to refund, is held for review and moves no money.
    async fn apply_refund(&self, notice: &PaymentNotice, now: DateTime<Utc>) -> Result<Applied>;
    /// Expire pending orders whose time ran out; returns how many.
    async fn expire_orders(&self, now: DateTime<Utc>) -> Result<u64>;

    // ----- plans -----

    /// Create the first version of a plan.
    async fn create_plan(&self, spec: &PlanSpec, now: DateTime<Utc>) -> Result<Plan>;
    /// Create a new version of the plan `id` belongs to; the old version is archived
    /// (its subscribers keep it).
    async fn revise_plan(&self, id: &PlanId, spec: &PlanSpec, now: DateTime<Utc>) -> Result<Plan>;
    /// Stop selling a plan version.
    async fn archive_plan(&self, id: &PlanId) -> Result<Plan>;
    /// One plan version.
    async fn plan(&self, id: &PlanId) -> Result<Option<Plan>>;
    /// Plan versions, archived ones too when asked.
    async fn plans(&self, include_archived: bool) -> Result<Vec<Plan>>;

    // ----- subscriptions -----

    /// Subscribe `user` to an active plan: a trial when the plan has one, otherwise the
    /// first period is paid from the wallet (insufficient funds: nothing changes).
    async fn subscribe(
        &self,
        user: &UserId,
        plan: &PlanId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange>;
    /// One subscription.
    async fn subscription(&self, id: &SubscriptionId) -> Result<Option<Subscription>>;
    /// The user's most recent subscription (live or ended).
    async fn latest_subscription(&self, user: &UserId) -> Result<Option<Subscription>>;
    /// Cancel now, or at the end of the current period.
    async fn cancel(
        &self,
        id: &SubscriptionId,
        at_period_end: bool,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange>;
    /// Push the current period's end out by `days` (1 to 3660), free of charge (an
    /// admin's goodwill); only a trialing or active subscription with a period end.
    async fn extend(
        &self,
        id: &SubscriptionId,
        days: u32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange>;
    /// Switch to `plan` now: the unused part of the current period is credited, the new
    /// plan's first period is charged from the wallet and starts now.
    async fn upgrade(
        &self,
        id: &SubscriptionId,
        plan: &PlanId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange>;
    /// Switch to `plan` when the current period ends.
    async fn schedule_downgrade(
        &self,
        id: &SubscriptionId,
        plan: &PlanId,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange>;
    /// Subscriptions whose period ended by `now` and that are trialing or active.
    async fn due_for_renewal(&self, now: DateTime<Utc>) -> Result<Vec<SubscriptionId>>;
    /// Renew one subscription whose period ended: charge the wallet (failure: past due
    /// with an open invoice on credit), or end it when it was to be canceled. A
    /// subscription not due does nothing (`Ok(None)`).
    async fn renew(
        &self,
        id: &SubscriptionId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<SubscriptionChange>>;
    /// Past-due and suspended subscriptions whose next dunning step is due.
    async fn due_for_dunning(&self, now: DateTime<Utc>) -> Result<Vec<SubscriptionId>>;
    /// One dunning step: try to pay the open invoice from the wallet; if that fails,
    /// schedule the next attempt, suspend after the grace period, expire (and write
    /// off) after the suspension period. Not due (and not `force`d, as after a top-up):
    /// `Ok(None)`.
    async fn dun(
        &self,
        id: &SubscriptionId,
        force: bool,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<SubscriptionChange>>;
    /// Billing events about a subject (a subscription, order or wallet), oldest first;
    /// all events when `subject` is `None`.
    async fn events(&self, subject: Option<&str>) -> Result<Vec<BillingEvent>>;
    /// Audit records about a subject, oldest first.
    async fn audit(&self, subject: &str) -> Result<Vec<AuditRecord>>;
    /// Record an event (jobs record alerts this way).
    async fn record_event(
        &self,
        kind: &str,
        subject: &str,
        user: Option<&UserId>,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()>;

    // ----- invoices -----

    /// A draft invoice for `user`.
    async fn create_draft_invoice(
        &self,
        user: &UserId,
        currency: Currency,
        lines: Vec<LineItem>,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Invoice>;
    /// Add a line to a draft (a finalised document is immutable).
    async fn add_invoice_line(&self, id: &InvoiceId, line: LineItem) -> Result<Invoice>;
    /// Finalise a draft: number it, round it, tax it; it becomes open.
    async fn finalize_invoice(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice>;
    /// Pay an open invoice from the wallet (guarded).
    async fn pay_invoice(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice>;
    /// Void a draft or open invoice.
    async fn void_invoice(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice>;
    /// Write an open invoice off as uncollectible.
    async fn mark_uncollectible(&self, id: &InvoiceId, now: DateTime<Utc>) -> Result<Invoice>;
    /// Issue a finalised credit note against a paid invoice, crediting the wallet; the
    /// credit notes of an invoice never add up to more than its total.
    async fn credit_note(
        &self,
        id: &InvoiceId,
        lines: Vec<LineItem>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Invoice>;
    /// One document.
    async fn invoice(&self, id: &InvoiceId) -> Result<Option<Invoice>>;
    /// A user's documents, oldest first.
    async fn invoices(&self, user: &UserId) -> Result<Vec<Invoice>>;

    // ----- redemption codes -----

    /// Store a batch of generated codes worth `value` each.
    async fn create_codes(
        &self,
        batch_id: &str,
        codes: &[String],
        value: Money,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Redeem a code (canonical form) into `user`'s wallet; exactly one redemption of a
    /// code ever succeeds.
    async fn redeem_code(&self, code: &str, user: &UserId, now: DateTime<Utc>) -> Result<Posted>;
    /// One code.
    async fn code(&self, code: &str) -> Result<Option<RedemptionCode>>;

    // ----- usage -----

    /// Charge a usage batch: the subscription's included credit covers what it can, the
    /// rest (times the overage multiplier) is debited from the wallet. Idempotent by
    /// batch id.
    async fn charge_usage(&self, batch: &UsageBatch, now: DateTime<Utc>) -> Result<UsageCharge>;

    /// Invoice a user's usage charged before `until` and not invoiced yet: one `usage`
    /// line (pay-as-you-go charges) and one `overage` line (charges beyond a plan's
    /// included credit), rounded once here. The charges were already debited from the
    /// wallet batch by batch, so the statement is issued paid and posts nothing; the
    /// configured tax rate is treated as included in those charges. `None` when there is
    /// nothing to invoice (so calling twice invoices nothing twice).
    async fn invoice_usage(
        &self,
        user: &UserId,
        currency: Currency,
        until: DateTime<Utc>,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<Invoice>>;

    /// Total list cost of a user's charged usage batches in `currency` (what real-time
    /// spend counters should agree with).
    async fn usage_cost(&self, user: &UserId, currency: Currency) -> Result<Money>;

    /// Per user and currency: list cost and amount charged of all usage batches.
    async fn usage_totals(&self) -> Result<Vec<UsageTotal>>;

    // ----- reports -----

    /// Revenue, refunds and promotions per currency between `from` and `to`.
    async fn revenue(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<RevenueLine>>;
    /// Live subscriptions per plan version.
    async fn active_subscriptions_by_plan(&self) -> Result<Vec<PlanCount>>;
    /// Usage cost against what was charged, per user and plan, between `from` and `to`.
    async fn usage_vs_revenue(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UserPlanMargin>>;
    /// Invoices finalised by `now` that are open (overdue) or uncollectible (bad debt).
    async fn overdue(&self, now: DateTime<Utc>) -> Result<Vec<OverdueItem>>;

    // ----- jobs -----

    /// Try to become the one instance running `job`; `None` when another holds it.
    async fn try_job_lock(&self, job: &str) -> Result<Option<JobLock>>;
}
