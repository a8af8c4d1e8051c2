//! Payment webhooks into billing: `/webhooks/stripe`, `/webhooks/alipay`,
//! `/webhooks/wechatpay` (and `/webhooks/<name>` for any other configured provider),
//! each a relay-payments [`WebhookService`] whose verified, deduplicated events the
//! [`BillingEventHandler`] applies to relay-billing.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use relay_billing::{Billing, BillingError, OrderStatus, PaymentOutcome};
use relay_payments::{
    decide, Decision, HandleOutcome, HandlerError, OrderSnapshot, OrderState, PaymentEvent,
    PaymentEventHandler, PaymentEventKind, WebhookService,
};

use super::ApiState;

/// Applies verified payment events to billing: payments with
/// [`Billing::apply_payment`], refunds with [`Billing::apply_refund`], routed by
/// [`relay_payments::decide`]. Billing checks amounts and states again and holds what
/// does not match; a store failure is an error so the provider retries.
#[derive(Debug, Clone)]
pub struct BillingEventHandler {
    billing: Arc<Billing>,
}

impl BillingEventHandler {
    /// A handler applying events to `billing`.
    pub fn new(billing: Arc<Billing>) -> Self {
        Self { billing }
    }

    async fn hold(&self, event: &PaymentEvent, reason: String) -> HandleOutcome {
        let detail = serde_json::json!({
            "provider": event.provider,
            "event_id": event.event_id,
            "kind": event.kind.name(),
            "amount": event.amount,
            "reference": event.provider_reference,
            "reason": reason,
        });
        let subject = event
            .order_id
            .as_ref()
            .map_or_else(|| event.provider_reference.clone(), ToString::to_string);
        if let Err(e) = self
            .billing
            .store()
            .record_event("payment.held", &subject, None, detail, self.billing.now())
            .await
        {
            tracing::warn!(error = %e, "could not record a held payment event");
        }
        HandleOutcome::HeldForReview(reason)
    }
}

fn snapshot(order: &relay_billing::Order) -> OrderSnapshot {
    let state = match order.status {
        OrderStatus::Pending => OrderState::Pending,
        OrderStatus::Paid | OrderStatus::Refunded => OrderState::Paid,
        OrderStatus::Expired | OrderStatus::HeldForReview => OrderState::Closed,
    };
    OrderSnapshot {
        state,
        amount: order.amount,
        refunded: order.refunded,
    }
}

fn outcome(applied: &relay_billing::Applied) -> HandleOutcome {
    match &applied.outcome {
        PaymentOutcome::HeldForReview { reason } => HandleOutcome::HeldForReview(reason.clone()),
        PaymentOutcome::Credited { .. } | PaymentOutcome::Refunded { .. } => {
            if applied.replayed {
                HandleOutcome::Ignored
            } else {
                HandleOutcome::Applied
            }
        }
    }
}

#[async_trait]
impl PaymentEventHandler for BillingEventHandler {
    async fn handle(&self, event: &PaymentEvent) -> Result<HandleOutcome, HandlerError> {
        let Some(order_id) = &event.order_id else {
            return Ok(self
                .hold(event, "the event names no order of ours".into())
                .await);
        };
        let order = self
            .billing
            .store()
            .order(order_id)
            .await
            .map_err(|e| HandlerError(e.to_string()))?;
        let decision = decide(order.as_ref().map(snapshot).as_ref(), event);
        let result = match (&event.kind, decision) {
            (_, Decision::NoChange) => return Ok(HandleOutcome::Ignored),
            (_, Decision::Hold(reason)) if order.is_none() => {
                return Ok(self.hold(event, format!("{reason:?}")).await)
            }
            // Payments go to billing even when `decide` would hold them: billing puts the
            // order itself on hold, where an admin sees it.
            (PaymentEventKind::PaymentSucceeded, _) => {
                self.billing
                    .apply_payment(
                        order_id,
                        &event.provider,
                        &event.event_id,
                        event.amount,
                        &event.provider_reference,
                    )
                    .await
            }
            (PaymentEventKind::Refunded { .. }, decision) => {
                let amount = match decision {
                    Decision::Reverse(delta) => delta,
                    _ => event.amount,
                };
                self.billing
                    .apply_refund(
                        order_id,
                        &event.provider,
                        &event.event_id,
                        amount,
                        &event.provider_reference,
                    )
                    .await
            }
            (_, Decision::Hold(reason)) => {
                return Ok(self.hold(event, format!("{reason:?}")).await)
            }
            (_, Decision::Renew(_)) => {
                return Ok(self
                    .hold(
                        event,
                        "provider-side renewals are not used by relay: review and top up".into(),
                    )
                    .await)
            }
            // Failed and expired checkouts leave the order pending; the expiry job
            // closes it. Provider subscriptions are not used.
            _ => return Ok(HandleOutcome::Ignored),
        };
        match result {
            Ok(applied) => Ok(outcome(&applied)),
            Err(
                e @ (BillingError::Store(_) | BillingError::Conflict(_) | BillingError::Corrupt(_)),
            ) => Err(HandlerError(e.to_string())),
            Err(e) => Ok(self.hold(event, e.to_string()).await),
        }
    }
}

/// The path segment for a provider name (`wechat` is received at `/webhooks/wechatpay`).
pub fn path_of(provider: &str) -> String {
    match provider {
        "wechat" => "/webhooks/wechatpay".to_owned(),
        other => format!("/webhooks/{other}"),
    }
}

/// One route per configured provider that receives webhooks.
pub fn routes(state: &ApiState) -> Router {
    let mut router = Router::new();
    for (name, provider) in state.providers.iter() {
        let service = WebhookService::new(provider.clone(), state.processor.clone())
            .with_max_body_bytes(state.config.max_body_bytes.max(64 * 1024));
        router = router.route_service(&path_of(name), service);
    }
    router
}
