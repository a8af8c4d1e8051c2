//! [`ApiKeyAuthLayer`]: authenticates gateway requests by API key.
//!
//! The key is taken from `x-api-key`, `Authorization: Bearer`, `x-goog-api-key` or the
//! `key` query parameter (Gemini's style), in that order. A cached key is verified without
//! touching the store or awaiting; a miss loads it once. On success the
//! [`relay_core::Principal`] is put into the request's extensions; on failure the layer
//! answers itself with 401 / 402 / 403 (503 when the check could not be made) in the error
//! shape of the API the client speaks, so official SDKs raise their own typed errors.
//!
//! ```
//! use std::sync::Arc;
//! use relay_auth::{ApiKeyAuthLayer, ApiKeyService, store::memory::MemoryStore};
//! use relay_core::SystemClock;
//!
//! let keys = Arc::new(ApiKeyService::new(Arc::new(MemoryStore::new()), &[7u8; 32], Arc::new(SystemClock))?);
//! let layer = ApiKeyAuthLayer::new(keys);
//! let _svc = tower::ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! });
//! # Ok::<(), relay_auth::AuthError>(())
//! ```

mod error_body;
mod future;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

pub use error_body::{rejection_response, ApiFlavor};
pub use future::ResponseFuture;

use crate::keys::{ApiKeyService, KeyRejection};

/// Layer that authenticates requests by API key. Clones share the key service.
#[derive(Debug, Clone)]
pub struct ApiKeyAuthLayer {
    keys: Arc<ApiKeyService>,
}

impl ApiKeyAuthLayer {
    /// Authenticate with `keys`.
    pub fn new(keys: Arc<ApiKeyService>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for ApiKeyAuthLayer {
    type Service = ApiKeyAuth<S>;
    fn layer(&self, inner: S) -> ApiKeyAuth<S> {
        ApiKeyAuth {
            inner,
            keys: Arc::clone(&self.keys),
        }
    }
}

/// The service [`ApiKeyAuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth<S> {
    inner: S,
    keys: Arc<ApiKeyService>,
}

/// The key a request presents, if any.
pub fn extract_key<B>(req: &Request<B>) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    if let Some(v) = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some((scheme, token)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(token.trim());
            }
        }
    }
    if let Some(v) = h.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("key=")?;
        // Keys are base64url: no percent-encoding needed, and anything encoded is not ours.
        Some(value)
    })
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
{
    type Response = Response<Either<ResB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let flavor = ApiFlavor::from_path(req.uri().path());
        let Some(key) = extract_key(&req) else {
            return ResponseFuture::rejected(rejection_response(flavor, &KeyRejection::Missing));
        };
        match self.keys.authenticate_cached(key) {
            Some(Ok(principal)) => {
                req.extensions_mut().insert(principal);
                ResponseFuture::inner(self.inner.call(req))
            }
            Some(Err(rejection)) => {
                ResponseFuture::rejected(rejection_response(flavor, &rejection))
            }
            None => {
                // Take the service that was driven to readiness; leave a clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let keys = Arc::clone(&self.keys);
                let key = key.to_owned();
                ResponseFuture::loading(
                    Box::pin(async move { keys.authenticate(&key).await }),
                    inner,
                    req,
                    flavor,
                )
            }
        }
    }
}
