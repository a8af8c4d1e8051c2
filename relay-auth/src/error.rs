//! The crate's error type.

use std::time::Duration;

use relay_core::{AccountStatus, PolicyError};

use crate::email::EmailError;
use crate::password::PasswordError;
use crate::role::Permission;
use crate::store::StoreError;

/// Why a single-use token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No such token (mistyped, or for another purpose).
    #[error("the link or code is not valid")]
    Unknown,
    /// The token was valid but has expired.
    #[error("the link or code has expired: request a new one")]
    Expired,
    /// The token was already used once.
    #[error("the link or code was already used: request a new one")]
    AlreadyUsed,
}

/// Everything that can go wrong in relay-auth. Callers branch on the variant; only the
/// server and the tower layer turn these into HTTP responses.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The email address is malformed.
    #[error(transparent)]
    InvalidEmail(#[from] EmailError),
    /// The password is empty, too short or too long.
    #[error(transparent)]
    InvalidPassword(#[from] PasswordError),
    /// Unknown email or wrong password (deliberately the same error).
    #[error("email or password is incorrect")]
    InvalidCredentials,
    /// The account has TOTP enabled and no code was given.
    #[error("a one-time code from your authenticator app (or a recovery code) is required")]
    TotpRequired,
    /// The TOTP or recovery code is wrong, expired or already used.
    #[error("the one-time code is incorrect or was already used")]
    InvalidTotp,
    /// TOTP is not enrolled (or not pending) for this account.
    #[error("two-factor authentication is not set up for this account")]
    TotpNotEnrolled,
    /// TOTP is already enabled; disable it before enrolling again.
    #[error("two-factor authentication is already enabled for this account")]
    TotpAlreadyEnabled,
    /// The account may not log in in its current state.
    #[error("the account is {0}")]
    AccountDisabled(AccountStatus),
    /// The account's email address has not been verified yet.
    #[error("verify your email address before logging in")]
    EmailNotVerified,
    /// Too many attempts: try again later.
    #[error("too many attempts: try again in {} seconds", retry_after.as_secs().max(1))]
    Throttled {
        /// How long until an attempt would be allowed.
        retry_after: Duration,
    },
    /// A verification or reset token was not accepted.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// No such session, or it was logged out or has expired.
    #[error("not logged in, or the session has ended")]
    SessionInvalid,
    /// A cookie-authenticated unsafe request lacked a matching CSRF token.
    #[error("missing or wrong CSRF token (send the x-csrf-token header)")]
    CsrfMismatch,
    /// An account status change that is not allowed.
    #[error("cannot change account status from {from} to {to}")]
    InvalidStatusTransition {
        /// Current status.
        from: AccountStatus,
        /// Requested status.
        to: AccountStatus,
    },
    /// The acting user lacks a permission.
    #[error("permission denied: requires {0:?}")]
    Forbidden(Permission),
    /// A user or key that does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The user already has the most keys allowed.
    #[error("key limit reached: at most {limit} active keys per user; revoke one first")]
    KeyLimit {
        /// The limit.
        limit: u32,
    },
    /// The key policy is invalid.
    #[error("invalid key policy: {0}")]
    InvalidPolicy(#[from] PolicyError),
    /// Bad key metadata (name or tags).
    #[error("invalid key {field}: {reason}")]
    InvalidKeyMetadata {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A field of an account request is not acceptable (display name, new email, ...).
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The LDAP directory failed or is misconfigured (not: wrong password).
    #[error("directory error: {0}")]
    Ldap(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A dependency (throttle, standing, hashing pool) is unavailable.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}
