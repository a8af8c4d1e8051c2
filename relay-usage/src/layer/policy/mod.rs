//! [`PolicyLayer`]: admit each LLM request against its key's policy in one atomic step.
//!
//! Needs the caller's [`Principal`] in request extensions (put there by relay-auth's
//! `ApiKeyAuthLayer`, or by your own authentication). For LLM routes it reads the request
//! body (up to [`PolicyLayer::with_max_body_bytes`], 413 beyond), derives
//! [`RequestFacts`](crate::RequestFacts), admits through the [`Limiter`], and passes the request on with the
//! facts and the permit in its extensions for the
//! [`MeteringLayer`](crate::layer::metering::MeteringLayer). Refusals answer in the shape
//! of the API the client speaks: 403 for model, service, client or address, 429 with
//! `Retry-After` for windows and concurrency (a full window also names its cap: limit,
//! remaining 0, window length), 402 for budgets, 400 for an unreadable body
//! or an unpriced model, 503 when the limiter cannot decide. Other routes pass through.

mod future;

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use parking_lot::Mutex;
use relay_core::{KeyPolicy, PriceBook, Principal, RequestId};
use tower::{Layer, Service};

pub use future::ResponseFuture;

use crate::facts::{describe, price, ApiFlavor, FactsError};
use crate::layer::error::{denial_kind, error_response, ErrorKind};
use crate::limiter::{admit, AdmissionRequest, Denial, Limiter, Permit, WindowCap};

/// Default request body limit (10 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 << 20;
/// Output tokens assumed when a request sets no limit.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 8192;

/// The client's address, put into request extensions by the server (the policy layer does
/// not trust forwarding headers on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The admitted request's permit, handed from the policy layer to the metering layer
/// through request extensions (which must be `Clone`).
#[derive(Debug, Clone, Default)]
pub struct PermitSlot(Arc<Mutex<Option<Permit>>>);

impl PermitSlot {
    /// Take the permit out (the metering layer does, once).
    pub fn take(&self) -> Option<Permit> {
        self.0.lock().take()
    }

    fn put(permit: Permit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }
}

#[derive(Debug)]
struct Shared {
    limiter: Arc<dyn Limiter>,
    prices: Arc<PriceBook>,
    max_body_bytes: usize,
    default_max_output: u64,
}

/// Applies [`Policy`] to a service.
#[derive(Debug, Clone)]
pub struct PolicyLayer {
    shared: Arc<Shared>,
}

impl PolicyLayer {
    /// Admit through `limiter`, pricing estimates with `prices`.
    pub fn new(limiter: Arc<dyn Limiter>, prices: Arc<PriceBook>) -> Self {
        Self {
            shared: Arc::new(Shared {
                limiter,
                prices,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                default_max_output: DEFAULT_MAX_OUTPUT_TOKENS,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            limiter: self.shared.limiter.clone(),
            prices: self.shared.prices.clone(),
            max_body_bytes: self.shared.max_body_bytes,
            default_max_output: self.shared.default_max_output,
        };
        f(&mut shared);
        self.shared = Arc::new(shared);
        self
    }

    /// Largest request body read (413 beyond).
    pub fn with_max_body_bytes(self, bytes: usize) -> Self {
        self.edit(|s| s.max_body_bytes = bytes)
    }

    /// Output tokens assumed for requests that set no limit.
    pub fn with_default_max_output_tokens(self, tokens: u64) -> Self {
        self.edit(|s| s.default_max_output = tokens)
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Policy<S> {
        Policy {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Admits requests before they reach `S`. Clones share one limiter.
#[derive(Debug, Clone)]
pub struct Policy<S> {
    inner: S,
    shared: Arc<Shared>,
}

type Reply<B> = Response<Either<B, Full<Bytes>>>;

fn reject<B>(
    flavor: Option<ApiFlavor>,
    kind: ErrorKind,
    message: &str,
    retry: Option<std::time::Duration>,
) -> Reply<B> {
    error_response(flavor, kind, message, retry).map(Either::Right)
}

/// On a full rate window: which cap refused, its limit and window, and that nothing
/// remains (`x-ratelimit-limit-{requests,tokens,cost}`, `x-ratelimit-remaining-...: 0`,
/// `x-ratelimit-window-secs`), beside `Retry-After`.
fn rate_limit_headers(headers: &mut http::HeaderMap, policy: &KeyPolicy, denial: &Denial) {
    let Denial::RateLimited {
        window_secs, cap, ..
    } = denial
    else {
        return;
    };
    let Some(window) = policy
        .rate_windows
        .iter()
        .find(|w| w.window_secs == *window_secs)
    else {
        return;
    };
    let limit = match cap {
        WindowCap::Requests => window.max_requests.map(|n| n.to_string()),
        WindowCap::Tokens => window.max_tokens.map(|n| n.to_string()),
        WindowCap::Cost => window.max_cost.as_ref().map(|m| m.amount().to_string()),
    };
    let Some(Ok(limit)) = limit.map(|l| http::HeaderValue::from_str(&l)) else {
        return;
    };
    let name = |prefix: &str| {
        http::HeaderName::from_bytes(format!("{prefix}-{}", cap.as_str()).as_bytes())
    };
    if let (Ok(l), Ok(r)) = (name("x-ratelimit-limit"), name("x-ratelimit-remaining")) {
        headers.insert(l, limit);
        headers.insert(r, http::HeaderValue::from_static("0"));
    }
    headers.insert(
        "x-ratelimit-window-secs",
        http::HeaderValue::from(*window_secs),
    );
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Policy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Send + 'static,
{
    type Response = Reply<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::new(async move {
            let flavor = ApiFlavor::from_path(req.uri().path());
            let Some(flavor) = flavor else {
                return inner.call(req).await.map(|r| r.map(Either::Left));
            };
            let Some(principal) = req.extensions().get::<Principal>().cloned() else {
                return Ok(reject(
                    Some(flavor),
                    ErrorKind::Authentication,
                    "missing or invalid API key",
                    None,
                ));
            };
            let (mut parts, body) = req.into_parts();
            let bytes = match Limited::new(body, shared.max_body_bytes).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    let msg = format!(
                        "request body is larger than {} bytes",
                        shared.max_body_bytes
                    );
                    return Ok(reject(Some(flavor), ErrorKind::TooLarge, &msg, None));
                }
                Err(_) => {
                    return Ok(reject(
                        Some(flavor),
                        ErrorKind::InvalidRequest,
                        "request body could not be read",
                        None,
                    ));
                }
            };
            let mut facts = match describe(
                parts.uri.path(),
                parts.uri.query(),
                &bytes,
                shared.default_max_output,
            ) {
                Ok(f) => f,
                Err(FactsError::UnknownRoute) => {
                    let req = Request::from_parts(parts, ReqBody::from(bytes));
                    return inner.call(req).await.map(|r| r.map(Either::Left));
                }
                Err(e) => {
                    return Ok(reject(
                        Some(flavor),
                        ErrorKind::InvalidRequest,
                        &e.to_string(),
                        None,
                    ))
                }
            };
            // A model or service the key may not use is refused before it is priced.
            let policy = &principal.policy;
            if !policy.allows_service(flavor.service()) || !policy.allows_model(&facts.model) {
                let denial = if policy.allows_service(flavor.service()) {
                    Denial::Model
                } else {
                    Denial::Service
                };
                return Ok(reject(
                    Some(flavor),
                    ErrorKind::Permission,
                    &denial.to_string(),
                    None,
                ));
            }
            if let Err(e) = price(&mut facts, policy, &shared.prices) {
                return Ok(reject(
                    Some(flavor),
                    ErrorKind::InvalidRequest,
                    &e.to_string(),
                    None,
                ));
            }
            let request_id = match parts.extensions.get::<RequestId>() {
                Some(id) => id.clone(),
                None => {
                    let id = RequestId::new();
                    parts.extensions.insert(id.clone());
                    id
                }
            };
            let user_agent = parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok());
            let admission = AdmissionRequest {
                key: &principal.key_id,
                policy: &principal.policy,
                service: flavor.service(),
                model: &facts.model,
                user_agent,
                ip: parts.extensions.get::<ClientIp>().map(|c| c.0),
                estimated_tokens: facts.reserved_tokens(),
                estimated_cost: facts.estimated_cost,
                min_cost: facts.min_cost,
                request_id: &request_id,
            };
            let permit = match admit(&shared.limiter, &admission).await {
                Ok(Ok(p)) => p,
                Ok(Err(denial)) => {
                    tracing::debug!(reason = denial.reason(), key = %principal.key_id, "request denied");
                    let mut res = reject(
                        Some(flavor),
                        denial_kind(&denial),
                        &denial.to_string(),
                        denial.retry_after(),
                    );
                    rate_limit_headers(res.headers_mut(), &principal.policy, &denial);
                    return Ok(res);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "limiter unavailable; refusing");
                    return Ok(reject(
                        Some(flavor),
                        ErrorKind::Unavailable,
                        "rate limiter unavailable, retry shortly",
                        None,
                    ));
                }
            };
            parts.extensions.insert(facts);
            parts.extensions.insert(PermitSlot::put(permit));
            let req = Request::from_parts(parts, ReqBody::from(bytes));
            inner.call(req).await.map(|r| r.map(Either::Left))
        })
    }
}
