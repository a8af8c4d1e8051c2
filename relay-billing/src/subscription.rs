//! Subscriptions and their state machine.
//!
//! ```text
//!             trial ends / paid         renewal paid
//!  trialing ─────────────────▶ active ◀────────────┐
//!     │                          │  │               │
//!     │ renewal fails            │  └───────────────┘
//!     ▼                          ▼ renewal fails
//!  past_due ◀────────────────────┘
//!     │  paid (retry or top-up) ─▶ active
//!     │ grace exhausted
//!     ▼
//!  suspended ── paid ─▶ active
//!     │ left unpaid too long
//!     ▼
//!  expired            canceled  (cancel now, or cancel at period end when it comes)
//! ```
//!
//! [`transition`] is the whole table; every store operation asks it before changing a
//! subscription, so an illegal transition is an error that changes nothing.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use relay_core::{Entitlement, Money, PlanId, SubscriptionId, UserId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// Where a subscription is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// In its free trial.
    Trialing,
    /// Paid up.
    Active,
    /// A renewal failed; keys keep working until the grace period ends.
    PastDue,
    /// Grace ended unpaid; keys are suspended until payment.
    Suspended,
    /// Ended by the user or an admin; final.
    Canceled,
    /// Ended because it was not paid, or a one-off period ran out; final.
    Expired,
}

impl SubscriptionStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Suspended => "suspended",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Expired => "expired",
        }
    }

    /// Not yet ended (at most one live subscription per user).
    pub fn is_live(self) -> bool {
        !matches!(
            self,
            SubscriptionStatus::Canceled | SubscriptionStatus::Expired
        )
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriptionStatus {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "trialing" => SubscriptionStatus::Trialing,
            "active" => SubscriptionStatus::Active,
            "past_due" => SubscriptionStatus::PastDue,
            "suspended" => SubscriptionStatus::Suspended,
            "canceled" => SubscriptionStatus::Canceled,
            "expired" => SubscriptionStatus::Expired,
            other => {
                return Err(BillingError::Corrupt(format!(
                    "unknown subscription status `{other}`"
                )))
            }
        })
    }
}

/// Something that happens to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A period was paid (renewal, trial conversion, settling what was overdue).
    PayPeriod,
    /// A renewal charge failed.
    FailRenewal,
    /// The grace period ended unpaid.
    Suspend,
    /// Cancel at once.
    Cancel,
    /// Cancel when the current period ends.
    ScheduleCancel,
    /// The period ended and the subscription does not continue.
    Expire,
    /// Switch to another plan at once, with a proration credit.
    Upgrade,
    /// Switch to another plan when the current period ends.
    ScheduleDowngrade,
}

impl Action {
    /// Stored / shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::PayPeriod => "pay_period",
            Action::FailRenewal => "fail_renewal",
            Action::Suspend => "suspend",
            Action::Cancel => "cancel",
            Action::ScheduleCancel => "schedule_cancel",
            Action::Expire => "expire",
            Action::Upgrade => "upgrade",
            Action::ScheduleDowngrade => "schedule_downgrade",
        }
    }
}

/// The state machine: the status after `action` in status `from`, or an error.
pub fn transition(from: SubscriptionStatus, action: Action) -> Result<SubscriptionStatus> {
    use Action as A;
    use SubscriptionStatus as S;
    let to = match (from, action) {
        (S::Trialing | S::Active | S::PastDue | S::Suspended, A::PayPeriod) => S::Active,
        (S::Trialing | S::Active, A::FailRenewal) => S::PastDue,
        (S::PastDue, A::Suspend) => S::Suspended,
        (S::Trialing | S::Active | S::PastDue | S::Suspended, A::Cancel) => S::Canceled,
        (S::Trialing | S::Active, A::ScheduleCancel) => from,
        (S::Trialing | S::Active | S::Suspended, A::Expire) => S::Expired,
        (S::Trialing | S::Active, A::Upgrade) => S::Active,
        (S::Trialing | S::Active, A::ScheduleDowngrade) => from,
        _ => {
            return Err(BillingError::IllegalTransition {
                kind: "subscription",
                state: from.to_string(),
                action: action.as_str(),
            })
        }
    };
    Ok(to)
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its id.
    pub id: SubscriptionId,
    /// The subscriber.
    pub user_id: UserId,
    /// The plan version bought.
    pub plan_id: PlanId,
    /// Where it is in its life.
    pub status: SubscriptionStatus,
    /// Start of the current period (or trial).
    pub period_start: DateTime<Utc>,
    /// End of the current period (or trial); `None` for one-off plans.
    pub period_end: Option<DateTime<Utc>>,
    /// Cancel when the period ends instead of renewing.
    pub cancel_at_period_end: bool,
    /// Plan to switch to at the next renewal (a scheduled downgrade).
    pub pending_plan_id: Option<PlanId>,
    /// While past due: until when keys keep working.
    pub grace_until: Option<DateTime<Utc>>,
    /// Failed payment attempts since it went past due.
    pub dunning_attempts: u32,
    /// While past due: when the next payment attempt is due.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The unpaid invoice, while past due or suspended.
    pub open_invoice_id: Option<relay_core::InvoiceId>,
    /// When it ended (canceled or expired).
    pub ended_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Optimistic-concurrency version: every change increments it.
    pub version: i64,
}

/// What an operation asks of the user's keys, carried out after the database commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Nothing changes for the keys.
    None,
    /// Apply this entitlement (activate, renew, change plan).
    Apply(Box<Entitlement>),
    /// The entitlement ended or is on hold: suspend the keys.
    Suspend,
}

/// What a subscription operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    /// The subscription as it is now.
    pub subscription: Subscription,
    /// What the user's keys need (applied by [`crate::Billing`] after the commit).
    pub keys: KeyAction,
    /// The ledger transaction posted, if any.
    pub transaction: Option<crate::ledger::Transaction>,
    /// The invoice issued, if any.
    pub invoice: Option<crate::invoice::Invoice>,
}

/// The credit for the unused part of a period: `price × unused / length`, exact (the
/// invoice rounds it). Zero when `now` is at or after the end; the whole price at or
/// before the start.
pub fn proration_credit(
    price: Money,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Money> {
    let length = (period_end - period_start).num_seconds();
    if length <= 0 {
        return Ok(Money::zero(price.currency()));
    }
    let unused = (period_end - now).num_seconds().clamp(0, length);
    let fraction = Decimal::from(unused)
        .checked_div(Decimal::from(length))
        .ok_or(relay_core::MoneyError::Overflow)?;
    Ok(price.checked_mul(fraction)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::Currency;

    const ALL: [SubscriptionStatus; 6] = [
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Suspended,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Expired,
    ];

    #[test]
    fn ended_subscriptions_accept_nothing() {
        for a in [
            Action::PayPeriod,
            Action::FailRenewal,
            Action::Suspend,
            Action::Cancel,
            Action::ScheduleCancel,
            Action::Expire,
            Action::Upgrade,
            Action::ScheduleDowngrade,
        ] {
            assert!(transition(SubscriptionStatus::Canceled, a).is_err());
            assert!(transition(SubscriptionStatus::Expired, a).is_err());
        }
        for s in ALL {
            assert_eq!(s.as_str().parse::<SubscriptionStatus>().ok(), Some(s));
        }
    }

    #[test]
    fn the_table() {
        use Action as A;
        use SubscriptionStatus as S;
        assert_eq!(transition(S::Trialing, A::PayPeriod).ok(), Some(S::Active));
        assert_eq!(transition(S::Active, A::FailRenewal).ok(), Some(S::PastDue));
        assert_eq!(transition(S::PastDue, A::Suspend).ok(), Some(S::Suspended));
        assert_eq!(transition(S::Suspended, A::PayPeriod).ok(), Some(S::Active));
        assert!(transition(S::Active, A::Suspend).is_err());
        assert!(transition(S::PastDue, A::FailRenewal).is_err());
        assert!(transition(S::PastDue, A::Upgrade).is_err());
        assert!(transition(S::Suspended, A::ScheduleCancel).is_err());
        let err = transition(S::Canceled, A::Upgrade)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("cannot upgrade a subscription that is canceled")
        );
    }

    #[test]
    fn proration_golden_cases() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_default()
        };
        let price = Money::from_minor(3000, Currency::USD);
        // January has 31 days; upgrading at Jan 11 00:00 leaves 21 of 31 days unused:
        // 30.00 × 21 / 31 = 20.3225806451612903225806451… (rounded at invoice: 20.32).
        let c = proration_credit(
            price,
            t("2026-01-01T00:00:00Z"),
            t("2026-02-01T00:00:00Z"),
            t("2026-01-11T00:00:00Z"),
        )
        .unwrap_or(price);
        assert_eq!(c.round_to_minor(), Money::from_minor(2032, Currency::USD));
        // Half of a 30-day period: 30.00 × 15 / 30 = 15.00 exactly.
        let c = proration_credit(
            price,
            t("2026-04-01T00:00:00Z"),
            t("2026-05-01T00:00:00Z"),
            t("2026-04-16T00:00:00Z"),
        )
        .unwrap_or(price);
        assert_eq!(c, Money::from_minor(1500, Currency::USD));
        // After the end: nothing; before the start: everything.
        let end = proration_credit(
            price,
            t("2026-04-01T00:00:00Z"),
            t("2026-05-01T00:00:00Z"),
            t("2026-06-01T00:00:00Z"),
        );
        assert!(end.map(|m| m.is_zero()).unwrap_or(false));
        let start = proration_credit(
            price,
            t("2026-04-01T00:00:00Z"),
            t("2026-05-01T00:00:00Z"),
            t("2026-03-01T00:00:00Z"),
        );
        assert_eq!(start.ok(), Some(price));
    }
}
