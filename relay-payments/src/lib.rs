//! How money arrives in relay: the [`PaymentProvider`] trait, normalised [`PaymentEvent`]s,
//! providers for Stripe, Alipay, WeChat Pay and manual payments, and webhooks that are
//! verified, deduplicated and checked before anything is credited.
//!
//! The pieces a server wires together:
//!
//! - a provider (`Arc<dyn PaymentProvider>`): [`stripe::StripeProvider`],
//!   [`alipay::AlipayProvider`], [`wechat::WechatPayProvider`], [`manual::ManualProvider`];
//! - a [`WebhookEventStore`](store::WebhookEventStore) for durable deduplication;
//! - a [`PaymentEventHandler`] (billing) that applies events, using [`decide`];
//! - a [`WebhookProcessor`] tying them together, and one [`WebhookService`] per provider;
//! - [`reconcile::reconcile`] for orders that never got a callback.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use relay_core::{SharedClock, SystemClock};
//! use relay_payments::store::memory::MemoryWebhookEventStore;
//! use relay_payments::{
//!     HandleOutcome, HandlerError, PaymentEvent, PaymentEventHandler, WebhookProcessor,
//! };
//!
//! #[derive(Debug)]
//! struct Billing;
//!
//! #[async_trait]
//! impl PaymentEventHandler for Billing {
//!     async fn handle(&self, _event: &PaymentEvent) -> Result<HandleOutcome, HandlerError> {
//!         Ok(HandleOutcome::Applied)
//!     }
//! }
//!
//! let clock: SharedClock = Arc::new(SystemClock);
//! let processor = WebhookProcessor::new(
//!     Arc::new(MemoryWebhookEventStore::new()),
//!     Arc::new(Billing),
//!     clock,
//! );
//! # let _ = processor;
//! ```
#![warn(missing_docs)]

pub mod alipay;
pub mod check;
pub mod error;
pub mod event;
pub mod handler;
mod http_client;
pub mod manual;
pub mod provider;
pub mod reconcile;
mod rsa_keys;
pub mod store;
pub mod stripe;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod webhook;
pub mod wechat;

pub use check::{decide, Decision, HoldReason, OrderSnapshot, OrderState};
pub use error::{PaymentError, WebhookError};
pub use event::{PaymentEvent, PaymentEventKind};
pub use handler::{
    Delivery, DeliveryError, HandleOutcome, HandlerError, PaymentEventHandler, WebhookProcessor,
    WebhookReceipt,
};
pub use http_client::HttpOptions;
pub use provider::{
    Capabilities, Checkout, CheckoutKind, CheckoutRequest, OrderQuery, OrderStatus, ParsedWebhook,
    PaymentProvider, Presentation, RefundRequest, RefundResult, WebhookOutcome, WebhookReply,
};
pub use webhook::WebhookService;
