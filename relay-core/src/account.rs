//! Who is calling, and whether their account may be used.
//!
//! Authentication (relay-auth) needs billing state (is this account past due, what policy
//! does the plan grant) and billing (relay-billing) needs to issue and update keys, but the
//! two crates never depend on each other: billing implements [`AccountStanding`] and auth
//! implements [`KeyProvisioner`], and the server wires them together.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{ApiKeyId, PlanId, UserId};
use crate::policy::KeyPolicy;

/// The state of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// In good standing.
    Active,
    /// Stopped by an operator.
    Suspended,
    /// A payment is overdue; requests are refused until it is paid.
    PastDue,
    /// Frozen (for example for suspected abuse); nothing works until an admin lifts it.
    Frozen,
    /// Closed by the user or an admin; final.
    Closed,
}

impl AccountStatus {
    /// May keys of an account in this state make requests?
    pub fn allows_requests(self) -> bool {
        matches!(self, AccountStatus::Active)
    }

    /// Snake-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
            AccountStatus::PastDue => "past_due",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccountStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(AccountStatus::Active),
            "suspended" => Ok(AccountStatus::Suspended),
            "past_due" => Ok(AccountStatus::PastDue),
            "frozen" => Ok(AccountStatus::Frozen),
            "closed" => Ok(AccountStatus::Closed),
            other => Err(format!(
                "unknown account status `{}`: expected active, suspended, past_due, frozen or closed",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// The authenticated caller of one request, put into request extensions by the auth layer.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's owner.
    pub user_id: UserId,
    /// The key used.
    pub key_id: ApiKeyId,
    /// The owner's account status when the request was authenticated.
    pub status: AccountStatus,
    /// The limits this request is admitted against.
    pub policy: Arc<KeyPolicy>,
}

/// What billing says about an account right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Account status, including billing-driven states such as past due.
    pub status: AccountStatus,
    /// Until when the current entitlement runs, if it is time-limited.
    pub entitled_until: Option<DateTime<Utc>>,
}

/// Why standing could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum StandingError {
    /// The store behind the standing could not be read.
    #[error("account standing unavailable: {0}")]
    Unavailable(String),
}

/// Billing state as authentication sees it. Implemented by relay-billing.
#[async_trait]
pub trait AccountStanding: Send + Sync + fmt::Debug + 'static {
    /// The standing of `user` at this moment. Unknown users are `Active` with no
    /// entitlement limit: standing restricts, it does not authenticate.
    async fn standing(&self, user: &UserId) -> Result<Standing, StandingError>;
}

/// What a subscription entitles a user to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    /// The plan version granting it.
    pub plan_id: PlanId,
    /// The policy the user's keys get.
    pub policy: KeyPolicy,
    /// How many keys the plan allows.
    pub max_keys: u32,
    /// Until when, if time-limited.
    pub valid_until: Option<DateTime<Utc>>,
}

/// Why keys could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The key store failed.
    #[error("key provisioning failed: {0}")]
    Store(String),
}

/// How billing issues and updates keys. Implemented by relay-auth's key store.
#[async_trait]
pub trait KeyProvisioner: Send + Sync + fmt::Debug + 'static {
    /// Apply an entitlement to `user`'s keys: update their policy, re-activate them, and,
    /// when the user has none, issue one. Returns the plaintext of a newly issued key
    /// (shown once), if one was issued. Applying the same entitlement twice changes nothing.
    async fn apply_entitlement(
        &self,
        user: &UserId,
        entitlement: &Entitlement,
    ) -> Result<Option<String>, ProvisionError>;

    /// The user's entitlement ended: their keys stop working until one is applied again.
    async fn suspend_keys(&self, user: &UserId) -> Result<(), ProvisionError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_accounts_make_requests() {
        for (s, ok) in [
            (AccountStatus::Active, true),
            (AccountStatus::Suspended, false),
            (AccountStatus::PastDue, false),
            (AccountStatus::Frozen, false),
            (AccountStatus::Closed, false),
        ] {
            assert_eq!(s.allows_requests(), ok);
            assert_eq!(s.as_str().parse::<AccountStatus>().unwrap(), s);
        }
        assert!("paused".parse::<AccountStatus>().is_err());
    }
}
