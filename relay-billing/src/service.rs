//! [`Billing`]: the store, a clock, the key provisioner and the configuration together,
//! and the [`AccountStanding`] authentication asks.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_core::{
    AccountStanding, AccountStatus, KeyProvisioner, Money, OrderId, PlanId, SharedClock, Standing,
    StandingError, SubscriptionId, UserId,
};

use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::ledger::{Account, Entry, NewTransaction, Posted, TxKind};
use crate::order::{Applied, Order, OrderPurpose, PaymentNotice, PaymentOutcome};
use crate::redemption;
use crate::store::BillingStore;
use crate::subscription::{KeyAction, SubscriptionChange, SubscriptionStatus};
use crate::usage::{UsageBatch, UsageCharge};

/// The billing service a server holds.
#[derive(Debug, Clone)]
pub struct Billing {
    store: Arc<dyn BillingStore>,
    clock: SharedClock,
    keys: Arc<dyn KeyProvisioner>,
    config: BillingConfig,
}

impl Billing {
    /// Billing over `store`, reading time from `clock`, provisioning keys through `keys`.
    pub fn new(
        store: Arc<dyn BillingStore>,
        clock: SharedClock,
        keys: Arc<dyn KeyProvisioner>,
        config: BillingConfig,
    ) -> Self {
        Self {
            store,
            clock,
            keys,
            config,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BillingStore> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &BillingConfig {
        &self.config
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Carry out what a committed change asks of the user's keys. A provisioning failure
    /// does not undo the (committed) billing change: it is logged and recorded as an
    /// `alert.provisioning` event, and the next renewal or settlement applies it again.
    pub async fn apply_keys(&self, change: &SubscriptionChange) {
        let user = &change.subscription.user_id;
        let result = match &change.keys {
            KeyAction::None => return,
            KeyAction::Apply(ent) => self.keys.apply_entitlement(user, ent).await.map(|_| ()),
            KeyAction::Suspend => self.keys.suspend_keys(user).await,
        };
        if let Err(e) = result {
            tracing::warn!(user = %user, error = %e, "key provisioning failed");
            let detail = serde_json::json!({ "error": e.to_string(), "subscription": change.subscription.id });
            if let Err(e2) = self
                .store
                .record_event(
                    "alert.provisioning",
                    user.as_str(),
                    Some(user),
                    detail,
                    self.now(),
                )
                .await
            {
                tracing::warn!(error = %e2, "could not record provisioning alert");
            }
        }
    }

    async fn applied(&self, change: SubscriptionChange) -> SubscriptionChange {
        self.apply_keys(&change).await;
        change
    }

    // ----- ledger -----

    /// Debit `amount` from the wallet for a purchase (guarded by the credit limit),
    /// idempotent by `key`.
    pub async fn pay_by_balance(
        &self,
        user: &UserId,
        amount: Money,
        key: &str,
        memo: &str,
    ) -> Result<Posted> {
        positive(amount)?;
        let tx = NewTransaction {
            idempotency_key: format!("pay:{key}"),
            kind: TxKind::PlanCharge,
            user_id: Some(user.clone()),
            memo: memo.to_owned(),
            entries: vec![
                Entry::debit(Account::Wallet(user.clone()), amount),
                Entry::credit(Account::Revenue, amount),
            ],
            guarded: true,
        };
        self.store.post(&tx, self.now()).await
    }

    /// An admin adjustment: a positive `amount` credits the wallet, a negative one debits
    /// it (guarded). The reason is required and kept in the ledger.
    pub async fn adjust(
        &self,
        user: &UserId,
        amount: Money,
        reason: &str,
        actor: &str,
        key: &str,
    ) -> Result<Posted> {
        if reason.trim().is_empty() {
            return Err(BillingError::InvalidInput(
                "an adjustment needs a reason".into(),
            ));
        }
        if amount.is_zero() {
            return Err(BillingError::InvalidInput(
                "an adjustment must not be zero".into(),
            ));
        }
        let tx = NewTransaction {
            idempotency_key: format!("adjust:{key}"),
            kind: TxKind::Adjustment,
            user_id: Some(user.clone()),
            memo: format!("{actor}: {reason}"),
            entries: vec![
                Entry::debit(Account::Promotions, amount),
                Entry::credit(Account::Wallet(user.clone()), amount),
            ],
            guarded: true,
        };
        self.store.post(&tx, self.now()).await
    }

    /// Credit back part or all of a charge made with [`Billing::pay_by_balance`] under
    /// `charge_key` (or any plan or usage charge, by its ledger key); never more than it
    /// took in total. Idempotent by `key`.
    pub async fn refund_charge(
        &self,
        charge_key: &str,
        amount: Money,
        reason: &str,
        key: &str,
    ) -> Result<Posted> {
        let ledger_key = if charge_key.contains(':') {
            charge_key.to_owned()
        } else {
            format!("pay:{charge_key}")
        };
        self.store
            .refund_charge(&ledger_key, amount, reason, key, self.now())
            .await
    }

    /// Charge a usage batch (idempotent by batch id).
    pub async fn charge_usage(&self, batch: &UsageBatch) -> Result<UsageCharge> {
        self.store.charge_usage(batch, self.now()).await
    }

    // ----- orders -----

    /// A pending order that expires after the configured time.
    pub async fn create_order(
        &self,
        user: &UserId,
        purpose: OrderPurpose,
        amount: Money,
    ) -> Result<Order> {
        let now = self.now();
        self.store
            .create_order(user, purpose, amount, now + self.config.order_ttl, now)
            .await
    }

    /// Apply a verified provider payment (see [`crate::order`]). A plan purchase applies
    /// the plan's entitlement to the user's keys; a top-up of a user whose subscription
    /// is past due or suspended settles it at once when the wallet now affords it.
    pub async fn apply_payment(
        &self,
        order_id: &OrderId,
        provider: &str,
        provider_event_id: &str,
        amount: Money,
        provider_ref: &str,
    ) -> Result<Applied> {
        let notice = PaymentNotice {
            order_id: order_id.clone(),
            provider: provider.to_owned(),
            provider_event_id: provider_event_id.to_owned(),
            amount,
            provider_ref: provider_ref.to_owned(),
        };
        let (applied, change) = self
            .store
            .apply_payment(&notice, &self.config, self.now())
            .await?;
        if let Some(change) = change {
            self.apply_keys(&change).await;
        } else if !applied.replayed && matches!(applied.outcome, PaymentOutcome::Credited { .. }) {
            // The payment is committed whatever happens here; a failed settlement is
            // retried by the dunning job.
            if let Err(e) = self.settle_outstanding(&applied.order.user_id).await {
                tracing::warn!(user = %applied.order.user_id, error = %e, "settling after payment failed");
            }
        }
        Ok(applied)
    }

    /// Apply a verified provider refund.
    pub async fn apply_refund(
        &self,
        order_id: &OrderId,
        provider: &str,
        provider_event_id: &str,
        amount: Money,
        provider_ref: &str,
    ) -> Result<Applied> {
        let notice = PaymentNotice {
            order_id: order_id.clone(),
            provider: provider.to_owned(),
            provider_event_id: provider_event_id.to_owned(),
            amount,
            provider_ref: provider_ref.to_owned(),
        };
        self.store.apply_refund(&notice, self.now()).await
    }

    /// Try to pay a past-due or suspended subscription's open invoice from the wallet
    /// now. `None` when there is nothing to settle or the wallet does not afford it.
    pub async fn settle_outstanding(&self, user: &UserId) -> Result<Option<SubscriptionChange>> {
        let Some(sub) = self.store.latest_subscription(user).await? else {
            return Ok(None);
        };
        if !matches!(
            sub.status,
            SubscriptionStatus::PastDue | SubscriptionStatus::Suspended
        ) {
            return Ok(None);
        }
        match self
            .store
            .dun(&sub.id, true, &self.config, self.now())
            .await?
        {
            Some(change) => Ok(Some(self.applied(change).await)),
            None => Ok(None),
        }
    }

    // ----- subscriptions -----

    /// Subscribe to a plan (trial, or first period paid from the wallet) and apply its
    /// entitlement to the user's keys.
    pub async fn subscribe(&self, user: &UserId, plan: &PlanId) -> Result<SubscriptionChange> {
        let change = self
            .store
            .subscribe(user, plan, &self.config, self.now())
            .await?;
        Ok(self.applied(change).await)
    }

    /// Extend the current period by `days` (admin goodwill; audited as `actor`).
    pub async fn extend(
        &self,
        id: &SubscriptionId,
        days: u32,
        actor: &str,
    ) -> Result<SubscriptionChange> {
        let change = self.store.extend(id, days, actor, self.now()).await?;
        Ok(self.applied(change).await)
    }

    /// Cancel now (keys suspended) or at the end of the period.
    pub async fn cancel(
        &self,
        id: &SubscriptionId,
        at_period_end: bool,
        actor: &str,
    ) -> Result<SubscriptionChange> {
        let change = self
            .store
            .cancel(id, at_period_end, actor, self.now())
            .await?;
        Ok(self.applied(change).await)
    }

    /// Upgrade now with a proration credit; the new limits apply to the keys at once.
    pub async fn upgrade(&self, id: &SubscriptionId, plan: &PlanId) -> Result<SubscriptionChange> {
        let change = self
            .store
            .upgrade(id, plan, &self.config, self.now())
            .await?;
        Ok(self.applied(change).await)
    }

    /// Downgrade when the current period ends.
    pub async fn schedule_downgrade(
        &self,
        id: &SubscriptionId,
        plan: &PlanId,
    ) -> Result<SubscriptionChange> {
        self.store.schedule_downgrade(id, plan, self.now()).await
    }

    // ----- codes -----

    /// Generate and store `count` codes worth `value` each; returns the batch id and the
    /// codes (shown once to the operator).
    pub async fn generate_codes(
        &self,
        count: usize,
        value: Money,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(String, Vec<String>)> {
        if count == 0 || count > 100_000 {
            return Err(BillingError::InvalidInput(
                "generate 1 to 100000 codes at a time".into(),
            ));
        }
        let codes = redemption::generate(count)?;
        let batch = format!(
            "batch_{}",
            relay_core::OrderId::new()
                .as_str()
                .trim_start_matches("ord_")
        );
        self.store
            .create_codes(&batch, &codes, value, expires_at, self.now())
            .await?;
        Ok((batch, codes))
    }

    /// Redeem a code into the user's wallet.
    pub async fn redeem(&self, code: &str, user: &UserId) -> Result<Posted> {
        let posted = self.store.redeem_code(code, user, self.now()).await?;
        if let Err(e) = self.settle_outstanding(user).await {
            tracing::warn!(user = %user, error = %e, "settling after redemption failed");
        }
        Ok(posted)
    }

    /// Standing at `now` (what [`AccountStanding::standing`] answers at the clock's now).
    ///
    /// | billing state | status | entitled until |
    /// |---|---|---|
    /// | no subscription ever | active | none (pay as you go) |
    /// | trialing, active | active | period end |
    /// | past due, within grace | active | grace end |
    /// | past due, grace over (even before the dunning job ran) | past_due | grace end |
    /// | suspended | suspended | grace end |
    /// | canceled, expired | active | when it ended (in the past: not entitled) |
    /// | wallet below minus its credit limit (debt) | past_due | as above |
    pub async fn standing_at(&self, user: &UserId, now: DateTime<Utc>) -> Result<Standing> {
        let sub = self.store.latest_subscription(user).await?;
        let (mut status, entitled_until) = match &sub {
            None => (AccountStatus::Active, None),
            Some(s) => match s.status {
                SubscriptionStatus::Trialing | SubscriptionStatus::Active => {
                    (AccountStatus::Active, s.period_end)
                }
                SubscriptionStatus::PastDue => {
                    let grace = s.grace_until.unwrap_or(now);
                    if now < grace {
                        (AccountStatus::Active, Some(grace))
                    } else {
                        (AccountStatus::PastDue, Some(grace))
                    }
                }
                SubscriptionStatus::Suspended => (AccountStatus::Suspended, s.grace_until),
                SubscriptionStatus::Canceled | SubscriptionStatus::Expired => {
                    (AccountStatus::Active, s.ended_at.or(s.period_end))
                }
            },
        };
        if status == AccountStatus::Active {
            let wallet = self
                .store
                .wallet(user, self.config.default_currency)
                .await?;
            if wallet
                .balance
                .checked_add(&wallet.credit_limit)?
                .is_negative()
            {
                status = AccountStatus::PastDue;
            }
        }
        Ok(Standing {
            status,
            entitled_until,
        })
    }
}

#[async_trait]
impl AccountStanding for Billing {
    async fn standing(&self, user: &UserId) -> std::result::Result<Standing, StandingError> {
        self.standing_at(user, self.now())
            .await
            .map_err(|e| StandingError::Unavailable(e.to_string()))
    }
}

fn positive(amount: Money) -> Result<()> {
    if amount.is_negative() || amount.is_zero() {
        return Err(BillingError::InvalidInput("amount must be positive".into()));
    }
    Ok(())
}
