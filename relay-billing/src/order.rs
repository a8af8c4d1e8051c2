//! Orders: what a payment provider is asked to collect, and how provider events are
//! applied to them.
//!
//! [`PaymentNotice`] is what the server builds from a verified provider event. Applying
//! it checks the order's state, currency and amount: a match credits the wallet (and, for
//! a plan purchase, pays the plan and activates the subscription); a mismatch puts the
//! order on hold for review and credits nothing. Each `(provider, event id)` is applied
//! once; a replay returns the recorded outcome and changes nothing.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use relay_core::{Money, OrderId, PlanId, SubscriptionId, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// What an order pays for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "plan_id")]
pub enum OrderPurpose {
    /// Money into the wallet.
    TopUp,
    /// A plan: the money goes through the wallet into the plan's first period.
    PlanPurchase(PlanId),
}

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for payment.
    Pending,
    /// Paid and applied.
    Paid,
    /// Not paid in time.
    Expired,
    /// Something did not match; a human must look at it. Nothing was credited.
    HeldForReview,
    /// Fully refunded.
    Refunded,
}

impl OrderStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Expired => "expired",
            OrderStatus::HeldForReview => "held_for_review",
            OrderStatus::Refunded => "refunded",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => OrderStatus::Pending,
            "paid" => OrderStatus::Paid,
            "expired" => OrderStatus::Expired,
            "held_for_review" => OrderStatus::HeldForReview,
            "refunded" => OrderStatus::Refunded,
            other => {
                return Err(BillingError::Corrupt(format!(
                    "unknown order status `{other}`"
                )))
            }
        })
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Its id (given to the provider as the merchant reference).
    pub id: OrderId,
    /// Who pays.
    pub user_id: UserId,
    /// What for.
    pub purpose: OrderPurpose,
    /// How much, exactly.
    pub amount: Money,
    /// Where it is.
    pub status: OrderStatus,
    /// Refunded so far.
    pub refunded: Money,
    /// Provider that paid it.
    pub provider: Option<String>,
    /// Provider's reference of the payment.
    pub provider_ref: Option<String>,
    /// Why it is held for review.
    pub review_reason: Option<String>,
    /// The subscription a plan purchase created or renewed.
    pub subscription_id: Option<SubscriptionId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// After this, an unpaid order expires.
    pub expires_at: DateTime<Utc>,
}

/// A verified provider event about money for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentNotice {
    /// The order the event names.
    pub order_id: OrderId,
    /// The provider (`stripe`, `alipay`, `wechat`, `manual`, ...).
    pub provider: String,
    /// The provider's event id (the deduplication key with `provider`).
    pub provider_event_id: String,
    /// The amount the provider says moved.
    pub amount: Money,
    /// The provider's payment or refund reference.
    pub provider_ref: String,
}

impl PaymentNotice {
    /// Provider, event id and reference must be present and short.
    pub fn validate(&self) -> Result<()> {
        for (name, v, max) in [
            ("provider", &self.provider, 32),
            ("provider event id", &self.provider_event_id, 200),
            ("provider reference", &self.provider_ref, 200),
        ] {
            if v.trim().is_empty() || v.len() > max {
                return Err(BillingError::InvalidInput(format!(
                    "{name} must be 1 to {max} characters"
                )));
            }
        }
        if self.amount.is_negative() || self.amount.is_zero() {
            return Err(BillingError::InvalidInput(
                "a payment or refund amount must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What applying a payment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum PaymentOutcome {
    /// The wallet was credited (and a plan purchase activated its subscription).
    Credited {
        /// The top-up transaction's id.
        transaction_id: String,
        /// The subscription a plan purchase activated.
        subscription_id: Option<SubscriptionId>,
    },
    /// Nothing was credited; the order (or the event) waits for review.
    HeldForReview {
        /// Why.
        reason: String,
    },
    /// A refund was applied: the wallet was debited back to the provider.
    Refunded {
        /// The refund transaction's id.
        transaction_id: String,
    },
}

/// The result of applying a provider event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What happened (for a replay: what happened the first time).
    pub outcome: PaymentOutcome,
    /// True when this event was applied before and this call changed nothing.
    pub replayed: bool,
    /// The order as it is now.
    pub order: Order,
}
