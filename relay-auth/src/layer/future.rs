//! The response future of [`ApiKeyAuth`](super::ApiKeyAuth).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use relay_core::Principal;
use tower::Service;

use super::error_body::{rejection_response, ApiFlavor};
use crate::keys::KeyRejection;

type Lookup = Pin<Box<dyn Future<Output = Result<Principal, KeyRejection>> + Send>>;

pin_project! {
    /// Response future of [`ApiKeyAuth`](super::ApiKeyAuth): the inner call (cached key),
    /// a key lookup followed by the inner call (cache miss), or a rejection.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Inner { #[pin] fut: S::Future },
        Loading { lookup: Lookup, inner: Option<S>, req: Option<Request<ReqB>>, flavor: ApiFlavor },
        Rejected { response: Option<Response<Full<Bytes>>> },
    }
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    pub(super) fn inner(fut: S::Future) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    pub(super) fn rejected(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(super) fn loading(lookup: Lookup, inner: S, req: Request<ReqB>, flavor: ApiFlavor) -> Self {
        Self {
            state: State::Loading {
                lookup,
                inner: Some(inner),
                req: Some(req),
                flavor,
            },
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Output = Result<Response<Either<ResB, Full<Bytes>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(res.map(Either::Left)));
                }
                StateProj::Rejected { response } => {
                    let res = response.take().unwrap_or_default();
                    return Poll::Ready(Ok(res.map(Either::Right)));
                }
                StateProj::Loading {
                    lookup,
                    inner,
                    req,
                    flavor,
                } => {
                    let outcome = ready!(lookup.as_mut().poll(cx));
                    let next = match (outcome, inner.take(), req.take()) {
                        (Ok(principal), Some(mut svc), Some(mut r)) => {
                            r.extensions_mut().insert(principal);
                            State::Inner { fut: svc.call(r) }
                        }
                        (Err(rejection), _, _) => State::Rejected {
                            response: Some(rejection_response(*flavor, &rejection)),
                        },
                        // Polled again after completion: answer with a generic failure
                        // rather than panic.
                        (Ok(_), _, _) => State::Rejected {
                            response: Some(rejection_response(
                                *flavor,
                                &KeyRejection::Unavailable("polled after completion".into()),
                            )),
                        },
                    };
                    this.state.set(next);
                }
            }
        }
    }
}
