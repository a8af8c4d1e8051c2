//! Sign-up to paid key in one loop, through the REST API and signed Stripe webhooks:
//! register, read the verification notice, verify, log in, buy a plan through a Stripe
//! checkout (local stand-in), get keys, let the subscription lapse on the manual clock
//! (key refused), pay again (key works), refund; ledger and invoices checked at each step.
//! On memory, SQLite and PostgreSQL (the gateway half of the loop: `full_loop.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::{charge_refunded, session_completed, Backend, Harness};
use axum::http::StatusCode;
use relay_auth::{KeyRejection, Role};
use serde_json::{json, Value};

/// What the gateway does with a key before relaying `/v1/messages`: authenticate it
/// (the `ApiKeyAuthLayer` path, standing included). This harness has the API only; the
/// same loop with real `/v1/messages` calls through the served gateway is `full_loop.rs`.
async fn key_authenticates(h: &Harness, key: &str) -> Result<(), KeyRejection> {
    h.keys.authenticate(key).await.map(|_| ())
}

fn money(v: &Value) -> (String, String) {
    (
        v["amount"].as_str().unwrap().to_owned(),
        v["currency"].as_str().unwrap().to_owned(),
    )
}

fn usd(s: &str) -> (rust_decimal::Decimal, String) {
    (dec(s), "USD".to_owned())
}

/// The wallet changes of the user's ledger, as (kind, amount) in order.
async fn ledger(h: &Harness, token: &str) -> Vec<(String, String)> {
    let v = h.ok("GET", "/api/user/ledger", Some(token), None).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let change = t["wallet_change"]
                .as_array()
                .unwrap()
                .first()
                .map_or("0".to_owned(), |m| m["amount"].as_str().unwrap().to_owned());
            (t["kind"].as_str().unwrap().to_owned(), change)
        })
        .collect()
}

async fn balance(h: &Harness, token: &str) -> (rust_decimal::Decimal, String) {
    let v = h.ok("GET", "/api/user/balance", Some(token), None).await;
    let (amount, currency) = money(&v["balance"]);
    (dec(&amount), currency)
}

fn dec(s: &str) -> rust_decimal::Decimal {
    s.parse().unwrap()
}

async fn sign_up_to_paid_key(backend: Backend) {
    let Some(h) = Harness::with(backend, api_support::test_config()).await else {
        return;
    };
    let (admin, _) = h.staff("ops@example.com", Role::Admin).await;
    let plan = h.plan(&admin, "Pro", "20", 2).await;

    // Register, read the notice, verify, log in.
    let (user, user_id) = h.user("buyer@example.com").await;
    let profile = h.ok("GET", "/api/user/profile", Some(&user), None).await;
    assert_eq!(profile["email_verified"], true);
    let plans = h.ok("GET", "/api/user/plans", Some(&user), None).await;
    assert!(plans
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == plan.as_str()));

    // Checkout with Stripe: an order and a session at the stand-in.
    let (status, co) = h
        .call(
            "POST",
            "/api/user/checkout",
            Some(&user),
            Some(json!({"provider": "stripe", "plan_id": plan})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{co}");
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(co["order"]["status"], "pending");
    assert!(co["redirect_url"]
        .as_str()
        .unwrap()
        .starts_with("https://checkout.stripe.test/"));
    let call = &h.stripe.calls()[0];
    assert_eq!(call.path, "/v1/checkout/sessions");
    let form = |k: &str| {
        call.form
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(form("client_reference_id").as_deref(), Some(order.as_str()));
    assert_eq!(
        form("line_items[0][price_data][unit_amount]").as_deref(),
        Some("2000")
    );
    assert_eq!(form("customer_email").as_deref(), Some("buyer@example.com"));
    // Nothing paid yet: no money, no keys, no invoice.
    assert_eq!(balance(&h, &user).await, usd("0"));
    assert!(ledger(&h, &user).await.is_empty());
    assert_eq!(
        h.ok("GET", "/api/user/keys", Some(&user), None).await,
        json!([])
    );

    // A forged or altered webhook changes nothing.
    let body = session_completed(&order, "cs_test_1", 2000, "pi_1");
    let forged = {
        let raw =
            json!({"id": "evt_forged", "object": "event", "type": "checkout.session.completed",
            "created": h.clock_now().timestamp(), "data": {"object": body}})
            .to_string();
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/webhooks/stripe")
            .header(
                "stripe-signature",
                relay_payments::stripe::stripe_signature_header(
                    "whsec_wrong",
                    h.clock_now().timestamp(),
                    raw.as_bytes(),
                ),
            )
            .body(axum::body::Body::from(raw))
            .unwrap();
        h.send(req).await.0
    };
    assert_eq!(forged, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.ok(
            "GET",
            &format!("/api/user/orders/{order}"),
            Some(&user),
            None
        )
        .await["status"],
        "pending"
    );

    // Stripe's signed webhook pays the order; a replay changes nothing.
    for _ in 0..3 {
        assert_eq!(
            h.stripe_event("evt_paid_1", "checkout.session.completed", body.clone())
                .await,
            StatusCode::OK
        );
    }
    let o = h
        .ok(
            "GET",
            &format!("/api/user/orders/{order}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(o["status"], "paid");
    assert_eq!(o["provider"], "stripe");
    assert_eq!(o["provider_ref"], "pi_1");
    assert_eq!(balance(&h, &user).await, usd("0"));
    let l = ledger(&h, &user).await;
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[0].0, "top_up");
    assert_eq!(dec(&l[0].1), dec("20"));
    assert_eq!(l[1].0, "plan_charge");
    assert_eq!(dec(&l[1].1), dec("-20"));
    let invoices = h.ok("GET", "/api/user/invoices", Some(&user), None).await;
    let invoices = invoices.as_array().unwrap();
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["status"], "paid");
    assert_eq!(
        dec(invoices[0]["total"]["amount"].as_str().unwrap()),
        dec("20")
    );
    let sub = h
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["plan_id"], plan.as_str());

    // The plan's entitlement issued a key (KeyProvisioner) with the plan's policy.
    let keys = h.ok("GET", "/api/user/keys", Some(&user), None).await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["policy"]["concurrency"], 4);
    // Per-key limits: looser than the plan is refused, tighter is accepted and shown once.
    let (status, v) = h
        .call(
            "POST",
            "/api/user/keys",
            Some(&user),
            Some(json!({"name": "ci", "policy": {"concurrency": 10,
                "rate_windows": [{"window_secs": 60, "max_requests": 100}],
                "allowed_models": ["claude-*"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "policy.concurrency");
    let (status, v) = h
        .call(
            "POST",
            "/api/user/keys",
            Some(&user),
            Some(json!({"name": "ci", "policy": {"concurrency": 2,
                "rate_windows": [{"window_secs": 60, "max_requests": 10}],
                "allowed_models": ["claude-3*"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rk_live_"));
    assert_eq!(v["record"]["policy"]["concurrency"], 2);
    let listed = h.ok("GET", "/api/user/keys", Some(&user), None).await;
    assert!(
        !listed.to_string().contains(&key),
        "the key is shown only once"
    );
    // The plan allows two keys.
    let (status, v) = h
        .call(
            "POST",
            "/api/user/keys",
            Some(&user),
            Some(json!({"name": "third"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "key_limit");
    key_authenticates(&h, &key).await.unwrap();

    // The period ends unpaid (empty wallet): past due, then suspended; the key is refused.
    h.clock
        .advance(chrono::Duration::days(31) + chrono::Duration::hours(1));
    relay_billing::jobs::renewals(&h.billing).await.unwrap();
    // Sessions last a week: log in again.
    let (user, _) = h.login("buyer@example.com").await;
    let (admin, _) = h.login("ops@example.com").await;
    let sub = h
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "past_due");
    let invoices = h.ok("GET", "/api/user/invoices", Some(&user), None).await;
    assert_eq!(invoices.as_array().unwrap().len(), 2);
    assert_eq!(invoices[1]["status"], "open");
    h.clock.advance(chrono::Duration::days(4));
    relay_billing::jobs::dunning(&h.billing).await.unwrap();
    let sub = h
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "suspended");
    let refused = key_authenticates(&h, &key).await.unwrap_err();
    assert!(
        matches!(
            refused,
            KeyRejection::Suspended | KeyRejection::AccountInactive(_)
        ),
        "{refused:?}"
    );
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);

    // Pay again: a Stripe top-up of 30 settles the open invoice; the key works again.
    let (status, co) = h
        .call(
            "POST",
            "/api/user/top-up",
            Some(&user),
            Some(json!({"provider": "stripe", "amount": "30.00", "currency": "USD"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{co}");
    let top_up = co["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.stripe_event(
            "evt_paid_2",
            "checkout.session.completed",
            session_completed(&top_up, "cs_test_2", 3000, "pi_2")
        )
        .await,
        StatusCode::OK
    );
    let sub = h
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "active");
    key_authenticates(&h, &key).await.unwrap();
    assert_eq!(balance(&h, &user).await, usd("10.00"));
    let invoices = h.ok("GET", "/api/user/invoices", Some(&user), None).await;
    assert_eq!(invoices[1]["status"], "paid");

    // Refund 5 of the top-up: requested at Stripe, applied by its signed webhook.
    let (status, r) = h
        .call(
            "POST",
            &format!("/api/admin/orders/{top_up}/refund"),
            Some(&admin),
            Some(json!({"amount": "5", "reason": "goodwill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["outcome"], "requested");
    let refund_call = h.stripe.calls().last().cloned().unwrap();
    assert_eq!(refund_call.path, "/v1/refunds");
    assert!(refund_call
        .form
        .contains(&("payment_intent".to_owned(), "pi_2".to_owned())));
    assert!(refund_call
        .form
        .contains(&("amount".to_owned(), "500".to_owned())));
    assert_eq!(
        balance(&h, &user).await,
        usd("10.00"),
        "not applied before the webhook"
    );
    assert_eq!(
        h.stripe_event(
            "evt_refund_1",
            "charge.refunded",
            charge_refunded(&top_up, "pi_2", 500, false)
        )
        .await,
        StatusCode::OK
    );
    let o = h
        .ok(
            "GET",
            &format!("/api/user/orders/{top_up}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(dec(o["refunded"]["amount"].as_str().unwrap()), dec("5"));
    assert_eq!(balance(&h, &user).await, usd("5"));
    let l = ledger(&h, &user).await;
    assert_eq!(l.last().unwrap().0, "payment_refund");
    assert_eq!(dec(&l.last().unwrap().1), dec("-5"));
    // The ledger's wallet changes add up to the balance.
    let sum: rust_decimal::Decimal = l.iter().map(|(_, a)| dec(a)).sum();
    assert_eq!(sum, dec("5"));
    // Reports see the money.
    let rev = h
        .ok(
            "GET",
            "/api/admin/reports/revenue?from=2025-12-01T00:00:00Z&to=2026-12-01T00:00:00Z",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(rev.as_array().unwrap().len(), 1, "{rev}");
    let audit = h
        .ok(
            "GET",
            &format!("/api/admin/audit?subject={top_up}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(!audit.as_array().unwrap().is_empty());
    let export = h.ok("GET", "/api/user/export", Some(&user), None).await;
    assert_eq!(export["orders"].as_array().unwrap().len(), 2);
    assert_eq!(export["user"]["id"], user_id.as_str());
    h.finish().await;
}

#[tokio::test]
async fn sign_up_to_paid_key_on_memory() {
    sign_up_to_paid_key(Backend::Memory).await;
}

#[tokio::test]
async fn sign_up_to_paid_key_on_sqlite() {
    sign_up_to_paid_key(Backend::Sqlite).await;
}

#[tokio::test]
async fn sign_up_to_paid_key_on_postgres() {
    sign_up_to_paid_key(Backend::Postgres).await;
}
