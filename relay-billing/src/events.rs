//! Billing events (what happened, for consumers such as notifications and alerts) and
//! audit records (who did what).

use chrono::{DateTime, Utc};
use relay_core::UserId;
use serde::{Deserialize, Serialize};

/// Something that happened in billing: a subscription transition, a payment held for
/// review, reconciliation drift (an alert).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingEvent {
    /// Position in the event log.
    pub seq: i64,
    /// What (`subscription.active`, `order.held_for_review`, `alert.drift`, ...).
    pub kind: String,
    /// The record it is about (a subscription, order or wallet).
    pub subject: String,
    /// The user concerned, if any.
    pub user_id: Option<UserId>,
    /// Details.
    pub detail: serde_json::Value,
    /// When.
    pub at: DateTime<Utc>,
}

/// Who did what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the audit log.
    pub seq: i64,
    /// `system`, `job:renewals`, `user:usr_…`, `admin:…`.
    pub actor: String,
    /// The action.
    pub action: String,
    /// The record acted on.
    pub subject: String,
    /// Details.
    pub detail: serde_json::Value,
    /// When.
    pub at: DateTime<Utc>,
}
