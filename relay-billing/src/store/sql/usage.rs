//! Usage batches charged to the ledger.

use chrono::{DateTime, Utc};
use relay_core::{Currency, Money, UserId};
use rust_decimal::Decimal;

use super::ledger::{ensure_wallet, post_in};
use super::{dec, money, s, subscriptions, ts, SqlBillingStore};
use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::invoice::{Invoice, LineItem, LineKind, TaxRule};
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

impl SqlBillingStore {
    pub(super) async fn invoice_usage_impl(
        &self,
        user: &UserId,
        currency: Currency,
        until: DateTime<Utc>,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Option<Invoice>> {
        let mut db = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT batch_id, subscription_id, charged FROM billing_usage_batches \
             WHERE user_id = $1 AND currency = $2 AND invoice_id IS NULL AND created_at < $3",
        )
        .bind(user.as_str())
        .bind(currency.code())
        .bind(ts(until))
        .fetch_all(&mut *db)
        .await?;
        let (mut payg, mut overage) = (Decimal::ZERO, Decimal::ZERO);
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            let charged = dec(&s(r, "charged")?)?;
            if super::opt_s(r, "subscription_id")?.is_some() {
                overage += charged;
            } else {
                payg += charged;
            }
            ids.push(s(r, "batch_id")?);
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let until_s = until.format("%Y-%m-%d %H:%M UTC");
        let mut lines = Vec::new();
        if !payg.is_zero() {
            lines.push(LineItem {
                kind: LineKind::Usage,
                description: format!("usage until {until_s}"),
                amount: Money::new(payg, currency),
            });
        }
        if !overage.is_zero() {
            lines.push(LineItem {
                kind: LineKind::Overage,
                description: format!("usage beyond included credit until {until_s}"),
                amount: Money::new(overage, currency),
            });
        }
        let invoice = if lines.is_empty() {
            None
        } else {
            // Tax is contained in what was charged: extract it, never add it.
            let statement = BillingConfig {
                tax: TaxRule {
                    inclusive: true,
                    ..config.tax
                },
                ..config.clone()
            };
            let inv =
                super::invoices::issue_in(&mut db, user, None, currency, &lines, &statement, now)
                    .await?;
            super::invoices::mark_paid_in(&mut db, &inv.id, now).await?;
            Some(super::invoices::must_invoice(&mut db, &inv.id).await?)
        };
        // Batches covered entirely by included credit are marked too (with the
        // statement, or `covered` when nothing was charged) so they are never looked at
        // again.
        let marker = invoice
            .as_ref()
            .map(|i| i.id.to_string())
            .unwrap_or_else(|| "covered".into());
        for id in &ids {
            sqlx::query("UPDATE billing_usage_batches SET invoice_id = $2 WHERE batch_id = $1 AND invoice_id IS NULL")
                .bind(id)
                .bind(&marker)
                .execute(&mut *db)
                .await?;
        }
        db.commit().await?;
        Ok(invoice)
    }
}
