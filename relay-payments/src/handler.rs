//! Where verified events go: the [`PaymentEventHandler`] and the [`WebhookProcessor`] that
//! deduplicates events before handing them over.

use std::fmt::{self, Debug};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Duration;
use http::HeaderMap;
use relay_core::SharedClock;

use crate::store::{Claim, StoreError, WebhookEventStore};
use crate::{PaymentEvent, PaymentProvider, WebhookError, WebhookOutcome, WebhookReply};

/// What the handler did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleOutcome {
    /// Applied to the order / ledger.
    Applied,
    /// Kept for a person to review; no money moved.
    HeldForReview(String),
    /// Nothing to do (already reflected, or not relevant).
    Ignored,
}

impl HandleOutcome {
    /// Short name stored with the dedupe record.
    pub fn as_str(&self) -> &'static str {
        match self {
            HandleOutcome::Applied => "applied",
            HandleOutcome::HeldForReview(_) => "held_for_review",
            HandleOutcome::Ignored => "ignored",
        }
    }
}

/// The handler could not handle the event now; the provider should deliver it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment event handler failed: {0}")]
pub struct HandlerError(pub String);

/// Applies verified, deduplicated events (relay-billing implements it: order state checked,
/// amount and currency compared with what was ordered, see [`decide`](crate::decide)).
#[async_trait]
pub trait PaymentEventHandler: Send + Sync + Debug + 'static {
    /// Apply one event. An `Err` leaves the event unprocessed so a retry handles it.
    async fn handle(&self, event: &PaymentEvent) -> Result<HandleOutcome, HandlerError>;
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The handler ran, with this outcome.
    Handled(HandleOutcome),
    /// Handled by an earlier delivery; nothing done.
    Duplicate,
    /// Another delivery is handling it right now.
    InProgress,
}

/// Why an event could not be delivered to the handler.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The dedupe store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

/// The full result of receiving one webhook.
#[derive(Debug)]
pub struct WebhookReceipt {
    /// The answer to send, in the provider's format.
    pub reply: WebhookReply,
    /// Why verification failed, if it did (for logs, never for the sender).
    pub rejected: Option<WebhookError>,
    /// One entry per event, in order, for the events that were attempted.
    pub deliveries: Vec<Result<Delivery, String>>,
}

/// Verify, deduplicate, handle, answer: the provider-independent webhook pipeline, also used
/// directly for events that do not come over HTTP (manual payments, reconciliation).
#[derive(Clone)]
pub struct WebhookProcessor {
    store: Arc<dyn WebhookEventStore>,
    handler: Arc<dyn PaymentEventHandler>,
    clock: SharedClock,
    lease: Duration,
}

impl Debug for WebhookProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookProcessor")
            .field("store", &self.store)
            .field("handler", &self.handler)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl WebhookProcessor {
    /// A processor recording events in `store` and handing them to `handler`.
    pub fn new(
        store: Arc<dyn WebhookEventStore>,
        handler: Arc<dyn PaymentEventHandler>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            handler,
            clock,
            lease: Duration::minutes(5),
        }
    }

    /// How long a claim lasts before a crashed holder's event can be taken over (5 minutes
    /// by default; longer than any handler should run).
    pub fn with_claim_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Deliver one event: claim it, run the handler, record the outcome. The handler runs
    /// at most once per (provider, event id) unless it fails, in which case the claim is
    /// released so the next delivery retries.
    pub async fn deliver(&self, event: &PaymentEvent) -> Result<Delivery, DeliveryError> {
        let now = self.clock.now();
        let token = match self
            .store
            .claim(&event.provider, &event.event_id, now, self.lease)
            .await?
        {
            Claim::Claimed(token) => token,
            Claim::AlreadyProcessed => return Ok(Delivery::Duplicate),
            Claim::InProgress => return Ok(Delivery::InProgress),
        };
        match self.handler.handle(event).await {
            Ok(outcome) => {
                let recorded = self
                    .store
                    .complete(
                        &event.provider,
                        &event.event_id,
                        &token,
                        outcome.as_str(),
                        self.clock.now(),
                    )
                    .await?;
                if !recorded {
                    // Our lease ran out and someone else took over; the handler must be
                    // idempotent per event id for this (rare) case, which billing's ledger is.
                    tracing::warn!(
                        provider = %event.provider,
                        event_id = %event.event_id,
                        "webhook claim expired while its handler ran"
                    );
                }
                Ok(Delivery::Handled(outcome))
            }
            Err(e) => {
                if let Err(release) = self
                    .store
                    .release(&event.provider, &event.event_id, &token)
                    .await
                {
                    tracing::error!(error = %release, "could not release a webhook claim");
                }
                Err(DeliveryError::Handler(e))
            }
        }
    }

    /// Receive one HTTP delivery for `provider`: verify it, deliver its events, and build
    /// the answer the provider expects. A failed verification answers
    /// [`WebhookOutcome::Rejected`] (the cause is logged, not sent); a failed or concurrent
    /// handling answers [`WebhookOutcome::RetryLater`].
    pub async fn receive(
        &self,
        provider: &dyn PaymentProvider,
        headers: &HeaderMap,
        body: &[u8],
    ) -> WebhookReceipt {
        let parsed = match provider.parse_webhook(headers, body).await {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(provider = provider.name(), error = %e, "webhook rejected");
                return WebhookReceipt {
                    reply: provider.webhook_reply(WebhookOutcome::Rejected),
                    rejected: Some(e),
                    deliveries: Vec::new(),
                };
            }
        };
        let mut deliveries = Vec::with_capacity(parsed.events.len());
        let mut retry = false;
        for event in &parsed.events {
            match self.deliver(event).await {
                Ok(d) => {
                    retry |= d == Delivery::InProgress;
                    deliveries.push(Ok(d));
                }
                Err(e) => {
                    tracing::error!(
                        provider = provider.name(),
                        event_id = %event.event_id,
                        error = %e,
                        "webhook event not handled; the provider will retry"
                    );
                    retry = true;
                    deliveries.push(Err(e.to_string()));
                }
            }
        }
        let outcome = if retry {
            WebhookOutcome::RetryLater
        } else {
            WebhookOutcome::Accepted
        };
        WebhookReceipt {
            reply: provider.webhook_reply(outcome),
            rejected: None,
            deliveries,
        }
    }
}
