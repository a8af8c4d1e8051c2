//! Usage batches: what relay-usage's durable records add up to, charged to the ledger.

use relay_core::{Money, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// The cost of a batch of usage records of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
    /// Unique id of the batch (the idempotency key of its charge).
    pub batch_id: String,
    /// Whose usage.
    pub user_id: UserId,
    /// Its cost at list price (exact; rounded only on an invoice).
    pub cost: Money,
}

impl UsageBatch {
    /// Batch id present and short, cost not negative.
    pub fn validate(&self) -> Result<()> {
        if self.batch_id.trim().is_empty() || self.batch_id.len() > 200 {
            return Err(BillingError::InvalidInput(
                "usage batch id must be 1 to 200 characters".into(),
            ));
        }
        if self.cost.is_negative() {
            return Err(BillingError::InvalidInput(
                "usage cost must not be negative".into(),
            ));
        }
        Ok(())
    }
}

/// How a batch was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCharge {
    /// The batch.
    pub batch_id: String,
    /// Its cost.
    pub cost: Money,
    /// The part the subscription's included credit covered.
    pub covered: Money,
    /// What the wallet was charged (uncovered cost times the overage multiplier).
    pub charged: Money,
    /// The ledger transaction, when something was charged.
    pub transaction_id: Option<String>,
    /// True when the batch was charged before and this call changed nothing.
    pub replayed: bool,
}

/// What a user's usage batches add up to in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotal {
    /// The user.
    pub user_id: UserId,
    /// Sum of list costs.
    pub cost: Money,
    /// Sum of what was charged to the wallet.
    pub charged: Money,
}
