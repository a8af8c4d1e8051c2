//! The periodic side of subscriptions: renewal at period end, and dunning (payment
//! retries, suspension after grace, expiry and write-off after the suspension period).

use chrono::{DateTime, Utc};
use relay_core::SubscriptionId;

use super::invoices::{
    book_receivable_in, charge_from_wallet_in, close_open_in, issue_in, must_invoice,
};
use super::plans::must_plan;
use super::subscriptions::{log_transition, must_sub, plan_fee_line, save_sub, settle_in};
use super::{from_ts, parse, s, ts, SqlBillingStore};
use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::invoice::InvoiceStatus;
use crate::subscription::{transition, Action, KeyAction, SubscriptionChange, SubscriptionStatus};

impl SqlBillingStore {
    pub(super) async fn due_for_renewal_impl(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionId>> {
        let rows = sqlx::query(
            "SELECT id FROM billing_subscriptions WHERE status IN ('trialing', 'active') \
             AND period_end IS NOT NULL AND period_end <= $1 ORDER BY period_end, id",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| parse(&s(r, "id")?)).collect()
    }

    pub(super) async fn renew_impl(
        &self,
        id: &SubscriptionId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<SubscriptionChange>> {
        let mut db = self.pool.begin().await?;
        let mut sub = must_sub(&mut db, id).await?;
        let from = sub.status;
        let Some(end) = sub.period_end else {
            return Ok(None);
        };
        if !matches!(
            from,
            SubscriptionStatus::Trialing | SubscriptionStatus::Active
        ) || end > now
        {
            return Ok(None);
        }
        if sub.cancel_at_period_end {
            sub.status = transition(from, Action::Cancel)?;
            sub.ended_at = Some(end);
            save_sub(&mut db, &mut sub).await?;
            log_transition(
                &mut db,
                &sub,
                Some(from),
                "canceled",
                "job:renewals",
                serde_json::json!({ "at_period_end": true }),
                now,
            )
            .await?;
            db.commit().await?;
            return Ok(Some(SubscriptionChange {
                subscription: sub,
                keys: KeyAction::Suspend,
                transaction: None,
                invoice: None,
            }));
        }
        let plan_id = sub
            .pending_plan_id
            .clone()
            .unwrap_or_else(|| sub.plan_id.clone());
        let plan = must_plan(&mut db, &plan_id).await?;
        let new_end = plan.spec.period.end_from(end);
        let lines = [plan_fee_line(&plan, end, new_end)];
        sub.plan_id = plan.id.clone();
        sub.pending_plan_id = None;
        sub.period_start = end;
        sub.period_end = new_end;
        if plan.spec.price.is_zero() {
            sub.status = transition(from, Action::PayPeriod)?;
            save_sub(&mut db, &mut sub).await?;
            log_transition(
                &mut db,
                &sub,
                Some(from),
                "renewed",
                "job:renewals",
                serde_json::json!({}),
                now,
            )
            .await?;
            db.commit().await?;
            return Ok(Some(SubscriptionChange {
                keys: KeyAction::Apply(Box::new(plan.entitlement(sub.period_end))),
                subscription: sub,
                transaction: None,
                invoice: None,
            }));
        }
        let inv = issue_in(
            &mut db,
            &sub.user_id,
            Some(&sub.id),
            plan.spec.price.currency(),
            &lines,
            config,
            now,
        )
        .await?;
        match charge_from_wallet_in(&mut db, self.dialect, &inv, now).await {
            Ok(tx) => {
                sub.status = transition(from, Action::PayPeriod)?;
                save_sub(&mut db, &mut sub).await?;
                log_transition(
                    &mut db,
                    &sub,
                    Some(from),
                    "renewed",
                    "job:renewals",
                    serde_json::json!({ "invoice": inv.id }),
                    now,
                )
                .await?;
                let inv = must_invoice(&mut db, &inv.id).await?;
                db.commit().await?;
                Ok(Some(SubscriptionChange {
                    keys: KeyAction::Apply(Box::new(plan.entitlement(sub.period_end))),
                    subscription: sub,
                    transaction: tx,
                    invoice: Some(inv),
                }))
            }
            Err(BillingError::InsufficientFunds { .. }) => {
                // Nothing was written by the failed charge: the invoice stays open and
                // is booked as owed; keys keep working through the grace period.
                let tx = book_receivable_in(&mut db, self.dialect, &inv, now).await?;
                sub.status = transition(from, Action::FailRenewal)?;
                sub.grace_until = Some(end + config.grace);
                sub.next_retry_at = Some(now + config.retry_interval);
                sub.dunning_attempts = 1;
                sub.open_invoice_id = Some(inv.id.clone());
                save_sub(&mut db, &mut sub).await?;
                log_transition(
                    &mut db,
                    &sub,
                    Some(from),
                    "renewal_failed",
                    "job:renewals",
                    serde_json::json!({ "invoice": inv.id }),
                    now,
                )
                .await?;
                db.commit().await?;
                Ok(Some(SubscriptionChange {
                    subscription: sub,
                    keys: KeyAction::None,
                    transaction: tx,
                    invoice: Some(inv),
                }))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn due_for_dunning_impl(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionId>> {
        let rows = sqlx::query(
            "SELECT id FROM billing_subscriptions WHERE status IN ('past_due', 'suspended') \
             AND next_retry_at IS NOT NULL AND next_retry_at <= $1 ORDER BY next_retry_at, id",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| parse(&s(r, "id")?)).collect()
    }

    pub(super) async fn dun_impl(
        &self,
        id: &SubscriptionId,
        force: bool,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<SubscriptionChange>> {
        let mut db = self.pool.begin().await?;
        let sub = must_sub(&mut db, id).await?;
        let from = sub.status;
        if !matches!(
            from,
            SubscriptionStatus::PastDue | SubscriptionStatus::Suspended
        ) {
            return Ok(None);
        }
        if !force && sub.next_retry_at.is_none_or(|t| t > now) {
            return Ok(None);
        }
        let actor = if force {
            "system:settle"
        } else {
            "job:dunning"
        };
        // SAVEPOINT so a refused payment leaves the transaction usable for the
        // bookkeeping of the failed attempt.
        sqlx::query("SAVEPOINT dunning_payment")
            .execute(&mut *db)
            .await?;
        let settled = settle_in(&mut db, self.dialect, sub.clone(), actor, now).await;
        match settled {
            Ok(change) => {
                sqlx::query("RELEASE SAVEPOINT dunning_payment")
                    .execute(&mut *db)
                    .await?;
                db.commit().await?;
                return Ok(Some(change));
            }
            Err(BillingError::InsufficientFunds { .. }) => {
                sqlx::query("ROLLBACK TO SAVEPOINT dunning_payment")
                    .execute(&mut *db)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT dunning_payment")
                    .execute(&mut *db)
                    .await?;
            }
            Err(e) => return Err(e),
        }
        if force {
            return Ok(None);
        }
        let mut sub = sub;
        sub.dunning_attempts = sub.dunning_attempts.saturating_add(1);
        sub.next_retry_at = Some(now + config.retry_interval);
        let grace_end = sub.grace_until.unwrap_or(now);
        let mut keys = KeyAction::None;
        let mut transaction = None;
        let mut action = "payment_retry_failed";
        if from == SubscriptionStatus::PastDue && now >= grace_end {
            sub.status = transition(from, Action::Suspend)?;
            keys = KeyAction::Suspend;
            action = "suspended";
        } else if from == SubscriptionStatus::Suspended
            && now >= grace_end + config.suspended_until_expiry
        {
            sub.status = transition(from, Action::Expire)?;
            sub.ended_at = Some(from_ts(ts(now))?);
            sub.next_retry_at = None;
            if let Some(inv_id) = sub.open_invoice_id.clone() {
                let inv = must_invoice(&mut db, &inv_id).await?;
                if inv.status == InvoiceStatus::Open {
                    transaction = close_open_in(&mut db, self.dialect, &inv, true, now).await?;
                }
            }
            keys = KeyAction::Suspend;
            action = "expired";
        }
        save_sub(&mut db, &mut sub).await?;
        log_transition(
            &mut db,
            &sub,
            Some(from),
            action,
            actor,
            serde_json::json!({ "attempt": sub.dunning_attempts }),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(Some(SubscriptionChange {
            subscription: sub,
            keys,
            transaction,
            invoice: None,
        }))
    }
}
