//! [`WebhookService`]: a tower service that receives one provider's webhooks.
//!
//! Mount one per provider (`/webhooks/stripe`, `/webhooks/alipay`, ...). It reads the raw
//! body (bounded), verifies it with the provider, deduplicates and handles the events
//! through a [`WebhookProcessor`], and answers in the provider's expected format. It works
//! with any `http` body, not only axum's.

mod future;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};

pub use future::ResponseFuture;

use crate::{PaymentProvider, WebhookOutcome, WebhookProcessor, WebhookReply};

/// Largest body accepted by default (provider webhooks are a few kilobytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Receives one provider's webhooks. Clones share the provider and processor.
#[derive(Debug, Clone)]
pub struct WebhookService {
    provider: Arc<dyn PaymentProvider>,
    processor: WebhookProcessor,
    max_body_bytes: usize,
    query_notifications: bool,
}

impl WebhookService {
    /// A service for `provider`'s webhooks, handled by `processor`.
    pub fn new(provider: Arc<dyn PaymentProvider>, processor: WebhookProcessor) -> Self {
        Self {
            provider,
            processor,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            query_notifications: false,
        }
    }

    /// Also accept `GET` notifications whose signed parameters are the URL's query string
    /// (some aggregators, such as 易支付-style gateways, notify that way). The query string is
    /// handed to [`PaymentProvider::parse_webhook`] as the raw body.
    pub fn with_query_notifications(mut self, enabled: bool) -> Self {
        self.query_notifications = enabled;
        self
    }

    /// Refuse bodies larger than `bytes`.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

fn response(reply: WebhookReply) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(reply.body));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(reply.content_type),
    );
    resp
}

impl<B> tower::Service<http::Request<B>> for WebhookService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        ResponseFuture::new(Box::pin(async move {
            if this.query_notifications && req.method() == http::Method::GET {
                let query = req.uri().query().unwrap_or("").as_bytes().to_vec();
                let receipt = this
                    .processor
                    .receive(this.provider.as_ref(), req.headers(), &query)
                    .await;
                return Ok(response(receipt.reply));
            }
            if req.method() != http::Method::POST {
                let mut resp = response(WebhookReply::text(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed",
                ));
                resp.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
                return Ok(resp);
            }
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, this.max_body_bytes).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    tracing::warn!(
                        provider = this.provider.name(),
                        error = %e,
                        "webhook body unreadable or too large"
                    );
                    return Ok(response(
                        this.provider.webhook_reply(WebhookOutcome::Rejected),
                    ));
                }
            };
            let receipt = this
                .processor
                .receive(this.provider.as_ref(), &parts.headers, &body)
                .await;
            Ok(response(receipt.reply))
        }))
    }
}
