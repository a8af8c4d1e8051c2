//! The crate's errors.
//!
//! [`PaymentError`] is what provider calls return; [`WebhookError`] is why a webhook delivery
//! was refused. The two are separate because callers branch on them differently: a webhook
//! error becomes a 400 that says nothing about the cause, a payment error is reported to the
//! operator.

use relay_core::{Currency, MoneyError};

/// Why a call to a payment provider failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The request is not something this provider can do (wrong currency, missing reference...).
    #[error("invalid payment request: {0}")]
    InvalidRequest(String),
    /// The provider does not support this operation.
    #[error("{provider} does not support {operation}")]
    Unsupported {
        /// Provider name.
        provider: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// The currency is not one this provider accepts.
    #[error("{provider} cannot charge in {currency}")]
    UnsupportedCurrency {
        /// Provider name.
        provider: &'static str,
        /// The currency asked for.
        currency: Currency,
    },
    /// The amount is not representable (for example more decimals than the currency has).
    #[error("amount cannot be sent to the provider: {0}")]
    Amount(String),
    /// The provider could not be reached, or timed out.
    #[error("could not reach the payment provider: {0}")]
    Transport(String),
    /// The provider answered with an error.
    #[error("payment provider answered {status}: {code}: {message}")]
    Provider {
        /// HTTP status of the answer.
        status: u16,
        /// The provider's error code (for example Stripe's `type`, Alipay's `sub_code`).
        code: String,
        /// The provider's message.
        message: String,
    },
    /// The provider's answer could not be understood or failed its signature check.
    #[error("unexpected answer from the payment provider: {0}")]
    BadResponse(String),
    /// A key or secret in the configuration is unusable.
    #[error("payment provider configuration: {0}")]
    Config(String),
    /// The order is not known to the provider.
    #[error("order not found at the provider")]
    NotFound,
}

impl From<MoneyError> for PaymentError {
    fn from(e: MoneyError) -> Self {
        PaymentError::Amount(e.to_string())
    }
}

/// Why a webhook delivery was refused. Shown to operators in logs; the HTTP answer to the
/// sender never carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// A header the provider always sends is missing or malformed.
    #[error("missing or malformed header `{0}`")]
    MissingHeader(&'static str),
    /// No signature matched.
    #[error("signature does not match")]
    BadSignature,
    /// The signed timestamp is outside the tolerance window.
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
    /// The body is not what the provider sends.
    #[error("malformed webhook body: {0}")]
    MalformedBody(String),
    /// The body is signed but names another merchant or application.
    #[error("webhook is for another merchant or application: {0}")]
    WrongRecipient(String),
    /// The body could not be decrypted.
    #[error("webhook resource could not be decrypted")]
    Decrypt,
    /// The provider does not receive webhooks.
    #[error("this provider does not receive webhooks")]
    Unsupported,
}
