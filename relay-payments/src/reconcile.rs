//! Reconciliation: orders still pending after a while are looked up at the provider, for
//! the callbacks that never came.
//!
//! [`reconcile`] decides; it changes nothing itself. A [`ReconcileDecision::Settle`] carries
//! a [`PaymentEvent`] to deliver through
//! [`WebhookProcessor::deliver`](crate::WebhookProcessor::deliver), so a reconciled payment
//! is checked (amount, order state) and deduplicated exactly like a webhook; if the webhook
//! turns up later, the order is already paid and it changes nothing.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use relay_core::{Money, OrderId};

use crate::{OrderQuery, OrderStatus, PaymentEvent, PaymentEventKind, PaymentProvider};

/// An order billing still considers unpaid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOrder {
    /// Our order.
    pub order_id: OrderId,
    /// What [`Checkout::provider_reference`](crate::Checkout::provider_reference) said.
    pub provider_reference: Option<String>,
    /// What was ordered.
    pub amount: Money,
    /// When the order was created.
    pub created_at: DateTime<Utc>,
}

/// The pending orders could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pending orders could not be listed: {0}")]
pub struct SourceError(pub String);

/// Where pending orders come from (billing's order store).
#[async_trait]
pub trait PendingOrderSource: Send + Sync {
    /// Orders of `provider` still pending that were created at or before `created_before`.
    async fn pending_orders(
        &self,
        provider: &str,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<PendingOrder>, SourceError>;
}

/// When orders are looked at and given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilePolicy {
    /// Only orders at least this old are queried (younger ones may still get their webhook).
    pub min_age: Duration,
    /// An order the provider has never heard of is expired once it is this old.
    pub expire_unknown_after: Duration,
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        Self {
            min_age: Duration::minutes(15),
            expire_unknown_after: Duration::hours(2),
        }
    }
}

/// What to do with one pending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileDecision {
    /// The provider was paid: deliver this event.
    Settle(PaymentEvent),
    /// The provider closed the order, or never saw it and it is old: close it here.
    Expire,
    /// Paid and refunded at the provider without us hearing of either: a person should look.
    Review(OrderStatus),
    /// Still open at the provider: look again later.
    StillPending,
    /// The provider could not be asked; look again later.
    QueryFailed(String),
}

/// Query `provider` for each order of `orders` older than `policy.min_age` and decide.
/// Orders are queried one after another, to stay well inside provider rate limits.
pub async fn reconcile(
    provider: &dyn PaymentProvider,
    orders: &[PendingOrder],
    now: DateTime<Utc>,
    policy: &ReconcilePolicy,
) -> Vec<(OrderId, ReconcileDecision)> {
    let mut out = Vec::new();
    for order in orders
        .iter()
        .filter(|o| now - o.created_at >= policy.min_age)
    {
        let query = OrderQuery {
            order_id: order.order_id.clone(),
            provider_reference: order.provider_reference.clone(),
        };
        let decision = match provider.query_order(&query).await {
            Ok(OrderStatus::Paid { amount, reference }) => {
                ReconcileDecision::Settle(PaymentEvent {
                    provider: provider.name().to_owned(),
                    // Stable per order, so reconciling twice delivers one event.
                    event_id: format!("reconcile:{}", order.order_id),
                    kind: PaymentEventKind::PaymentSucceeded,
                    order_id: Some(order.order_id.clone()),
                    amount,
                    provider_reference: reference,
                    subscription_reference: None,
                    occurred_at: Some(now),
                })
            }
            Ok(OrderStatus::Closed) => ReconcileDecision::Expire,
            Ok(OrderStatus::NotFound) if now - order.created_at >= policy.expire_unknown_after => {
                ReconcileDecision::Expire
            }
            Ok(OrderStatus::NotFound | OrderStatus::Pending) => ReconcileDecision::StillPending,
            Ok(status @ OrderStatus::Refunded { .. }) => ReconcileDecision::Review(status),
            Err(e) => ReconcileDecision::QueryFailed(e.to_string()),
        };
        out.push((order.order_id.clone(), decision));
    }
    out
}

/// [`reconcile`] the orders `source` lists for `provider`.
pub async fn reconcile_from(
    provider: &dyn PaymentProvider,
    source: &dyn PendingOrderSource,
    now: DateTime<Utc>,
    policy: &ReconcilePolicy,
) -> Result<Vec<(OrderId, ReconcileDecision)>, SourceError> {
    let orders = source
        .pending_orders(provider.name(), now - policy.min_age)
        .await?;
    Ok(reconcile(provider, &orders, now, policy).await)
}
