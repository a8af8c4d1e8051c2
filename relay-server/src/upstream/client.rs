//! Sending a request to an upstream account, with failover.
//!
//! The request body is already buffered (it is small, and must be replayable for a retry).
//! An account that answers 429, 5xx (529 included) or 401/403, or cannot be reached, cools
//! down and the request is retried on another account of the pool. Retries happen only
//! before anything is sent to the client: once an upstream answers with a status we pass
//! on, its headers and body stream to the client as they arrive, unbuffered.
//!
//! Connections are hyper's, over rustls (webpki roots, ring), HTTP/2 by ALPN for `https`
//! and HTTP/1.1 otherwise, kept alive in a pool per thread (see [`super::connections`]).
//! It follows no redirects. Each account's scheme, authority and path prefix are parsed
//! once ([`UpstreamBase`]): a request only appends its path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body::{Body as HttpBody, Frame};
use http_body_util::Full;
use relay_core::Service;
use tokio::time::Sleep;

use super::connections::{ClientError, Connections, Connector, Origin, UpstreamBody};
use super::pool::{Account, CooldownPolicy, Failure, Pools};
use crate::config::UpstreamTimeouts;

/// Request headers passed to the upstream (everything else, client credentials first, is
/// dropped).
/// (Header names are constants, not `&str`: a lookup by `&str` parses and validates the
/// name each time.)
const FORWARD_REQUEST: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    ANTHROPIC_VERSION,
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
];

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Response headers passed back to the client.
const FORWARD_RESPONSE: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

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

/// An account's base URL split once into what every request reuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    origin: Origin,
    /// The base path without a trailing slash (`""` or `/v1`, `/openai`...).
    path: String,
}

impl UpstreamBase {
    /// Split `base_url`: `None` unless it is an absolute `http`/`https` URL without query
    /// or fragment.
    pub fn parse(base_url: &str) -> Option<Self> {
        if base_url.contains(['?', '#']) {
            return None;
        }
        let parts = base_url.parse::<Uri>().ok()?.into_parts();
        let scheme = parts.scheme?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return None;
        }
        let authority = parts.authority?;
        if authority.host().is_empty() {
            return None;
        }
        let path = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Some(Self {
            origin: Origin::new(scheme, authority)?,
            path,
        })
    }

    /// Where its requests go.
    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The URI of `path_and_query` (a path from the client's request, query included).
    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        // The joined String becomes the URI's bytes without a copy.
        let pq = PathAndQuery::from_maybe_shared(Bytes::from(join(&self.path, path_and_query)))?;
        self.origin.uri_of(pq)
    }
}

/// Relays requests to the pools' accounts.
#[derive(Debug, Clone)]
pub struct Relay {
    http: Connections,
    idle: Duration,
    pools: Arc<Pools>,
    cooldowns: CooldownPolicy,
    max_attempts: usize,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
fn failure_of(status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
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

/// Why one attempt failed before an answer, as the client is told.
#[derive(Debug)]
enum AttemptError {
    /// The account's base URL or the request path makes no valid URI.
    BadUri,
    /// No response headers within the idle timeout.
    Timeout,
    /// Connecting or sending failed.
    Client(ClientError),
}

impl AttemptError {
    fn message(&self) -> &'static str {
        match self {
            Self::BadUri => "the upstream URL is invalid",
            Self::Timeout => "the upstream did not answer in time",
            Self::Client(ClientError::ConnectTimeout) => "the upstream did not answer in time",
            Self::Client(ClientError::Connect(_)) => "could not connect to the upstream",
            Self::Client(ClientError::Request(_)) => "the upstream connection failed",
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadUri => f.write_str("the base URL and path make no valid URI"),
            Self::Timeout => f.write_str("no response within the idle timeout"),
            Self::Client(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

impl Relay {
    /// A relay over `pools` with connection pooling and the given timeouts.
    pub fn new(pools: Arc<Pools>, timeouts: UpstreamTimeouts) -> Self {
        Self {
            http: Connections::new(Connector::https(timeouts.connect)),
            idle: timeouts.idle,
            pools,
            cooldowns: CooldownPolicy::default(),
            max_attempts: 3,
        }
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

    fn build(
        &self,
        account: &Account,
        out: &Outbound,
    ) -> Result<Request<Full<Bytes>>, AttemptError> {
        let uri = account
            .parsed_url
            .as_ref()
            .ok_or(AttemptError::BadUri)?
            .uri(&out.path_and_query)
            .map_err(|_| AttemptError::BadUri)?;
        let mut request = Request::new(Full::new(out.body.clone()));
        *request.method_mut() = out.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(8);
        for name in FORWARD_REQUEST {
            if let Some(v) = out.headers.get(&name) {
                headers.insert(name, v.clone());
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
                if !headers.contains_key(ANTHROPIC_VERSION) {
                    headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static("2023-06-01"));
                }
                (X_API_KEY, HeaderValue::from_str(key))
            }
            Service::Openai => (
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}")),
            ),
            Service::Gemini => (X_GOOG_API_KEY, HeaderValue::from_str(key)),
        };
        if let Ok(mut v) = auth.1 {
            v.set_sensitive(true);
            headers.insert(auth.0, v);
        }
        Ok(request)
    }

    /// One attempt on `account`: the response head within the idle timeout.
    async fn attempt(
        &self,
        account: &Account,
        out: &Outbound,
    ) -> Result<Response<UpstreamBody>, AttemptError> {
        let origin = account
            .parsed_url
            .as_ref()
            .ok_or(AttemptError::BadUri)?
            .origin();
        let request = self.build(account, out)?;
        match tokio::time::timeout(self.idle, self.http.send(origin, request)).await {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => Err(AttemptError::Client(e)),
            Err(_) => Err(AttemptError::Timeout),
        }
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
            let result = self.attempt(account, &out).await;
            let elapsed = started.elapsed();
            let is_last = attempt + 1 == attempts;
            match result {
                Err(e) => {
                    let cooldown =
                        account.record_failure(Failure::Unavailable, &self.cooldowns, now_ms());
                    crate::metrics::upstream_response(out.service, &account.name, "error", elapsed);
                    tracing::warn!(account = %account.name, error = %e, ?cooldown, "upstream request failed; cooling the account down");
                    e.message().clone_into(&mut last_error);
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
                            return Ok(self.stream_response(res));
                        }
                        None => {
                            account.record_success();
                            return Ok(self.stream_response(res));
                        }
                    }
                }
            }
        }
        Err(RelayError::Unreachable(last_error))
    }

    /// The upstream response as ours: status, the forwarded headers, and the body streamed.
    fn stream_response(&self, res: Response<UpstreamBody>) -> Response<Body> {
        let (parts, incoming) = res.into_parts();
        let mut headers = HeaderMap::with_capacity(4);
        for name in FORWARD_RESPONSE {
            if let Some(v) = parts.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // Tell reverse proxies in front of us not to buffer the stream.
            headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        }
        let body = Body::new(IdleBody {
            inner: incoming,
            idle: self.idle,
            timer: None,
            armed: false,
            done: false,
        });
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        response
    }
}

/// The upstream body failed mid-stream.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// No byte within the idle timeout.
    #[error("the upstream sent nothing for {0:?}")]
    Idle(Duration),
    /// The connection failed.
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
}

/// The upstream body with the idle timeout between chunks.
///
/// It passes on the upstream's length and end: with a content-length, hyper answers with
/// it (not chunked) and stops polling after the last byte, and the metering body counts the
/// body complete when this one reports its end after that byte.
struct IdleBody {
    inner: UpstreamBody,
    idle: Duration,
    /// Made on the first wait, then reset: armed while waiting for the next frame.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    done: bool,
}

impl std::fmt::Debug for IdleBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleBody")
            .field("idle", &self.idle)
            .finish()
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // The next wait starts afresh (re-armed lazily, only if it has to wait).
                this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream body failed mid-stream");
                this.done = true;
                Poll::Ready(Some(Err(BodyError::Upstream(e))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if !this.armed {
                            timer.as_mut().reset(tokio::time::Instant::now() + idle);
                        }
                        timer
                    }
                    None => this.timer.insert(Box::pin(tokio::time::sleep(idle))),
                };
                this.armed = true;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(?idle, "upstream body idle for too long");
                        this.done = true;
                        Poll::Ready(Some(Err(BodyError::Idle(idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
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
    fn upstream_uris_match_the_joined_text() {
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
            let base_parts = account.parsed_url.as_ref().unwrap();
            let fast = base_parts.uri(path).unwrap();
            let slow: Uri = join(&account.base_url, path).parse().unwrap();
            assert_eq!(fast, slow, "{base} + {path}");
        }
    }

    #[test]
    fn base_urls_that_are_refused() {
        for bad in [
            "not a url",
            "/v1",
            "host:443",
            "ftp://host/v1",
            "https://host/v1?x=1",
            "https://host/v1#frag",
            "https:///v1",
        ] {
            assert_eq!(UpstreamBase::parse(bad), None, "{bad}");
        }
        // An account with such a base URL fails its requests (cooled down like a connect
        // failure) instead of sending them anywhere.
        let relay = Relay::new(
            Arc::new(Pools::default()),
            UpstreamTimeouts {
                connect: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
        );
        let account = Account::new("b", Service::Openai, "not a url", Credential::new("k"), 1);
        let out = Outbound {
            service: Service::Openai,
            method: Method::POST,
            path_and_query: "/v1/responses".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            sticky: None,
        };
        let err = relay.build(&account, &out).unwrap_err();
        assert_eq!(err.message(), "the upstream URL is invalid");
    }

    #[test]
    fn statuses_that_cool_an_account() {
        let h = HeaderMap::new();
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
        let mut h2 = HeaderMap::new();
        h2.insert(header::RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(
            failure_of(StatusCode::TOO_MANY_REQUESTS, &h2),
            Some(Failure::RateLimited(Some(Duration::from_secs(12))))
        );
    }
}
