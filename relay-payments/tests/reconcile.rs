//! Reconciliation decisions, and a settled order going through the normal event path.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Duration;
use common::{clock, t0, SimBilling};
use http::HeaderMap;
use parking_lot::Mutex;
use relay_core::{Currency, Money, OrderId, SharedClock};
use relay_payments::reconcile::{
    reconcile, reconcile_from, PendingOrder, PendingOrderSource, ReconcileDecision,
    ReconcilePolicy, SourceError,
};
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::{
    Capabilities, Checkout, CheckoutRequest, Delivery, HandleOutcome, OrderQuery, OrderState,
    OrderStatus, ParsedWebhook, PaymentError, PaymentEventKind, PaymentProvider, RefundRequest,
    RefundResult, WebhookError, WebhookProcessor,
};

fn cny(s: &str) -> Money {
    Money::parse(s, Currency::CNY).unwrap()
}

/// A provider whose order book is a map; unknown orders fail the query.
#[derive(Debug, Default)]
struct Ledger {
    statuses: Mutex<HashMap<OrderId, OrderStatus>>,
    queried: Mutex<Vec<OrderId>>,
}

#[async_trait]
impl PaymentProvider for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn create_checkout(&self, _: &CheckoutRequest) -> Result<Checkout, PaymentError> {
        Err(PaymentError::Unsupported {
            provider: "ledger",
            operation: "checkout",
        })
    }
    async fn parse_webhook(&self, _: &HeaderMap, _: &[u8]) -> Result<ParsedWebhook, WebhookError> {
        Err(WebhookError::Unsupported)
    }
    async fn query_order(&self, q: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        self.queried.lock().push(q.order_id.clone());
        self.statuses
            .lock()
            .get(&q.order_id)
            .cloned()
            .ok_or_else(|| PaymentError::Transport("connection reset".into()))
    }
    async fn refund(&self, _: &RefundRequest) -> Result<RefundResult, PaymentError> {
        Err(PaymentError::Unsupported {
            provider: "ledger",
            operation: "refund",
        })
    }
}

fn pending(order: &OrderId, age_minutes: i64) -> PendingOrder {
    PendingOrder {
        order_id: order.clone(),
        provider_reference: Some("ref".into()),
        amount: cny("10"),
        created_at: t0() - Duration::minutes(age_minutes),
    }
}

#[tokio::test]
async fn decisions_follow_the_providers_answer_and_the_orders_age() {
    let ledger = Ledger::default();
    let ids: Vec<OrderId> = (0..7).map(|_| OrderId::new()).collect();
    {
        let mut s = ledger.statuses.lock();
        s.insert(
            ids[0].clone(),
            OrderStatus::Paid {
                amount: cny("10"),
                reference: "T0".into(),
            },
        );
        s.insert(ids[1].clone(), OrderStatus::Closed);
        s.insert(ids[2].clone(), OrderStatus::NotFound);
        s.insert(ids[3].clone(), OrderStatus::NotFound);
        s.insert(ids[4].clone(), OrderStatus::Pending);
        s.insert(
            ids[5].clone(),
            OrderStatus::Refunded {
                amount: cny("10"),
                reference: "T5".into(),
            },
        );
        // ids[6] fails to query.
    }
    let young = OrderId::new();
    let orders = vec![
        pending(&ids[0], 30),
        pending(&ids[1], 30),
        pending(&ids[2], 180),
        pending(&ids[3], 30),
        pending(&ids[4], 600),
        pending(&ids[5], 30),
        pending(&ids[6], 30),
        pending(&young, 5),
    ];
    let decisions = reconcile(&ledger, &orders, t0(), &ReconcilePolicy::default()).await;
    // The five-minute-old order is left alone: its webhook may still come.
    assert_eq!(decisions.len(), 7);
    assert!(!ledger.queried.lock().contains(&young));
    let by: HashMap<_, _> = decisions.into_iter().collect();
    let ReconcileDecision::Settle(event) = &by[&ids[0]] else {
        panic!("{:?}", by[&ids[0]])
    };
    assert_eq!(event.kind, PaymentEventKind::PaymentSucceeded);
    assert_eq!(event.provider, "ledger");
    assert_eq!(event.event_id, format!("reconcile:{}", ids[0]));
    assert_eq!(event.amount, cny("10"));
    assert_eq!(event.provider_reference, "T0");
    assert_eq!(by[&ids[1]], ReconcileDecision::Expire);
    assert_eq!(by[&ids[2]], ReconcileDecision::Expire);
    assert_eq!(by[&ids[3]], ReconcileDecision::StillPending);
    assert_eq!(by[&ids[4]], ReconcileDecision::StillPending);
    assert!(matches!(
        by[&ids[5]],
        ReconcileDecision::Review(OrderStatus::Refunded { .. })
    ));
    assert!(
        matches!(&by[&ids[6]], ReconcileDecision::QueryFailed(e) if e.contains("connection reset"))
    );
}

struct Source(Vec<PendingOrder>);

#[async_trait]
impl PendingOrderSource for Source {
    async fn pending_orders(
        &self,
        provider: &str,
        created_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<PendingOrder>, SourceError> {
        assert_eq!(provider, "ledger");
        Ok(self
            .0
            .iter()
            .filter(|o| o.created_at <= created_before)
            .cloned()
            .collect())
    }
}

#[tokio::test]
async fn a_settled_order_is_credited_once_and_a_late_webhook_changes_nothing() {
    let ledger = Ledger::default();
    let order = OrderId::new();
    ledger.statuses.lock().insert(
        order.clone(),
        OrderStatus::Paid {
            amount: cny("10"),
            reference: "T1".into(),
        },
    );
    let billing = SimBilling::with_order(&order, cny("10"));
    let shared: SharedClock = Arc::new(clock());
    let processor = WebhookProcessor::new(
        Arc::new(MemoryWebhookEventStore::new()),
        billing.clone(),
        shared,
    );
    let source = Source(vec![pending(&order, 30)]);
    for _ in 0..3 {
        let decisions = reconcile_from(&ledger, &source, t0(), &ReconcilePolicy::default())
            .await
            .unwrap();
        for (_, decision) in decisions {
            if let ReconcileDecision::Settle(event) = decision {
                processor.deliver(&event).await.unwrap();
            }
        }
    }
    assert_eq!(billing.credited(), vec![cny("10")]);
    assert_eq!(billing.state(&order), OrderState::Paid);
    // The webhook that was lost arrives after all: a different event id, same order.
    let manual = relay_payments::manual::ManualProvider::new(Arc::new(clock()));
    let late = manual
        .record_payment(order.clone(), cny("10"), "T1")
        .unwrap();
    assert_eq!(
        processor.deliver(&late).await.unwrap(),
        Delivery::Handled(HandleOutcome::Ignored)
    );
    assert_eq!(billing.credited(), vec![cny("10")]);
}

#[tokio::test]
async fn a_paid_amount_that_differs_is_settled_into_review_not_credit() {
    let ledger = Ledger::default();
    let order = OrderId::new();
    ledger.statuses.lock().insert(
        order.clone(),
        OrderStatus::Paid {
            amount: cny("0.01"),
            reference: "T1".into(),
        },
    );
    let billing = SimBilling::with_order(&order, cny("10"));
    let processor = WebhookProcessor::new(
        Arc::new(MemoryWebhookEventStore::new()),
        billing.clone(),
        Arc::new(clock()),
    );
    let decisions = reconcile(
        &ledger,
        &[pending(&order, 30)],
        t0(),
        &ReconcilePolicy::default(),
    )
    .await;
    let ReconcileDecision::Settle(event) = &decisions[0].1 else {
        panic!()
    };
    assert!(matches!(
        processor.deliver(event).await.unwrap(),
        Delivery::Handled(HandleOutcome::HeldForReview(_))
    ));
    assert!(billing.credited().is_empty());
}
