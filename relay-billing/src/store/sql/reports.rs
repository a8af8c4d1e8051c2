//! Reports, computed from the ledger, usage batches, subscriptions and invoices.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use relay_core::{Currency, Money, PlanId, UserId};
use rust_decimal::Decimal;

use super::{dec, from_ts, i, money, opt_s, parse, s, ts, SqlBillingStore};
use crate::error::Result;
use crate::invoice::InvoiceStatus;
use crate::ledger::Account;
use crate::reports::{OverdueItem, PlanCount, RevenueLine, UserPlanMargin};

impl SqlBillingStore {
    pub(super) async fn revenue_impl(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RevenueLine>> {
        let rows = sqlx::query(
            "SELECT e.account, e.currency, e.amount FROM billing_entries e \
             JOIN billing_transactions t ON t.id = e.tx_id \
             WHERE t.created_at >= $1 AND t.created_at < $2 \
               AND e.account IN ('revenue', 'refunds', 'promotions', 'tax_payable')",
        )
        .bind(ts(from))
        .bind(ts(to))
        .fetch_all(&self.pool)
        .await?;
        let mut sums: BTreeMap<(Currency, String), Decimal> = BTreeMap::new();
        for r in &rows {
            let currency: Currency = parse(&s(r, "currency")?)?;
            *sums.entry((currency, s(r, "account")?)).or_default() += dec(&s(r, "amount")?)?;
        }
        let currencies: std::collections::BTreeSet<Currency> =
            sums.keys().map(|(c, _)| *c).collect();
        let mut out = Vec::new();
        for c in currencies {
            let get = |acc: &str| -> Result<Money> {
                let account: Account = acc.parse()?;
                let sum = sums.get(&(c, acc.to_owned())).copied().unwrap_or_default();
                Ok(Money::new(account.natural(sum), c))
            };
            let revenue = get("revenue")?;
            let refunds = get("refunds")?;
            out.push(RevenueLine {
                currency: c,
                net: revenue.checked_sub(&refunds)?,
                revenue,
                refunds,
                promotions: get("promotions")?,
                tax: get("tax_payable")?,
            });
        }
        Ok(out)
    }

    pub(super) async fn active_by_plan_impl(&self) -> Result<Vec<PlanCount>> {
        let rows = sqlx::query(
            "SELECT s.plan_id, s.status, p.spec, p.version FROM billing_subscriptions s \
             JOIN billing_plans p ON p.id = s.plan_id \
             WHERE s.status IN ('trialing', 'active', 'past_due', 'suspended')",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts: BTreeMap<String, PlanCount> = BTreeMap::new();
        for r in &rows {
            let plan_id = s(r, "plan_id")?;
            let spec: crate::plan::PlanSpec = serde_json::from_str(&s(r, "spec")?)?;
            let entry = match counts.entry(plan_id.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(PlanCount {
                    plan_id: parse(&plan_id)?,
                    name: spec.name,
                    version: u32::try_from(i(r, "version")?).unwrap_or(0),
                    live: 0,
                    active: 0,
                }),
            };
            entry.live += 1;
            if s(r, "status")? == "active" {
                entry.active += 1;
            }
        }
        Ok(counts.into_values().collect())
    }

    pub(super) async fn usage_vs_revenue_impl(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UserPlanMargin>> {
        type Key = (UserId, Currency);
        struct Acc {
            plan: Option<PlanId>,
            cost: Decimal,
            charged: Decimal,
            fees: Decimal,
        }
        let mut acc: BTreeMap<Key, Acc> = BTreeMap::new();
        let batches = sqlx::query(
            "SELECT user_id, plan_id, currency, cost, charged FROM billing_usage_batches \
             WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at",
        )
        .bind(ts(from))
        .bind(ts(to))
        .fetch_all(&self.pool)
        .await?;
        for r in &batches {
            let key = (parse(&s(r, "user_id")?)?, parse(&s(r, "currency")?)?);
            let a = acc.entry(key).or_insert(Acc {
                plan: None,
                cost: Decimal::ZERO,
                charged: Decimal::ZERO,
                fees: Decimal::ZERO,
            });
            if let Some(p) = opt_s(r, "plan_id")? {
                a.plan = Some(parse(&p)?);
            }
            a.cost += dec(&s(r, "cost")?)?;
            a.charged += dec(&s(r, "charged")?)?;
        }
        // Plan fees: what plan charges credited to revenue net of proration credits.
        let fees = sqlx::query(
            "SELECT t.user_id, e.account, e.currency, e.amount FROM billing_entries e \
             JOIN billing_transactions t ON t.id = e.tx_id \
             WHERE t.kind IN ('plan_charge', 'invoice_on_credit', 'write_off') \
               AND e.account IN ('revenue', 'refunds') \
               AND t.created_at >= $1 AND t.created_at < $2 AND t.user_id IS NOT NULL",
        )
        .bind(ts(from))
        .bind(ts(to))
        .fetch_all(&self.pool)
        .await?;
        for r in &fees {
            let Some(user) = opt_s(r, "user_id")? else {
                continue;
            };
            let key = (parse(&user)?, parse(&s(r, "currency")?)?);
            let a = acc.entry(key).or_insert(Acc {
                plan: None,
                cost: Decimal::ZERO,
                charged: Decimal::ZERO,
                fees: Decimal::ZERO,
            });
            // Both accounts' entries, negated, are the net fee (credits to revenue are
            // negative entries; proration credits are positive entries on refunds).
            a.fees -= dec(&s(r, "amount")?)?;
        }
        let mut out = Vec::new();
        for ((user, currency), a) in acc {
            let plan = match a.plan {
                Some(p) => Some(p),
                None => sqlx::query_scalar::<_, String>(
                    "SELECT plan_id FROM billing_subscriptions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
                )
                .bind(user.as_str())
                .fetch_optional(&self.pool)
                .await?
                .map(|p| parse(&p))
                .transpose()?,
            };
            out.push(UserPlanMargin {
                user_id: user,
                plan_id: plan,
                currency,
                usage_cost: Money::new(a.cost, currency),
                usage_charged: Money::new(a.charged, currency),
                plan_fees: Money::new(a.fees, currency),
                margin: Money::new(a.charged + a.fees - a.cost, currency),
            });
        }
        Ok(out)
    }

    pub(super) async fn overdue_impl(&self, now: DateTime<Utc>) -> Result<Vec<OverdueItem>> {
        let rows = sqlx::query(
            "SELECT id, number, user_id, total, currency, status, finalized_at FROM billing_invoices \
             WHERE kind = 'invoice' AND status IN ('open', 'uncollectible') AND finalized_at <= $1 \
             ORDER BY finalized_at, number",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OverdueItem {
                    invoice_id: parse(&s(r, "id")?)?,
                    number: opt_s(r, "number")?,
                    user_id: parse(&s(r, "user_id")?)?,
                    total: money(&s(r, "total")?, &s(r, "currency")?)?,
                    status: s(r, "status")?.parse::<InvoiceStatus>()?,
                    since: from_ts(i(r, "finalized_at")?)?,
                })
            })
            .collect()
    }
}
