//! Billing mails: payment received, past due, plan expiring and low balance, queued in
//! the outbox by a scheduled job ([`BillingNotifier`]).
//!
//! * Payment received and past due follow billing's event log (`order.paid`,
//!   `subscription.renewal_failed`), read after a cursor kept in `server_notify_cursor`.
//!   Events older than [`NotifySettings::max_event_age`] are passed over, so a first
//!   run on an old database mails nothing stale.
//! * Plan expiring: subscriptions whose period ends within
//!   [`NotifySettings::expiring_within`] and that will not renew on their own (canceled
//!   at period end, or the wallet cannot pay the next period).
//! * Low balance: a wallet under its currency's threshold, once per fall: the flag in
//!   `server_notify_low_balance` is cleared (and the epoch counted up) when the balance
//!   is back above. A wallet first seen already under the threshold (never funded) is
//!   not mailed; a fall is noticed at the next run after it (every minute in the server).
//!
//! Every mail carries a dedupe key naming its event (`payment_received:<order>`,
//! `past_due:<subscription>:<invoice>`, ...), so a run repeated after a crash, or two
//! instances racing, queue each mail once.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use relay_auth::{AccountService, AuthError};
use relay_billing::events::BillingEvent;
use relay_billing::jobs::JobReport;
use relay_billing::store::SqlBillingStore;
use relay_billing::Billing;
use relay_core::{Money, OrderId, SharedClock, SubscriptionId, UserId};
use sqlx::AnyPool;

use super::{Notifications, NotifyError, Template};
use crate::audit::sql;
use crate::jobs::Job;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS server_notify_cursor (\n\
    name TEXT PRIMARY KEY,\n\
    position BIGINT NOT NULL\n\
);\n\
--;\n\
CREATE TABLE IF NOT EXISTS server_notify_low_balance (\n\
    user_id TEXT NOT NULL,\n\
    currency TEXT NOT NULL,\n\
    epoch BIGINT NOT NULL,\n\
    low INTEGER NOT NULL,\n\
    PRIMARY KEY (user_id, currency)\n\
);\n";

const CURSOR: &str = "billing_events";
/// Events read per page.
const PAGE: i64 = 200;

/// When to mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// Mail when a wallet falls under this (one threshold per currency; none: never).
    pub low_balance: Vec<Money>,
    /// Remind this long before a plan that will not renew ends.
    pub expiring_within: Duration,
    /// Events older than this are passed over.
    pub max_event_age: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            low_balance: vec![Money::new(
                rust_decimal::Decimal::ONE,
                relay_core::Currency::USD,
            )],
            expiring_within: Duration::days(3),
            max_event_age: Duration::days(2),
        }
    }
}

/// Queues billing mails; runs as the `billing_notifications` job.
#[derive(Clone)]
pub struct BillingNotifier {
    billing: Arc<Billing>,
    store: Arc<SqlBillingStore>,
    accounts: Arc<AccountService>,
    notifications: Notifications,
    pool: AnyPool,
    clock: SharedClock,
    settings: NotifySettings,
}

impl std::fmt::Debug for BillingNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingNotifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(store_error)`
fn store_error(e: relay_billing::BillingError) -> NotifyError {
    NotifyError::Invalid(format!("billing: {e}"))
}

impl BillingNotifier {
    /// A notifier over billing's store (whose database also holds its two small tables,
    /// created here if missing).
    pub async fn open(
        billing: Arc<Billing>,
        store: Arc<SqlBillingStore>,
        accounts: Arc<AccountService>,
        notifications: Notifications,
        clock: SharedClock,
        settings: NotifySettings,
    ) -> Result<Self, NotifyError> {
        let pool = store.pool().clone();
        let dialect = sql::dialect(&pool).await?;
        sql::apply(&pool, dialect, "notify_billing", SCHEMA).await?;
        Ok(Self {
            billing,
            store,
            accounts,
            notifications,
            pool,
            clock,
            settings,
        })
    }

    /// One pass: events since the cursor, plans ending soon, low wallets.
    pub async fn run_once(&self) -> Result<JobReport, NotifyError> {
        let mut report = JobReport::default();
        let now = self.clock.now();
        self.follow_events(now, &mut report).await?;
        self.expiring(now, &mut report).await?;
        self.low_balances(&mut report).await?;
        Ok(report)
    }

    async fn send(
        &self,
        user: &UserId,
        template: &Template,
        key: &str,
        report: &mut JobReport,
    ) -> Result<(), NotifyError> {
        let email = match self.accounts.user(user).await {
            Ok(u) => u.email,
            // Deleted accounts get no mail.
            Err(AuthError::NotFound(_)) => {
                report.unchanged += 1;
                return Ok(());
            }
            Err(e) => return Err(NotifyError::Invalid(format!("user {user}: {e}"))),
        };
        match self.notifications.send(&email, template, Some(key)).await? {
            Some(_) => report.changed += 1,
            None => report.unchanged += 1,
        }
        Ok(())
    }

    async fn cursor(&self) -> Result<i64, NotifyError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT position FROM server_notify_cursor WHERE name = $1")
                .bind(CURSOR)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    async fn set_cursor(&self, position: i64) -> Result<(), NotifyError> {
        sqlx::query(
            "INSERT INTO server_notify_cursor (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind(CURSOR)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn follow_events(
        &self,
        now: DateTime<Utc>,
        report: &mut JobReport,
    ) -> Result<(), NotifyError> {
        let mut cursor = self.cursor().await?;
        loop {
            let events = self
                .store
                .events_after(cursor, PAGE)
                .await
                .map_err(store_error)?;
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(());
            };
            for e in &events {
                if e.at + self.settings.max_event_age >= now {
                    if let Err(err) = self.on_event(e, report).await {
                        // Keep the cursor before the failed event: the next run retries it.
                        self.set_cursor(cursor).await?;
                        return Err(err);
                    }
                }
                cursor = e.seq;
            }
            self.set_cursor(last).await?;
            if events.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    async fn on_event(&self, e: &BillingEvent, report: &mut JobReport) -> Result<(), NotifyError> {
        match e.kind.as_str() {
            "order.paid" => {
                let Ok(id) = e.subject.parse::<OrderId>() else {
                    return Ok(());
                };
                let Some(order) = self.store_order(&id).await? else {
                    return Ok(());
                };
                let template = Template::PaymentReceived {
                    amount: order.amount,
                    order: order.id.to_string(),
                };
                let key = format!("payment_received:{}", order.id);
                self.send(&order.user_id, &template, &key, report).await
            }
            "subscription.renewal_failed" => {
                let Ok(id) = e.subject.parse::<SubscriptionId>() else {
                    return Ok(());
                };
                let store = self.billing.store();
                let Some(sub) = store.subscription(&id).await.map_err(store_error)? else {
                    return Ok(());
                };
                let invoice = e.detail["detail"]["invoice"]
                    .as_str()
                    .and_then(|i| i.parse().ok());
                let Some(invoice_id) = invoice else {
                    return Ok(());
                };
                let Some(invoice) = store.invoice(&invoice_id).await.map_err(store_error)? else {
                    return Ok(());
                };
                let suspends = sub
                    .grace_until
                    .map_or_else(|| "soon".to_owned(), |g| g.format("%Y-%m-%d").to_string());
                let template = Template::PastDue {
                    amount: invoice.total,
                    suspends,
                };
                let key = format!("past_due:{}:{}", sub.id, invoice.id);
                self.send(&sub.user_id, &template, &key, report).await
            }
            _ => Ok(()),
        }
    }

    async fn store_order(&self, id: &OrderId) -> Result<Option<relay_billing::Order>, NotifyError> {
        self.billing.store().order(id).await.map_err(store_error)
    }

    async fn expiring(
        &self,
        now: DateTime<Utc>,
        report: &mut JobReport,
    ) -> Result<(), NotifyError> {
        let subs = self
            .store
            .subscriptions_ending_between(now, now + self.settings.expiring_within)
            .await
            .map_err(store_error)?;
        let store = self.billing.store();
        for sub in subs {
            let Some(end) = sub.period_end else { continue };
            let Some(plan) = store.plan(&sub.plan_id).await.map_err(store_error)? else {
                continue;
            };
            if !sub.cancel_at_period_end {
                // It renews from the wallet: remind only when the wallet cannot pay.
                let price = plan.spec.price;
                let wallet = store
                    .wallet(&sub.user_id, price.currency())
                    .await
                    .map_err(store_error)?;
                if wallet.balance.amount() >= price.amount() {
                    continue;
                }
            }
            let template = Template::PlanExpiring {
                plan: plan.spec.name.clone(),
                ends: end.format("%Y-%m-%d").to_string(),
            };
            let key = format!("plan_expiring:{}:{}", sub.id, end.timestamp());
            self.send(&sub.user_id, &template, &key, report).await?;
        }
        Ok(())
    }

    async fn low_balances(&self, report: &mut JobReport) -> Result<(), NotifyError> {
        if self.settings.low_balance.is_empty() {
            return Ok(());
        }
        let wallets = self.billing.store().wallets().await.map_err(store_error)?;
        for w in wallets {
            let currency = w.balance.currency();
            let Some(threshold) = self
                .settings
                .low_balance
                .iter()
                .find(|t| t.currency() == currency)
            else {
                continue;
            };
            let code = currency.code();
            let row: Option<(i64, i32)> = sqlx::query_as(
                "SELECT epoch, low FROM server_notify_low_balance WHERE user_id = $1 AND currency = $2",
            )
            .bind(w.user_id.as_str())
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
            let below = w.balance.amount() < threshold.amount();
            let Some((epoch, low)) = row.map(|(e, l)| (e, l != 0)) else {
                // First sight: only a fall seen from above is news (a wallet that was
                // never funded, like a plan bought straight through a provider, is not).
                self.set_low(&w.user_id, code, 0, below).await?;
                continue;
            };
            if below && !low {
                let key = format!("low_balance:{}:{code}:{epoch}", w.user_id);
                let template = Template::LowBalance { balance: w.balance };
                self.send(&w.user_id, &template, &key, report).await?;
                self.set_low(&w.user_id, code, epoch, true).await?;
            } else if !below && low {
                // Back above: the next fall is a new event.
                self.set_low(&w.user_id, code, epoch + 1, false).await?;
            }
        }
        Ok(())
    }

    async fn set_low(
        &self,
        user: &UserId,
        currency: &str,
        epoch: i64,
        low: bool,
    ) -> Result<(), NotifyError> {
        sqlx::query(
            "INSERT INTO server_notify_low_balance (user_id, currency, epoch, low) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, currency) DO UPDATE SET epoch = excluded.epoch, low = excluded.low",
        )
        .bind(user.as_str())
        .bind(currency)
        .bind(epoch)
        .bind(i32::from(low))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Job for BillingNotifier {
    fn name(&self) -> &str {
        "billing_notifications"
    }

    async fn run(&self) -> Result<JobReport, String> {
        self.run_once().await.map_err(|e| e.to_string())
    }
}
