//! [`Observe`]: the request id, tracing span, client address and metrics around every
//! request, wrapped once around the whole router.
//!
//! It was an `axum::middleware::from_fn` added with `Router::layer`, which wraps every
//! route on its own and, per request, cloned the route's boxed service, boxed it again
//! for `Next` and boxed two futures. As a service around the router it allocates nothing
//! of its own, and it carries the connection's peer address itself, so the router needs no
//! `ConnectInfo` layer per connection either.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::ConnectInfo;
use axum::serve::{IncomingStream, Listener};
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use relay_core::RequestId;
use relay_usage::layer::policy::ClientIp;
use tower::Service;
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// Header that echoes the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Wraps a service (the gateway's router) in [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, peer: None }
    }
}

/// Gives each request a [`RequestId`] (echoed in `x-request-id`) and a tracing span, adds
/// the client's address ([`ConnectInfo`] and [`ClientIp`]), and counts the response by
/// route and status (denials of LLM routes by reason).
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    /// The connection's peer, when served by [`Observe::make_service`]. Without it, a
    /// `ConnectInfo` already on the request is used.
    peer: Option<SocketAddr>,
}

impl<S> Observe<S> {
    /// A make-service for `axum::serve`: one `Observe` per connection, knowing its peer.
    pub fn make_service(self) -> MakeObserve<S> {
        MakeObserve(self)
    }
}

impl<S, B, ResBody> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = RequestId::new();
        let route = crate::metrics::route_label(req.uri().path());
        let header = HeaderValue::from_str(id.as_str()).ok();
        let span = tracing::info_span!("request", request_id = %id, method = %req.method(), route);
        let peer = self.peer.or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        });
        let ext = req.extensions_mut();
        ext.insert(id);
        if let Some(addr) = peer {
            ext.insert(ConnectInfo(addr));
            ext.insert(ClientIp(addr.ip()));
        }
        ResponseFuture {
            inner: self.inner.call(req).instrument(span),
            route,
            header,
        }
    }
}

pin_project! {
    /// Response future of [`Observe`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        route: &'static str,
        header: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        crate::metrics::answered(this.route, res.status().as_u16());
        if let Some(v) = this.header.take() {
            res.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        Poll::Ready(Ok(res))
    }
}

/// Make-service of [`Observe`] for `axum::serve`: each connection's service knows its peer.
#[derive(Debug, Clone)]
pub struct MakeObserve<S>(Observe<S>);

impl<'a, L, S> Service<IncomingStream<'a, L>> for MakeObserve<S>
where
    L: Listener<Addr = SocketAddr>,
    S: Clone,
{
    type Response = Observe<S>;
    type Error = Infallible;
    type Future = Ready<Result<Observe<S>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, L>) -> Self::Future {
        ready(Ok(Observe {
            inner: self.0.inner.clone(),
            peer: Some(*stream.remote_addr()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use http::StatusCode;
    use tower::{Layer, ServiceExt};

    use super::*;

    /// Answers `status` and reports what the request carried, in headers.
    fn echo(
        status: StatusCode,
    ) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
        tower::service_fn(move |req: Request<()>| {
            let mut res = Response::new(());
            *res.status_mut() = status;
            let h = res.headers_mut();
            if let Some(id) = req.extensions().get::<RequestId>() {
                h.insert("seen-id", HeaderValue::from_str(id.as_str()).unwrap());
            }
            if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
                h.insert("seen-ip", HeaderValue::from_str(&ip.to_string()).unwrap());
            }
            if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
                h.insert(
                    "seen-peer",
                    HeaderValue::from_str(&addr.to_string()).unwrap(),
                );
            }
            ready(Ok(res))
        })
    }

    fn peer() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40_000)
    }

    #[tokio::test]
    async fn echoes_the_request_id_the_inner_service_saw() {
        let svc = ObserveLayer.layer(echo(StatusCode::OK));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        let echoed = res.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        assert!(!echoed.is_empty());
        assert_eq!(res.headers()["seen-id"], echoed);
    }

    #[tokio::test]
    async fn each_request_gets_its_own_id() {
        let svc = ObserveLayer.layer(echo(StatusCode::OK));
        let a = svc.clone().oneshot(Request::new(())).await.unwrap();
        let b = svc.oneshot(Request::new(())).await.unwrap();
        assert_ne!(
            a.headers()[REQUEST_ID_HEADER],
            b.headers()[REQUEST_ID_HEADER]
        );
    }

    #[tokio::test]
    async fn the_connection_peer_becomes_connect_info_and_client_ip() {
        let svc = Observe {
            inner: echo(StatusCode::OK),
            peer: Some(peer()),
        };
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers()["seen-peer"], "203.0.113.7:40000");
        assert_eq!(res.headers()["seen-ip"], "203.0.113.7");
    }

    #[tokio::test]
    async fn without_a_peer_connect_info_on_the_request_is_used() {
        let svc = ObserveLayer.layer(echo(StatusCode::OK));
        let mut req = Request::new(());
        req.extensions_mut().insert(ConnectInfo(peer()));
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.headers()["seen-ip"], "203.0.113.7");

        // Neither: no address is made up.
        let svc = ObserveLayer.layer(echo(StatusCode::OK));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert!(res.headers().get("seen-ip").is_none());
        assert!(res.headers().get("seen-peer").is_none());
    }

    #[tokio::test]
    async fn errors_and_denials_still_carry_the_request_id() {
        let svc = ObserveLayer.layer(echo(StatusCode::TOO_MANY_REQUESTS));
        let req = Request::post("/v1/messages").body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key(REQUEST_ID_HEADER));
    }
}
