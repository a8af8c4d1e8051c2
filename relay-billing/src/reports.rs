//! Report rows.

use chrono::{DateTime, Utc};
use relay_core::{Currency, InvoiceId, Money, PlanId, UserId};
use serde::{Deserialize, Serialize};

use crate::invoice::InvoiceStatus;

/// Income of a period in one currency, from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevenueLine {
    /// Currency.
    pub currency: Currency,
    /// Credited to revenue (plan fees, usage) net of write-offs.
    pub revenue: Money,
    /// Given back (proration credits, charges credited back).
    pub refunds: Money,
    /// Given away (codes, admin credits net of admin debits).
    pub promotions: Money,
    /// Tax collected.
    pub tax: Money,
    /// `revenue - refunds`.
    pub net: Money,
}

/// Live subscriptions of one plan version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCount {
    /// Plan version.
    pub plan_id: PlanId,
    /// Its name.
    pub name: String,
    /// Its version number.
    pub version: u32,
    /// Subscriptions trialing, active, past due or suspended.
    pub live: u64,
    /// Of which paying (active).
    pub active: u64,
}

/// Usage cost against money charged, for one user and plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPlanMargin {
    /// The user.
    pub user_id: UserId,
    /// Their plan at the time of the usage (`None`: pay as you go).
    pub plan_id: Option<PlanId>,
    /// Currency.
    pub currency: Currency,
    /// Usage at list cost.
    pub usage_cost: Money,
    /// Charged for overage.
    pub usage_charged: Money,
    /// Plan fees charged in the window (net of proration credits).
    pub plan_fees: Money,
    /// `usage_charged + plan_fees - usage_cost`.
    pub margin: Money,
}

/// An invoice that is overdue or written off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdueItem {
    /// The invoice.
    pub invoice_id: InvoiceId,
    /// Its number.
    pub number: Option<String>,
    /// The customer.
    pub user_id: UserId,
    /// Amount due.
    pub total: Money,
    /// Open (overdue) or uncollectible (bad debt).
    pub status: InvoiceStatus,
    /// When it was finalised.
    pub since: DateTime<Utc>,
}
