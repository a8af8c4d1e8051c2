//! The manual provider through the same event path, and the order rule book.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

mod common;

use std::sync::Arc;

use common::{clock, SimBilling};
use relay_core::{Currency, Money, OrderId, SharedClock};
use relay_payments::manual::ManualProvider;
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::{
    decide, CheckoutKind, CheckoutRequest, Decision, Delivery, HandleOutcome, HoldReason,
    OrderSnapshot, OrderState, PaymentError, PaymentEvent, PaymentEventKind, PaymentProvider,
    WebhookProcessor,
};

fn cny(s: &str) -> Money {
    Money::parse(s, Currency::CNY).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_payment_is_credited_once_however_often_it_is_recorded() {
    let clock = clock();
    let shared: SharedClock = Arc::new(clock);
    let manual = ManualProvider::new(shared.clone());
    let order = OrderId::new();
    let billing = SimBilling::with_order(&order, cny("88.80"));
    let processor = WebhookProcessor::new(
        Arc::new(MemoryWebhookEventStore::new()),
        billing.clone(),
        shared,
    );
    let event = manual
        .record_payment(order.clone(), cny("88.80"), "  BANK-2026-0001 ")
        .unwrap();
    assert_eq!(event.provider, "manual");
    assert_eq!(event.event_id, "payment:BANK-2026-0001");
    assert_eq!(event.provider_reference, "BANK-2026-0001");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let p = processor.clone();
            let e = event.clone();
            tokio::spawn(async move { p.deliver(&e).await.unwrap() })
        })
        .collect();
    let mut handled = 0;
    for t in tasks {
        if let Delivery::Handled(HandleOutcome::Applied) = t.await.unwrap() {
            handled += 1;
        }
    }
    assert_eq!(handled, 1);
    assert_eq!(billing.credited(), vec![cny("88.80")]);

    let refund = manual
        .record_refund(order.clone(), cny("8.80"), "BANK-2026-0001", "RF-1", false)
        .unwrap();
    assert_eq!(
        refund.kind,
        PaymentEventKind::Refunded {
            cumulative: false,
            full: false
        }
    );
    assert!(matches!(
        processor.deliver(&refund).await.unwrap(),
        Delivery::Handled(HandleOutcome::Applied)
    ));
    assert_eq!(
        processor.deliver(&refund).await.unwrap(),
        Delivery::Duplicate
    );
    assert_eq!(*billing.reversed.lock(), vec![cny("8.80")]);
}

#[tokio::test]
async fn manual_input_is_validated() {
    let manual = ManualProvider::new(Arc::new(clock()));
    let order = OrderId::new();
    for reference in ["", "   ", "a\nb", &"x".repeat(129)] {
        assert!(matches!(
            manual.record_payment(order.clone(), cny("1"), reference),
            Err(PaymentError::InvalidRequest(_))
        ));
    }
    for amount in [cny("0"), cny("-5")] {
        assert!(matches!(
            manual.record_payment(order.clone(), amount, "ref"),
            Err(PaymentError::Amount(_))
        ));
    }
    let mut sub = CheckoutRequest::one_off(order.clone(), cny("1"), "x");
    sub.kind = CheckoutKind::Subscription {
        plan_reference: "p".into(),
    };
    assert!(matches!(
        manual.create_checkout(&sub).await,
        Err(PaymentError::Unsupported { .. })
    ));
    let checkout = manual
        .create_checkout(&CheckoutRequest::one_off(order.clone(), cny("1"), "x"))
        .await
        .unwrap();
    assert_eq!(checkout.provider_reference, order.as_str());
    assert!(manual
        .parse_webhook(&http::HeaderMap::new(), b"{}")
        .await
        .is_err());
}

fn ev(kind: PaymentEventKind, amount: Money) -> PaymentEvent {
    PaymentEvent {
        provider: "test".into(),
        event_id: "e".into(),
        kind,
        order_id: Some(OrderId::new()),
        amount,
        provider_reference: "r".into(),
        subscription_reference: None,
        occurred_at: None,
    }
}

fn order(state: OrderState, amount: &str, refunded: &str) -> OrderSnapshot {
    OrderSnapshot {
        state,
        amount: cny(amount),
        refunded: cny(refunded),
    }
}

#[test]
fn the_rule_book() {
    let paid = PaymentEventKind::PaymentSucceeded;
    let pending = order(OrderState::Pending, "10", "0");
    assert_eq!(
        decide(Some(&pending), &ev(paid.clone(), cny("10.00"))),
        Decision::Credit(cny("10.00"))
    );
    // Wrong amount, wrong currency: held, with both amounts for the reviewer.
    assert_eq!(
        decide(Some(&pending), &ev(paid.clone(), cny("9.99"))),
        Decision::Hold(HoldReason::AmountMismatch {
            expected: cny("10"),
            got: cny("9.99")
        })
    );
    let usd = Money::parse("10", Currency::USD).unwrap();
    assert!(matches!(
        decide(Some(&pending), &ev(paid.clone(), usd)),
        Decision::Hold(HoldReason::AmountMismatch { .. })
    ));
    assert_eq!(
        decide(None, &ev(paid.clone(), cny("10"))),
        Decision::Hold(HoldReason::UnknownOrder)
    );
    // Second success for a paid order (Alipay TRADE_FINISHED after TRADE_SUCCESS): nothing.
    let paid_order = order(OrderState::Paid, "10", "0");
    assert_eq!(
        decide(Some(&paid_order), &ev(paid.clone(), cny("10"))),
        Decision::NoChange
    );
    let closed = order(OrderState::Closed, "10", "0");
    assert_eq!(
        decide(Some(&closed), &ev(paid, cny("10"))),
        Decision::Hold(HoldReason::PaidAfterClose)
    );

    let partial = |cumulative| PaymentEventKind::Refunded {
        cumulative,
        full: false,
    };
    assert_eq!(
        decide(Some(&pending), &ev(partial(false), cny("1"))),
        Decision::Hold(HoldReason::RefundBeforePayment)
    );
    let part_refunded = order(OrderState::Paid, "10", "3");
    assert_eq!(
        decide(Some(&part_refunded), &ev(partial(true), cny("5"))),
        Decision::Reverse(cny("2"))
    );
    assert_eq!(
        decide(Some(&part_refunded), &ev(partial(true), cny("3"))),
        Decision::NoChange
    );
    assert_eq!(
        decide(Some(&part_refunded), &ev(partial(false), cny("5"))),
        Decision::Reverse(cny("5"))
    );
    assert_eq!(
        decide(Some(&part_refunded), &ev(partial(false), cny("7.01"))),
        Decision::Hold(HoldReason::RefundExceedsPayment)
    );
    assert_eq!(
        decide(Some(&part_refunded), &ev(partial(true), cny("10.01"))),
        Decision::Hold(HoldReason::RefundExceedsPayment)
    );

    assert_eq!(
        decide(
            Some(&pending),
            &ev(PaymentEventKind::CheckoutExpired, cny("10"))
        ),
        Decision::MarkExpired
    );
    assert_eq!(
        decide(
            Some(&paid_order),
            &ev(PaymentEventKind::CheckoutExpired, cny("10"))
        ),
        Decision::NoChange
    );
    assert_eq!(
        decide(
            Some(&pending),
            &ev(PaymentEventKind::PaymentFailed { reason: None }, cny("10"))
        ),
        Decision::MarkFailed
    );
    assert_eq!(
        decide(
            Some(&paid_order),
            &ev(PaymentEventKind::Disputed, cny("10"))
        ),
        Decision::Hold(HoldReason::Disputed)
    );
    assert_eq!(
        decide(
            Some(&paid_order),
            &ev(PaymentEventKind::SubscriptionRenewed, cny("10"))
        ),
        Decision::Renew(cny("10"))
    );
    assert_eq!(
        decide(
            None,
            &ev(
                PaymentEventKind::SubscriptionCanceled,
                Money::zero(Currency::CNY)
            )
        ),
        Decision::CancelSubscription
    );
}
