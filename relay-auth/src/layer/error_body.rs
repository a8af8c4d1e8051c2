//! Error responses in the shape of the API the client speaks.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use relay_core::AccountStatus;
use serde_json::json;

use crate::keys::KeyRejection;

/// Which API's error shape to answer in, chosen from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFlavor {
    /// `{"type":"error","error":{"type":...,"message":...}}` (`/v1/messages...`).
    Anthropic,
    /// `{"error":{"message":...,"type":...,"code":...}}` (`/v1/chat/completions`,
    /// `/v1/responses` and any other path).
    OpenAi,
    /// `{"error":{"code":...,"message":...,"status":...}}` (`/v1beta/...`).
    Gemini,
}

impl ApiFlavor {
    /// The flavor for a request path.
    pub fn from_path(path: &str) -> ApiFlavor {
        if path.starts_with("/v1/messages") || path.starts_with("/anthropic/") {
            ApiFlavor::Anthropic
        } else if path.starts_with("/v1beta") || path.starts_with("/v1alpha") {
            ApiFlavor::Gemini
        } else {
            ApiFlavor::OpenAi
        }
    }
}

/// The HTTP response for `rejection` in `flavor`'s shape.
pub fn rejection_response(flavor: ApiFlavor, rejection: &KeyRejection) -> Response<Full<Bytes>> {
    let status = rejection.status();
    let message = rejection.to_string();
    let body = match flavor {
        ApiFlavor::Anthropic => {
            let kind = match status {
                StatusCode::UNAUTHORIZED => "authentication_error",
                StatusCode::PAYMENT_REQUIRED => "billing_error",
                StatusCode::FORBIDDEN => "permission_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ApiFlavor::OpenAi => {
            let (kind, code) = match rejection {
                KeyRejection::Missing => ("invalid_request_error", "missing_api_key"),
                KeyRejection::Malformed | KeyRejection::Unknown => {
                    ("invalid_request_error", "invalid_api_key")
                }
                KeyRejection::Revoked => ("invalid_request_error", "revoked_api_key"),
                KeyRejection::Expired => ("invalid_request_error", "expired_api_key"),
                KeyRejection::Suspended | KeyRejection::AccountInactive(AccountStatus::PastDue) => {
                    ("insufficient_quota", "payment_required")
                }
                KeyRejection::AccountInactive(_) => ("permission_error", "account_inactive"),
                KeyRejection::Unavailable(_) => ("server_error", "auth_unavailable"),
            };
            json!({"error": {"message": message, "type": kind, "code": code}})
        }
        ApiFlavor::Gemini => {
            let grpc = match status {
                StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
                StatusCode::PAYMENT_REQUIRED => "FAILED_PRECONDITION",
                StatusCode::FORBIDDEN => "PERMISSION_DENIED",
                _ => "UNAVAILABLE",
            };
            json!({"error": {"code": status.as_u16(), "message": message, "status": grpc}})
        }
    };
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}
