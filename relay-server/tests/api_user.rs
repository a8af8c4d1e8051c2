//! User flows: TOTP login, password reset, cookie sessions with CSRF, rate limits, body
//! limit, account deletion, concurrent webhooks and key creation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::{session_completed, Backend, Harness, PASSWORD};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use relay_auth::{Email, Role};
use relay_server::api::RateLimit;
use serde_json::json;

fn totp_now(h: &Harness, uri: &str) -> String {
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap();
    relay_auth::totp::code_at(secret, h.clock_now().timestamp() as u64).unwrap()
}

#[tokio::test]
async fn totp_is_required_once_enrolled() {
    let h = Harness::memory().await;
    let (token, _) = h.user("ann@example.com").await;
    let enrol = h
        .ok("POST", "/api/user/totp/enrol", Some(&token), None)
        .await;
    let uri = enrol["otpauth_uri"].as_str().unwrap().to_owned();
    let (status, v) = h
        .call(
            "POST",
            "/api/user/totp/confirm",
            Some(&token),
            Some(json!({"code": "000000"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["field"], "code");
    h.ok(
        "POST",
        "/api/user/totp/confirm",
        Some(&token),
        Some(json!({"code": totp_now(&h, &uri)})),
    )
    .await;
    let login = json!({"email": "ann@example.com", "password": PASSWORD});
    let (status, v) = h.call("POST", "/api/user/login", None, Some(login)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "totp_required");
    h.clock.advance(chrono::Duration::seconds(31));
    let v = h
        .ok(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": "ann@example.com", "password": PASSWORD, "totp": totp_now(&h, &uri)})),
        )
        .await;
    assert!(v["token"].as_str().unwrap().starts_with("rs_"));
    // A recovery code works once.
    let recovery = enrol["recovery_codes"][0].as_str().unwrap();
    h.ok(
        "POST",
        "/api/user/login",
        None,
        Some(json!({"email": "ann@example.com", "password": PASSWORD, "totp": recovery})),
    )
    .await;
    let (status, _) = h
        .call(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": "ann@example.com", "password": PASSWORD, "totp": recovery})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn password_reset_and_logout_end_sessions() {
    let h = Harness::memory().await;
    let (token, _) = h.user("ann@example.com").await;
    // Unknown and known addresses get the same answer.
    for email in ["ann@example.com", "nobody@example.com"] {
        let (status, v) = h
            .call(
                "POST",
                "/api/user/password-reset",
                None,
                Some(json!({"email": email})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(
            v["message"],
            "if the address has an account, a reset link is on its way"
        );
    }
    let reset = h
        .outbox
        .last_token(&Email::parse("ann@example.com").unwrap(), true)
        .unwrap();
    let (status, v) = h
        .call(
            "POST",
            "/api/user/password-reset/confirm",
            None,
            Some(json!({"token": reset, "password": "short"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["field"], "password");
    h.ok(
        "POST",
        "/api/user/password-reset/confirm",
        None,
        Some(json!({"token": reset, "password": "a brand new long password"})),
    )
    .await;
    let (status, _) = h.call("GET", "/api/user/profile", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "reset ends sessions");
    let (status, v) = h
        .call(
            "POST",
            "/api/user/password-reset/confirm",
            None,
            Some(json!({"token": reset, "password": "another long password"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "token");
    let v = h
        .ok(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": "ann@example.com", "password": "a brand new long password"})),
        )
        .await;
    let token = v["token"].as_str().unwrap();
    h.ok("POST", "/api/user/logout", Some(token), None).await;
    let (status, _) = h.call("GET", "/api/user/profile", Some(token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_header_for_changes() {
    let h = Harness::memory().await;
    h.user("ann@example.com").await;
    let req = Request::builder()
        .method("POST")
        .uri("/api/user/login")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"email": "ann@example.com", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    let (status, headers, body) = h.send(req).await;
    assert_eq!(status, StatusCode::OK);
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("relay_session="))
        .unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    let cookie = session.split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let with_cookie = |method: &str, uri: &str, csrf: Option<&str>, body: &str| {
        let mut r = Request::builder()
            .method(method)
            .uri(uri)
            .header("cookie", &cookie)
            .header("content-type", "application/json");
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.body(Body::from(body.to_owned())).unwrap()
    };
    let (status, _, _) = h
        .send(with_cookie("GET", "/api/user/profile", None, ""))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = h
        .send(with_cookie(
            "POST",
            "/api/user/keys",
            None,
            r#"{"name":"k"}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("csrf_mismatch"));
    let (status, _, _) = h
        .send(with_cookie(
            "POST",
            "/api/user/keys",
            Some(&csrf),
            r#"{"name":"k"}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn register_login_reset_and_checkout_are_rate_limited() {
    let limit = RateLimit::new(2, Duration::from_secs(60));
    let config = relay_server::api::ApiConfig {
        register_limit: limit,
        login_limit: limit,
        reset_limit: limit,
        checkout_limit: limit,
        ..api_support::test_config()
    };
    let h = Harness::with(Backend::Memory, config).await.unwrap();
    for i in 0..2 {
        h.ok(
            "POST",
            "/api/user/register",
            None,
            Some(json!({"email": format!("u{i}@example.com"), "password": PASSWORD})),
        )
        .await;
    }
    let req = Request::builder()
        .method("POST")
        .uri("/api/user/register")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"email": "u3@example.com", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    let (status, headers, _) = h.send(req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    let bad = json!({"email": "u0@example.com", "password": "wrong password here"});
    for _ in 0..2 {
        let (status, _) = h
            .call("POST", "/api/user/login", None, Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, v) = h
        .call(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": "u0@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    for _ in 0..2 {
        h.ok(
            "POST",
            "/api/user/password-reset",
            None,
            Some(json!({"email": "u0@example.com"})),
        )
        .await;
    }
    let (status, _) = h
        .call(
            "POST",
            "/api/user/password-reset",
            None,
            Some(json!({"email": "u0@example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The window passes on the clock; the limits lift.
    h.clock.advance(chrono::Duration::seconds(61));
    let (token, _) = h.login("u1@example.com").await;
    let top_up = json!({"provider": "manual", "amount": "5", "currency": "USD"});
    for _ in 0..2 {
        h.ok(
            "POST",
            "/api/user/top-up",
            Some(&token),
            Some(top_up.clone()),
        )
        .await;
    }
    let (status, _) = h
        .call("POST", "/api/user/top-up", Some(&token), Some(top_up))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let orders = h.ok("GET", "/api/user/orders", Some(&token), None).await;
    assert_eq!(
        orders.as_array().unwrap().len(),
        2,
        "the refused checkout created nothing"
    );
}

#[tokio::test]
async fn deleting_the_account_keeps_the_ledger_and_ends_access() {
    let h = Harness::memory().await;
    let (token, user_id) = h.user("ann@example.com").await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    h.ok(
        "POST",
        &format!("/api/admin/users/{user_id}/top-up"),
        Some(&admin),
        Some(json!({"amount": "10", "currency": "USD", "reference": "wire-1"})),
    )
    .await;
    let key = h
        .ok(
            "POST",
            "/api/user/keys",
            Some(&token),
            Some(json!({"name": "k"})),
        )
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    let (status, v) = h
        .call(
            "DELETE",
            "/api/user/account",
            Some(&token),
            Some(json!({"confirm_email": "someone@else.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["field"], "confirm_email");
    h.ok(
        "DELETE",
        "/api/user/account",
        Some(&token),
        Some(json!({"confirm_email": "ANN@example.com"})),
    )
    .await;
    let (status, _) = h.call("GET", "/api/user/profile", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.keys.authenticate(&key).await.is_err());
    let (status, _) = h
        .call(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": "ann@example.com", "password": PASSWORD})),
        )
        .await;
    // The account is erased: its address is unknown now.
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The ledger is kept.
    let txs = h
        .billing
        .store()
        .transactions(Some(&user_id))
        .await
        .unwrap();
    assert_eq!(txs.len(), 1);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413_json() {
    let h = Harness::memory().await;
    let big = format!(
        r#"{{"email":"{}@example.com","password":"x"}}"#,
        "a".repeat(100_000)
    );
    let req = Request::builder()
        .method("POST")
        .uri("/api/user/register")
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = h.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_webhooks_and_key_creation() {
    let h = Arc::new(Harness::memory().await);
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let plan = h.plan(&admin, "Team", "20", 3).await;
    let (user, _) = h.user("ann@example.com").await;
    let co = h
        .ok(
            "POST",
            "/api/user/checkout",
            Some(&user),
            Some(json!({"provider": "stripe", "plan_id": plan})),
        )
        .await;
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    let body = session_completed(&order, "cs_1", 2000, "pi_1");
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let h = h.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            h.stripe_event("evt_same", "checkout.session.completed", body)
                .await
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        // A concurrent duplicate may be told to retry; never an error of ours.
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
    let ledger = h.ok("GET", "/api/user/ledger", Some(&user), None).await;
    let top_ups = ledger
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "top_up")
        .count();
    assert_eq!(top_ups, 1, "credited once");
    // The plan allows three keys (one issued by the plan): of 20 concurrent creations,
    // exactly two succeed.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h = h.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            h.call(
                "POST",
                "/api/user/keys",
                Some(&user),
                Some(json!({"name": format!("k{i}")})),
            )
            .await
            .0
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 2);
    let keys = h.ok("GET", "/api/user/keys", Some(&user), None).await;
    assert_eq!(keys.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn per_ip_limits_use_the_forwarded_address_when_trusted() {
    let config = relay_server::api::ApiConfig {
        register_limit: RateLimit::new(1, Duration::from_secs(60)),
        trust_forwarded_for: true,
        ..api_support::test_config()
    };
    let h = Harness::with(Backend::Memory, config).await.unwrap();
    let register = |ip: &str, email: &str| {
        Request::builder()
            .method("POST")
            .uri("/api/user/register")
            .header("content-type", "application/json")
            .header("x-forwarded-for", format!("{ip}, 10.0.0.1"))
            .body(Body::from(
                json!({"email": email, "password": PASSWORD}).to_string(),
            ))
            .unwrap()
    };
    assert_eq!(
        h.send(register("203.0.113.1", "a@example.com")).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        h.send(register("203.0.113.1", "b@example.com")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        h.send(register("203.0.113.2", "c@example.com")).await.0,
        StatusCode::ACCEPTED
    );
}
