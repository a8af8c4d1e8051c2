//! The whole stack in-process on SQLite and the in-memory limiter: the product API and the
//! gateway on one router and one database. A user registers, verifies, logs in, creates a
//! key, calls the LLM route with it through the demo upstream, and the usage is in the
//! memory sink and, after a graceful shutdown, in the durable usage records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestServer};
use relay_auth::Email;
use relay_billing::jobs::UsageSource;
use relay_server::db::Database;
use relay_server::usage_charges::RecordUsageSource;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

async fn api(s: &TestServer, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = s.http.post(s.url(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_to_metered_call_on_sqlite() {
    let s = TestServer::start(&Backend::SqliteMemory, None).await;
    let email = "e2e@example.com";

    let (status, v) = api(
        &s,
        "/api/user/register",
        None,
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    // A made-up verification token is refused.
    let (status, v) = api(
        &s,
        "/api/user/verify-email",
        None,
        json!({"token": "not-a-token"}),
    )
    .await;
    assert!((400..500).contains(&status), "bogus token: {status} {v}");
    let token = s
        .state
        .outbox
        .as_ref()
        .expect("no SMTP: notices kept in memory")
        .last_token(&Email::parse(email).unwrap(), false)
        .expect("verification notice");
    let (status, v) = api(&s, "/api/user/verify-email", None, json!({"token": token})).await;
    assert!((200..300).contains(&status), "{v}");
    let (status, login) = api(
        &s,
        "/api/user/login",
        None,
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let session = login["token"].as_str().unwrap().to_owned();
    let user_id = login["user_id"].as_str().unwrap().to_owned();

    let (status, key) = api(&s, "/api/user/keys", Some(&session), json!({"name": "e2e"})).await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();

    // The API's JSON 404 under /api; the gateway's own 404 elsewhere.
    let res = s.http.get(s.url("/api/nothing")).send().await.unwrap();
    assert_eq!(res.status(), 404);

    // A session token is not an API key.
    let chat = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello from the stack"}]});
    let res = s.post("/v1/messages", &session, &chat).await;
    assert_eq!(res.status(), 401);
    let res = s.post("/v1/messages", &key, &chat).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["type"], "message", "{answer}");

    let events = s.events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].user_id.as_str(), user_id);
    assert_eq!(events[0].model, "claude-sonnet-4-5");
    assert!(events[0].usage.input_tokens > 0);
    let request_id = events[0].request_id.clone();

    // The usage job's source offers the durable record as one batch; charging it moves the
    // wallet by exactly its cost, once.
    // Stop the jobs first: only this test charges usage.
    s.state.scheduler.shutdown();
    s.state.usage_writer.flush().await.unwrap();
    let source = RecordUsageSource::new(s.state.db.clone());
    let pending = source.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].cost, events[0].cost);
    let user: relay_core::UserId = user_id.parse().unwrap();
    let currency = s.state.billing.config().default_currency;
    let before = s
        .state
        .billing
        .store()
        .wallet(&user, currency)
        .await
        .unwrap();
    relay_billing::jobs::usage_to_ledger(&s.state.billing, &source)
        .await
        .unwrap();
    assert!(source.pending().await.unwrap().is_empty());
    relay_billing::jobs::usage_to_ledger(&s.state.billing, &source)
        .await
        .unwrap();
    let after = s
        .state
        .billing
        .store()
        .wallet(&user, currency)
        .await
        .unwrap();
    assert_eq!(
        before.balance.amount() - after.balance.amount(),
        events[0].cost.amount()
    );
    assert!(source.confirm("not-a-usage-batch").await.is_err());

    // Graceful shutdown drains the durable writer: the record is in the database after.
    let Database::Sqlite(pool) = &s.state.db else {
        panic!("SQLite backend")
    };
    let file = pool.connect_options().get_filename().to_owned();
    let _dir = s.stop_keeping_files().await;
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&file))
            .await
            .unwrap();
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT request_id, user_id, model, input_tokens FROM usage_records")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, request_id.as_str());
    assert_eq!(rows[0].1, user_id);
    assert_eq!(rows[0].2, "claude-sonnet-4-5");
    assert_eq!(
        u64::try_from(rows[0].3).unwrap(),
        events[0].usage.input_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_smtp_account_mail_goes_through_the_durable_outbox() {
    use base64::Engine as _;
    use relay_server::config::{Args, Config};
    use relay_server::notify::Status;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: delivery fails and is retried; the row stays queued.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let config = Config::load(&Args {
        database_url: format!("sqlite://{}", dir.path().join("relay.db").display()),
        encryption_key: Some(b64(&[3u8; 32])),
        key_pepper: Some(b64(&[5u8; 32])),
        price_catalog: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo_prices.json").into()),
        smtp_host: Some("127.0.0.1".into()),
        smtp_port: Some(port),
        smtp_tls: Some("none".into()),
        smtp_from: Some("Relay <no-reply@example.com>".into()),
        public_url: Some("https://relay.example".into()),
        ..Args::default()
    })
    .unwrap();
    let gateway = relay_server::Gateway::build(&config).await.unwrap();
    assert!(gateway.state.outbox.is_none());
    let notifications = gateway.state.notifications.clone().expect("SMTP on");
    let res = gateway
        .service()
        .oneshot(
            axum::http::Request::post("/api/user/register")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    json!({"email": "mail@example.com", "password": PASSWORD}).to_string(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mut queued = Vec::new();
    for status in [Status::Pending, Status::Sent, Status::Dead] {
        queued.extend(notifications.outbox().list(status, 50).await.unwrap());
    }
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].recipient, "mail@example.com");
    assert_eq!(queued[0].kind, "verification");
    assert_ne!(queued[0].status, Status::Sent);

    // Graceful shutdown stops the delivery worker and the jobs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    gateway.serve(listener, async {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_user_is_credited_once_across_restarts() {
    use base64::Engine as _;
    use relay_server::config::{Args, Config};

    let dir = tempfile::tempdir().unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let config = Config::load(&Args {
        database_url: format!("sqlite://{}", dir.path().join("demo.db").display()),
        encryption_key: Some(b64(&[3u8; 32])),
        key_pepper: Some(b64(&[5u8; 32])),
        demo: true,
        demo_key: Some(format!("rk_live_{}", "e".repeat(43))),
        ..Args::default()
    })
    .unwrap();
    for _ in 0..2 {
        let gateway = relay_server::Gateway::build(&config).await.unwrap();
        let user = gateway.demo.as_ref().unwrap().user_id.clone();
        let billing = gateway.state.billing.clone();
        let currency = billing.config().default_currency;
        let wallet = billing.store().wallet(&user, currency).await.unwrap();
        assert_eq!(
            wallet.balance.amount(),
            rust_decimal::Decimal::from(relay_server::app::DEMO_CREDIT)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        gateway.serve(listener, async {}).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_works_when_an_encryption_key_is_configured() {
    let s = TestServer::start(&Backend::SqliteMemory, None).await;
    let user = s.state.accounts.user(&s.user).await.unwrap();
    let (status, login) = api(
        &s,
        "/api/user/login",
        None,
        json!({"email": user.email.as_str(), "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["token"].as_str().unwrap();
    let (status, v) = api(&s, "/api/user/totp/enrol", Some(token), json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/"));
    assert!(!v["recovery_codes"].as_array().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_encryption_key_totp_answers_not_configured() {
    use relay_server::config::{Args, Config};
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&Args {
        database_url: format!("sqlite://{}", dir.path().join("relay.db").display()),
        price_catalog: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo_prices.json").into()),
        ..Args::default()
    })
    .unwrap();
    let gateway = relay_server::Gateway::build(&config).await.unwrap();
    gateway
        .state
        .accounts
        .create_user("nototp@example.com", PASSWORD, relay_auth::Role::User)
        .await
        .unwrap();
    let call = |path: &str, token: Option<&str>, body: Value| {
        let mut req = axum::http::Request::post(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        gateway
            .service()
            .oneshot(req.body(axum::body::Body::from(body.to_string())).unwrap())
    };
    let res = call(
        "/api/user/login",
        None,
        json!({"email": "nototp@example.com", "password": PASSWORD}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let token = serde_json::from_slice::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, body) in [
        ("/api/user/totp/enrol", json!({})),
        ("/api/user/totp/confirm", json!({"code": "123456"})),
        ("/api/user/totp/disable", json!({"code": "123456"})),
    ] {
        let res = call(path, Some(&token), body).await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "not_configured", "{path}: {v}");
    }
}
