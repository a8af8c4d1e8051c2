//! The response future of [`WebhookService`](super::WebhookService).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;

type Output = Result<http::Response<Full<Bytes>>, Infallible>;

/// Resolves to the webhook's answer.
pub struct ResponseFuture {
    inner: BoxFuture<'static, Output>,
}

impl ResponseFuture {
    pub(super) fn new(inner: BoxFuture<'static, Output>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
