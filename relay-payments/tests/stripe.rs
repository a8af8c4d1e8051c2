//! Stripe: signatures, REST calls against a local stand-in, and webhooks end to end.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

mod common;

use std::sync::Arc;

use chrono::Duration;
use common::{clock, t0, MockServer, SimBilling};
use http::HeaderMap;
use relay_core::{Currency, ManualClock, Money, OrderId, SharedClock};
use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::stripe::{
    stripe_signature_header, verify_stripe_signature, StripeConfig, StripeProvider,
};
use relay_payments::{
    CheckoutKind, CheckoutRequest, HttpOptions, OrderQuery, OrderState, OrderStatus, PaymentError,
    PaymentEventKind, PaymentProvider, RefundRequest, WebhookError, WebhookProcessor,
    WebhookService,
};
use serde_json::json;
use tower::ServiceExt;

const SECRET: &str = "whsec_test_secret";

fn usd(s: &str) -> Money {
    Money::parse(s, Currency::USD).unwrap()
}

fn provider(base: &str, clock: &ManualClock) -> StripeProvider {
    let config = StripeConfig::new(
        "sk_test_123",
        SECRET,
        "https://relay.example/paid",
        "https://relay.example/cancel",
    )
    .with_api_base(base)
    .with_http(HttpOptions {
        retry_backoff: std::time::Duration::from_millis(1),
        ..HttpOptions::default()
    });
    StripeProvider::new(config, Arc::new(clock.clone())).unwrap()
}

#[test]
fn signature_matches_an_independently_computed_vector() {
    // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test_secret",
    //   b"1767225600.{\"id\":\"evt_1\",\"type\":\"ping\"}", hashlib.sha256).hexdigest())'
    let expected = "ba16994fb8a72dbc6df45b1b545359e2b21f555ba71a5043e3c33a6c494c6ce3";
    let body = br#"{"id":"evt_1","type":"ping"}"#;
    let header = stripe_signature_header(SECRET, 1_767_225_600, body);
    assert_eq!(header, format!("t=1767225600,v1={expected}"));
    let secrets = vec![SECRET.to_owned()];
    assert_eq!(
        verify_stripe_signature(&header, body, &secrets, t0(), 300),
        Ok(1_767_225_600)
    );
}

#[test]
fn signature_accepts_any_v1_and_any_configured_secret() {
    let body = br#"{"id":"evt_2"}"#;
    let good = stripe_signature_header(SECRET, 1_767_225_600, body);
    let good_sig = good.split("v1=").nth(1).unwrap();
    let bogus = "0".repeat(64);
    // Stripe sends several v1 while the endpoint's secret is rolled, plus v0 test signatures.
    let header = format!("t=1767225600,v1={bogus},v0=abc,v1={good_sig}");
    let secrets = vec!["whsec_old".to_owned(), SECRET.to_owned()];
    assert!(verify_stripe_signature(&header, body, &secrets, t0(), 300).is_ok());
    let only_old = vec!["whsec_old".to_owned()];
    assert_eq!(
        verify_stripe_signature(&header, body, &only_old, t0(), 300),
        Err(WebhookError::BadSignature)
    );
}

#[test]
fn signature_rejects_tampering_staleness_and_garbage() {
    let body = br#"{"id":"evt_3","amount":100}"#.to_vec();
    let header = stripe_signature_header(SECRET, 1_767_225_600, &body);
    let secrets = vec![SECRET.to_owned()];
    for i in 0..body.len() {
        let mut altered = body.clone();
        altered[i] ^= 1;
        assert_eq!(
            verify_stripe_signature(&header, &altered, &secrets, t0(), 300),
            Err(WebhookError::BadSignature),
            "byte {i} altered"
        );
    }
    // At the edge of the window it passes; one second past it, in either direction, it fails.
    let edge = t0() + Duration::seconds(300);
    assert!(verify_stripe_signature(&header, &body, &secrets, edge, 300).is_ok());
    for now in [t0() + Duration::seconds(301), t0() - Duration::seconds(301)] {
        assert_eq!(
            verify_stripe_signature(&header, &body, &secrets, now, 300),
            Err(WebhookError::StaleTimestamp)
        );
    }
    for bad in [
        "",
        "v1=abc",
        "t=notanumber,v1=00",
        "t=1767225600",
        "t=1767225600,v1=zz",
    ] {
        assert!(
            verify_stripe_signature(bad, &body, &secrets, t0(), 300).is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn one_off_checkout_sends_the_documented_form() {
    let mock = MockServer::start(|_| {
        (
            200,
            vec![],
            json!({"id": "cs_test_1", "url": "https://checkout.stripe.com/c/pay/cs_test_1",
                   "expires_at": 1767312000, "object": "checkout.session"})
            .to_string(),
        )
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let order = OrderId::new();
    let mut req = CheckoutRequest::one_off(order.clone(), usd("12.50"), "relay top-up");
    req.customer_email = Some("a@example.com".into());
    let checkout = stripe.create_checkout(&req).await.unwrap();
    assert_eq!(checkout.provider_reference, "cs_test_1");
    assert_eq!(
        checkout.redirect_url.as_deref(),
        Some("https://checkout.stripe.com/c/pay/cs_test_1")
    );
    assert_eq!(checkout.expires_at.unwrap().timestamp(), 1_767_312_000);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.uri, "/v1/checkout/sessions");
    assert_eq!(r.header("authorization").unwrap(), "Bearer sk_test_123");
    assert_eq!(
        r.header("idempotency-key").unwrap(),
        format!("checkout-{order}")
    );
    assert_eq!(
        r.header("content-type").unwrap(),
        "application/x-www-form-urlencoded"
    );
    let form = r.form();
    assert_eq!(form["mode"], "payment");
    assert_eq!(form["client_reference_id"], order.as_str());
    assert_eq!(form["metadata[order_id]"], order.as_str());
    assert_eq!(
        form["payment_intent_data[metadata][order_id]"],
        order.as_str()
    );
    assert_eq!(form["line_items[0][price_data][currency]"], "usd");
    assert_eq!(form["line_items[0][price_data][unit_amount]"], "1250");
    assert_eq!(
        form["line_items[0][price_data][product_data][name]"],
        "relay top-up"
    );
    assert_eq!(form["line_items[0][quantity]"], "1");
    assert_eq!(form["customer_email"], "a@example.com");
    assert_eq!(form["success_url"], "https://relay.example/paid");
    assert_eq!(form["cancel_url"], "https://relay.example/cancel");
}

#[tokio::test]
async fn subscription_checkout_uses_the_price_and_tags_the_subscription() {
    let mock = MockServer::start(|_| {
        (
            200,
            vec![],
            json!({"id": "cs_test_sub", "url": "https://checkout.stripe.com/x"}).to_string(),
        )
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let order = OrderId::new();
    let mut req = CheckoutRequest::one_off(order.clone(), usd("20"), "Pro plan");
    req.kind = CheckoutKind::Subscription {
        plan_reference: "price_123".into(),
    };
    req.customer_reference = Some("cus_9".into());
    stripe.create_checkout(&req).await.unwrap();
    let form = mock.requests()[0].form();
    assert_eq!(form["mode"], "subscription");
    assert_eq!(form["line_items[0][price]"], "price_123");
    assert_eq!(
        form["subscription_data[metadata][order_id]"],
        order.as_str()
    );
    assert_eq!(form["customer"], "cus_9");
    assert!(!form.contains_key("line_items[0][price_data][unit_amount]"));
}

#[tokio::test]
async fn bad_checkout_input_is_refused_before_any_request() {
    let mock = MockServer::start(|_| (200, vec![], "{}".into())).await;
    let stripe = provider(&mock.base, &clock());
    let order = OrderId::new();
    for amount in [usd("0"), usd("-1"), usd("1.234")] {
        let req = CheckoutRequest::one_off(order.clone(), amount, "x");
        assert!(matches!(
            stripe.create_checkout(&req).await,
            Err(PaymentError::Amount(_))
        ));
    }
    let mut req = CheckoutRequest::one_off(order, usd("1"), "x");
    req.kind = CheckoutKind::Subscription {
        plan_reference: "price_1/../../v1/refunds".into(),
    };
    assert!(matches!(
        stripe.create_checkout(&req).await,
        Err(PaymentError::InvalidRequest(_))
    ));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_idempotency_key() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let mock = MockServer::start(move |_| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            (
                500,
                vec![],
                json!({"error": {"type": "api_error"}}).to_string(),
            )
        } else {
            (200, vec![], json!({"id": "cus_1"}).to_string())
        }
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let id = stripe
        .create_customer("a@example.com", Some("A"), "cust-key-1")
        .await
        .unwrap();
    assert_eq!(id, "cus_1");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.uri, "/v1/customers");
        assert_eq!(r.header("idempotency-key").unwrap(), "cust-key-1");
        assert_eq!(r.form()["email"], "a@example.com");
    }
}

#[tokio::test]
async fn client_errors_are_not_retried_and_are_reported() {
    let mock = MockServer::start(|_| {
        (
            400,
            vec![],
            json!({"error": {"type": "invalid_request_error", "message": "No such price"}})
                .to_string(),
        )
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let err = stripe
        .create_customer("a@example.com", None, "k")
        .await
        .unwrap_err();
    match err {
        PaymentError::Provider {
            status,
            code,
            message,
        } => {
            assert_eq!(status, 400);
            assert_eq!(code, "invalid_request_error");
            assert_eq!(message, "No such price");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn unreachable_provider_is_a_transport_error() {
    // Bind then drop a listener: nothing answers on that port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let stripe = provider(&format!("http://127.0.0.1:{port}"), &clock());
    assert!(matches!(
        stripe.create_customer("a@example.com", None, "k").await,
        Err(PaymentError::Transport(_))
    ));
}

#[tokio::test]
async fn partial_refund_posts_amount_and_key() {
    let mock = MockServer::start(|_| {
        (
            200,
            vec![],
            json!({"id": "re_1", "amount": 300, "currency": "usd", "status": "succeeded"})
                .to_string(),
        )
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let order = OrderId::new();
    let result = stripe
        .refund(&RefundRequest {
            order_id: order.clone(),
            provider_reference: "pi_123".into(),
            refund_id: "rf1".into(),
            amount: Some(usd("3")),
            payment_amount: usd("12.50"),
            reason: None,
        })
        .await
        .unwrap();
    assert_eq!(result.refund_reference, "re_1");
    assert_eq!(result.amount, usd("3"));
    assert!(result.completed);
    let r = &mock.requests()[0];
    assert_eq!(r.uri, "/v1/refunds");
    assert_eq!(r.header("idempotency-key").unwrap(), "refund-rf1");
    let form = r.form();
    assert_eq!(form["payment_intent"], "pi_123");
    assert_eq!(form["amount"], "300");
    assert_eq!(form["metadata[order_id]"], order.as_str());
}

#[tokio::test]
async fn full_refund_by_checkout_session_finds_its_payment_intent() {
    let mock = MockServer::start(|r| {
        if r.method == http::Method::GET {
            (
                200,
                vec![],
                json!({"id": "cs_77", "payment_intent": "pi_77"}).to_string(),
            )
        } else {
            (
                200,
                vec![],
                json!({"id": "re_2", "amount": 1250, "currency": "usd", "status": "pending"})
                    .to_string(),
            )
        }
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let result = stripe
        .refund(&RefundRequest {
            order_id: OrderId::new(),
            provider_reference: "cs_77".into(),
            refund_id: "rf2".into(),
            amount: None,
            payment_amount: usd("12.50"),
            reason: Some("customer asked".into()),
        })
        .await
        .unwrap();
    assert_eq!(result.amount, usd("12.50"));
    assert!(!result.completed);
    let reqs = mock.requests();
    assert_eq!(reqs[0].uri, "/v1/checkout/sessions/cs_77");
    assert_eq!(reqs[0].header("idempotency-key"), None);
    let form = reqs[1].form();
    assert_eq!(form["payment_intent"], "pi_77");
    assert_eq!(form["metadata[reason]"], "customer asked");
    assert!(!form.contains_key("amount"));
    // A reference that could escape the URL path never leaves the process.
    let err = stripe
        .refund(&RefundRequest {
            order_id: OrderId::new(),
            provider_reference: "../v1/customers".into(),
            refund_id: "rf3".into(),
            amount: None,
            payment_amount: usd("12.50"),
            reason: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentError::InvalidRequest(_)));
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn query_maps_session_states() {
    let mock = MockServer::start(|r| match r.uri.as_str() {
        "/v1/checkout/sessions/cs_paid" => (
            200,
            vec![],
            json!({"id": "cs_paid", "status": "complete", "payment_status": "paid",
                   "amount_total": 1250, "currency": "usd", "payment_intent": "pi_9"})
            .to_string(),
        ),
        "/v1/checkout/sessions/cs_open" => (
            200,
            vec![],
            json!({"id": "cs_open", "status": "open", "payment_status": "unpaid"}).to_string(),
        ),
        "/v1/checkout/sessions/cs_gone" => (
            200,
            vec![],
            json!({"id": "cs_gone", "status": "expired", "payment_status": "unpaid"}).to_string(),
        ),
        _ => (
            404,
            vec![],
            json!({"error": {"type": "invalid_request_error"}}).to_string(),
        ),
    })
    .await;
    let stripe = provider(&mock.base, &clock());
    let q = |r: &str| OrderQuery {
        order_id: OrderId::new(),
        provider_reference: Some(r.into()),
    };
    assert_eq!(
        stripe.query_order(&q("cs_paid")).await.unwrap(),
        OrderStatus::Paid {
            amount: usd("12.50"),
            reference: "pi_9".into()
        }
    );
    assert_eq!(
        stripe.query_order(&q("cs_open")).await.unwrap(),
        OrderStatus::Pending
    );
    assert_eq!(
        stripe.query_order(&q("cs_gone")).await.unwrap(),
        OrderStatus::Closed
    );
    assert_eq!(
        stripe.query_order(&q("cs_unknown")).await.unwrap(),
        OrderStatus::NotFound
    );
    let no_ref = OrderQuery {
        order_id: OrderId::new(),
        provider_reference: None,
    };
    assert!(matches!(
        stripe.query_order(&no_ref).await,
        Err(PaymentError::InvalidRequest(_))
    ));
}

// ---- webhooks -------------------------------------------------------------------------

fn event(id: &str, kind: &str, object: serde_json::Value) -> Vec<u8> {
    json!({"id": id, "object": "event", "type": kind, "created": 1767225500,
           "data": {"object": object}})
    .to_string()
    .into_bytes()
}

fn session_completed(id: &str, order: &OrderId, amount_minor: i64) -> Vec<u8> {
    event(
        id,
        "checkout.session.completed",
        json!({"id": "cs_1", "object": "checkout.session", "mode": "payment",
               "client_reference_id": order.as_str(), "metadata": {"order_id": order.as_str()},
               "payment_status": "paid", "status": "complete", "amount_total": amount_minor,
               "currency": "usd", "payment_intent": "pi_1"}),
    )
}

fn signed(body: &[u8], t: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "stripe-signature",
        stripe_signature_header(SECRET, t, body).parse().unwrap(),
    );
    h
}

async fn parse(body: &[u8]) -> Result<Vec<relay_payments::PaymentEvent>, WebhookError> {
    let stripe = provider("http://127.0.0.1:1", &clock());
    stripe
        .parse_webhook(&signed(body, t0().timestamp()), body)
        .await
        .map(|p| p.events)
}

#[tokio::test]
async fn events_are_normalised() {
    let order = OrderId::new();
    let e = parse(&session_completed("evt_a", &order, 1250))
        .await
        .unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].provider, "stripe");
    assert_eq!(e[0].event_id, "evt_a");
    assert_eq!(e[0].kind, PaymentEventKind::PaymentSucceeded);
    assert_eq!(e[0].order_id, Some(order.clone()));
    assert_eq!(e[0].amount, usd("12.50"));
    assert_eq!(e[0].provider_reference, "pi_1");

    // Unpaid completion (delayed method): nothing yet; the async event brings the money.
    let unpaid = event(
        "evt_b",
        "checkout.session.completed",
        json!({"id": "cs_1", "client_reference_id": order.as_str(), "payment_status": "unpaid",
               "amount_total": 1250, "currency": "usd"}),
    );
    assert!(parse(&unpaid).await.unwrap().is_empty());
    let async_ok = event(
        "evt_c",
        "checkout.session.async_payment_succeeded",
        json!({"id": "cs_1", "client_reference_id": order.as_str(), "payment_status": "paid",
               "amount_total": 1250, "currency": "usd", "payment_intent": "pi_1"}),
    );
    assert_eq!(
        parse(&async_ok).await.unwrap()[0].kind,
        PaymentEventKind::PaymentSucceeded
    );
    let async_failed = event(
        "evt_d",
        "checkout.session.async_payment_failed",
        json!({"id": "cs_1", "client_reference_id": order.as_str(),
               "amount_total": 1250, "currency": "usd"}),
    );
    assert!(matches!(
        parse(&async_failed).await.unwrap()[0].kind,
        PaymentEventKind::PaymentFailed { .. }
    ));
    let expired = event(
        "evt_e",
        "checkout.session.expired",
        json!({"id": "cs_1", "client_reference_id": order.as_str(),
               "amount_total": 1250, "currency": "usd"}),
    );
    assert_eq!(
        parse(&expired).await.unwrap()[0].kind,
        PaymentEventKind::CheckoutExpired
    );

    let renewal = event(
        "evt_f",
        "invoice.paid",
        json!({"id": "in_1", "billing_reason": "subscription_cycle", "amount_paid": 2000,
               "currency": "usd", "subscription": "sub_1",
               "subscription_details": {"metadata": {"order_id": order.as_str()}}}),
    );
    let e = parse(&renewal).await.unwrap();
    assert_eq!(e[0].kind, PaymentEventKind::SubscriptionRenewed);
    assert_eq!(e[0].amount, usd("20"));
    assert_eq!(e[0].order_id, Some(order.clone()));
    assert_eq!(e[0].subscription_reference.as_deref(), Some("sub_1"));
    // The newer API nests subscription details under `parent`.
    let renewal_new = event(
        "evt_f2",
        "invoice.paid",
        json!({"id": "in_2", "billing_reason": "subscription_cycle", "amount_paid": 2000,
               "currency": "usd", "parent": {"subscription_details": {
                   "subscription": "sub_2", "metadata": {"order_id": order.as_str()}}}}),
    );
    let e = parse(&renewal_new).await.unwrap();
    assert_eq!(e[0].order_id, Some(order.clone()));
    assert_eq!(e[0].subscription_reference.as_deref(), Some("sub_2"));
    // The first invoice is paid through the checkout session, which already counted it.
    let first_invoice = event(
        "evt_g",
        "invoice.paid",
        json!({"id": "in_1", "billing_reason": "subscription_create", "amount_paid": 2000,
               "currency": "usd"}),
    );
    assert!(parse(&first_invoice).await.unwrap().is_empty());
    let invoice_failed = event(
        "evt_h",
        "invoice.payment_failed",
        json!({"id": "in_1", "amount_due": 2000, "currency": "usd", "subscription": "sub_1"}),
    );
    assert!(matches!(
        parse(&invoice_failed).await.unwrap()[0].kind,
        PaymentEventKind::PaymentFailed { .. }
    ));
    let deleted = event(
        "evt_i",
        "customer.subscription.deleted",
        json!({"id": "sub_1", "status": "canceled", "currency": "usd",
               "metadata": {"order_id": order.as_str()}}),
    );
    let e = parse(&deleted).await.unwrap();
    assert_eq!(e[0].kind, PaymentEventKind::SubscriptionCanceled);
    assert_eq!(e[0].subscription_reference.as_deref(), Some("sub_1"));
    assert!(e[0].amount.is_zero());
    let still_active = event(
        "evt_j",
        "customer.subscription.updated",
        json!({"id": "sub_1", "status": "active", "currency": "usd"}),
    );
    assert!(parse(&still_active).await.unwrap().is_empty());
    let now_canceled = event(
        "evt_j2",
        "customer.subscription.updated",
        json!({"id": "sub_1", "status": "canceled", "currency": "usd"}),
    );
    assert_eq!(
        parse(&now_canceled).await.unwrap()[0].kind,
        PaymentEventKind::SubscriptionCanceled
    );
    let refunded = event(
        "evt_k",
        "charge.refunded",
        json!({"id": "ch_1", "amount": 1250, "amount_refunded": 300, "refunded": false,
               "currency": "usd", "payment_intent": "pi_1",
               "metadata": {"order_id": order.as_str()}}),
    );
    let e = parse(&refunded).await.unwrap();
    assert_eq!(
        e[0].kind,
        PaymentEventKind::Refunded {
            cumulative: true,
            full: false
        }
    );
    assert_eq!(e[0].amount, usd("3"));
    assert_eq!(e[0].provider_reference, "pi_1");
    let disputed = event(
        "evt_l",
        "charge.dispute.created",
        json!({"id": "dp_1", "amount": 1250, "currency": "usd", "charge": "ch_1",
               "payment_intent": "pi_1"}),
    );
    let e = parse(&disputed).await.unwrap();
    assert_eq!(e[0].kind, PaymentEventKind::Disputed);
    assert_eq!(e[0].order_id, None);
    assert_eq!(e[0].provider_reference, "pi_1");
    // Types relay does not act on are acknowledged with no events.
    let other = event("evt_m", "customer.created", json!({"id": "cus_1"}));
    assert!(parse(&other).await.unwrap().is_empty());
}

#[tokio::test]
async fn another_applications_sessions_are_acknowledged_and_ignored() {
    // A Stripe account shared with another application: its sessions carry its own ids.
    for foreign in ["usr_0123456789abcdef0123456789abcdef", "order-42"] {
        let body = event(
            "evt_other",
            "checkout.session.completed",
            json!({"id": "cs", "payment_status": "paid", "amount_total": 1, "currency": "usd",
                   "client_reference_id": foreign}),
        );
        assert!(parse(&body).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn signed_but_malformed_events_are_rejected() {
    for body in [
        b"not json".to_vec(),
        br#"{"id":"evt_1"}"#.to_vec(),
        event(
            "evt_1",
            "checkout.session.completed",
            json!({"id": "cs", "payment_status": "paid", "amount_total": "12", "currency": "usd"}),
        ),
        event(
            "evt_1",
            "charge.refunded",
            json!({"id": "ch", "amount_refunded": 1, "currency": "xyz"}),
        ),
    ] {
        assert!(
            matches!(parse(&body).await, Err(WebhookError::MalformedBody(_))),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

struct Harness {
    service: WebhookService,
    billing: Arc<SimBilling>,
    store: Arc<MemoryWebhookEventStore>,
    clock: ManualClock,
    order: OrderId,
}

fn harness() -> Harness {
    let clock = clock();
    let order = OrderId::new();
    let billing = SimBilling::with_order(&order, usd("12.50"));
    let store = Arc::new(MemoryWebhookEventStore::new());
    let shared: SharedClock = Arc::new(clock.clone());
    let processor = WebhookProcessor::new(store.clone(), billing.clone(), shared);
    let stripe = Arc::new(provider("http://127.0.0.1:1", &clock));
    Harness {
        service: WebhookService::new(stripe, processor),
        billing,
        store,
        clock,
        order,
    }
}

async fn post(
    service: &WebhookService,
    headers: HeaderMap,
    body: Vec<u8>,
) -> (http::StatusCode, String) {
    let mut req = http::Request::post("/webhooks/stripe")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    *req.headers_mut() = headers;
    let resp = service.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_event_100_times_concurrently_is_credited_once() {
    let h = harness();
    let body = session_completed("evt_dup", &h.order, 1250);
    let headers = signed(&body, t0().timestamp());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let service = h.service.clone();
            let headers = headers.clone();
            let body = body.clone();
            tokio::spawn(async move { post(&service, headers, body).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (status, _) = t.await.unwrap();
        // A delivery racing the winner is told to come back (503); none is an error.
        assert!(
            status == http::StatusCode::OK || status == http::StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        ok += usize::from(status == http::StatusCode::OK);
    }
    assert!(ok >= 1);
    // Stripe retries the 503s later; they are all duplicates now.
    for _ in 0..100 {
        let (status, body) = post(&h.service, headers.clone(), body.clone()).await;
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body, r#"{"received":true}"#);
    }
    assert_eq!(h.billing.calls(), 1);
    assert_eq!(h.billing.credited(), vec![usd("12.50")]);
    assert_eq!(h.billing.state(&h.order), OrderState::Paid);
    let record =
        relay_payments::store::WebhookEventStore::get(h.store.as_ref(), "stripe", "evt_dup")
            .await
            .unwrap()
            .unwrap();
    assert!(record.processed);
}

#[tokio::test]
async fn forged_stale_and_altered_deliveries_get_a_bare_400_and_change_nothing() {
    let h = harness();
    let body = session_completed("evt_x", &h.order, 1250);
    let mut forged = HeaderMap::new();
    forged.insert(
        "stripe-signature",
        stripe_signature_header("whsec_attacker", t0().timestamp(), &body)
            .parse()
            .unwrap(),
    );
    let stale = signed(&body, t0().timestamp() - 301);
    let mut altered = body.clone();
    let pos = altered.windows(4).position(|w| w == b"1250").unwrap();
    altered[pos] = b'9';
    let cases = vec![
        (forged, body.clone()),
        (stale, body.clone()),
        (signed(&body, t0().timestamp()), altered),
        (HeaderMap::new(), body.clone()),
    ];
    for (headers, body) in cases {
        let (status, text) = post(&h.service, headers, body).await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
        assert_eq!(text, r#"{"error":"invalid webhook"}"#);
    }
    assert_eq!(h.billing.calls(), 0);
    assert!(h.billing.credited().is_empty());
    // Nothing was recorded, so the genuine delivery still goes through.
    let (status, _) = post(&h.service, signed(&body, t0().timestamp()), body).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(h.billing.credited(), vec![usd("12.50")]);
}

#[tokio::test]
async fn an_amount_that_differs_from_the_order_is_held_not_credited() {
    let h = harness();
    let body = session_completed("evt_short", &h.order, 1);
    let (status, _) = post(&h.service, signed(&body, t0().timestamp()), body).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(h.billing.credited().is_empty());
    assert_eq!(h.billing.state(&h.order), OrderState::Pending);
    assert_eq!(h.billing.held.lock().len(), 1);
    assert!(h.billing.held.lock()[0].contains("AmountMismatch"));
    let record =
        relay_payments::store::WebhookEventStore::get(h.store.as_ref(), "stripe", "evt_short")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(record.outcome.as_deref(), Some("held_for_review"));
}

#[tokio::test]
async fn a_refund_before_its_payment_is_held_and_refunds_after_are_exact() {
    let h = harness();
    let refund = |id: &str, refunded: i64, full: bool| {
        event(
            id,
            "charge.refunded",
            json!({"id": "ch_1", "amount": 1250, "amount_refunded": refunded, "refunded": full,
                   "currency": "usd", "payment_intent": "pi_1",
                   "metadata": {"order_id": h.order.as_str()}}),
        )
    };
    let early = refund("evt_r0", 300, false);
    let (status, _) = post(&h.service, signed(&early, t0().timestamp()), early).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(h.billing.reversed.lock().is_empty());
    assert!(h.billing.held.lock()[0].contains("RefundBeforePayment"));

    let paid = session_completed("evt_paid", &h.order, 1250);
    post(&h.service, signed(&paid, t0().timestamp()), paid).await;
    // Cumulative amounts: 3.00 then 12.50 in total reverse 3.00 and then 9.50.
    for (id, total, full) in [("evt_r1", 300, false), ("evt_r2", 1250, true)] {
        let body = refund(id, total, full);
        let (status, _) = post(&h.service, signed(&body, t0().timestamp()), body).await;
        assert_eq!(status, http::StatusCode::OK);
    }
    assert_eq!(*h.billing.reversed.lock(), vec![usd("3"), usd("9.50")]);
}

#[tokio::test]
async fn a_failing_handler_leaves_the_event_for_the_retry() {
    let h = harness();
    *h.billing.fail_next.lock() = 1;
    let body = session_completed("evt_retry", &h.order, 1250);
    let headers = signed(&body, t0().timestamp());
    let (status, _) = post(&h.service, headers.clone(), body.clone()).await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.billing.credited().is_empty());
    // Stripe retries a minute later, with the original signature: still inside 300 s.
    h.clock.advance(Duration::seconds(60));
    let (status, _) = post(&h.service, headers, body).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(h.billing.credited(), vec![usd("12.50")]);
    assert_eq!(h.billing.calls(), 2);
}

#[tokio::test]
async fn non_post_and_oversized_bodies_are_refused() {
    let h = harness();
    let req = http::Request::get("/webhooks/stripe")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h.service.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::METHOD_NOT_ALLOWED);
    let small = h.service.clone().with_max_body_bytes(10);
    let body = session_completed("evt_big", &h.order, 1250);
    let (status, _) = post(&small, signed(&body, t0().timestamp()), body).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    assert_eq!(h.billing.calls(), 0);
}
