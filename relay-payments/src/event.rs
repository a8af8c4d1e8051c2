//! The normalised payment event every provider's webhook turns into.

use chrono::{DateTime, Utc};
use relay_core::{Money, OrderId};
use serde::{Deserialize, Serialize};

/// What happened to a payment, in the same words for every provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaymentEventKind {
    /// Money was collected for the order. `amount` is what was collected.
    PaymentSucceeded,
    /// A payment attempt failed; nothing was collected.
    PaymentFailed {
        /// The provider's reason, when it gives one.
        reason: Option<String>,
    },
    /// Money was returned to the payer.
    Refunded {
        /// When true, `amount` is the total refunded on the payment so far (Stripe's
        /// `amount_refunded`, Alipay's `refund_fee`): apply it as "bring the reversal up to
        /// this". When false, `amount` is this one refund (WeChat Pay, manual).
        cumulative: bool,
        /// The whole payment has now been refunded.
        full: bool,
    },
    /// The payer disputed the payment (a chargeback was opened). `amount` is disputed.
    Disputed,
    /// A subscription's recurring charge was collected. `amount` is the charge.
    SubscriptionRenewed,
    /// A subscription ended at the provider. `amount` is zero.
    SubscriptionCanceled,
    /// The checkout was abandoned or closed before payment. `amount` is what was ordered.
    CheckoutExpired,
}

impl PaymentEventKind {
    /// A short stable name (`payment_succeeded`, `refunded`, ...) for logs and storage.
    pub fn name(&self) -> &'static str {
        match self {
            PaymentEventKind::PaymentSucceeded => "payment_succeeded",
            PaymentEventKind::PaymentFailed { .. } => "payment_failed",
            PaymentEventKind::Refunded { .. } => "refunded",
            PaymentEventKind::Disputed => "disputed",
            PaymentEventKind::SubscriptionRenewed => "subscription_renewed",
            PaymentEventKind::SubscriptionCanceled => "subscription_canceled",
            PaymentEventKind::CheckoutExpired => "checkout_expired",
        }
    }
}

/// One verified, normalised event from a payment provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    /// Which provider sent it (`stripe`, `alipay`, `wechat`, `manual`, ...).
    pub provider: String,
    /// The provider's id for this event; (provider, event_id) is the deduplication key.
    pub event_id: String,
    /// What happened.
    pub kind: PaymentEventKind,
    /// Our order, when the provider's event carries it. A Stripe dispute does not: the
    /// handler finds the order through `provider_reference`.
    pub order_id: Option<OrderId>,
    /// The amount and currency the event is about (see each [`PaymentEventKind`]).
    pub amount: Money,
    /// The provider's reference for the payment (Stripe payment intent, Alipay `trade_no`,
    /// WeChat `transaction_id`, the manual payment's reference).
    pub provider_reference: String,
    /// The provider's subscription id, for subscription events.
    pub subscription_reference: Option<String>,
    /// When the provider says it happened, if it says.
    pub occurred_at: Option<DateTime<Utc>>,
}
