//! The whole product loop through the real server (`Gateway::build_with_clock`, served on
//! a socket) on SQLite + the memory limiter and on PostgreSQL + Redis: register, read the
//! verification mail from a local SMTP sink, verify, log in, buy a plan through a Stripe
//! checkout (webhooks signed as Stripe signs them, against a local Stripe stand-in), get
//! keys, call `/v1/messages` through the demo upstream streamed and not, see the usage and
//! its exact cost, hit a rate limit (429) and a budget (402), let the subscription lapse on
//! the manual clock (key refused), pay again (key works again), refund; ledger and invoices
//! checked at each step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api_support::{charge_refunded, session_completed, StripeStandIn, PASSWORD, STRIPE_SECRET};
use base64::Engine as _;
use common::smtp::SmtpSink;
use common::Backend;
use relay_auth::Role;
use relay_billing::jobs;
use relay_core::{Clock, ManualClock, Service, SharedClock};
use relay_payments::stripe::stripe_signature_header;
use relay_server::config::{AccountConfig, Args, Config};
use relay_server::demo::DemoUpstream;
use relay_server::usage_charges::RecordUsageSource;
use relay_server::{AppState, Gateway};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// A served gateway on a manual clock, with its stand-ins.
struct Loop {
    base: String,
    state: Arc<AppState>,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    smtp: SmtpSink,
    stripe: StripeStandIn,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), relay_server::ServerError>>,
    demo: DemoUpstream,
    _dir: tempfile::TempDir,
}

impl Loop {
    async fn start(backend: &Backend) -> Self {
        let demo = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), true)
            .await
            .unwrap();
        let smtp = SmtpSink::start().await;
        let stripe = StripeStandIn::start().await;
        let dir = tempfile::tempdir().unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut args = Args {
            bind: "127.0.0.1:0".into(),
            encryption_key: Some(b64(&[3u8; 32])),
            key_pepper: Some(b64(&[5u8; 32])),
            price_catalog: Some(
                concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo_prices.json").into(),
            ),
            stripe_secret: Some("sk_test_123".into()),
            stripe_webhook_secret: Some(STRIPE_SECRET.into()),
            stripe_success_url: Some("https://relay.example/paid".into()),
            stripe_cancel_url: Some("https://relay.example/cancel".into()),
            stripe_api_base: Some(stripe.base.clone()),
            smtp_host: Some("127.0.0.1".into()),
            smtp_port: Some(smtp.port),
            smtp_tls: Some("none".into()),
            smtp_from: Some("Relay <no-reply@relay.test>".into()),
            public_url: Some("https://relay.example".into()),
            // The account API's throttles live in the shared Redis, keyed by client address
            // (127.0.0.1 for every test run): roomy enough that repeated runs never meet them.
            limit_register: Some("1000/60".into()),
            limit_login: Some("1000/60".into()),
            ..Args::default()
        };
        match backend {
            Backend::SqliteMemory => {
                args.database_url = format!("sqlite://{}", dir.path().join("relay.db").display());
            }
            Backend::PostgresRedis { postgres, redis } => {
                args.database_url = postgres.clone();
                args.redis_url = Some(redis.clone());
            }
        }
        let mut config = Config::load(&args).unwrap();
        config.accounts = vec![AccountConfig {
            service: Service::Anthropic,
            name: "anthropic-1".into(),
            key: "good-key-anthropic".into(),
            base_url: Some(demo.base_url()),
            weight: 1,
        }];
        // Start at the real time: usage records are stamped when they happen.
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let shared: SharedClock = clock.clone();
        let gateway = Gateway::build_with_clock(&config, shared).await.unwrap();
        let state = Arc::clone(&gateway.state);
        // Only this test runs billing's jobs, at the moments it chooses.
        state.scheduler.shutdown();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve_on_threads(listener, 2, async {
            let _ = rx.await;
        }));
        Self {
            base,
            state,
            clock,
            http: reqwest::Client::new(),
            smtp,
            stripe,
            stop,
            task,
            demo,
            _dir: dir,
        }
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
        self.demo.stop().await;
    }

    /// A product API call with a session token; (status, JSON or Null).
    async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.api(method, path, token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn login(&self, email: &str) -> String {
        let v = self
            .ok(
                "POST",
                "/api/user/login",
                None,
                Some(json!({"email": email, "password": PASSWORD})),
            )
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/messages` with `key`; (status, headers, body text).
    async fn messages(
        &self,
        key: &str,
        stream: bool,
        max_tokens: u32,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let body = json!({"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Say hello to the full loop"}]});
        let res = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.text().await.unwrap())
    }

    /// POST a Stripe event to `/webhooks/stripe`, signed as Stripe signs it.
    async fn stripe_event(&self, id: &str, kind: &str, object: Value) -> u16 {
        let now = self.clock.now().timestamp();
        let body = json!({"id": id, "object": "event", "type": kind, "created": now,
            "data": {"object": object}})
        .to_string();
        let res = self
            .http
            .post(format!("{}/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .header(
                "stripe-signature",
                stripe_signature_header(STRIPE_SECRET, now, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        res.status().as_u16()
    }

    async fn balance(&self, token: &str) -> Decimal {
        let v = self.ok("GET", "/api/user/balance", Some(token), None).await;
        dec(&v["balance"]["amount"])
    }

    /// The user's ledger as (kind, wallet change).
    async fn ledger(&self, token: &str) -> Vec<(String, Decimal)> {
        let v = self.ok("GET", "/api/user/ledger", Some(token), None).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let change = t["wallet_change"]
                    .as_array()
                    .unwrap()
                    .first()
                    .map_or(Decimal::ZERO, |m| dec(&m["amount"]));
                (t["kind"].as_str().unwrap().to_owned(), change)
            })
            .collect()
    }

    async fn invoices(&self, token: &str) -> Vec<Value> {
        let v = self
            .ok("GET", "/api/user/invoices", Some(token), None)
            .await;
        v.as_array().unwrap().clone()
    }

    async fn charge_usage(&self) {
        self.state.usage_writer.flush().await.unwrap();
        let source = RecordUsageSource::new(self.state.db.clone());
        jobs::usage_to_ledger(&self.state.billing, &source)
            .await
            .unwrap();
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

/// The Anthropic error type of a refusal body.
fn anthropic_error(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["type"], "error", "not Anthropic's error shape: {body}");
    v["error"]["type"].as_str().unwrap_or_default().to_owned()
}

async fn full_loop(backend: Backend) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let l = Loop::start(&backend).await;
    let email = "loop@example.com";

    // The operator's admin and a plan.
    l.state
        .accounts
        .create_user("ops@example.com", PASSWORD, Role::Admin)
        .await
        .unwrap();
    let admin = l.login("ops@example.com").await;
    let plan = l
        .ok(
            "POST",
            "/api/admin/plans",
            Some(&admin),
            Some(json!({
                "name": "Pro", "price": {"amount": "20", "currency": "USD"},
                "period": {"kind": "monthly"}, "trial_days": 0,
                "included_models": ["claude-*"],
                "policy": {"concurrency": 4, "rate_windows": [{"window_secs": 60, "max_requests": 100}]},
                "included_credit": {"amount": "0", "currency": "USD"},
                "overage": {"allowed": true, "multiplier": "1"},
                "max_keys": 3,
            })),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Register; the verification link arrives over SMTP.
    let (status, v) = l
        .api(
            "POST",
            "/api/user/register",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let mail = l.smtp.wait_for(email, "verify?token=").await;
    let token: String = mail
        .data
        .split("verify?token=")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert!(token.len() >= 16, "token {token:?} in {}", mail.data);
    let (status, _) = l
        .api(
            "POST",
            "/api/user/login",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 403, "an unverified address cannot log in");
    l.ok(
        "POST",
        "/api/user/verify-email",
        None,
        Some(json!({"token": token})),
    )
    .await;
    let user = l.login(email).await;

    // Nothing paid: no key works yet, and a key cannot be made.
    assert_eq!(l.balance(&user).await, Decimal::ZERO);

    // Buy the plan through a Stripe checkout; the signed webhook pays it (a replay is a no-op).
    let (status, co) = l
        .api(
            "POST",
            "/api/user/checkout",
            Some(&user),
            Some(json!({"provider": "stripe", "plan_id": plan})),
        )
        .await;
    assert_eq!(status, 201, "{co}");
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(l.stripe.calls()[0].path, "/v1/checkout/sessions");
    let paid = session_completed(&order, "cs_test_1", 2000, "pi_1");
    for _ in 0..2 {
        assert_eq!(
            l.stripe_event("evt_1", "checkout.session.completed", paid.clone())
                .await,
            200
        );
    }
    let sub = l
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "active", "{sub}");
    let kinds: Vec<String> = l.ledger(&user).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["top_up", "plan_charge"]);
    assert_eq!(l.balance(&user).await, Decimal::ZERO);
    let invoices = l.invoices(&user).await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["status"], "paid");

    // Credit for usage: a Stripe top-up of 10.
    let (status, co) = l
        .api(
            "POST",
            "/api/user/top-up",
            Some(&user),
            Some(json!({"provider": "stripe", "amount": "10.00", "currency": "USD"})),
        )
        .await;
    assert_eq!(status, 201, "{co}");
    let top_up = co["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        l.stripe_event(
            "evt_2",
            "checkout.session.completed",
            session_completed(&top_up, "cs_test_2", 1000, "pi_2")
        )
        .await,
        200
    );
    assert_eq!(l.balance(&user).await, Decimal::from(10));

    // Keys: one narrowed to three requests a minute, one with a tiny daily budget.
    let (status, v) = l
        .api("POST", "/api/user/keys", Some(&user), Some(json!({"name": "rate",
            "policy": {"concurrency": 2, "allowed_models": ["claude-*"], "rate_windows": [{"window_secs": 60, "max_requests": 3}]}})))
        .await;
    assert_eq!(status, 201, "{v}");
    let rate_key = v["key"].as_str().unwrap().to_owned();
    let (status, v) = l
        .api("POST", "/api/user/keys", Some(&user), Some(json!({"name": "budget",
            "policy": {"concurrency": 2, "allowed_models": ["claude-*"], "rate_windows": [{"window_secs": 60, "max_requests": 100}],
                       "budgets": [{"period": "daily", "cap": {"amount": "0.003", "currency": "USD"}}]}})))
        .await;
    assert_eq!(status, 201, "{v}");
    let budget_key = v["key"].as_str().unwrap().to_owned();

    // Relayed, streamed and not; metered at the exact catalog price.
    let (status, _, body) = l.messages(&rate_key, false, 64).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["type"], "message");
    let (status, headers, body) = l.messages(&rate_key, true, 64).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(
        body.contains("event: message_start") && body.contains("event: message_stop"),
        "{body}"
    );
    let events = l.state.usage.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(events.len(), 2);
    let mut spent = Decimal::ZERO;
    for e in &events {
        assert_eq!(e.model, "claude-sonnet-4-5");
        assert!(
            e.usage.input_tokens > 0 && e.usage.output_tokens > 0,
            "{e:?}"
        );
        let expected = Decimal::from(e.usage.input_tokens) * Decimal::new(3, 6)
            + Decimal::from(e.usage.output_tokens) * Decimal::new(15, 6)
            + Decimal::from(e.usage.cache_write_5m_tokens) * Decimal::new(375, 8)
            + Decimal::from(e.usage.cache_write_1h_tokens) * Decimal::new(6, 6)
            + Decimal::from(e.usage.cache_read_tokens) * Decimal::new(3, 7);
        assert_eq!(e.cost.amount(), expected, "{e:?}");
        spent += e.cost.amount();
    }

    // The usage job charges the wallet exactly; the user's usage report shows it once the
    // rollup job (every five minutes in the scheduler) has run.
    l.charge_usage().await;
    assert_eq!(l.balance(&user).await, Decimal::from(10) - spent);
    let rollup = relay_server::jobs::UsageRollupJob::new(l.state.db.usage_store(), l.clock.clone());
    let report = relay_server::jobs::Job::run(&rollup).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let usage = l.ok("GET", "/api/user/usage", Some(&user), None).await;
    for row in usage.as_array().unwrap() {
        assert_eq!(row["model"], "claude-sonnet-4-5", "{usage}");
    }
    let reported: Decimal = usage
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dec(&r["cost"]["amount"]))
        .sum();
    assert_eq!(reported, spent, "{usage}");
    let (status, csv) = {
        let res = l
            .http
            .get(format!("{}/api/user/usage?format=csv", l.base))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(csv.starts_with("day,model,"), "{csv}");

    // A rate limit: the third request of the minute passes, the fourth is refused.
    let (status, _, body) = l.messages(&rate_key, false, 64).await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = l.messages(&rate_key, false, 64).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(anthropic_error(&body), "rate_limit_error");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // A sliding-window counter frees room as the previous bucket decays: within two
    // window lengths, depending on where in the minute the calls fell.
    assert!((1..=120).contains(&retry), "retry-after {retry}");

    // A budget: calls pass until the day's cap cannot hold another, then 402.
    let mut passed = 0;
    let refusal = loop {
        let (status, _, body) = l.messages(&budget_key, false, 32).await;
        match status {
            200 => passed += 1,
            402 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(passed < 50, "the budget never ran out");
    };
    assert!(passed >= 1, "the budget admits at least one call");
    assert_eq!(anthropic_error(&refusal), "billing_error", "{refusal}");

    // The period ends with too little in the wallet: past due, then suspended: refused.
    l.clock
        .advance(chrono::Duration::days(31) + chrono::Duration::hours(1));
    jobs::renewals(&l.state.billing).await.unwrap();
    let user = l.login(email).await;
    let admin = l.login("ops@example.com").await;
    let sub = l
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "past_due", "{sub}");
    l.clock.advance(chrono::Duration::days(4));
    jobs::dunning(&l.state.billing).await.unwrap();
    let sub = l
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "suspended", "{sub}");
    let (status, _, body) = l.messages(&rate_key, false, 64).await;
    assert_eq!(
        status, 402,
        "a suspended account's key is refused at once: {body}"
    );
    let invoices = l.invoices(&user).await;
    assert_eq!(invoices.len(), 2);
    assert_eq!(invoices[1]["status"], "open");

    // Pay again: a top-up of 30 settles the open invoice; the key works again.
    let before = l.balance(&user).await;
    let (status, co) = l
        .api(
            "POST",
            "/api/user/top-up",
            Some(&user),
            Some(json!({"provider": "stripe", "amount": "30.00", "currency": "USD"})),
        )
        .await;
    assert_eq!(status, 201, "{co}");
    let second = co["order"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        l.stripe_event(
            "evt_3",
            "checkout.session.completed",
            session_completed(&second, "cs_test_3", 3000, "pi_3")
        )
        .await,
        200
    );
    let sub = l
        .ok("GET", "/api/user/subscription", Some(&user), None)
        .await;
    assert_eq!(sub["status"], "active", "{sub}");
    assert_eq!(l.invoices(&user).await[1]["status"], "paid");
    assert_eq!(
        l.balance(&user).await,
        before + Decimal::from(30) - Decimal::from(20)
    );
    let (status, _, body) = l.messages(&rate_key, false, 64).await;
    assert_eq!(status, 200, "paid again, the key works: {body}");

    // Refund 5 of the last top-up: requested at Stripe, applied by its signed webhook.
    let (status, r) = l
        .api(
            "POST",
            &format!("/api/admin/orders/{second}/refund"),
            Some(&admin),
            Some(json!({"amount": "5", "reason": "goodwill"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let refund = l.stripe.calls().last().cloned().unwrap();
    assert_eq!(refund.path, "/v1/refunds");
    assert!(refund
        .form
        .contains(&("amount".to_owned(), "500".to_owned())));
    let before = l.balance(&user).await;
    assert_eq!(
        l.stripe_event(
            "evt_4",
            "charge.refunded",
            charge_refunded(&second, "pi_3", 500, false)
        )
        .await,
        200
    );
    assert_eq!(l.balance(&user).await, before - Decimal::from(5));

    // The ledger's wallet changes add up to the balance, usage included.
    l.charge_usage().await;
    let ledger = l.ledger(&user).await;
    assert!(
        ledger.iter().any(|(k, _)| k == "payment_refund"),
        "{ledger:?}"
    );
    let sum: Decimal = ledger.iter().map(|(_, a)| *a).sum();
    assert_eq!(sum, l.balance(&user).await, "{ledger:?}");
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_loop_on_sqlite_and_memory() {
    full_loop(Backend::SqliteMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_loop_on_postgres_and_redis() {
    if let Some(backend) = common::postgres_redis().await {
        full_loop(backend).await;
    }
}
