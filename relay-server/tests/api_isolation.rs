//! A user can never read or change another user's keys, orders, invoices or usage, and
//! admin routes check roles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::{Backend, Harness};
use axum::http::StatusCode;
use relay_auth::Role;
use relay_billing::UsageBatch;
use relay_core::{Currency, Money};
use serde_json::json;

async fn users_cannot_touch_each_others_records(backend: Backend) {
    let Some(h) = Harness::with(backend, api_support::test_config()).await else {
        return;
    };
    let (ann, ann_id) = h.user("ann@example.com").await;
    let (bob, _) = h.user("bob@example.com").await;

    // Ann: a key, a top-up order (manual provider), an invoice via a paid plan, usage.
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let plan = h.plan(&admin, "Pro", "20", 3).await;
    let key = h
        .ok(
            "POST",
            "/api/user/keys",
            Some(&ann),
            Some(json!({"name": "mine"})),
        )
        .await;
    let key_id = key["record"]["id"].as_str().unwrap().to_owned();
    let co = h
        .ok(
            "POST",
            "/api/user/checkout",
            Some(&ann),
            Some(json!({"provider": "manual", "plan_id": plan})),
        )
        .await;
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    let paid = h
        .ok(
            "POST",
            "/api/admin/payments/manual",
            Some(&admin),
            Some(json!({"order_id": order, "amount": "20", "currency": "USD", "reference": "bank-1"})),
        )
        .await;
    assert_eq!(paid["outcome"], "applied");
    let invoices = h.ok("GET", "/api/user/invoices", Some(&ann), None).await;
    let invoice = invoices[0]["id"].as_str().unwrap().to_owned();
    h.billing
        .charge_usage(&UsageBatch {
            batch_id: "batch-ann-1".into(),
            user_id: ann_id.clone(),
            cost: Money::parse("1.25", Currency::USD).unwrap(),
        })
        .await
        .unwrap();

    // Bob tries everything of Ann's.
    for (method, path) in [
        ("GET", format!("/api/user/orders/{order}")),
        ("GET", format!("/api/user/invoices/{invoice}")),
        ("DELETE", format!("/api/user/keys/{key_id}")),
    ] {
        let (status, v) = h.call(method, &path, Some(&bob), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/user/keys/{key_id}/rotate"),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .call(
            "PATCH",
            &format!("/api/user/keys/{key_id}"),
            Some(&bob),
            Some(json!({"limits": {"concurrency": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "Bob cannot narrow Ann's key");
    for path in [
        "/api/user/orders",
        "/api/user/invoices",
        "/api/user/keys",
        "/api/user/ledger",
        "/api/user/usage",
    ] {
        let v = h.ok("GET", path, Some(&bob), None).await;
        assert_eq!(v, json!([]), "{path} shows Bob someone else's records");
    }
    let csv = h
        .send(
            axum::http::Request::builder()
                .uri("/api/user/usage?format=csv")
                .header("authorization", format!("Bearer {bob}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        String::from_utf8(csv.2).unwrap(),
        "day,model,requests,input_tokens,output_tokens,cache_write_5m_tokens,cache_write_1h_tokens,cache_read_tokens,cost,charged,currency\n"
    );
    let export = h.ok("GET", "/api/user/export", Some(&bob), None).await;
    for part in ["keys", "orders", "invoices", "ledger", "usage"] {
        assert_eq!(export[part], json!([]), "{part}");
    }

    // Ann's things are intact and hers.
    let keys = h.ok("GET", "/api/user/keys", Some(&ann), None).await;
    let mine = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .unwrap();
    assert!(mine["revoked_at"].is_null());
    let usage = h.ok("GET", "/api/user/usage", Some(&ann), None).await;
    assert_eq!(usage[0]["requests"], 1);
    assert_eq!(usage[0]["cost"]["amount"], "1.25");
    let (_, headers, csv) = h
        .send(
            axum::http::Request::builder()
                .uri("/api/user/usage?format=csv")
                .header("authorization", format!("Bearer {ann}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.contains(",\"*\",1,,,,,,1.25,"), "{csv}");
    // Ann can revoke her own key; then it is gone for rotation too.
    h.ok(
        "DELETE",
        &format!("/api/user/keys/{key_id}"),
        Some(&ann),
        None,
    )
    .await;
    let (status, _) = h
        .call(
            "DELETE",
            &format!("/api/user/keys/{key_id}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Admins see Ann's records by user.
    let seen = h
        .ok(
            "GET",
            &format!("/api/admin/users/{ann_id}/ledger"),
            Some(&admin),
            None,
        )
        .await;
    // Usage within the included credit moves no money: top-up and plan charge.
    assert_eq!(seen["ledger"].as_array().unwrap().len(), 2, "{seen}");
    let seen = h
        .ok(
            "GET",
            &format!("/api/admin/users/{ann_id}/invoices"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(seen[0]["id"], invoice.as_str());
    h.finish().await;
}

#[tokio::test]
async fn isolation_on_memory() {
    users_cannot_touch_each_others_records(Backend::Memory).await;
}

#[tokio::test]
async fn isolation_on_sqlite() {
    users_cannot_touch_each_others_records(Backend::Sqlite).await;
}

#[tokio::test]
async fn isolation_on_postgres() {
    users_cannot_touch_each_others_records(Backend::Postgres).await;
}

#[tokio::test]
async fn admin_routes_check_roles() {
    let h = Harness::memory().await;
    let (user, user_id) = h.user("ann@example.com").await;
    let (operator, _) = h.staff("op@example.com", Role::Operator).await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    for (method, template) in relay_server::api::ROUTES {
        if !template.starts_with("/api/admin") {
            continue;
        }
        let path = template
            .replace("{id}", user_id.as_str())
            .replace("{code}", "ABCD-EFGH-JKMN-PQRS");
        let body = (*method != "GET").then(|| json!({}));
        let (status, v) = h.call(method, &path, Some(&user), body.clone()).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "user on {method} {path}: {v}"
        );
        let (status, v) = h.call(method, &path, None, body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "anonymous on {method} {path}: {v}"
        );
    }
    // Operators manage users but not roles.
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/admin/users/{user_id}/role"),
            Some(&operator),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let found = h
        .ok(
            "GET",
            "/api/admin/users?email=ANN@example.com",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(found[0]["id"], user_id.as_str());
    h.ok(
        "POST",
        &format!("/api/admin/users/{user_id}/role"),
        Some(&admin),
        Some(json!({"role": "operator"})),
    )
    .await;
    // Suspending a user ends their sessions.
    h.ok(
        "POST",
        &format!("/api/admin/users/{user_id}/status"),
        Some(&operator),
        Some(json!({"status": "suspended", "reason": "abuse report 17"})),
    )
    .await;
    let (status, _) = h.call("GET", "/api/user/profile", Some(&user), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let audit = h
        .ok(
            "GET",
            &format!("/api/admin/audit?subject={user_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["source"] == "auth.status" && r["reason"] == "abuse report 17"));
}

#[tokio::test]
async fn admin_money_moves_are_recorded_with_reasons() {
    let h = Harness::memory().await;
    let (user, user_id) = h.user("ann@example.com").await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let v = h
        .ok(
            "POST",
            &format!("/api/admin/users/{user_id}/adjust"),
            Some(&admin),
            Some(json!({"amount": "7.50", "currency": "USD", "reason": "goodwill", "idempotency_key": "adj-1"})),
        )
        .await;
    assert_eq!(v["kind"], "adjustment");
    // Replaying the same key changes nothing.
    h.ok(
        "POST",
        &format!("/api/admin/users/{user_id}/adjust"),
        Some(&admin),
        Some(json!({"amount": "7.50", "currency": "USD", "reason": "goodwill", "idempotency_key": "adj-1"})),
    )
    .await;
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/admin/users/{user_id}/adjust"),
            Some(&admin),
            Some(json!({"amount": "-100", "currency": "USD", "reason": "claw back"})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{v}");
    let top = h
        .ok(
            "POST",
            &format!("/api/admin/users/{user_id}/top-up"),
            Some(&admin),
            Some(json!({"amount": "10", "currency": "USD", "reference": "wire-77"})),
        )
        .await;
    assert_eq!(top["outcome"], "applied");
    let order = top["order"]["id"].as_str().unwrap();
    let bal = h.ok("GET", "/api/user/balance", Some(&user), None).await;
    assert_eq!(
        bal["balance"]["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        "17.5".parse().unwrap()
    );
    // A manual refund needs its reference; with it, it is applied once.
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/admin/orders/{order}/refund"),
            Some(&admin),
            Some(json!({"amount": "4", "reason": "partial"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["field"], "reference");
    for expected in ["applied", "duplicate"] {
        let v = h
            .ok(
                "POST",
                &format!("/api/admin/orders/{order}/refund"),
                Some(&admin),
                Some(json!({"amount": "4", "reason": "partial", "reference": "rf-1"})),
            )
            .await;
        assert_eq!(v["outcome"], expected);
    }
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/admin/orders/{order}/refund"),
            Some(&admin),
            Some(json!({"amount": "7", "reason": "too much", "reference": "rf-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let bal = h.ok("GET", "/api/user/balance", Some(&user), None).await;
    assert_eq!(
        bal["balance"]["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        "13.5".parse().unwrap()
    );
    // Codes: generate, redeem once.
    let batch = h
        .ok(
            "POST",
            "/api/admin/codes",
            Some(&admin),
            Some(json!({"count": 2, "amount": "3", "currency": "USD"})),
        )
        .await;
    let code = batch["codes"][0]
        .as_str()
        .unwrap()
        .to_lowercase()
        .replace('-', "");
    h.ok(
        "POST",
        "/api/user/redeem",
        Some(&user),
        Some(json!({"code": code})),
    )
    .await;
    let (status, v) = h
        .call(
            "POST",
            "/api/user/redeem",
            Some(&user),
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let looked = h
        .ok(
            "GET",
            &format!("/api/admin/codes/{}", batch["codes"][0].as_str().unwrap()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(looked["redeemed_by"], user_id.as_str());
}
