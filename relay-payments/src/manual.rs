//! Payments an admin records by hand (bank transfer, cash, an invoice paid offline). They
//! travel the same path as webhooks: the recorded [`PaymentEvent`] goes through
//! [`WebhookProcessor::deliver`](crate::WebhookProcessor::deliver), deduplicated by the
//! payment's reference, so recording the same transfer twice credits it once.

use async_trait::async_trait;
use http::HeaderMap;
use relay_core::{Money, OrderId, SharedClock};

use crate::{
    Capabilities, Checkout, CheckoutKind, CheckoutRequest, OrderQuery, OrderStatus, ParsedWebhook,
    PaymentError, PaymentEvent, PaymentEventKind, PaymentProvider, RefundRequest, RefundResult,
    WebhookError,
};

/// Provider name of manual payments.
pub const MANUAL_PROVIDER: &str = "manual";

/// The manual provider.
#[derive(Debug, Clone)]
pub struct ManualProvider {
    clock: SharedClock,
}

fn checked_reference(reference: &str) -> Result<&str, PaymentError> {
    let reference = reference.trim();
    if reference.is_empty() || reference.chars().count() > 128 {
        return Err(PaymentError::InvalidRequest(
            "a manual payment needs a reference of 1 to 128 characters".into(),
        ));
    }
    if reference.chars().any(char::is_control) {
        return Err(PaymentError::InvalidRequest(
            "the reference must not contain control characters".into(),
        ));
    }
    Ok(reference)
}

fn checked_amount(amount: &Money) -> Result<(), PaymentError> {
    if amount.is_zero() || amount.is_negative() {
        return Err(PaymentError::Amount("amount must be positive".into()));
    }
    Ok(())
}

impl ManualProvider {
    /// A manual provider stamping events with `clock`'s time.
    pub fn new(clock: SharedClock) -> Self {
        Self { clock }
    }

    /// An admin received `amount` for `order_id` offline, identified by `reference` (the
    /// bank transfer id, receipt number...). Deliver the returned event like a webhook's.
    pub fn record_payment(
        &self,
        order_id: OrderId,
        amount: Money,
        reference: &str,
    ) -> Result<PaymentEvent, PaymentError> {
        let reference = checked_reference(reference)?;
        checked_amount(&amount)?;
        Ok(PaymentEvent {
            provider: MANUAL_PROVIDER.to_owned(),
            event_id: format!("payment:{reference}"),
            kind: PaymentEventKind::PaymentSucceeded,
            order_id: Some(order_id),
            amount,
            provider_reference: reference.to_owned(),
            subscription_reference: None,
            occurred_at: Some(self.clock.now()),
        })
    }

    /// An admin returned `amount` of the payment `payment_reference` offline, identified by
    /// `refund_reference`. `full` says whether that settles the whole payment.
    pub fn record_refund(
        &self,
        order_id: OrderId,
        amount: Money,
        payment_reference: &str,
        refund_reference: &str,
        full: bool,
    ) -> Result<PaymentEvent, PaymentError> {
        let payment_reference = checked_reference(payment_reference)?;
        let refund_reference = checked_reference(refund_reference)?;
        checked_amount(&amount)?;
        Ok(PaymentEvent {
            provider: MANUAL_PROVIDER.to_owned(),
            event_id: format!("refund:{refund_reference}"),
            kind: PaymentEventKind::Refunded {
                cumulative: false,
                full,
            },
            order_id: Some(order_id),
            amount,
            provider_reference: payment_reference.to_owned(),
            subscription_reference: None,
            occurred_at: Some(self.clock.now()),
        })
    }
}

#[async_trait]
impl PaymentProvider for ManualProvider {
    fn name(&self) -> &'static str {
        MANUAL_PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The payer is told out of band how to pay; the checkout is just the order id.
    async fn create_checkout(&self, request: &CheckoutRequest) -> Result<Checkout, PaymentError> {
        if request.kind != CheckoutKind::OneOff {
            return Err(PaymentError::Unsupported {
                provider: MANUAL_PROVIDER,
                operation: "subscriptions",
            });
        }
        checked_amount(&request.amount)?;
        Ok(Checkout {
            provider_reference: request.order_id.to_string(),
            redirect_url: None,
            qr_code: None,
            expires_at: request.expires_at,
        })
    }

    async fn parse_webhook(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError> {
        Err(WebhookError::Unsupported)
    }

    async fn query_order(&self, _query: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        Err(PaymentError::Unsupported {
            provider: MANUAL_PROVIDER,
            operation: "order queries",
        })
    }

    /// Refunds are made offline and recorded with [`ManualProvider::record_refund`].
    async fn refund(&self, _request: &RefundRequest) -> Result<RefundResult, PaymentError> {
        Err(PaymentError::Unsupported {
            provider: MANUAL_PROVIDER,
            operation: "refunds through the API (use record_refund)",
        })
    }
}
