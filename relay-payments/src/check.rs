//! What an event should do to an order, decided from the order's state and amounts.
//!
//! Billing owns orders; this pure function is the shared rule book it applies in its
//! [`PaymentEventHandler`](crate::PaymentEventHandler), so every provider's events are
//! judged the same way: a payment whose amount or currency differs from the order, a refund
//! before any payment, or a payment for a closed order is held for review, never credited.

use relay_core::Money;

use crate::{PaymentEvent, PaymentEventKind};

/// Where an order stands in billing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Waiting for payment.
    Pending,
    /// Paid (possibly partly refunded since).
    Paid,
    /// Closed without payment (expired, failed, canceled).
    Closed,
}

/// What billing knows of an order when an event arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSnapshot {
    /// Where it stands.
    pub state: OrderState,
    /// What was ordered.
    pub amount: Money,
    /// What has been refunded so far.
    pub refunded: Money,
}

/// Why an event was held for a person to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldReason {
    /// The event names no order we know.
    UnknownOrder,
    /// The amount or currency differs from the order's.
    AmountMismatch {
        /// What the order asked for.
        expected: Money,
        /// What the event says.
        got: Money,
    },
    /// Money arrived for an order that was already closed.
    PaidAfterClose,
    /// A refund arrived for an order that was never paid.
    RefundBeforePayment,
    /// The refunds would exceed what was paid.
    RefundExceedsPayment,
    /// The payer opened a dispute.
    Disputed,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Credit this amount and mark the order paid.
    Credit(Money),
    /// Credit a subscription renewal of this amount.
    Renew(Money),
    /// Reverse this much of the payment (a refund).
    Reverse(Money),
    /// Mark the pending order failed.
    MarkFailed,
    /// Mark the pending order closed.
    MarkExpired,
    /// End the subscription.
    CancelSubscription,
    /// Keep the event for review and change no balance.
    Hold(HoldReason),
    /// Already reflected (a duplicate in other words, such as Alipay's `TRADE_FINISHED`
    /// after `TRADE_SUCCESS`): do nothing.
    NoChange,
}

fn same(a: &Money, b: &Money) -> bool {
    a.currency() == b.currency() && a.amount() == b.amount()
}

/// Decide what `event` does to the order described by `order` (`None`: not found).
pub fn decide(order: Option<&OrderSnapshot>, event: &PaymentEvent) -> Decision {
    let Some(order) = order else {
        return match event.kind {
            PaymentEventKind::SubscriptionCanceled => Decision::CancelSubscription,
            _ => Decision::Hold(HoldReason::UnknownOrder),
        };
    };
    let mismatch = || {
        Decision::Hold(HoldReason::AmountMismatch {
            expected: order.amount,
            got: event.amount,
        })
    };
    match (&event.kind, order.state) {
        (PaymentEventKind::PaymentSucceeded, OrderState::Pending) => {
            if same(&order.amount, &event.amount) {
                Decision::Credit(event.amount)
            } else {
                mismatch()
            }
        }
        (PaymentEventKind::PaymentSucceeded, OrderState::Paid) => Decision::NoChange,
        (PaymentEventKind::PaymentSucceeded, OrderState::Closed) => {
            Decision::Hold(HoldReason::PaidAfterClose)
        }
        (PaymentEventKind::SubscriptionRenewed, _) => {
            if event.amount.currency() == order.amount.currency() && !event.amount.is_negative() {
                Decision::Renew(event.amount)
            } else {
                mismatch()
            }
        }
        (PaymentEventKind::PaymentFailed { .. }, OrderState::Pending) => Decision::MarkFailed,
        (PaymentEventKind::CheckoutExpired, OrderState::Pending) => Decision::MarkExpired,
        (PaymentEventKind::PaymentFailed { .. } | PaymentEventKind::CheckoutExpired, _) => {
            Decision::NoChange
        }
        (PaymentEventKind::Refunded { .. }, OrderState::Pending | OrderState::Closed) => {
            Decision::Hold(HoldReason::RefundBeforePayment)
        }
        (PaymentEventKind::Refunded { cumulative, .. }, OrderState::Paid) => {
            if event.amount.currency() != order.amount.currency() || event.amount.is_negative() {
                return mismatch();
            }
            let (delta, total) = if *cumulative {
                let Ok(delta) = event.amount.checked_sub(&order.refunded) else {
                    return mismatch();
                };
                (delta, event.amount)
            } else {
                let Ok(total) = order.refunded.checked_add(&event.amount) else {
                    return mismatch();
                };
                (event.amount, total)
            };
            if total.amount() > order.amount.amount() {
                Decision::Hold(HoldReason::RefundExceedsPayment)
            } else if delta.is_zero() || delta.is_negative() {
                Decision::NoChange
            } else {
                Decision::Reverse(delta)
            }
        }
        (PaymentEventKind::Disputed, _) => Decision::Hold(HoldReason::Disputed),
        (PaymentEventKind::SubscriptionCanceled, _) => Decision::CancelSubscription,
    }
}
