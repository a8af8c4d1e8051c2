//! Webhook routes into billing: provider paths, holds for mismatched amounts and unknown
//! orders, refunds before payment, and the manual-payment admin route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::sync::Arc;

use api_support::{charge_refunded, session_completed, Harness};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use relay_auth::Role;
use relay_core::{Currency, Money, OrderId};
use relay_payments::{
    Capabilities, Checkout, CheckoutRequest, OrderQuery, OrderStatus, ParsedWebhook, PaymentError,
    PaymentEvent, PaymentEventKind, PaymentProvider, RefundRequest, RefundResult, WebhookError,
};
use serde_json::json;

/// A provider named `wechat` whose webhooks are "signed" with a fixed header: enough to
/// check that `/webhooks/wechatpay` reaches billing like Stripe's route does.
#[derive(Debug)]
struct FakeWechat;

#[async_trait]
impl PaymentProvider for FakeWechat {
    fn name(&self) -> &'static str {
        "wechat"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            webhooks: true,
            ..Capabilities::default()
        }
    }
    async fn create_checkout(&self, r: &CheckoutRequest) -> Result<Checkout, PaymentError> {
        Ok(Checkout {
            provider_reference: format!("wx_{}", r.order_id),
            redirect_url: None,
            qr_code: Some("weixin://wxpay/bizpayurl?pr=test".into()),
            expires_at: None,
        })
    }
    async fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError> {
        if headers.get("x-test-signature").map(|v| v.as_bytes()) != Some(b"ok") {
            return Err(WebhookError::BadSignature);
        }
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| WebhookError::MalformedBody(e.to_string()))?;
        let order: OrderId = v["order"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| WebhookError::MalformedBody("order".into()))?;
        let amount = Money::parse(v["amount"].as_str().unwrap_or("x"), Currency::USD)
            .map_err(|e| WebhookError::MalformedBody(e.to_string()))?;
        Ok(ParsedWebhook {
            events: vec![PaymentEvent {
                provider: "wechat".into(),
                event_id: v["id"].as_str().unwrap_or_default().to_owned(),
                kind: PaymentEventKind::PaymentSucceeded,
                order_id: Some(order),
                amount,
                provider_reference: "4200000001".into(),
                subscription_reference: None,
                occurred_at: None,
            }],
        })
    }
    async fn query_order(&self, _: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        Ok(OrderStatus::Pending)
    }
    async fn refund(&self, _: &RefundRequest) -> Result<RefundResult, PaymentError> {
        Err(PaymentError::Unsupported {
            provider: "wechat",
            operation: "refunds",
        })
    }
}

async fn post_wechat(app: &axum::Router, sig: &str, body: serde_json::Value) -> StatusCode {
    let req = Request::builder()
        .method("POST")
        .uri("/webhooks/wechatpay")
        .header("x-test-signature", sig)
        .body(Body::from(body.to_string()))
        .unwrap();
    tower::ServiceExt::oneshot(app.clone(), req)
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn wechatpay_route_reaches_billing_and_mismatches_are_held() {
    let h = Harness::memory().await;
    let state = h.state.clone().with_provider(Arc::new(FakeWechat));
    let app = relay_server::api::router(state);
    let (token, _) = h.user("ann@example.com").await;
    let req = Request::builder()
        .method("POST")
        .uri("/api/user/top-up")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"provider": "wechat", "amount": "12.00", "currency": "USD"}).to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let co: serde_json::Value = serde_json::from_slice(
        &http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert!(co["qr_code"].as_str().unwrap().starts_with("weixin://"));
    let order = co["order"]["id"].as_str().unwrap().to_owned();

    // Unsigned: refused, nothing changes.
    let body = json!({"id": "wx_evt_1", "order": order, "amount": "12.00"});
    assert_eq!(
        post_wechat(&app, "forged", body.clone()).await,
        StatusCode::BAD_REQUEST
    );
    // Wrong amount: acknowledged (so the provider stops), order held, no money.
    let wrong = json!({"id": "wx_evt_0", "order": order, "amount": "1.00"});
    assert_eq!(post_wechat(&app, "ok", wrong).await, StatusCode::OK);
    let o = h
        .ok(
            "GET",
            &format!("/api/user/orders/{order}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(o["status"], "held_for_review");
    let bal = h.ok("GET", "/api/user/balance", Some(&token), None).await;
    assert!(bal["balance"]["amount"]
        .as_str()
        .unwrap()
        .parse::<rust_decimal::Decimal>()
        .unwrap()
        .is_zero());
    let ledger = h.ok("GET", "/api/user/ledger", Some(&token), None).await;
    assert_eq!(ledger, json!([]));
}

#[tokio::test]
async fn stripe_events_for_unknown_orders_or_refunds_before_payment_move_no_money() {
    let h = Harness::memory().await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let (token, _) = h.user("ann@example.com").await;
    // An order id that does not exist: acknowledged, recorded for review.
    let ghost = OrderId::new().to_string();
    assert_eq!(
        h.stripe_event(
            "evt_ghost",
            "checkout.session.completed",
            session_completed(&ghost, "cs_9", 500, "pi_9")
        )
        .await,
        StatusCode::OK
    );
    let audit = h
        .ok(
            "GET",
            &format!("/api/admin/audit?subject={ghost}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "payment.held"),
        "{audit}"
    );
    // A refund for a pending order is held; the wallet is untouched.
    let co = h
        .ok(
            "POST",
            "/api/user/top-up",
            Some(&token),
            Some(json!({"provider": "stripe", "amount": "20", "currency": "USD"})),
        )
        .await;
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.stripe_event(
            "evt_rf_early",
            "charge.refunded",
            charge_refunded(&order, "pi_1", 2000, true)
        )
        .await,
        StatusCode::OK
    );
    let ledger = h.ok("GET", "/api/user/ledger", Some(&token), None).await;
    assert_eq!(ledger, json!([]));
    // The real payment after it still credits exactly once.
    for _ in 0..2 {
        h.stripe_event(
            "evt_pay",
            "checkout.session.completed",
            session_completed(&order, "cs_1", 2000, "pi_1"),
        )
        .await;
    }
    let ledger = h.ok("GET", "/api/user/ledger", Some(&token), None).await;
    assert_eq!(ledger.as_array().unwrap().len(), 1, "{ledger}");
    // Unconfigured providers have no route.
    let req = Request::builder()
        .method("POST")
        .uri("/webhooks/alipay")
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(h.send(req).await.0, StatusCode::NOT_FOUND);
    // The manual-payment route refuses unknown orders (the admin typed the id).
    let (status, v) = h
        .call(
            "POST",
            "/api/admin/payments/manual",
            Some(&admin),
            Some(json!({"order_id": ghost, "amount": "5", "currency": "USD", "reference": "r1"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["field"], "order_id");
}
