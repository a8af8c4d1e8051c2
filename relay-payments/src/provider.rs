//! The [`PaymentProvider`] trait and the requests and answers it speaks.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use relay_core::{Money, OrderId};

use crate::{PaymentError, PaymentEvent, WebhookError};

/// What a provider can do, so a server offers only what works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Recurring subscriptions billed by the provider.
    pub recurring: bool,
    /// Refunds through the API.
    pub refunds: bool,
    /// Partial refunds.
    pub partial_refunds: bool,
    /// Checkout shown as a QR code.
    pub qr_code: bool,
    /// Checkout by redirecting the browser to a hosted page.
    pub redirect: bool,
    /// Webhooks (asynchronous notifications).
    pub webhooks: bool,
}

/// One-off payment or the start of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutKind {
    /// Pay `amount` once (a top-up, a plan bought outright).
    OneOff,
    /// Start a subscription to the provider-side plan `plan_reference` (a Stripe price id).
    Subscription {
        /// The provider's id of the recurring price.
        plan_reference: String,
    },
}

/// How the payer would rather pay, when the provider offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Presentation {
    /// Redirect the browser to the provider's page.
    #[default]
    Redirect,
    /// Show a QR code to scan with the provider's app.
    QrCode,
}

/// Ask a provider to collect money for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRequest {
    /// Our order; providers carry it back in their events.
    pub order_id: OrderId,
    /// What to collect (for a subscription: the first period, for the record).
    pub amount: Money,
    /// What the payer sees ("relay top-up 20 USD").
    pub description: String,
    /// One-off or subscription.
    pub kind: CheckoutKind,
    /// Redirect or QR code.
    pub presentation: Presentation,
    /// The provider's customer id, if the payer already has one.
    pub customer_reference: Option<String>,
    /// The payer's email, to prefill.
    pub customer_email: Option<String>,
    /// Where the browser goes after paying.
    pub success_url: Option<String>,
    /// Where the browser goes after giving up.
    pub cancel_url: Option<String>,
    /// When the checkout stops accepting payment.
    pub expires_at: Option<DateTime<Utc>>,
}

impl CheckoutRequest {
    /// A one-off redirect checkout with nothing optional set.
    pub fn one_off(order_id: OrderId, amount: Money, description: impl Into<String>) -> Self {
        Self {
            order_id,
            amount,
            description: description.into(),
            kind: CheckoutKind::OneOff,
            presentation: Presentation::Redirect,
            customer_reference: None,
            customer_email: None,
            success_url: None,
            cancel_url: None,
            expires_at: None,
        }
    }
}

/// A checkout the payer can now complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The provider's id for the checkout (Stripe session id, our order id for Alipay/WeChat).
    pub provider_reference: String,
    /// Send the browser here.
    pub redirect_url: Option<String>,
    /// Render this text as a QR code.
    pub qr_code: Option<String>,
    /// When the checkout expires, if the provider says.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Which order to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQuery {
    /// Our order.
    pub order_id: OrderId,
    /// The reference [`Checkout::provider_reference`] returned; Stripe needs it.
    pub provider_reference: Option<String>,
}

/// An order's state at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderStatus {
    /// Created, not paid yet.
    Pending,
    /// Paid: `amount` collected, `reference` is the payment's reference.
    Paid {
        /// Collected amount.
        amount: Money,
        /// The provider's payment reference.
        reference: String,
    },
    /// Paid, then refunded (fully or partly).
    Refunded {
        /// Collected amount.
        amount: Money,
        /// The provider's payment reference.
        reference: String,
    },
    /// Closed or expired without payment.
    Closed,
    /// The provider has never heard of it (the payer never opened the checkout).
    NotFound,
}

/// Return money to the payer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Our order.
    pub order_id: OrderId,
    /// The payment's reference (from [`PaymentEvent::provider_reference`] or the checkout).
    pub provider_reference: String,
    /// Our id for this refund; the provider's idempotency key, so retrying is safe.
    pub refund_id: String,
    /// How much to refund; `None` refunds everything.
    pub amount: Option<Money>,
    /// What the payment collected (Alipay and WeChat want it).
    pub payment_amount: Money,
    /// Shown to the payer where the provider supports it.
    pub reason: Option<String>,
}

/// The provider accepted a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundResult {
    /// The provider's refund id.
    pub refund_reference: String,
    /// The amount of this refund.
    pub amount: Money,
    /// Done (`true`) or still processing at the provider (`false`; a webhook follows).
    pub completed: bool,
}

/// A verified webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedWebhook {
    /// The events it carries; empty for event types relay does not act on (still
    /// acknowledged, so the provider stops sending them).
    pub events: Vec<PaymentEvent>,
}

/// How a webhook delivery ended, to pick the provider's expected answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Verified and handled (or already handled before).
    Accepted,
    /// Failed verification: the sender must not learn why.
    Rejected,
    /// Verified but not handled now; the provider should deliver it again.
    RetryLater,
}

/// An HTTP answer in the provider's expected format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    /// HTTP status.
    pub status: http::StatusCode,
    /// `Content-Type` of `body`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl WebhookReply {
    /// A JSON reply.
    pub fn json(status: http::StatusCode, body: &'static str) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// A plain-text reply.
    pub fn text(status: http::StatusCode, body: &'static str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(body.as_bytes()),
        }
    }
}

/// A way money arrives. Implemented by Stripe, Alipay, WeChat Pay and the manual provider
/// here, and by anyone with another provider (see `examples/custom-provider`).
///
/// Used as `Arc<dyn PaymentProvider>`.
#[async_trait]
pub trait PaymentProvider: Send + Sync + Debug + 'static {
    /// The provider's name as it appears in events and dedupe records (`stripe`).
    fn name(&self) -> &'static str;

    /// What this provider can do.
    fn capabilities(&self) -> Capabilities;

    /// Create a checkout for `request`.
    async fn create_checkout(&self, request: &CheckoutRequest) -> Result<Checkout, PaymentError>;

    /// Verify a webhook delivery from its headers and raw body, and normalise its events.
    /// Must check the signature over the exact bytes received and any timestamp window.
    async fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError>;

    /// Ask the provider what became of an order (for reconciliation).
    async fn query_order(&self, query: &OrderQuery) -> Result<OrderStatus, PaymentError>;

    /// Refund all or part of a payment.
    async fn refund(&self, request: &RefundRequest) -> Result<RefundResult, PaymentError>;

    /// The answer the provider expects for a webhook delivery that ended with `outcome`.
    /// The default is JSON with 200 / 400 / 503.
    fn webhook_reply(&self, outcome: WebhookOutcome) -> WebhookReply {
        match outcome {
            WebhookOutcome::Accepted => {
                WebhookReply::json(http::StatusCode::OK, r#"{"received":true}"#)
            }
            WebhookOutcome::Rejected => WebhookReply::json(
                http::StatusCode::BAD_REQUEST,
                r#"{"error":"invalid webhook"}"#,
            ),
            WebhookOutcome::RetryLater => WebhookReply::json(
                http::StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"try again later"}"#,
            ),
        }
    }
}
