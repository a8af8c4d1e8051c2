//! Usage batches charged to the ledger.

use chrono::{DateTime, Utc};
use relay_core::Money;
use rust_decimal::Decimal;

use super::ledger::{ensure_wallet, post_in};
use super::{dec, money, s, subscriptions, ts, SqlBillingStore};
use crate::error::{BillingError, Result};
use crate::ledger::{Account, Entry, NewTransaction, TxKind};
use crate::subscription::SubscriptionStatus;
use crate::usage::{UsageBatch, UsageCharge};

fn fingerprint(batch: &UsageBatch) -> String {
    format!(
        "{}|{}|{}",
        batch.user_id,
        batch.cost.amount().normalize(),
        batch.cost.currency()
    )
}

impl SqlBillingStore {
    pub(super) async fn charge_usage_once(
        &self,
        batch: &UsageBatch,
        now: DateTime<Utc>,
    ) -> Result<UsageCharge> {
        let currency = batch.cost.currency();
        let mut db = self.pool.begin().await?;
        let existing = sqlx::query(
            "SELECT cost, currency, covered, charged, fingerprint FROM billing_usage_batches WHERE batch_id = $1",
        )
        .bind(&batch.batch_id)
        .fetch_optional(&mut *db)
        .await?;
        if let Some(r) = existing {
            if s(&r, "fingerprint")? != fingerprint(batch) {
                return Err(BillingError::IdempotencyConflict(format!(
                    "usage:{}",
                    batch.batch_id
                )));
            }
            let cur = s(&r, "currency")?;
            let tx =
                super::ledger::load_by_key(&mut db, &format!("usage:{}", batch.batch_id)).await?;
            return Ok(UsageCharge {
                batch_id: batch.batch_id.clone(),
                cost: money(&s(&r, "cost")?, &cur)?,
                covered: money(&s(&r, "covered")?, &cur)?,
                charged: money(&s(&r, "charged")?, &cur)?,
                transaction_id: tx.map(|(t, _)| t.id),
                replayed: true,
            });
        }
        // Serialise a user's usage charges on their wallet row, so two batches never
        // both spend the same included credit.
        ensure_wallet(&mut db, &batch.user_id, currency, now).await?;
        sqlx::query("UPDATE billing_wallets SET updated_at = updated_at WHERE user_id = $1 AND currency = $2")
            .bind(batch.user_id.as_str())
            .bind(currency.code())
            .execute(&mut *db)
            .await?;
        let sub = subscriptions::latest_sub(&mut db, &batch.user_id)
            .await?
            .filter(|s| {
                matches!(
                    s.status,
                    SubscriptionStatus::Trialing
                        | SubscriptionStatus::Active
                        | SubscriptionStatus::PastDue
                )
            });
        let plan = match &sub {
            Some(s) => Some(super::plans::must_plan(&mut db, &s.plan_id).await?),
            None => None,
        };
        let mut covered = Money::zero(currency);
        let mut multiplier = Decimal::ONE;
        if let (Some(sub), Some(plan)) = (&sub, &plan) {
            if plan.spec.included_credit.currency() == currency {
                let used_rows = sqlx::query(
                    "SELECT covered FROM billing_usage_batches WHERE subscription_id = $1 AND period_start = $2",
                )
                .bind(sub.id.as_str())
                .bind(ts(sub.period_start))
                .fetch_all(&mut *db)
                .await?;
                let mut used = Decimal::ZERO;
                for r in &used_rows {
                    used += dec(&s(r, "covered")?)?;
                }
                let left = (plan.spec.included_credit.amount() - used).max(Decimal::ZERO);
                covered = Money::new(left.min(batch.cost.amount()), currency);
                multiplier = plan.spec.overage.multiplier;
            }
        }
        let uncovered = batch.cost.checked_sub(&covered)?;
        let charged = uncovered.checked_mul(multiplier)?;
        let mut transaction_id = None;
        if !charged.is_zero() {
            // Usage already happened: the charge is posted unguarded (admission is where
            // spending is prevented); a wallet pushed past its credit limit shows as past
            // due in the standing.
            let tx = NewTransaction {
                idempotency_key: format!("usage:{}", batch.batch_id),
                kind: TxKind::UsageCharge,
                user_id: Some(batch.user_id.clone()),
                memo: format!("usage batch {}", batch.batch_id),
                entries: vec![
                    Entry::debit(Account::Wallet(batch.user_id.clone()), charged),
                    Entry::credit(Account::Revenue, charged),
                ],
                guarded: false,
            };
            transaction_id = Some(
                post_in(&mut db, self.dialect, &tx, now)
                    .await?
                    .transaction()
                    .id
                    .clone(),
            );
        }
        sqlx::query(
            "INSERT INTO billing_usage_batches (batch_id, user_id, subscription_id, plan_id, period_start, currency, cost, covered, charged, fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&batch.batch_id)
        .bind(batch.user_id.as_str())
        .bind(sub.as_ref().map(|s| s.id.as_str().to_owned()))
        .bind(sub.as_ref().map(|s| s.plan_id.as_str().to_owned()))
        .bind(sub.as_ref().map(|s| ts(s.period_start)))
        .bind(currency.code())
        .bind(batch.cost.amount().to_string())
        .bind(covered.amount().to_string())
        .bind(charged.amount().to_string())
        .bind(fingerprint(batch))
        .bind(ts(now))
        .execute(&mut *db)
        .await?;
        db.commit().await?;
        Ok(UsageCharge {
            batch_id: batch.batch_id.clone(),
            cost: batch.cost,
            covered,
            charged,
            transaction_id,
            replayed: false,
        })
    }
}
