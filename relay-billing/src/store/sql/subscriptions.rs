//! Subscriptions: life-cycle operations, each in one database transaction, each change
//! checked against the state machine and the row's version (optimistic concurrency, so
//! two instances running the same job cannot both renew a subscription).

use chrono::{DateTime, Utc};
use relay_core::{OrderId, PlanId, SubscriptionId, UserId};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::invoices::{charge_from_wallet_in, issue_in, must_invoice, pay_open_in};
use super::plans::must_plan;
use super::{
    audit_in, from_ts, i, opt_s, opt_ts, parse, record_event_in, s, ts, Dialect, SqlBillingStore,
};
use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::invoice::{Invoice, InvoiceStatus, LineItem, LineKind};
use crate::ledger::Transaction;
use crate::plan::{Plan, PlanStatus};
use crate::subscription::{
    proration_credit, transition, Action, KeyAction, Subscription, SubscriptionChange,
    SubscriptionStatus,
};

const COLUMNS: &str = "id, user_id, plan_id, status, period_start, period_end, cancel_at_period_end, \
                       pending_plan_id, grace_until, dunning_attempts, next_retry_at, open_invoice_id, \
                       ended_at, created_at, version";
const LIVE: &str = "('trialing', 'active', 'past_due', 'suspended')";

fn sub_from_row(r: &AnyRow) -> Result<Subscription> {
    Ok(Subscription {
        id: parse(&s(r, "id")?)?,
        user_id: parse(&s(r, "user_id")?)?,
        plan_id: parse(&s(r, "plan_id")?)?,
        status: s(r, "status")?.parse()?,
        period_start: from_ts(i(r, "period_start")?)?,
        period_end: opt_ts(r, "period_end")?,
        cancel_at_period_end: i(r, "cancel_at_period_end")? != 0,
        pending_plan_id: opt_s(r, "pending_plan_id")?
            .map(|x| parse(&x))
            .transpose()?,
        grace_until: opt_ts(r, "grace_until")?,
        dunning_attempts: u32::try_from(i(r, "dunning_attempts")?).unwrap_or(u32::MAX),
        next_retry_at: opt_ts(r, "next_retry_at")?,
        open_invoice_id: opt_s(r, "open_invoice_id")?
            .map(|x| parse(&x))
            .transpose()?,
        ended_at: opt_ts(r, "ended_at")?,
        created_at: from_ts(i(r, "created_at")?)?,
        version: i(r, "version")?,
    })
}

pub(crate) async fn load_sub(
    c: &mut AnyConnection,
    id: &SubscriptionId,
) -> Result<Option<Subscription>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM billing_subscriptions WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(sub_from_row).transpose()
}

/// Trialing or active subscriptions whose period ends in `(from, to]`, by period end.
pub(crate) async fn ending_between(
    c: &mut AnyConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Subscription>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM billing_subscriptions WHERE status IN ('trialing', 'active') \
         AND period_end > $1 AND period_end <= $2 ORDER BY period_end, id"
    ))
    .bind(ts(from))
    .bind(ts(to))
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(sub_from_row).collect()
}

pub(super) async fn must_sub(c: &mut AnyConnection, id: &SubscriptionId) -> Result<Subscription> {
    load_sub(c, id)
        .await?
        .ok_or_else(|| BillingError::NotFound {
            kind: "subscription",
            id: id.to_string(),
        })
}

pub(crate) async fn latest_sub(
    c: &mut AnyConnection,
    user: &UserId,
) -> Result<Option<Subscription>> {
    // A live subscription wins over ended ones; among the same kind, the newest.
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM billing_subscriptions WHERE user_id = $1 \
         ORDER BY CASE WHEN status IN {LIVE} THEN 0 ELSE 1 END, created_at DESC, id DESC LIMIT 1"
    ))
    .bind(user.as_str())
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(sub_from_row).transpose()
}

async fn live_sub(c: &mut AnyConnection, user: &UserId) -> Result<Option<Subscription>> {
    Ok(latest_sub(c, user).await?.filter(|s| s.status.is_live()))
}

async fn insert_sub(c: &mut AnyConnection, sub: &Subscription) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO billing_subscriptions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(sub.id.as_str())
    .bind(sub.user_id.as_str())
    .bind(sub.plan_id.as_str())
    .bind(sub.status.as_str())
    .bind(ts(sub.period_start))
    .bind(sub.period_end.map(ts))
    .bind(i64::from(sub.cancel_at_period_end))
    .bind(sub.pending_plan_id.as_ref().map(|x| x.as_str().to_owned()))
    .bind(sub.grace_until.map(ts))
    .bind(i64::from(sub.dunning_attempts))
    .bind(sub.next_retry_at.map(ts))
    .bind(sub.open_invoice_id.as_ref().map(|x| x.as_str().to_owned()))
    .bind(sub.ended_at.map(ts))
    .bind(ts(sub.created_at))
    .bind(sub.version)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Write `sub` if its stored version is still `sub.version`; the stored version becomes
/// `sub.version + 1`. A concurrent change is a `Conflict`.
pub(super) async fn save_sub(c: &mut AnyConnection, sub: &mut Subscription) -> Result<()> {
    let done = sqlx::query(
        "UPDATE billing_subscriptions SET plan_id = $3, status = $4, period_start = $5, period_end = $6, \
         cancel_at_period_end = $7, pending_plan_id = $8, grace_until = $9, dunning_attempts = $10, \
         next_retry_at = $11, open_invoice_id = $12, ended_at = $13, version = version + 1 \
         WHERE id = $1 AND version = $2",
    )
    .bind(sub.id.as_str())
    .bind(sub.version)
    .bind(sub.plan_id.as_str())
    .bind(sub.status.as_str())
    .bind(ts(sub.period_start))
    .bind(sub.period_end.map(ts))
    .bind(i64::from(sub.cancel_at_period_end))
    .bind(sub.pending_plan_id.as_ref().map(|x| x.as_str().to_owned()))
    .bind(sub.grace_until.map(ts))
    .bind(i64::from(sub.dunning_attempts))
    .bind(sub.next_retry_at.map(ts))
    .bind(sub.open_invoice_id.as_ref().map(|x| x.as_str().to_owned()))
    .bind(sub.ended_at.map(ts))
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Err(BillingError::Conflict(format!(
            "subscription {} changed concurrently",
            sub.id
        )));
    }
    sub.version += 1;
    Ok(())
}

/// Record the transition as an event and an audit record.
pub(super) async fn log_transition(
    c: &mut AnyConnection,
    sub: &Subscription,
    from: Option<SubscriptionStatus>,
    action: &str,
    actor: &str,
    detail: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<()> {
    let detail = serde_json::json!({
        "from": from.map(|f| f.as_str()),
        "to": sub.status.as_str(),
        "action": action,
        "plan_id": sub.plan_id,
        "period_start": sub.period_start,
        "period_end": sub.period_end,
        "detail": detail,
    });
    record_event_in(
        c,
        &format!("subscription.{action}"),
        sub.id.as_str(),
        Some(&sub.user_id),
        &detail,
        now,
    )
    .await?;
    audit_in(
        c,
        actor,
        &format!("subscription.{action}"),
        sub.id.as_str(),
        &detail,
        now,
    )
    .await
}

pub(super) fn plan_fee_line(
    plan: &Plan,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
) -> LineItem {
    let until = end
        .map(|e| format!(" until {}", e.format("%Y-%m-%d")))
        .unwrap_or_default();
    LineItem {
        kind: LineKind::PlanFee,
        description: format!(
            "{} from {}{until}",
            plan.spec.name,
            start.format("%Y-%m-%d")
        ),
        amount: plan.spec.price,
    }
}

fn active_plan(plan: &Plan) -> Result<()> {
    if plan.status != PlanStatus::Active {
        return Err(BillingError::InvalidInput(format!(
            "plan {} is archived and cannot be bought",
            plan.id
        )));
    }
    Ok(())
}

/// Charge an invoice for `lines` from the wallet: issued, then paid (guarded). On
/// insufficient funds the caller's transaction must be abandoned (the invoice was
/// written).
async fn charge_lines(
    c: &mut AnyConnection,
    d: Dialect,
    sub: &Subscription,
    lines: &[LineItem],
    config: &BillingConfig,
    now: DateTime<Utc>,
) -> Result<(Invoice, Option<Transaction>)> {
    let currency = lines
        .first()
        .map(|l| l.amount.currency())
        .unwrap_or(config.default_currency);
    let inv = issue_in(c, &sub.user_id, Some(&sub.id), currency, lines, config, now).await?;
    let tx = charge_from_wallet_in(c, d, &inv, now).await?;
    let inv = must_invoice(c, &inv.id).await?;
    Ok((inv, tx))
}

/// Start a subscription to `plan` now (trial or first paid period).
#[allow(clippy::too_many_arguments)]
async fn start_in(
    c: &mut AnyConnection,
    d: Dialect,
    user: &UserId,
    plan: &Plan,
    allow_trial: bool,
    actor: &str,
    config: &BillingConfig,
    now: DateTime<Utc>,
) -> Result<SubscriptionChange> {
    active_plan(plan)?;
    if live_sub(c, user).await?.is_some() {
        return Err(BillingError::InvalidInput(
            "the user already has a live subscription: upgrade, downgrade or cancel it".into(),
        ));
    }
    let trial = allow_trial && plan.spec.trial_days > 0;
    let (status, end) = if trial {
        let end = now + chrono::Duration::days(i64::from(plan.spec.trial_days));
        (SubscriptionStatus::Trialing, Some(end))
    } else {
        (SubscriptionStatus::Active, plan.spec.period.end_from(now))
    };
    let mut sub = Subscription {
        id: SubscriptionId::new(),
        user_id: user.clone(),
        plan_id: plan.id.clone(),
        status,
        period_start: from_ts(ts(now))?,
        period_end: end.map(|e| from_ts(ts(e))).transpose()?,
        cancel_at_period_end: false,
        pending_plan_id: None,
        grace_until: None,
        dunning_attempts: 0,
        next_retry_at: None,
        open_invoice_id: None,
        ended_at: None,
        created_at: from_ts(ts(now))?,
        version: 0,
    };
    // The partial unique index (one live subscription per user) is the backstop for a
    // concurrent subscribe: the loser gets a conflict.
    insert_sub(c, &sub).await?;
    let (invoice, transaction) = if trial || plan.spec.price.is_zero() {
        (None, None)
    } else {
        let lines = [plan_fee_line(plan, sub.period_start, sub.period_end)];
        let (inv, tx) = charge_lines(c, d, &sub, &lines, config, now).await?;
        (Some(inv), tx)
    };
    let action = if trial { "trial_started" } else { "activated" };
    log_transition(c, &sub, None, action, actor, serde_json::json!({}), now).await?;
    sub.version = 0;
    Ok(SubscriptionChange {
        keys: KeyAction::Apply(Box::new(plan.entitlement(sub.period_end))),
        subscription: sub,
        transaction,
        invoice,
    })
}

/// A paid plan purchase order: start the plan, settle what is overdue on it, or pay its
/// next period. Anything else (a live subscription to another plan) is refused and the
/// money stays in the wallet.
pub(crate) async fn purchase_in(
    c: &mut AnyConnection,
    d: Dialect,
    user: &UserId,
    plan_id: &PlanId,
    order: &OrderId,
    config: &BillingConfig,
    now: DateTime<Utc>,
) -> Result<SubscriptionChange> {
    let plan = must_plan(c, plan_id).await?;
    let actor = format!("order:{order}");
    match live_sub(c, user).await? {
        None => start_in(c, d, user, &plan, false, &actor, config, now).await,
        Some(sub) if &sub.plan_id != plan_id => Err(BillingError::InvalidInput(format!(
            "the user's live subscription is to plan {}, not {plan_id}",
            sub.plan_id
        ))),
        Some(sub) => match sub.status {
            SubscriptionStatus::PastDue | SubscriptionStatus::Suspended => {
                settle_in(c, d, sub, &actor, now).await
            }
            _ => {
                // Trialing or active: the payment buys the next period at once.
                let mut sub = sub;
                let from = sub.status;
                let start = sub.period_end.unwrap_or(now).max(now);
                let end = plan.spec.period.end_from(start);
                let lines = [plan_fee_line(&plan, start, end)];
                let (inv, tx) = charge_lines(c, d, &sub, &lines, config, now).await?;
                if from == SubscriptionStatus::Trialing {
                    sub.period_start = from_ts(ts(now))?;
                }
                sub.status = transition(from, Action::PayPeriod)?;
                sub.period_end = end;
                save_sub(c, &mut sub).await?;
                log_transition(
                    c,
                    &sub,
                    Some(from),
                    "period_paid",
                    &actor,
                    serde_json::json!({}),
                    now,
                )
                .await?;
                Ok(SubscriptionChange {
                    keys: KeyAction::Apply(Box::new(plan.entitlement(sub.period_end))),
                    subscription: sub,
                    transaction: tx,
                    invoice: Some(inv),
                })
            }
        },
    }
}

/// Pay a past-due or suspended subscription's open invoice from the wallet and make it
/// active again. Insufficient funds: error, nothing written.
pub(super) async fn settle_in(
    c: &mut AnyConnection,
    d: Dialect,
    mut sub: Subscription,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<SubscriptionChange> {
    let from = sub.status;
    let to = transition(from, Action::PayPeriod)?;
    let plan = must_plan(c, &sub.plan_id).await?;
    let mut transaction = None;
    let mut invoice = None;
    if let Some(inv_id) = sub.open_invoice_id.clone() {
        let inv = must_invoice(c, &inv_id).await?;
        if inv.status == InvoiceStatus::Open {
            transaction = pay_open_in(c, d, &inv, now).await?;
            invoice = Some(must_invoice(c, &inv_id).await?);
        }
    }
    sub.status = to;
    sub.grace_until = None;
    sub.next_retry_at = None;
    sub.dunning_attempts = 0;
    sub.open_invoice_id = None;
    save_sub(c, &mut sub).await?;
    log_transition(
        c,
        &sub,
        Some(from),
        "settled",
        actor,
        serde_json::json!({}),
        now,
    )
    .await?;
    Ok(SubscriptionChange {
        keys: KeyAction::Apply(Box::new(plan.entitlement(sub.period_end))),
        subscription: sub,
        transaction,
        invoice,
    })
}

impl SqlBillingStore {
    pub(super) async fn subscribe_impl(
        &self,
        user: &UserId,
        plan_id: &PlanId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        let mut db = self.pool.begin().await?;
        let plan = must_plan(&mut db, plan_id).await?;
        let change = start_in(
            &mut db,
            self.dialect,
            user,
            &plan,
            true,
            &format!("user:{user}"),
            config,
            now,
        )
        .await?;
        db.commit().await?;
        Ok(change)
    }

    pub(super) async fn cancel_impl(
        &self,
        id: &SubscriptionId,
        at_period_end: bool,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        let mut db = self.pool.begin().await?;
        let mut sub = must_sub(&mut db, id).await?;
        let from = sub.status;
        let keys = if at_period_end {
            sub.status = transition(from, Action::ScheduleCancel)?;
            if sub.period_end.is_none() {
                return Err(BillingError::InvalidInput(
                    "a one-off plan has no period end: cancel it now".into(),
                ));
            }
            sub.cancel_at_period_end = true;
            KeyAction::None
        } else {
            sub.status = transition(from, Action::Cancel)?;
            sub.ended_at = Some(from_ts(ts(now))?);
            sub.next_retry_at = None;
            KeyAction::Suspend
        };
        save_sub(&mut db, &mut sub).await?;
        let action = if at_period_end {
            "cancel_scheduled"
        } else {
            "canceled"
        };
        log_transition(
            &mut db,
            &sub,
            Some(from),
            action,
            actor,
            serde_json::json!({}),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(SubscriptionChange {
            subscription: sub,
            keys,
            transaction: None,
            invoice: None,
        })
    }

    pub(super) async fn extend_impl(
        &self,
        id: &SubscriptionId,
        days: u32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        if !(1..=3660).contains(&days) {
            return Err(BillingError::InvalidInput("days must be 1 to 3660".into()));
        }
        let mut db = self.pool.begin().await?;
        let mut sub = must_sub(&mut db, id).await?;
        if !matches!(
            sub.status,
            SubscriptionStatus::Trialing | SubscriptionStatus::Active
        ) {
            return Err(BillingError::IllegalTransition {
                kind: "subscription",
                state: sub.status.as_str().to_owned(),
                action: "extend",
            });
        }
        let Some(end) = sub.period_end else {
            return Err(BillingError::InvalidInput(
                "a one-off plan has no period end to extend".into(),
            ));
        };
        let previous = end;
        sub.period_end = Some(from_ts(ts(end + chrono::Duration::days(i64::from(days))))?);
        save_sub(&mut db, &mut sub).await?;
        log_transition(
            &mut db,
            &sub,
            Some(sub.status),
            "extended",
            actor,
            serde_json::json!({ "days": days, "previous_period_end": previous }),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(SubscriptionChange {
            subscription: sub,
            keys: KeyAction::None,
            transaction: None,
            invoice: None,
        })
    }

    pub(super) async fn upgrade_impl(
        &self,
        id: &SubscriptionId,
        plan_id: &PlanId,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        let mut db = self.pool.begin().await?;
        let mut sub = must_sub(&mut db, id).await?;
        let from = sub.status;
        let to = transition(from, Action::Upgrade)?;
        let old = must_plan(&mut db, &sub.plan_id).await?;
        let new = must_plan(&mut db, plan_id).await?;
        active_plan(&new)?;
        if new.id == old.id {
            return Err(BillingError::InvalidInput("already on this plan".into()));
        }
        if new.spec.price.currency() != old.spec.price.currency() {
            return Err(BillingError::InvalidInput(
                "cannot change to a plan in another currency".into(),
            ));
        }
        let mut lines = vec![plan_fee_line(&new, now, new.spec.period.end_from(now))];
        // A trial was not paid for, so it earns no credit.
        if from == SubscriptionStatus::Active {
            if let Some(end) = sub.period_end {
                let credit = proration_credit(old.spec.price, sub.period_start, end, now)?;
                if !credit.is_zero() {
                    lines.push(LineItem {
                        kind: LineKind::Proration,
                        description: format!(
                            "unused time on {} until {}",
                            old.spec.name,
                            end.format("%Y-%m-%d")
                        ),
                        amount: credit.negated(),
                    });
                }
            }
        }
        let (inv, tx) = charge_lines(&mut db, self.dialect, &sub, &lines, config, now).await?;
        sub.status = to;
        sub.plan_id = new.id.clone();
        sub.period_start = from_ts(ts(now))?;
        sub.period_end = new.spec.period.end_from(sub.period_start);
        sub.pending_plan_id = None;
        save_sub(&mut db, &mut sub).await?;
        log_transition(
            &mut db,
            &sub,
            Some(from),
            "upgraded",
            &format!("user:{}", sub.user_id),
            serde_json::json!({ "from_plan": old.id, "invoice": inv.id }),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(SubscriptionChange {
            keys: KeyAction::Apply(Box::new(new.entitlement(sub.period_end))),
            subscription: sub,
            transaction: tx,
            invoice: Some(inv),
        })
    }

    pub(super) async fn schedule_downgrade_impl(
        &self,
        id: &SubscriptionId,
        plan_id: &PlanId,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionChange> {
        let mut db = self.pool.begin().await?;
        let mut sub = must_sub(&mut db, id).await?;
        let from = sub.status;
        sub.status = transition(from, Action::ScheduleDowngrade)?;
        let old = must_plan(&mut db, &sub.plan_id).await?;
        let new = must_plan(&mut db, plan_id).await?;
        active_plan(&new)?;
        if new.id == old.id || new.spec.price.currency() != old.spec.price.currency() {
            return Err(BillingError::InvalidInput(
                "downgrade to a different plan in the same currency".into(),
            ));
        }
        if sub.period_end.is_none() {
            return Err(BillingError::InvalidInput(
                "a one-off plan has no period end to downgrade at".into(),
            ));
        }
        sub.pending_plan_id = Some(new.id.clone());
        save_sub(&mut db, &mut sub).await?;
        log_transition(
            &mut db,
            &sub,
            Some(from),
            "downgrade_scheduled",
            &format!("user:{}", sub.user_id),
            serde_json::json!({ "to_plan": new.id }),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(SubscriptionChange {
            subscription: sub,
            keys: KeyAction::None,
            transaction: None,
            invoice: None,
        })
    }
}
