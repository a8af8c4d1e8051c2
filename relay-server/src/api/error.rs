//! The REST API's one error type: every crate error becomes a status and a JSON body
//! `{"error":{"code":"...","message":"...","field":"..."}}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relay_auth::{AuthError, StoreError};
use relay_billing::{BillingError, CodeRejection};
use relay_payments::PaymentError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_input`, `not_found`, ...).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub detail: ErrorDetail,
    /// `Retry-After`, for throttled requests.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code,
                message: message.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    /// 422 about `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message).with_field(field)
    }

    /// 404 for `what`.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 401: no valid session.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "log in first: send Authorization: Bearer <session token> or the session cookie",
        )
    }

    /// 429 with `Retry-After`.
    pub fn throttled(retry_after: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many attempts: try again in {} seconds",
                retry_after.as_secs().max(1)
            ),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 500 without details (they are logged).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error in the REST API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; try again later",
        )
    }

    /// Name the field at fault (only when the error is about input).
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    /// Name `field` when this is a 4xx input error without a field yet.
    pub fn on_field(self, field: &str) -> Self {
        if self.status == StatusCode::UNPROCESSABLE_ENTITY && self.detail.field.is_none() {
            self.with_field(field)
        } else {
            self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(ErrorBody {
                error: self.detail.clone(),
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            AuthError::InvalidEmail(_) => Self::invalid("email", msg),
            AuthError::InvalidPassword(_) => Self::invalid("password", msg),
            AuthError::InvalidCredentials => Self::new(S::UNAUTHORIZED, "invalid_credentials", msg),
            AuthError::TotpRequired => Self::new(S::UNAUTHORIZED, "totp_required", msg),
            AuthError::InvalidTotp => {
                Self::new(S::UNAUTHORIZED, "invalid_totp", msg).with_field("code")
            }
            AuthError::TotpNotEnrolled => Self::new(S::CONFLICT, "totp_not_enrolled", msg),
            AuthError::TotpAlreadyEnabled => Self::new(S::CONFLICT, "totp_already_enabled", msg),
            AuthError::AccountDisabled(_) => Self::new(S::FORBIDDEN, "account_disabled", msg),
            AuthError::EmailNotVerified => Self::new(S::FORBIDDEN, "email_not_verified", msg),
            AuthError::Throttled { retry_after } => Self::throttled(retry_after),
            AuthError::Token(_) => {
                Self::new(S::BAD_REQUEST, "invalid_token", msg).with_field("token")
            }
            AuthError::SessionInvalid => Self::new(S::UNAUTHORIZED, "unauthenticated", msg),
            AuthError::CsrfMismatch => Self::new(S::FORBIDDEN, "csrf_mismatch", msg),
            AuthError::InvalidStatusTransition { .. } => {
                Self::new(S::CONFLICT, "invalid_transition", msg).with_field("status")
            }
            AuthError::Forbidden(_) => Self::new(S::FORBIDDEN, "forbidden", msg),
            AuthError::NotFound(what) => Self::not_found(what),
            AuthError::KeyLimit { .. } => Self::new(S::CONFLICT, "key_limit", msg),
            AuthError::InvalidPolicy(_) => Self::invalid("policy", msg),
            AuthError::InvalidKeyMetadata { field, .. } => Self::invalid(field, msg),
            AuthError::InvalidInput { field, .. } => Self::invalid(field, msg),
            AuthError::Ldap(_) => Self::new(S::BAD_GATEWAY, "directory_unavailable", msg),
            AuthError::Store(StoreError::Conflict(_)) => Self::new(S::CONFLICT, "conflict", msg),
            AuthError::Store(StoreError::KeyLimit { .. }) => {
                Self::new(S::CONFLICT, "key_limit", msg)
            }
            AuthError::Store(e) => Self::internal(e),
            AuthError::Unavailable(_) => Self::new(S::SERVICE_UNAVAILABLE, "unavailable", msg),
        }
    }
}

impl From<BillingError> for ApiError {
    fn from(e: BillingError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            BillingError::InvalidInput(_) | BillingError::Money(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, "invalid_input", msg)
            }
            BillingError::NotFound { kind, .. } => Self::not_found(kind),
            BillingError::InsufficientFunds { .. } => {
                Self::new(S::PAYMENT_REQUIRED, "insufficient_funds", msg)
            }
            BillingError::IdempotencyConflict(_) => {
                Self::new(S::CONFLICT, "idempotency_conflict", msg)
            }
            BillingError::IllegalTransition { .. } => {
                Self::new(S::CONFLICT, "invalid_transition", msg)
            }
            BillingError::Code(CodeRejection::Unknown) => {
                Self::new(S::NOT_FOUND, "code_unknown", msg).with_field("code")
            }
            BillingError::Code(CodeRejection::Expired) => {
                Self::new(S::GONE, "code_expired", msg).with_field("code")
            }
            BillingError::Code(CodeRejection::AlreadyRedeemed) => {
                Self::new(S::CONFLICT, "code_redeemed", msg).with_field("code")
            }
            BillingError::Conflict(_) => Self::new(S::CONFLICT, "conflict", msg),
            BillingError::Unbalanced { .. } | BillingError::Store(_) | BillingError::Corrupt(_) => {
                Self::internal(msg)
            }
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            PaymentError::InvalidRequest(_) | PaymentError::Amount(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, "invalid_input", msg)
            }
            PaymentError::Unsupported { .. } | PaymentError::UnsupportedCurrency { .. } => {
                Self::new(S::UNPROCESSABLE_ENTITY, "unsupported", msg).with_field("provider")
            }
            PaymentError::NotFound => Self::not_found("order at the provider"),
            PaymentError::Transport(_)
            | PaymentError::Provider { .. }
            | PaymentError::BadResponse(_) => {
                tracing::warn!(error = %msg, "payment provider failed");
                Self::new(
                    S::BAD_GATEWAY,
                    "provider_unavailable",
                    "the payment provider could not be reached; try again",
                )
            }
            PaymentError::Config(_) => Self::internal(msg),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

/// Result alias of the REST API.
pub type ApiResult<T> = Result<T, ApiError>;
