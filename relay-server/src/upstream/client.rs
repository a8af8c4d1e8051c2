//! Sending a request to an upstream account, with failover.
//!
//! The request body is already buffered (it is small, and must be replayable for a retry).
//! An account that answers 429, 5xx (529 included) or 401/403, or cannot be reached, cools
//! down and the request is retried on another account of the pool. Retries happen only
//! before anything is sent to the client: once an upstream answers with a status we pass
//! on, its headers and body stream to the client as they arrive, unbuffered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use relay_core::Service;

use super::pool::{Account, CooldownPolicy, Failure, Pools};
use crate::config::UpstreamTimeouts;

/// Request headers passed to the upstream (everything else, client credentials first, is
/// dropped).
const FORWARD_REQUEST: &[&str] = &[
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
];

/// Response headers passed back to the client.
const FORWARD_RESPONSE: &[&str] = &["content-type", "cache-control", "retry-after"];

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The service has no upstream account.
    #[error("no upstream account is configured for {0}")]
    NoAccounts(Service),
    /// Every account tried failed before answering.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
}

/// A request on its way to an upstream.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The API family.
    pub service: Service,
    /// Method.
    pub method: Method,
    /// Path and query on the upstream (`/v1/messages`, `/v1beta/models/x:generateContent?alt=sse`).
    pub path_and_query: String,
    /// The client's headers (filtered here).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Conversation id for sticky routing.
    pub sticky: Option<String>,
}

/// Relays requests to the pools' accounts.
#[derive(Debug, Clone)]
pub struct Relay {
    http: reqwest::Client,
    pools: Arc<Pools>,
    cooldowns: CooldownPolicy,
    max_attempts: usize,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// What a status means for the account that answered it.
fn failure_of(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Failure> {
    match status.as_u16() {
        429 => Some(Failure::RateLimited(retry_after(headers))),
        401 | 403 => Some(Failure::Unauthorized),
        500..=599 => Some(Failure::Unavailable),
        _ => None,
    }
}

/// `base` + `path`, without doubling a `/v1` that both carry (OpenAI-compatible base URLs
/// are often given as `https://host/v1`).
fn join(base: &str, path: &str) -> String {
    match (base.strip_suffix("/v1"), path.strip_prefix("/v1/")) {
        (Some(_), Some(_)) => format!("{base}{}", &path[3..]),
        _ => format!("{base}{path}"),
    }
}

/// The upstream URL of `path_and_query` on `account`: its parsed base URL with the joined
/// path and the query set (no full parse per request), or the joined text when the base
/// URL did not parse (the client then reports why).
fn upstream_url(account: &Account, path_and_query: &str) -> Result<reqwest::Url, String> {
    let Some(base) = &account.parsed_url else {
        return Err(join(&account.base_url, path_and_query));
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut url = base.clone();
    url.set_path(&join(base.path().trim_end_matches('/'), path));
    url.set_query(query);
    Ok(url)
}

impl Relay {
    /// A relay over `pools` with connection pooling and the given timeouts.
    pub fn new(pools: Arc<Pools>, timeouts: UpstreamTimeouts) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            pools,
            cooldowns: CooldownPolicy::default(),
            max_attempts: 3,
        })
    }

    /// Replace the cooldown lengths.
    pub fn with_cooldowns(mut self, cooldowns: CooldownPolicy) -> Self {
        self.cooldowns = cooldowns;
        self
    }

    /// The pools.
    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    fn build(&self, account: &Account, out: &Outbound) -> reqwest::RequestBuilder {
        let mut headers = reqwest::header::HeaderMap::with_capacity(8);
        for name in FORWARD_REQUEST {
            if let Some(v) = out.headers.get(*name) {
                headers.insert(HeaderName::from_static(name), v.clone());
            }
        }
        // Metering reads the bytes: ask for them uncompressed.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let key = account.credential.expose();
        let auth = match account.service {
            Service::Anthropic => {
                if !headers.contains_key("anthropic-version") {
                    headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
                }
                ("x-api-key", HeaderValue::from_str(key))
            }
            Service::Openai => (
                "authorization",
                HeaderValue::from_str(&format!("Bearer {key}")),
            ),
            Service::Gemini => ("x-goog-api-key", HeaderValue::from_str(key)),
        };
        if let Ok(mut v) = auth.1 {
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static(auth.0), v);
        }
        let builder = match upstream_url(account, &out.path_and_query) {
            Ok(url) => self.http.request(out.method.clone(), url),
            Err(text) => self.http.request(out.method.clone(), text),
        };
        builder.headers(headers).body(out.body.clone())
    }

    /// Send `out` to an account of its service's pool, failing over as described in the
    /// module docs. The response streams from the upstream.
    pub async fn send(&self, out: Outbound) -> Result<Response<Body>, RelayError> {
        let pool = self.pools.pool(out.service);
        if pool.accounts().is_empty() {
            return Err(RelayError::NoAccounts(out.service));
        }
        let attempts = self.max_attempts.min(pool.accounts().len());
        let mut tried = Vec::with_capacity(attempts);
        let mut last_error = String::new();
        for attempt in 0..attempts {
            let Some(index) = pool.pick(out.sticky.as_deref(), &tried, now_ms()) else {
                break;
            };
            tried.push(index);
            let account = &pool.accounts()[index];
            let started = Instant::now();
            let result = self.build(account, &out).send().await;
            let elapsed = started.elapsed();
            let is_last = attempt + 1 == attempts;
            match result {
                Err(e) => {
                    let cooldown =
                        account.record_failure(Failure::Unavailable, &self.cooldowns, now_ms());
                    crate::metrics::upstream_response(out.service, &account.name, "error", elapsed);
                    tracing::warn!(account = %account.name, error = %e, ?cooldown, "upstream request failed; cooling the account down");
                    last_error = if e.is_timeout() {
                        "the upstream did not answer in time".to_owned()
                    } else if e.is_connect() {
                        "could not connect to the upstream".to_owned()
                    } else {
                        "the upstream connection failed".to_owned()
                    };
                }
                Ok(res) => {
                    let status = res.status();
                    if status == StatusCode::OK {
                        account.record_ok_latency(elapsed);
                    } else {
                        crate::metrics::upstream_response(
                            out.service,
                            &account.name,
                            status.as_str(),
                            elapsed,
                        );
                    }
                    match failure_of(status, res.headers()) {
                        Some(failure) => {
                            let cooldown =
                                account.record_failure(failure, &self.cooldowns, now_ms());
                            tracing::warn!(account = %account.name, %status, ?cooldown, "upstream refused; cooling the account down");
                            if !is_last
                                && pool.pick(out.sticky.as_deref(), &tried, now_ms()).is_some()
                            {
                                continue;
                            }
                            if failure == Failure::Unauthorized {
                                // Our credential was refused, not the client's: never pass
                                // an upstream 401/403 on as if the client's key were bad.
                                return Err(RelayError::Unreachable(
                                    "the upstream refused this gateway's credentials".into(),
                                ));
                            }
                            // Nobody left to try: the client gets the upstream's own answer.
                            return Ok(into_response(res));
                        }
                        None => {
                            account.record_success();
                            return Ok(into_response(res));
                        }
                    }
                }
            }
        }
        Err(RelayError::Unreachable(last_error))
    }
}

/// The upstream response as ours: status, the forwarded headers, and the body streamed.
fn into_response(res: reqwest::Response) -> Response<Body> {
    let status = res.status();
    let mut headers = HeaderMap::with_capacity(4);
    for name in FORWARD_RESPONSE {
        if let Some(v) = res.headers().get(*name) {
            headers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tell reverse proxies in front of us not to buffer the stream.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    // No content-length, even when the upstream sent one: with it hyper stops polling the
    // body after the last byte and drops it, and the metering body would take the missing
    // end-of-stream for a client that went away.
    let body = Body::from_stream(stream::unfold(Some(res), |res| async move {
        let mut res = res?;
        match res.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, reqwest::Error>(chunk), Some(res))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "upstream body failed mid-stream");
                Some((Err(e), None))
            }
        }
    }));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::super::pool::Credential;
    use super::*;

    #[test]
    fn joins_without_doubling_v1() {
        assert_eq!(
            join("https://api.openai.com", "/v1/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            join("https://host/v1", "/v1/chat/completions"),
            "https://host/v1/chat/completions"
        );
        assert_eq!(
            join("https://host/openai", "/v1/responses"),
            "https://host/openai/v1/responses"
        );
        assert_eq!(
            join("https://g", "/v1beta/models/m:generateContent"),
            "https://g/v1beta/models/m:generateContent"
        );
    }

    #[test]
    fn upstream_urls_match_the_joined_text() {
        let cases = [
            ("https://api.openai.com", "/v1/chat/completions"),
            ("https://host/v1", "/v1/chat/completions"),
            ("https://host/v1/", "/v1/responses"),
            ("https://host/openai", "/v1/responses"),
            ("http://127.0.0.1:9101", "/v1/messages"),
            (
                "https://generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            ),
        ];
        for (base, path) in cases {
            let account = Account::new("a", Service::Openai, base, Credential::new("k"), 1);
            let fast = upstream_url(&account, path).unwrap();
            let slow = reqwest::Url::parse(&join(&account.base_url, path)).unwrap();
            assert_eq!(fast, slow, "{base} + {path}");
        }
        // A base URL that does not parse is passed on as text for the client to refuse.
        let bad = Account::new("b", Service::Openai, "not a url", Credential::new("k"), 1);
        assert_eq!(
            upstream_url(&bad, "/v1/responses").unwrap_err(),
            "not a url/v1/responses"
        );
    }

    #[test]
    fn statuses_that_cool_an_account() {
        let h = reqwest::header::HeaderMap::new();
        assert_eq!(failure_of(StatusCode::OK, &h), None);
        assert_eq!(failure_of(StatusCode::BAD_REQUEST, &h), None);
        assert_eq!(
            failure_of(StatusCode::from_u16(529).unwrap(), &h),
            Some(Failure::Unavailable)
        );
        assert_eq!(
            failure_of(StatusCode::UNAUTHORIZED, &h),
            Some(Failure::Unauthorized)
        );
        let mut h2 = reqwest::header::HeaderMap::new();
        h2.insert(header::RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(
            failure_of(StatusCode::TOO_MANY_REQUESTS, &h2),
            Some(Failure::RateLimited(Some(Duration::from_secs(12))))
        );
    }
}
