//! The audit trail of admin requests: a middleware on the API's routes that records every
//! mutating `/admin/...` request (actor, action, target, outcome, request id and the
//! body's `reason`) in the server's append-only [`AuditLog`](crate::audit::AuditLog).
//!
//! It runs after routing (`route_layer`), so the action is named from the matched route
//! (`POST /admin/users/{id}/adjust` -> `admin.users.adjust`) and the target is the path's
//! id, or the body's `order_id`/`user_id`, or the created record's `id`. Refused attempts
//! by logged-in users are recorded too (outcome `refused`); anonymous requests are not
//! (they never reach an admin action, and would let anyone fill the log).

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestPartsExt;
use relay_core::RequestId;

use crate::api::error::ApiError;
use crate::api::extract::Session;
use crate::api::ApiState;

/// The largest response read back for a created record's id; larger answers keep no id.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The longest reason kept.
const MAX_REASON_CHARS: usize = 500;

/// The action name of a matched admin route: literal segments joined by dots, with a
/// verb for collection and item routes (`POST /admin/plans` -> `admin.plans.create`,
/// `PUT /admin/plans/{id}` -> `admin.plans.update`, `DELETE` -> `.delete`).
pub fn action_name(method: &Method, route: &str) -> String {
    let route = route.strip_prefix("/api").unwrap_or(route);
    let segments: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let mut parts: Vec<String> = segments
        .iter()
        .filter(|s| !s.starts_with('{'))
        .map(|s| s.replace('-', "_").to_ascii_lowercase())
        .collect();
    let ends_in_param = segments.last().is_some_and(|s| s.starts_with('{'));
    let verb = match *method {
        Method::DELETE => Some("delete"),
        Method::PUT | Method::PATCH if ends_in_param || segments.len() <= 2 => Some("update"),
        Method::POST if segments.len() <= 2 => Some("create"),
        _ => None,
    };
    if let Some(v) = verb {
        parts.push(v.to_owned());
    }
    parts.join(".")
}

/// Whether a request is an admin action worth recording.
fn audited(method: &Method, route: &str) -> bool {
    let route = route.strip_prefix("/api").unwrap_or(route);
    route.starts_with("/admin/")
        && matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        )
}

/// Printable, bounded text for the log (ids come from the path, i.e. from the client).
fn clean(raw: &str) -> String {
    let s: String = raw.chars().filter(|c| !c.is_control()).take(200).collect();
    if s.trim().is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// The first `{param}` of `route` as found in `path`.
fn path_target(route: &str, path: &str) -> Option<String> {
    let route = route.strip_prefix("/api").unwrap_or(route);
    let path = path.strip_prefix("/api").unwrap_or(path);
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(r, _)| r.starts_with('{'))
        .map(|(_, p)| p.to_owned())
}

fn body_field<'a>(body: &'a serde_json::Value, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| body.get(*n).and_then(|v| v.as_str()))
}

/// The middleware (install with `axum::middleware::from_fn_with_state` as a
/// `route_layer`). Without an audit log in the state it passes requests through.
pub async fn record(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(log) = s.audit.clone() else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(route) = route.filter(|r| audited(req.method(), r)) else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(clean)
        })
        .unwrap_or_else(|| RequestId::new().as_str().to_owned());
    let (mut parts, body) = req.into_parts();
    // The actor, looked up once more here: handlers check roles, this only names who
    // asked. Anonymous requests are answered without a record.
    let actor = match parts.extract_with_state::<Session, _>(&s).await {
        Ok(session) => format!("admin:{}", session.user.user.id),
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    // The body is read here (within the configured limit) for the reason and ids, then
    // handed on unchanged.
    let bytes = match axum::body::to_bytes(body, s.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            )
            .into_response()
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;
    let status = response.status();
    let (response, answer) = if status.is_success() {
        let (rparts, rbody) = response.into_parts();
        match axum::body::to_bytes(rbody, MAX_ANSWER_BYTES).await {
            Ok(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                (Response::from_parts(rparts, Body::from(b)), v)
            }
            // Too large to read back: the body is gone, answer with what happened.
            Err(_) => (
                (rparts.status, rparts.headers, Bytes::new()).into_response(),
                serde_json::Value::Null,
            ),
        }
    } else {
        (response, serde_json::Value::Null)
    };
    let target = path_target(&route, &path)
        .or_else(|| {
            body_field(&json, &["order_id", "user_id", "subscription_id"]).map(str::to_owned)
        })
        .or_else(|| body_field(&answer, &["id", "name"]).map(str::to_owned))
        .or_else(|| {
            answer
                .get("order")
                .and_then(|o| body_field(o, &["id"]))
                .map(str::to_owned)
        })
        .map_or_else(|| "-".to_owned(), |t| clean(&t));
    let outcome = match status.as_u16() {
        200..=299 => "ok",
        401 | 403 => "refused",
        400..=499 => "rejected",
        _ => "failed",
    };
    let mut details = serde_json::json!({
        "method": method.as_str(),
        "route": route,
        "status": status.as_u16(),
        "outcome": outcome,
        "request_id": request_id,
    });
    if let Some(reason) = body_field(&json, &["reason"]) {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON_CHARS)
            .collect();
        details["reason"] = reason.into();
    }
    let action = action_name(&method, &route);
    if let Err(e) = log.record(&actor, &action, &target, &details).await {
        // The action has happened; its answer stands. The missing entry is an alert.
        tracing::error!(%action, %target, %request_id, error = %e, "audit entry not written");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named_from_routes() {
        let n = |m: Method, r: &str| action_name(&m, r);
        assert_eq!(n(Method::POST, "/admin/plans"), "admin.plans.create");
        assert_eq!(n(Method::PUT, "/admin/plans/{id}"), "admin.plans.update");
        assert_eq!(n(Method::DELETE, "/admin/plans/{id}"), "admin.plans.delete");
        assert_eq!(
            n(Method::POST, "/api/admin/users/{id}/top-up"),
            "admin.users.top_up"
        );
        assert_eq!(
            n(Method::POST, "/admin/subscriptions/{id}/extend"),
            "admin.subscriptions.extend"
        );
        assert_eq!(
            n(Method::POST, "/admin/payments/manual"),
            "admin.payments.manual"
        );
    }

    #[test]
    fn targets_come_from_the_path() {
        assert_eq!(
            path_target("/admin/users/{id}/adjust", "/admin/users/usr_1/adjust").as_deref(),
            Some("usr_1")
        );
        assert_eq!(path_target("/admin/codes", "/admin/codes"), None);
        assert_eq!(clean("a\u{7}b"), "ab");
        assert_eq!(clean("\n"), "-");
    }
}
