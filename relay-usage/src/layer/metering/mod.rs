//! [`MeteringLayer`]: meter every LLM response from its real usage, as it streams.
//!
//! For requests that carry [`RequestFacts`] and a [`Principal`] in their extensions (the
//! [`PolicyLayer`](crate::layer::policy::PolicyLayer) puts the facts and the permit there),
//! the response body is wrapped in a [`MeteredBody`], which parses usage while bytes pass
//! to the client and, when the body ends (or the client goes away), prices the usage
//! exactly, settles the permit and sends a [`UsageEvent`](crate::sink::UsageEvent) to the
//! sink; what has to wait for a backend (Redis, a full queue) finishes in a spawned task,
//! which [`MeteringLayer::settled`] waits for. Other requests pass through unmetered.

mod body;
mod pending;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use relay_core::{PriceBook, Principal, RequestId, SharedClock, SystemClock};
use tower::{Layer, Service};

pub use body::MeteredBody;
use pending::Pending;

use crate::facts::RequestFacts;
use crate::layer::policy::PermitSlot;
use crate::limiter::Permit;
use crate::sink::UsageSink;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) prices: Arc<PriceBook>,
    pub(crate) sink: Arc<dyn UsageSink>,
    pub(crate) clock: SharedClock,
    pub(crate) pending: Arc<Pending>,
}

/// Applies [`Metering`] to a service.
#[derive(Debug, Clone)]
pub struct MeteringLayer {
    shared: Arc<Shared>,
}

impl MeteringLayer {
    /// Price usage with `prices` and send events to `sink`.
    pub fn new(prices: Arc<PriceBook>, sink: Arc<dyn UsageSink>) -> Self {
        Self {
            shared: Arc::new(Shared {
                prices,
                sink,
                clock: Arc::new(SystemClock),
                pending: Arc::default(),
            }),
        }
    }

    /// Timestamp events with `clock` (tests use a manual clock).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        Self {
            shared: Arc::new(Shared {
                prices: self.shared.prices.clone(),
                sink: self.shared.sink.clone(),
                clock,
                pending: self.shared.pending.clone(),
            }),
        }
    }

    /// Resolves once every metered body that has ended (or been dropped) has settled its
    /// permit and recorded its event, including those that had to wait for their backend
    /// in a task of their own. A server awaits it after its last connection closed and
    /// before it drops the runtime those tasks run on, or flushes the sink.
    pub async fn settled(&self) {
        self.shared.pending.wait_idle().await;
    }
}

impl<S> Layer<S> for MeteringLayer {
    type Service = Metering<S>;

    fn layer(&self, inner: S) -> Metering<S> {
        Metering {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Meters the responses of `S`.
#[derive(Debug, Clone)]
pub struct Metering<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What metering needs from the request, carried to the response.
#[derive(Debug)]
pub(crate) struct Context_ {
    pub(crate) facts: RequestFacts,
    pub(crate) principal: Principal,
    pub(crate) request_id: RequestId,
    pub(crate) permit: Option<Permit>,
    pub(crate) shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metering<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let ext = req.extensions();
        let ctx = match (ext.get::<RequestFacts>(), ext.get::<Principal>()) {
            (Some(facts), Some(principal)) => Some(Context_ {
                facts: facts.clone(),
                principal: principal.clone(),
                request_id: ext.get::<RequestId>().cloned().unwrap_or_default(),
                // Taken now: if this future is dropped, the permit drops with it and
                // settles its floor.
                permit: ext.get::<PermitSlot>().and_then(PermitSlot::take),
                shared: self.shared.clone(),
            }),
            _ => None,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            ctx,
        }
    }
}

pin_project! {
    /// Response future of [`Metering`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        ctx: Option<Context_>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let ctx = this.ctx.take();
        let status = res.status();
        Poll::Ready(Ok(res.map(|b| MeteredBody::new(b, ctx, status))))
    }
}
