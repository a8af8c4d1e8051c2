//! Orders and the application of provider payment and refund events.

use chrono::{DateTime, Utc};
use relay_core::{Money, OrderId, UserId};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::ledger::post_in;
use super::{
    audit_in, from_ts, i, money, opt_s, parse, record_event_in, s, subscriptions, ts,
    SqlBillingStore,
};
use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::ledger::{Account, Entry, NewTransaction, TxKind};
use crate::order::{Applied, Order, OrderPurpose, OrderStatus, PaymentNotice, PaymentOutcome};
use crate::plan::PlanStatus;
use crate::subscription::SubscriptionChange;

const COLUMNS: &str =
    "id, user_id, purpose, plan_id, amount, currency, status, refunded, provider, \
                       provider_ref, review_reason, subscription_id, created_at, expires_at";

fn order_from_row(r: &AnyRow) -> Result<Order> {
    let currency = s(r, "currency")?;
    let purpose = match s(r, "purpose")?.as_str() {
        "top_up" => OrderPurpose::TopUp,
        "plan_purchase" => OrderPurpose::PlanPurchase(parse(
            &opt_s(r, "plan_id")?
                .ok_or_else(|| BillingError::Corrupt("plan purchase without plan".into()))?,
        )?),
        other => return Err(BillingError::Corrupt(format!("order purpose `{other}`"))),
    };
    Ok(Order {
        id: parse(&s(r, "id")?)?,
        user_id: parse(&s(r, "user_id")?)?,
        purpose,
        amount: money(&s(r, "amount")?, &currency)?,
        status: s(r, "status")?.parse()?,
        refunded: money(&s(r, "refunded")?, &currency)?,
        provider: opt_s(r, "provider")?,
        provider_ref: opt_s(r, "provider_ref")?,
        review_reason: opt_s(r, "review_reason")?,
        subscription_id: opt_s(r, "subscription_id")?
            .map(|x| parse(&x))
            .transpose()?,
        created_at: from_ts(i(r, "created_at")?)?,
        expires_at: from_ts(i(r, "expires_at")?)?,
    })
}

pub(crate) async fn load_order(c: &mut AnyConnection, id: &OrderId) -> Result<Option<Order>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM billing_orders WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(order_from_row).transpose()
}

async fn must_order(c: &mut AnyConnection, id: &OrderId) -> Result<Order> {
    load_order(c, id)
        .await?
        .ok_or_else(|| BillingError::NotFound {
            kind: "order",
            id: id.to_string(),
        })
}

/// A recorded provider event: `(kind, order id, amount, outcome)`.
async fn recorded_event(
    c: &mut AnyConnection,
    notice: &PaymentNotice,
) -> Result<Option<(String, String, Money, PaymentOutcome)>> {
    let row = sqlx::query(
        "SELECT kind, order_id, amount, currency, outcome FROM billing_payment_events \
         WHERE provider = $1 AND event_id = $2",
    )
    .bind(&notice.provider)
    .bind(&notice.provider_event_id)
    .fetch_optional(&mut *c)
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some((
        s(&r, "kind")?,
        s(&r, "order_id")?,
        money(&s(&r, "amount")?, &s(&r, "currency")?)?,
        serde_json::from_str(&s(&r, "outcome")?)?,
    )))
}

async fn record_payment_event(
    c: &mut AnyConnection,
    kind: &str,
    notice: &PaymentNotice,
    outcome: &PaymentOutcome,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO billing_payment_events (provider, event_id, kind, order_id, amount, currency, provider_ref, outcome, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&notice.provider)
    .bind(&notice.provider_event_id)
    .bind(kind)
    .bind(notice.order_id.as_str())
    .bind(notice.amount.amount().to_string())
    .bind(notice.amount.currency().code())
    .bind(&notice.provider_ref)
    .bind(serde_json::to_string(outcome)?)
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// A replay must name the same order, kind and amount; anything else is a conflict.
fn check_replay(
    notice: &PaymentNotice,
    kind: &str,
    recorded: (String, String, Money, PaymentOutcome),
) -> Result<PaymentOutcome> {
    let (rkind, order, amount, outcome) = recorded;
    if rkind != kind || order != notice.order_id.as_str() || amount != notice.amount {
        return Err(BillingError::IdempotencyConflict(format!(
            "{}:{}",
            notice.provider, notice.provider_event_id
        )));
    }
    Ok(outcome)
}

async fn set_status(
    c: &mut AnyConnection,
    order: &OrderId,
    status: OrderStatus,
    review_reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE billing_orders SET status = $2, review_reason = COALESCE($3, review_reason), updated_at = $4 WHERE id = $1",
    )
    .bind(order.as_str())
    .bind(status.as_str())
    .bind(review_reason.map(str::to_owned))
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    Ok(())
}

impl SqlBillingStore {
    pub(super) async fn create_order_impl(
        &self,
        user: &UserId,
        purpose: OrderPurpose,
        amount: Money,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Order> {
        if amount.is_negative() || amount.is_zero() {
            return Err(BillingError::InvalidInput(
                "order amount must be positive".into(),
            ));
        }
        if expires_at <= now {
            return Err(BillingError::InvalidInput(
                "order must expire in the future".into(),
            ));
        }
        let mut db = self.pool.begin().await?;
        if let OrderPurpose::PlanPurchase(plan_id) = &purpose {
            let plan = super::plans::must_plan(&mut db, plan_id).await?;
            if plan.status != PlanStatus::Active {
                return Err(BillingError::InvalidInput(format!(
                    "plan {plan_id} is archived and cannot be bought"
                )));
            }
            if plan.spec.price != amount {
                return Err(BillingError::InvalidInput(format!(
                    "a plan purchase order must be for the plan's price {}",
                    plan.spec.price
                )));
            }
        }
        let id = OrderId::new();
        let (purpose_s, plan) = match &purpose {
            OrderPurpose::TopUp => ("top_up", None),
            OrderPurpose::PlanPurchase(p) => ("plan_purchase", Some(p.as_str().to_owned())),
        };
        sqlx::query(
            "INSERT INTO billing_orders (id, user_id, purpose, plan_id, amount, currency, status, refunded, created_at, expires_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', '0', $7, $8, $7)",
        )
        .bind(id.as_str())
        .bind(user.as_str())
        .bind(purpose_s)
        .bind(plan)
        .bind(amount.amount().to_string())
        .bind(amount.currency().code())
        .bind(ts(now))
        .bind(ts(expires_at))
        .execute(&mut *db)
        .await?;
        let order = must_order(&mut db, &id).await?;
        db.commit().await?;
        Ok(order)
    }

    pub(super) async fn apply_payment_once(
        &self,
        notice: &PaymentNotice,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<(Applied, Option<SubscriptionChange>)> {
        let mut db = self.pool.begin().await?;
        if let Some(recorded) = recorded_event(&mut db, notice).await? {
            let outcome = check_replay(notice, "payment", recorded)?;
            let order = must_order(&mut db, &notice.order_id).await?;
            return Ok((
                Applied {
                    outcome,
                    replayed: true,
                    order,
                },
                None,
            ));
        }
        super::lock_row(
            &mut db,
            self.dialect,
            "billing_orders",
            notice.order_id.as_str(),
        )
        .await?;
        let order = must_order(&mut db, &notice.order_id).await?;
        let hold_reason = if notice.amount.currency() != order.amount.currency() {
            Some(format!(
                "paid in {} but the order is in {}",
                notice.amount.currency(),
                order.amount.currency()
            ))
        } else if notice.amount != order.amount {
            Some(format!(
                "paid {} but the order is for {}",
                notice.amount, order.amount
            ))
        } else {
            match order.status {
                OrderStatus::Pending => None,
                OrderStatus::Expired => Some("payment arrived after the order expired".into()),
                OrderStatus::Paid => Some("order was already paid (duplicate payment)".into()),
                OrderStatus::HeldForReview => Some("order is held for review".into()),
                OrderStatus::Refunded => Some("order was refunded".into()),
            }
        };
        if let Some(reason) = hold_reason {
            if matches!(order.status, OrderStatus::Pending | OrderStatus::Expired) {
                set_status(
                    &mut db,
                    &order.id,
                    OrderStatus::HeldForReview,
                    Some(&reason),
                    now,
                )
                .await?;
            }
            let outcome = PaymentOutcome::HeldForReview {
                reason: reason.clone(),
            };
            record_payment_event(&mut db, "payment", notice, &outcome, now).await?;
            let detail = serde_json::json!({
                "provider": notice.provider, "event_id": notice.provider_event_id,
                "amount": notice.amount, "reason": reason,
            });
            record_event_in(
                &mut db,
                "order.held_for_review",
                order.id.as_str(),
                Some(&order.user_id),
                &detail,
                now,
            )
            .await?;
            audit_in(
                &mut db,
                &format!("provider:{}", notice.provider),
                "order.hold",
                order.id.as_str(),
                &detail,
                now,
            )
            .await?;
            let order = must_order(&mut db, &order.id).await?;
            db.commit().await?;
            return Ok((
                Applied {
                    outcome,
                    replayed: false,
                    order,
                },
                None,
            ));
        }
        let user = order.user_id.clone();
        let top_up = NewTransaction {
            idempotency_key: format!("payment:{}:{}", notice.provider, notice.provider_event_id),
            kind: TxKind::TopUp,
            user_id: Some(user.clone()),
            memo: format!(
                "order {} paid via {} ({})",
                order.id, notice.provider, notice.provider_ref
            ),
            entries: vec![
                Entry::debit(Account::ProviderClearing, notice.amount),
                Entry::credit(Account::Wallet(user.clone()), notice.amount),
            ],
            guarded: true,
        };
        let posted = post_in(&mut db, self.dialect, &top_up, now).await?;
        let mut change = None;
        if let OrderPurpose::PlanPurchase(plan_id) = &order.purpose {
            // A savepoint, so a purchase that fails half-way leaves only the top-up.
            sqlx::query("SAVEPOINT plan_purchase")
                .execute(&mut *db)
                .await?;
            let purchased = subscriptions::purchase_in(
                &mut db,
                self.dialect,
                &user,
                plan_id,
                &order.id,
                config,
                now,
            )
            .await;
            if purchased.is_err() {
                sqlx::query("ROLLBACK TO SAVEPOINT plan_purchase")
                    .execute(&mut *db)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT plan_purchase")
                .execute(&mut *db)
                .await?;
            match purchased {
                Ok(ch) => change = Some(ch),
                // The money arrived whatever happens to the plan: it stays in the wallet
                // and the reason is recorded for a human.
                Err(
                    e @ (BillingError::InsufficientFunds { .. }
                    | BillingError::IllegalTransition { .. }
                    | BillingError::InvalidInput(_)),
                ) => {
                    let detail = serde_json::json!({ "plan_id": plan_id, "reason": e.to_string() });
                    record_event_in(
                        &mut db,
                        "order.plan_not_activated",
                        order.id.as_str(),
                        Some(&user),
                        &detail,
                        now,
                    )
                    .await?;
                }
                Err(e) => return Err(e),
            }
        }
        let sub_id = change.as_ref().map(|c| c.subscription.id.clone());
        sqlx::query(
            "UPDATE billing_orders SET status = 'paid', provider = $2, provider_ref = $3, subscription_id = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(order.id.as_str())
        .bind(&notice.provider)
        .bind(&notice.provider_ref)
        .bind(sub_id.as_ref().map(|x| x.as_str().to_owned()))
        .bind(ts(now))
        .execute(&mut *db)
        .await?;
        let outcome = PaymentOutcome::Credited {
            transaction_id: posted.transaction().id.clone(),
            subscription_id: sub_id,
        };
        record_payment_event(&mut db, "payment", notice, &outcome, now).await?;
        let detail = serde_json::json!({
            "provider": notice.provider, "event_id": notice.provider_event_id, "amount": notice.amount,
        });
        record_event_in(
            &mut db,
            "order.paid",
            order.id.as_str(),
            Some(&user),
            &detail,
            now,
        )
        .await?;
        audit_in(
            &mut db,
            &format!("provider:{}", notice.provider),
            "order.pay",
            order.id.as_str(),
            &detail,
            now,
        )
        .await?;
        let order = must_order(&mut db, &order.id).await?;
        db.commit().await?;
        Ok((
            Applied {
                outcome,
                replayed: false,
                order,
            },
            change,
        ))
    }

    pub(super) async fn apply_refund_once(
        &self,
        notice: &PaymentNotice,
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let mut db = self.pool.begin().await?;
        if let Some(recorded) = recorded_event(&mut db, notice).await? {
            let outcome = check_replay(notice, "refund", recorded)?;
            let order = must_order(&mut db, &notice.order_id).await?;
            return Ok(Applied {
                outcome,
                replayed: true,
                order,
            });
        }
        super::lock_row(
            &mut db,
            self.dialect,
            "billing_orders",
            notice.order_id.as_str(),
        )
        .await?;
        let order = must_order(&mut db, &notice.order_id).await?;
        let refundable = order.amount.checked_sub(&order.refunded);
        let hold_reason = if order.status != OrderStatus::Paid {
            Some(format!(
                "refund for an order that is {}, not paid",
                order.status
            ))
        } else if notice.amount.currency() != order.amount.currency() {
            Some(format!(
                "refund in {} but the order is in {}",
                notice.amount.currency(),
                order.amount.currency()
            ))
        } else {
            match refundable {
                Ok(left) if notice.amount.checked_cmp(&left)? != std::cmp::Ordering::Greater => {
                    None
                }
                Ok(left) => Some(format!(
                    "refund of {} exceeds the {} left to refund",
                    notice.amount, left
                )),
                Err(e) => return Err(e.into()),
            }
        };
        let user = order.user_id.clone();
        if let Some(reason) = hold_reason {
            let outcome = PaymentOutcome::HeldForReview {
                reason: reason.clone(),
            };
            record_payment_event(&mut db, "refund", notice, &outcome, now).await?;
            let detail = serde_json::json!({
                "provider": notice.provider, "event_id": notice.provider_event_id,
                "amount": notice.amount, "reason": reason,
            });
            record_event_in(
                &mut db,
                "refund.held_for_review",
                order.id.as_str(),
                Some(&user),
                &detail,
                now,
            )
            .await?;
            let order = must_order(&mut db, &order.id).await?;
            db.commit().await?;
            return Ok(Applied {
                outcome,
                replayed: false,
                order,
            });
        }
        // The provider already returned the money: the debit is a fact, posted unguarded.
        // A wallet pushed below its credit limit shows as past due in the standing.
        let tx = NewTransaction {
            idempotency_key: format!("refund:{}:{}", notice.provider, notice.provider_event_id),
            kind: TxKind::PaymentRefund,
            user_id: Some(user.clone()),
            memo: format!(
                "order {} refunded via {} ({})",
                order.id, notice.provider, notice.provider_ref
            ),
            entries: vec![
                Entry::debit(Account::Wallet(user.clone()), notice.amount),
                Entry::credit(Account::ProviderClearing, notice.amount),
            ],
            guarded: false,
        };
        let posted = post_in(&mut db, self.dialect, &tx, now).await?;
        let refunded = order.refunded.checked_add(&notice.amount)?;
        let status = if refunded == order.amount {
            OrderStatus::Refunded
        } else {
            OrderStatus::Paid
        };
        sqlx::query(
            "UPDATE billing_orders SET refunded = $2, status = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(order.id.as_str())
        .bind(refunded.amount().to_string())
        .bind(status.as_str())
        .bind(ts(now))
        .execute(&mut *db)
        .await?;
        let outcome = PaymentOutcome::Refunded {
            transaction_id: posted.transaction().id.clone(),
        };
        record_payment_event(&mut db, "refund", notice, &outcome, now).await?;
        let detail = serde_json::json!({
            "provider": notice.provider, "event_id": notice.provider_event_id, "amount": notice.amount,
        });
        record_event_in(
            &mut db,
            "order.refunded",
            order.id.as_str(),
            Some(&user),
            &detail,
            now,
        )
        .await?;
        audit_in(
            &mut db,
            &format!("provider:{}", notice.provider),
            "order.refund",
            order.id.as_str(),
            &detail,
            now,
        )
        .await?;
        let order = must_order(&mut db, &order.id).await?;
        db.commit().await?;
        Ok(Applied {
            outcome,
            replayed: false,
            order,
        })
    }

    pub(super) async fn expire_orders_impl(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE billing_orders SET status = 'expired', updated_at = $1 WHERE status = 'pending' AND expires_at <= $1",
        )
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
