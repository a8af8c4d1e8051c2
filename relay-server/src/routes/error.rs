//! Error responses in the shape of the API the client speaks, so official SDKs raise their
//! own typed errors.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
pub use relay_auth::ApiFlavor;
use serde_json::json;

/// An error answer in `flavor`'s shape.
pub fn error_response(flavor: ApiFlavor, status: StatusCode, message: &str) -> Response {
    let code = status.as_u16();
    let body = match flavor {
        ApiFlavor::Anthropic => {
            let kind = match code {
                400 | 422 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ApiFlavor::OpenAi => {
            let (kind, c) = match code {
                400 | 422 => ("invalid_request_error", "invalid_request"),
                404 => ("invalid_request_error", "not_found"),
                413 => ("invalid_request_error", "request_too_large"),
                429 => ("rate_limit_error", "rate_limit_exceeded"),
                503 => ("server_error", "service_unavailable"),
                _ => ("server_error", "upstream_error"),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": c}})
        }
        ApiFlavor::Gemini => {
            let s = match code {
                400 | 413 | 422 => "INVALID_ARGUMENT",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            json!({"error": {"code": code, "message": message, "status": s}})
        }
    };
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let r = error_response(
            ApiFlavor::Anthropic,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too big",
        );
        assert_eq!(r.status(), 413);
        let r = error_response(ApiFlavor::Gemini, StatusCode::NOT_FOUND, "no");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
