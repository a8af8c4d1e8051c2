//! Extractors: a JSON body whose every rejection is a 4xx JSON error, the session behind
//! a request, and the admin check.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use relay_auth::session::{CSRF_HEADER, SESSION_COOKIE};
use relay_auth::{Permission, SessionCredential, SessionUser};
use relay_core::{Currency, Money};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::ApiState;

/// A JSON body. Bad JSON, wrong types, missing fields, a missing content type and
/// oversized bodies are answered with a 4xx [`ApiError`] naming the field when it can.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => {
            // axum reports `<prefix>: <path>: <serde message>`; the path names the field.
            let detail = text
                .split_once("target type: ")
                .map_or(text.as_str(), |(_, d)| d);
            let (path, message) = match detail.split_once(": ") {
                Some((p, m)) if !p.contains(' ') => (p.to_owned(), m.to_owned()),
                _ => (String::new(), detail.to_owned()),
            };
            let field = if path.is_empty() || path == "." {
                missing_field(&message)
            } else {
                Some(path)
            };
            let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message);
            if let Some(f) = field {
                e = e.with_field(f);
            }
            e
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_json", text)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) => {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "request body could not be read",
                )
            }
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_json", text),
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.split_once("field `")?.1;
    Some(rest.split_once('`')?.0.to_owned())
}

/// The logged-in user of a request (bearer token, or cookie plus CSRF header).
#[derive(Debug, Clone)]
pub struct Session {
    /// The user and session.
    pub user: SessionUser,
    /// The presented session token (for logout).
    pub token: String,
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let (token, credential) = if let Some(t) = bearer(parts) {
            (t, SessionCredential::Bearer(t))
        } else if let Some(t) = cookie(parts, SESSION_COOKIE) {
            let csrf = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            (
                t,
                SessionCredential::Cookie {
                    token: t,
                    method: &parts.method,
                    csrf_header: csrf,
                },
            )
        } else {
            return Err(ApiError::unauthenticated());
        };
        let user = state.accounts.authenticate_session(credential).await?;
        Ok(Session {
            user,
            token: token.to_owned(),
        })
    }
}

/// A logged-in admin or operator ([`Permission::ManageUsers`]); routes needing more check
/// [`Admin::require`] too.
#[derive(Debug, Clone)]
pub struct Admin(pub Session);

impl Admin {
    /// Check one more permission of the acting user.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        Ok(self.0.user.user.role.require(permission)?)
    }

    /// The acting user, as written in audit trails.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.0.user.user.id)
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let session = Session::from_request_parts(parts, state).await?;
        session.user.user.role.require(Permission::ManageUsers)?;
        Ok(Admin(session))
    }
}

/// The client's IP address: the first `X-Forwarded-For` hop when
/// [`ApiConfig::trust_forwarded_for`](super::ApiConfig::trust_forwarded_for) is set (behind
/// a proxy), else the peer address, which [`Observe`](crate::observe::Observe) puts on
/// every request it serves from a connection. `None` otherwise: per-IP limits then share
/// one bucket.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<ApiState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        if state.config.trust_forwarded_for {
            let forwarded = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
            if forwarded.is_some() {
                return Ok(ClientIp(forwarded));
            }
        }
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Parse an id (path segment or field) or answer 422 naming `field`.
pub fn parse_id<T: FromStr>(field: &str, raw: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    raw.parse::<T>()
        .map_err(|e| ApiError::invalid(field, format!("invalid {field}: {e}")))
}

/// Parse an amount and currency or answer 422 naming the field.
pub fn parse_money(amount: &str, currency: &str) -> Result<Money, ApiError> {
    let currency = Currency::from_str(currency.trim())
        .map_err(|e| ApiError::invalid("currency", e.to_string()))?;
    if amount.len() > 40 {
        return Err(ApiError::invalid("amount", "amount is too long"));
    }
    Money::parse(amount, currency).map_err(|e| ApiError::invalid("amount", e.to_string()))
}

/// Check a bounded free-text field.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min || n > max || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be {min} to {max} characters without control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// Query parameters; a bad query string is a 4xx JSON error naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text
                    .split_once("string: ")
                    .map_or(text.as_str(), |(_, d)| d)
                    .to_owned();
                let mut e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    detail.clone(),
                );
                if let Some(f) = missing_field(&detail).or_else(|| {
                    detail
                        .split_once(": ")
                        .and_then(|(p, _)| (!p.contains(' ')).then(|| p.to_owned()))
                }) {
                    e = e.with_field(f);
                }
                Err(e)
            }
        }
    }
}

/// A time range in query parameters (RFC 3339; default: the last 30 days).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// Start (inclusive), RFC 3339.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// End (exclusive), RFC 3339.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

impl RangeQuery {
    /// The range, checked (`from` before `to`, at most ~5 years).
    pub fn resolve(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), ApiError> {
        // Default end just after now, so what happened this instant is included.
        let to = self.to.unwrap_or(now + chrono::Duration::seconds(1));
        let from = self.from.unwrap_or(to - chrono::Duration::days(30));
        if from >= to {
            return Err(ApiError::invalid("from", "`from` must be before `to`"));
        }
        if to - from > chrono::Duration::days(366 * 5) {
            return Err(ApiError::invalid(
                "from",
                "the range may span at most 5 years",
            ));
        }
        Ok((from, to))
    }
}
