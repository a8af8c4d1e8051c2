//! The records the stores keep.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use relay_core::{AccountStatus, ApiKeyId, KeyPolicy, UserId};
use serde::{Deserialize, Serialize};

use crate::email::Email;
use crate::keys::limits::KeyLimits;
use crate::role::Role;

/// Where a user's password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserSource {
    /// A local argon2id password.
    Local,
    /// An LDAP directory (no local password).
    Ldap,
}

impl UserSource {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            UserSource::Local => "local",
            UserSource::Ldap => "ldap",
        }
    }
}

impl FromStr for UserSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(UserSource::Local),
            "ldap" => Ok(UserSource::Ldap),
            other => Err(format!("unknown user source `{other}`")),
        }
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Unique, lower-cased email.
    pub email: Email,
    /// argon2id PHC string; `None` for directory users.
    pub password_hash: Option<String>,
    /// Role.
    pub role: Role,
    /// Status.
    pub status: AccountStatus,
    /// Where the password is checked.
    pub source: UserSource,
    /// When the email was verified.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// Name shown in the product (optional, personal data: cleared on erasure).
    pub display_name: Option<String>,
}

/// What a single-use token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenPurpose {
    /// Confirms an email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
    /// Confirms a new email address of an existing account (the address changes only
    /// when this is used).
    ChangeEmail,
}

impl TokenPurpose {
    /// Name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::ResetPassword => "reset_password",
            TokenPurpose::ChangeEmail => "change_email",
        }
    }
}

/// A single-use token, stored as the SHA-256 of the token sent to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeToken {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// Whose token.
    pub user_id: UserId,
    /// What it is for.
    pub purpose: TokenPurpose,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A login session, stored as the SHA-256 of its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the session token.
    pub hash: [u8; 32],
    /// SHA-256 of the session's CSRF token.
    pub csrf_hash: [u8; 32],
    /// Whose session.
    pub user_id: UserId,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it ends on its own.
    pub expires_at: DateTime<Utc>,
    /// When it was ended (logout, reset, admin), if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A change of account status, kept as an audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// Whose status.
    pub user_id: UserId,
    /// Status before.
    pub from: AccountStatus,
    /// Status after.
    pub to: AccountStatus,
    /// Who made the change (`None`: the system, e.g. billing).
    pub actor: Option<UserId>,
    /// Why, in words.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// TOTP state of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpRecord {
    /// The secret, sealed with AES-256-GCM (`nonce || ciphertext || tag`).
    pub sealed_secret: Vec<u8>,
    /// When enrolment was confirmed; `None` while pending.
    pub enabled_at: Option<DateTime<Utc>>,
    /// The last accepted 30-second step; steps at or before it are refused.
    pub last_step: Option<i64>,
}

/// An API key's record. The key itself is never stored, only its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Id.
    pub id: ApiKeyId,
    /// Owner.
    pub user_id: UserId,
    /// Human name.
    pub name: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Limits.
    pub policy: KeyPolicy,
    /// HMAC-SHA256(pepper, key).
    pub hash: [u8; 32],
    /// The first characters of the key, to recognise it in a list (`rk_live_AbCd`).
    pub hint: String,
    /// When issued.
    pub created_at: DateTime<Utc>,
    /// When first used (starts [`relay_core::Expiry::AfterFirstUse`]).
    pub first_used_at: Option<DateTime<Utc>>,
    /// When last used (written in batches, so up to one flush interval behind).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working regardless of policy (set at rotation: the grace end).
    pub expires_at: Option<DateTime<Utc>>,
    /// When revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When suspended because the owner's entitlement ended; cleared when one is applied.
    pub suspended_at: Option<DateTime<Utc>>,
    /// The key's own narrowing of its plan (set by the owner). `policy` is the plan's
    /// policy narrowed by these; kept apart so a plan change re-applies them.
    pub own_limits: Option<KeyLimits>,
}

impl ApiKeyRecord {
    /// Is the key usable (not revoked, not past its own or its policy's expiry) at `now`?
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.expires_at.is_none_or(|t| t > now)
            && self
                .policy
                .expires_at(self.first_used_at)
                .is_none_or(|t| t > now)
    }
}

/// One recorded use of a key, flushed to the store in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    /// Which key.
    pub key_id: ApiKeyId,
    /// The earliest use in the batch.
    pub first: DateTime<Utc>,
    /// The latest use in the batch.
    pub last: DateTime<Utc>,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// One-time tokens (used or expired) removed.
    pub tokens: u64,
    /// Sessions (ended or expired) removed.
    pub sessions: u64,
}

/// A named risk flag an admin set on a user, with the reason (see the server's admin API
/// for what flags do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFlag {
    /// Name (`a-z 0-9 _ -`, 1 to 32 characters), e.g. `chargeback` or `block_new_keys`.
    pub flag: String,
    /// Why it was set.
    pub reason: String,
    /// Who set it.
    pub actor: Option<UserId>,
    /// When.
    pub set_at: DateTime<Utc>,
}

/// Which users to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// Email contains this (lower-case) text.
    pub email_contains: Option<String>,
    /// Only this status.
    pub status: Option<AccountStatus>,
    /// Only this role.
    pub role: Option<Role>,
    /// Only users with this risk flag.
    pub flag: Option<String>,
    /// Only users with (true) or without (false) any risk flag.
    pub flagged: Option<bool>,
    /// Only users created before this position (created_at, id): the cursor of a page.
    pub before: Option<(DateTime<Utc>, UserId)>,
    /// At most this many (the store caps it at 500).
    pub limit: u32,
}
