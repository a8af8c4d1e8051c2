//! Stripe event objects to [`PaymentEvent`]s.

use chrono::{DateTime, Utc};
use relay_core::{Currency, Money, OrderId};
use serde_json::Value;

use crate::{PaymentEvent, PaymentEventKind, WebhookError};

pub(crate) const PROVIDER: &str = "stripe";

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn malformed(what: &str) -> WebhookError {
    WebhookError::MalformedBody(format!("stripe event without {what}"))
}

/// Money from Stripe's minor-unit integer and lowercase currency code.
pub(crate) fn stripe_money(obj: &Value, amount_field: &str) -> Result<Money, WebhookError> {
    let minor = obj
        .get(amount_field)
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed(amount_field))?;
    let currency: Currency = obj
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("currency"))?
        .parse()
        .map_err(|_| WebhookError::MalformedBody("unsupported currency".into()))?;
    Ok(Money::from_minor(minor, currency))
}

/// Where the event's object says it came from.
enum Origin {
    /// One of our orders.
    Ours(OrderId),
    /// No order id at all (a dispute): the handler finds the order by reference.
    Unknown,
    /// Another application's id on a shared Stripe account: not ours to act on.
    Foreign,
}

/// Our order id from the places Stripe carries it back: `client_reference_id`, or
/// `metadata.order_id` on the object or its subscription details.
fn origin(obj: &Value) -> Origin {
    let text = str_at(obj, &["client_reference_id"])
        .or_else(|| str_at(obj, &["metadata", "order_id"]))
        .or_else(|| str_at(obj, &["subscription_details", "metadata", "order_id"]))
        .or_else(|| {
            str_at(
                obj,
                &["parent", "subscription_details", "metadata", "order_id"],
            )
        });
    match text.map(str::parse::<OrderId>) {
        Some(Ok(id)) => Origin::Ours(id),
        Some(Err(_)) => Origin::Foreign,
        None => Origin::Unknown,
    }
}

/// The id of an expandable field, whether Stripe sent the id or the expanded object.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn subscription_ref(obj: &Value) -> Option<String> {
    id_of(obj.get("subscription")).or_else(|| {
        str_at(obj, &["parent", "subscription_details", "subscription"]).map(str::to_owned)
    })
}

/// Normalise one verified Stripe event. Event types relay does not act on give no events.
pub(crate) fn events_from(event: &Value) -> Result<Vec<PaymentEvent>, WebhookError> {
    let event_id = str_at(event, &["id"]).ok_or_else(|| malformed("id"))?;
    let event_type = str_at(event, &["type"]).ok_or_else(|| malformed("type"))?;
    let obj = event
        .get("data")
        .and_then(|d| d.get("object"))
        .ok_or_else(|| malformed("data.object"))?;
    let occurred_at = event
        .get("created")
        .and_then(Value::as_i64)
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0));
    let object_id = str_at(obj, &["id"]).ok_or_else(|| malformed("object id"))?;
    let make = |kind: PaymentEventKind, amount: Money, reference: String| PaymentEvent {
        provider: PROVIDER.to_owned(),
        event_id: event_id.to_owned(),
        kind,
        order_id: None,
        amount,
        provider_reference: reference,
        subscription_reference: subscription_ref(obj),
        occurred_at,
    };
    // For a checkout session the payment's reference is its payment intent (payment mode)
    // or its subscription (subscription mode); the session id is the fallback.
    let session_reference = || {
        id_of(obj.get("payment_intent"))
            .or_else(|| subscription_ref(obj))
            .unwrap_or_else(|| object_id.to_owned())
    };
    let event = match event_type {
        "checkout.session.completed" => {
            // Delayed payment methods complete the session unpaid; the money arrives with
            // `async_payment_succeeded`.
            if str_at(obj, &["payment_status"]) != Some("paid") {
                return Ok(Vec::new());
            }
            make(
                PaymentEventKind::PaymentSucceeded,
                stripe_money(obj, "amount_total")?,
                session_reference(),
            )
        }
        "checkout.session.async_payment_succeeded" => make(
            PaymentEventKind::PaymentSucceeded,
            stripe_money(obj, "amount_total")?,
            session_reference(),
        ),
        "checkout.session.async_payment_failed" => make(
            PaymentEventKind::PaymentFailed {
                reason: Some("async payment failed".into()),
            },
            stripe_money(obj, "amount_total")?,
            session_reference(),
        ),
        "checkout.session.expired" => make(
            PaymentEventKind::CheckoutExpired,
            stripe_money(obj, "amount_total")?,
            object_id.to_owned(),
        ),
        "invoice.paid" => {
            // The first invoice of a subscription is paid through its checkout session,
            // which already produced PaymentSucceeded; only renewals are new money here.
            if str_at(obj, &["billing_reason"]) != Some("subscription_cycle") {
                return Ok(Vec::new());
            }
            make(
                PaymentEventKind::SubscriptionRenewed,
                stripe_money(obj, "amount_paid")?,
                object_id.to_owned(),
            )
        }
        "invoice.payment_failed" => make(
            PaymentEventKind::PaymentFailed {
                reason: Some("invoice payment failed".into()),
            },
            stripe_money(obj, "amount_due")?,
            object_id.to_owned(),
        ),
        "customer.subscription.updated" | "customer.subscription.deleted" => {
            if event_type.ends_with("updated") && str_at(obj, &["status"]) != Some("canceled") {
                return Ok(Vec::new());
            }
            let currency: Currency = str_at(obj, &["currency"])
                .ok_or_else(|| malformed("currency"))?
                .parse()
                .map_err(|_| WebhookError::MalformedBody("unsupported currency".into()))?;
            let mut e = make(
                PaymentEventKind::SubscriptionCanceled,
                Money::zero(currency),
                object_id.to_owned(),
            );
            e.subscription_reference = Some(object_id.to_owned());
            e
        }
        "charge.refunded" => {
            let amount = stripe_money(obj, "amount_refunded")?;
            let full = obj
                .get("refunded")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            make(
                PaymentEventKind::Refunded {
                    cumulative: true,
                    full,
                },
                amount,
                id_of(obj.get("payment_intent")).unwrap_or_else(|| object_id.to_owned()),
            )
        }
        "charge.dispute.created" => make(
            PaymentEventKind::Disputed,
            stripe_money(obj, "amount")?,
            id_of(obj.get("payment_intent"))
                .or_else(|| id_of(obj.get("charge")))
                .unwrap_or_else(|| object_id.to_owned()),
        ),
        _ => return Ok(Vec::new()),
    };
    let order_id = match origin(obj) {
        Origin::Ours(id) => Some(id),
        Origin::Unknown => None,
        // Acknowledged without events, so Stripe stops resending it.
        Origin::Foreign => return Ok(Vec::new()),
    };
    Ok(vec![PaymentEvent { order_id, ..event }])
}
