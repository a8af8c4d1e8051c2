//! Error responses in the shape of the API the client speaks, so official SDKs raise their
//! own typed errors.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::facts::ApiFlavor;
use crate::limiter::Denial;

/// What went wrong, independent of the API shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (400).
    InvalidRequest,
    /// No authenticated principal (401).
    Authentication,
    /// Not allowed (403).
    Permission,
    /// Budget spent (402).
    Billing,
    /// Rate or concurrency limit (429).
    RateLimit,
    /// Request body too large (413).
    TooLarge,
    /// The limiter could not decide (503).
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::Permission => StatusCode::FORBIDDEN,
            ErrorKind::Billing => StatusCode::PAYMENT_REQUIRED,
            ErrorKind::RateLimit => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::Billing => "billing_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::TooLarge => "request_too_large",
            ErrorKind::Unavailable => "api_error",
        }
    }

    fn openai_type(self) -> (&'static str, &'static str) {
        match self {
            ErrorKind::InvalidRequest => ("invalid_request_error", "invalid_request"),
            ErrorKind::Authentication => ("invalid_request_error", "invalid_api_key"),
            ErrorKind::Permission => ("invalid_request_error", "permission_denied"),
            ErrorKind::Billing => ("insufficient_quota", "insufficient_quota"),
            ErrorKind::RateLimit => ("requests", "rate_limit_exceeded"),
            ErrorKind::TooLarge => ("invalid_request_error", "request_too_large"),
            ErrorKind::Unavailable => ("server_error", "service_unavailable"),
        }
    }

    fn google_status(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::TooLarge => "INVALID_ARGUMENT",
            ErrorKind::Authentication => "UNAUTHENTICATED",
            ErrorKind::Permission => "PERMISSION_DENIED",
            ErrorKind::Billing | ErrorKind::RateLimit => "RESOURCE_EXHAUSTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
        }
    }
}

/// The error kind a denial maps to: 403 for model / service / client / address, 429 for
/// windows and concurrency, 402 for budgets.
pub fn denial_kind(d: &Denial) -> ErrorKind {
    match d {
        Denial::Model | Denial::Service | Denial::Client | Denial::Ip => ErrorKind::Permission,
        Denial::RateLimited { .. } | Denial::Concurrency { .. } => ErrorKind::RateLimit,
        Denial::Budget { .. } => ErrorKind::Billing,
    }
}

/// Build the error response. `flavor` `None` (not an LLM route) uses the OpenAI shape.
pub fn error_response(
    flavor: Option<ApiFlavor>,
    kind: ErrorKind,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<Full<Bytes>> {
    let status = kind.status();
    let body = match flavor {
        Some(ApiFlavor::AnthropicMessages) => json!({
            "type": "error",
            "error": { "type": kind.anthropic_type(), "message": message },
        }),
        Some(ApiFlavor::GeminiGenerate) => json!({
            "error": { "code": status.as_u16(), "message": message, "status": kind.google_status() },
        }),
        _ => {
            let (ty, code) = kind.openai_type();
            json!({ "error": { "message": message, "type": ty, "code": code, "param": null } })
        }
    };
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        res.headers_mut().insert(
            "x-ratelimit-reset-after-ms",
            HeaderValue::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    res
}
