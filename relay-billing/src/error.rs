//! The one error type of relay-billing.

use relay_core::{Currency, Money, MoneyError};

/// Why a billing operation failed. Every failing operation changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The caller's input is invalid; the message says what to change.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A referenced record does not exist.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// What was looked for ("order", "plan", ...).
        kind: &'static str,
        /// The id or key looked for.
        id: String,
    },
    /// The wallet cannot afford the debit without going below its credit limit.
    #[error(
        "insufficient funds: balance {balance}, credit limit {credit_limit}, requested {requested}"
    )]
    InsufficientFunds {
        /// Cached balance at the time of the attempt.
        balance: Money,
        /// The wallet's credit limit (how far below zero it may go).
        credit_limit: Money,
        /// The amount that was to be debited.
        requested: Money,
    },
    /// The idempotency key was used before for a different operation.
    #[error("idempotency key `{0}` was already used with different content")]
    IdempotencyConflict(String),
    /// A ledger transaction does not balance.
    #[error("transaction does not balance in {currency}: entries sum to {sum}")]
    Unbalanced {
        /// The currency whose entries do not sum to zero.
        currency: Currency,
        /// Their sum.
        sum: rust_decimal::Decimal,
    },
    /// The subscription (or invoice, or order) is not in a state that allows the action.
    #[error("cannot {action} a {kind} that is {state}")]
    IllegalTransition {
        /// What kind of record ("subscription", "invoice", "order").
        kind: &'static str,
        /// Its current state.
        state: String,
        /// The action refused.
        action: &'static str,
    },
    /// A redemption code cannot be redeemed.
    #[error("redemption code {0}")]
    Code(CodeRejection),
    /// Money arithmetic failed (currency mismatch, overflow).
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A concurrent operation changed the same record first; retrying sees its result.
    #[error("concurrent update: {0}")]
    Conflict(String),
    /// The database failed.
    #[error("billing store failed: {0}")]
    Store(String),
    /// Stored data could not be read back (corruption or a foreign writer).
    #[error("corrupt billing record: {0}")]
    Corrupt(String),
}

/// Why a redemption code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeRejection {
    /// No such code.
    #[error("does not exist")]
    Unknown,
    /// The code's expiry has passed.
    #[error("has expired")]
    Expired,
    /// Someone redeemed it already.
    #[error("was already redeemed")]
    AlreadyRedeemed,
}

impl From<sqlx::Error> for BillingError {
    /// Unique violations mean a concurrent writer took the key first: `Conflict`, which
    /// the store retries (and the retry sees the winner's result).
    fn from(e: sqlx::Error) -> Self {
        let unique = e
            .as_database_error()
            .map(|d| d.is_unique_violation())
            .unwrap_or(false);
        if unique {
            BillingError::Conflict(e.to_string())
        } else {
            BillingError::Store(e.to_string())
        }
    }
}

impl From<serde_json::Error> for BillingError {
    fn from(e: serde_json::Error) -> Self {
        BillingError::Corrupt(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = BillingError> = std::result::Result<T, E>;
