//! Plans: what a subscription buys. Plans are versioned: revising one creates a new
//! [`PlanId`] and archives the old version for new purchases, while existing subscribers
//! keep (and renew at) the version they bought.

use chrono::{DateTime, Duration, Months, Utc};
use relay_core::{Entitlement, KeyPolicy, Money, PlanId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// How long one paid period of a plan lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "days")]
pub enum Period {
    /// One calendar month (Jan 31 + 1 month = Feb 28/29).
    Monthly,
    /// One calendar year.
    Yearly,
    /// Paid once, never renews, never ends.
    OneOff,
    /// A fixed number of days.
    Days(u32),
}

impl Period {
    /// The end of a period that starts at `start`; `None` for one-off plans.
    pub fn end_from(self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Period::Monthly => start.checked_add_months(Months::new(1)),
            Period::Yearly => start.checked_add_months(Months::new(12)),
            Period::OneOff => None,
            Period::Days(d) => start.checked_add_signed(Duration::days(i64::from(d))),
        }
    }
}

/// Usage beyond the included credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overage {
    /// May usage go beyond the included credit (charged from the wallet)?
    pub allowed: bool,
    /// Overage price = cost times this multiplier (1 = at cost).
    #[serde(with = "rust_decimal::serde::str")]
    pub multiplier: Decimal,
}

/// The editable content of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpec {
    /// Display name.
    pub name: String,
    /// Price of one period.
    pub price: Money,
    /// Period length.
    pub period: Period,
    /// Free days before the first charge (0: none).
    pub trial_days: u32,
    /// Models the plan includes (patterns as in [`KeyPolicy::allowed_models`]); empty:
    /// the policy template's own list applies.
    pub included_models: Vec<String>,
    /// The policy template the subscriber's keys get.
    pub policy: KeyPolicy,
    /// Usage credit included per period (usage up to it costs nothing extra).
    pub included_credit: Money,
    /// What happens beyond the included credit.
    pub overage: Overage,
    /// How many keys a subscriber may hold.
    pub max_keys: u32,
}

impl PlanSpec {
    /// Check every field; the message says what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(BillingError::InvalidInput(m.to_owned()));
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return bad("plan name must be 1 to 100 characters");
        }
        if self.price.is_negative() {
            return bad("plan price must not be negative");
        }
        if self.included_credit.currency() != self.price.currency() {
            return bad("included credit must be in the plan's currency");
        }
        if self.included_credit.is_negative() {
            return bad("included credit must not be negative");
        }
        if self.overage.multiplier <= Decimal::ZERO {
            return bad("overage multiplier must be positive");
        }
        if self.max_keys == 0 || self.max_keys > 1000 {
            return bad("keys per plan must be between 1 and 1000");
        }
        if self.trial_days > 365 {
            return bad("trial must be at most 365 days");
        }
        if let Period::Days(d) = self.period {
            if d == 0 || d > 3660 {
                return bad("a custom period must be 1 to 3660 days");
            }
        }
        if self.included_models.iter().any(|m| m.trim().is_empty()) {
            return bad("included models must not be empty strings");
        }
        self.policy()
            .validate()
            .map_err(|e| BillingError::InvalidInput(format!("plan policy: {e}")))
    }

    /// The policy keys get: the template, with the included models as allow-list when set.
    pub fn policy(&self) -> KeyPolicy {
        let mut p = self.policy.clone();
        if !self.included_models.is_empty() {
            p.allowed_models = self.included_models.clone();
        }
        p
    }
}

/// Whether a plan version can be bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// On sale.
    Active,
    /// No longer sold; existing subscribers keep it.
    Archived,
}

impl PlanStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Active => "active",
            PlanStatus::Archived => "archived",
        }
    }
}

/// One version of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// This version's id.
    pub id: PlanId,
    /// The stable name shared by all versions (the id of the first version).
    pub family: String,
    /// 1 for the first version, incremented by each revision.
    pub version: u32,
    /// Content.
    pub spec: PlanSpec,
    /// On sale or archived.
    pub status: PlanStatus,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
}

impl Plan {
    /// The entitlement a subscription to this plan grants until `valid_until`.
    pub fn entitlement(&self, valid_until: Option<DateTime<Utc>>) -> Entitlement {
        Entitlement {
            plan_id: self.id.clone(),
            policy: self.spec.policy(),
            max_keys: self.spec.max_keys,
            valid_until,
        }
    }
}
