//! The LLM endpoints: each buffers the (bounded) request body, picks a conversation id for
//! sticky routing, adjusts what metering needs, and relays.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{header, StatusCode};
use relay_core::Service;
use relay_usage::RequestFacts;
use serde::Deserialize;

use super::error::{error_response, ApiFlavor};
use crate::app::AppState;
use crate::upstream::{Outbound, RelayError};

/// Header naming a conversation for sticky routing.
pub const SESSION_HEADER: &str = "x-relay-session";

/// What the relay needs from a request body: whether it streams and which conversation it
/// names. Normally taken from the [`RequestFacts`] the policy layer derived (the body is
/// parsed once per request); parsed here only for a handler mounted without that layer.
#[derive(Deserialize, Default)]
struct Peek {
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

impl Peek {
    fn session(self) -> Option<String> {
        self.metadata
            .and_then(|m| m.user_id)
            .or(self.prompt_cache_key)
            .or(self.user)
    }
}

async fn read_body(app: &AppState, body: Body, flavor: ApiFlavor) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, app.max_body_bytes)
        .await
        .map_err(|_| {
            crate::metrics::denial("body_too_large");
            error_response(
                flavor,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {} bytes", app.max_body_bytes),
            )
        })
}

fn peek(body: &[u8], flavor: ApiFlavor) -> Result<Peek, Box<Response>> {
    if body.is_empty() {
        return Ok(Peek::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error_response(
            flavor,
            StatusCode::BAD_REQUEST,
            &format!("request body is not valid JSON: {e}"),
        ))
    })
}

/// The conversation a request names: the session header first, then the body's own.
fn sticky_key(headers: &http::HeaderMap, body_session: Option<String>) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(body_session)
        .filter(|s| !s.is_empty() && s.len() <= 256)
}

/// Ask for the usage chunk at the end of an OpenAI chat stream, which metering needs.
fn inject_include_usage(body: &Bytes) -> Result<Bytes, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_slice(body)?;
    if let Some(obj) = v.as_object_mut() {
        let opts = obj
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if !opts.is_object() {
            *opts = serde_json::json!({});
        }
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
    }
    Ok(Bytes::from(serde_json::to_vec(&v)?))
}

async fn relay(
    app: Arc<AppState>,
    req: Request,
    service: Service,
    path_and_query: String,
    flavor: ApiFlavor,
    include_usage: bool,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let body = match read_body(&app, body, flavor).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (stream, session) = match parts.extensions.remove::<RequestFacts>() {
        Some(facts) => (facts.stream, facts.session),
        None => match peek(&body, flavor) {
            Ok(p) => (p.stream == Some(true), p.session()),
            Err(r) => return *r,
        },
    };
    let body = if include_usage && stream {
        match inject_include_usage(&body) {
            Ok(b) => b,
            Err(e) => {
                return error_response(
                    flavor,
                    StatusCode::BAD_REQUEST,
                    &format!("request body: {e}"),
                )
            }
        }
    } else {
        body
    };
    let out = Outbound {
        service,
        method: parts.method,
        path_and_query,
        sticky: sticky_key(&parts.headers, session),
        headers: parts.headers,
        body,
    };
    match app.relay.send(out).await {
        Ok(res) => res,
        Err(e @ RelayError::NoAccounts(_)) => {
            error_response(flavor, StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e @ RelayError::Unreachable(_)) => {
            error_response(flavor, StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

/// `POST /v1/messages` (Anthropic).
pub async fn messages(State(app): State<Arc<AppState>>, req: Request) -> Response {
    relay(
        app,
        req,
        Service::Anthropic,
        "/v1/messages".into(),
        ApiFlavor::Anthropic,
        false,
    )
    .await
}

/// `POST /v1/messages/count_tokens` (Anthropic).
pub async fn count_tokens(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let path = "/v1/messages/count_tokens".to_owned();
    relay(
        app,
        req,
        Service::Anthropic,
        path,
        ApiFlavor::Anthropic,
        false,
    )
    .await
}

/// `POST /v1/chat/completions` (OpenAI); streams get `stream_options.include_usage`.
pub async fn chat_completions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let path = "/v1/chat/completions".to_owned();
    relay(app, req, Service::Openai, path, ApiFlavor::OpenAi, true).await
}

/// `POST /v1/responses` (OpenAI).
pub async fn responses(State(app): State<Arc<AppState>>, req: Request) -> Response {
    relay(
        app,
        req,
        Service::Openai,
        "/v1/responses".into(),
        ApiFlavor::OpenAi,
        false,
    )
    .await
}

/// Gemini actions relayed.
const GEMINI_ACTIONS: &[&str] = &["generateContent", "streamGenerateContent", "countTokens"];

/// `POST /v1beta/models/{model}:{action}` (Gemini).
pub async fn gemini(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    req: Request,
) -> Response {
    let valid = target.split_once(':').is_some_and(|(model, action)| {
        !model.is_empty()
            && model.len() <= 128
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && GEMINI_ACTIONS.contains(&action)
    });
    if !valid {
        return error_response(
            ApiFlavor::Gemini,
            StatusCode::NOT_FOUND,
            "unknown model action: use models/{model}:generateContent, :streamGenerateContent or :countTokens",
        );
    }
    // Keep the client's query (alt=sse) but never its key: the upstream gets ours.
    let query: Vec<&str> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("key="))
        .collect();
    let mut path = format!("/v1beta/models/{target}");
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    relay(app, req, Service::Gemini, path, ApiFlavor::Gemini, false).await
}

/// Any other path under the LLM prefixes: 404 in the client's shape.
pub async fn not_found(req: Request) -> Response {
    let flavor = ApiFlavor::from_path(req.uri().path());
    let mut res = error_response(
        flavor,
        StatusCode::NOT_FOUND,
        &format!("no route for {} {}", req.method(), req.uri().path()),
    );
    res.headers_mut().remove(header::WWW_AUTHENTICATE);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_include_usage_and_keeps_the_rest() {
        let b = Bytes::from_static(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
        let v: serde_json::Value =
            serde_json::from_slice(&inject_include_usage(&b).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "gpt-4o");
        let b = Bytes::from_static(
            br#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
        );
        let v: serde_json::Value =
            serde_json::from_slice(&inject_include_usage(&b).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert!(inject_include_usage(&Bytes::from_static(b"{nope")).is_err());
    }

    #[test]
    fn sticky_key_sources_in_order() {
        let mut h = http::HeaderMap::new();
        let p: Peek = serde_json::from_str(r#"{"metadata":{"user_id":"u1"},"user":"u2"}"#).unwrap();
        assert_eq!(sticky_key(&h, p.session()).as_deref(), Some("u1"));
        h.insert(SESSION_HEADER, "s1".parse().unwrap());
        assert_eq!(sticky_key(&h, Some("u1".into())).as_deref(), Some("s1"));
        let p: Peek = serde_json::from_str(r#"{"user":"u2"}"#).unwrap();
        assert_eq!(
            sticky_key(&http::HeaderMap::new(), p.session()).as_deref(),
            Some("u2")
        );
        assert_eq!(sticky_key(&http::HeaderMap::new(), None), None);
        assert_eq!(
            sticky_key(&http::HeaderMap::new(), Some(String::new())),
            None
        );
        assert_eq!(
            sticky_key(&http::HeaderMap::new(), Some("x".repeat(257))),
            None
        );
    }
}
