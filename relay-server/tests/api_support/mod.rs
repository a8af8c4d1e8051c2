//! Shared harness of the `api_*` tests: the REST API over real services on memory,
//! SQLite or PostgreSQL stores, a manual clock, a Stripe stand-in and request helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use relay_auth::store::AuthStore;
use relay_auth::{
    AccountService, ApiKeyService, Email, MemoryOutbox, PasswordHasher, PasswordParams, Role,
    SecretBox,
};
use relay_billing::store::SqlBillingStore;
use relay_billing::{Billing, BillingConfig};
use relay_core::{AccountStanding, ManualClock, SharedClock, Standing, StandingError, UserId};
use relay_payments::store::WebhookEventStore;
use relay_payments::stripe::{stripe_signature_header, StripeConfig, StripeProvider};
use relay_server::api::{self, ApiConfig, ApiState, RateLimit};
use serde_json::{json, Value};
use tower::ServiceExt;

pub const STRIPE_SECRET: &str = "whsec_test_secret";
pub const PASSWORD: &str = "correct horse battery staple";

/// Which stores back the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-memory auth and webhook stores, billing on in-memory SQLite.
    Memory,
    /// SQLite files.
    Sqlite,
    /// The PostgreSQL server of `RELAY_TEST_POSTGRES`, in a fresh schema.
    Postgres,
}

/// Billing's standing, wired after billing exists (billing needs the key service first).
#[derive(Debug, Default)]
pub struct LateStanding(pub OnceLock<Arc<Billing>>);

#[async_trait]
impl AccountStanding for LateStanding {
    async fn standing(&self, user: &UserId) -> Result<Standing, StandingError> {
        match self.0.get() {
            Some(b) => b.standing(user).await,
            None => Err(StandingError::Unavailable("billing not wired".into())),
        }
    }
}

/// One recorded request to the Stripe stand-in.
#[derive(Debug, Clone)]
pub struct StripeCall {
    pub path: String,
    pub form: Vec<(String, String)>,
}

/// A local Stripe: answers checkout sessions and refunds, records the requests.
pub struct StripeStandIn {
    pub base: String,
    pub calls: Arc<Mutex<Vec<StripeCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StripeStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StripeStandIn {
    pub async fn start() -> Self {
        let calls: Arc<Mutex<Vec<StripeCall>>> = Arc::default();
        let recorded = calls.clone();
        let app = Router::new().fallback(move |req: Request<Body>| {
            let recorded = recorded.clone();
            async move {
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: Vec<(String, String)> = form_urlencoded::parse(&body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let n = {
                    let mut c = recorded.lock();
                    c.push(StripeCall {
                        path: path.clone(),
                        form: form.clone(),
                    });
                    c.len()
                };
                let get = |k: &str| {
                    form.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let answer = match path.as_str() {
                    "/v1/checkout/sessions" => json!({
                        "id": format!("cs_test_{n}"), "object": "checkout.session",
                        "url": format!("https://checkout.stripe.test/c/pay/cs_test_{n}"),
                        "expires_at": 4_102_444_800_i64,
                    }),
                    "/v1/refunds" => json!({
                        "id": format!("re_test_{n}"), "object": "refund",
                        "amount": get("amount").parse::<i64>().unwrap_or(0),
                        "currency": "usd", "status": "succeeded",
                    }),
                    _ => json!({"error": {"message": "unknown path"}}),
                };
                axum::Json(answer)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, calls, task }
    }

    pub fn calls(&self) -> Vec<StripeCall> {
        self.calls.lock().clone()
    }
}

/// The services and the router.
pub struct Harness {
    pub app: Router,
    pub state: ApiState,
    pub outbox: Arc<MemoryOutbox>,
    pub clock: Arc<ManualClock>,
    pub billing: Arc<Billing>,
    pub keys: Arc<ApiKeyService>,
    pub stripe: StripeStandIn,
    pub backend: Backend,
    cleanup: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap()
}

/// The PostgreSQL URL, or `None` (with a notice) when the server is unreachable; with
/// `CI=true` an unreachable server fails the test.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("RELAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    match sqlx::PgPool::connect(&url).await {
        Ok(pool) => {
            pool.close().await;
            Some(url)
        }
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("RELAY_TEST_POSTGRES unreachable in CI: {e}");
            }
            eprintln!("skipping PostgreSQL test: {e}");
            None
        }
    }
}

pub fn test_config() -> ApiConfig {
    ApiConfig {
        cors_origins: vec!["https://app.example.com".into()],
        register_limit: RateLimit::new(1000, std::time::Duration::from_secs(3600)),
        login_limit: RateLimit::new(1000, std::time::Duration::from_secs(3600)),
        reset_limit: RateLimit::new(1000, std::time::Duration::from_secs(3600)),
        checkout_limit: RateLimit::new(1000, std::time::Duration::from_secs(3600)),
        ..ApiConfig::default()
    }
}

impl Harness {
    pub async fn memory() -> Self {
        Self::with(Backend::Memory, test_config())
            .await
            .expect("memory backend")
    }

    /// `None` only for PostgreSQL when it is unreachable outside CI.
    pub async fn with(backend: Backend, config: ApiConfig) -> Option<Self> {
        let clock = Arc::new(ManualClock::new(t0()));
        let shared: SharedClock = clock.clone();
        let mut dir = None;
        let mut cleanup = None;
        let (auth_store, billing_store, events): (
            Arc<dyn AuthStore>,
            SqlBillingStore,
            Arc<dyn WebhookEventStore>,
        ) = match backend {
            Backend::Memory => (
                Arc::new(relay_auth::store::memory::MemoryStore::new()),
                relay_billing::store::memory::open().await.unwrap(),
                Arc::new(relay_payments::store::memory::MemoryWebhookEventStore::new()),
            ),
            Backend::Sqlite => {
                let d = tempfile::tempdir().unwrap();
                let p = |n: &str| format!("sqlite://{}", d.path().join(n).display());
                let auth = relay_auth::store::sqlite::SqliteStore::connect(&p("auth.db"))
                    .await
                    .unwrap();
                let billing = relay_billing::store::sqlite::open(&p("billing.db"))
                    .await
                    .unwrap();
                let opts: sqlx::sqlite::SqliteConnectOptions = p("payments.db").parse().unwrap();
                let pool = sqlx::SqlitePool::connect_with(opts.create_if_missing(true))
                    .await
                    .unwrap();
                relay_payments::store::sqlite::migrate(&pool).await.unwrap();
                dir = Some(d);
                (
                    Arc::new(auth),
                    billing,
                    Arc::new(relay_payments::store::sqlite::SqliteWebhookEventStore::new(
                        pool,
                    )),
                )
            }
            Backend::Postgres => {
                let url = postgres_url().await?;
                let schema = format!("relay_api_{}", &UserId::new().as_str()[4..20]);
                let billing = relay_billing::store::postgres::connect(&url, Some(&schema), 8)
                    .await
                    .unwrap();
                let s2 = schema.clone();
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .after_connect(move |conn, _| {
                        let s = s2.clone();
                        Box::pin(async move {
                            sqlx::Executor::execute(
                                conn,
                                format!("SET search_path TO {s}").as_str(),
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .unwrap();
                relay_auth::store::postgres::migrate(&pool).await.unwrap();
                relay_payments::store::postgres::migrate(&pool)
                    .await
                    .unwrap();
                cleanup = Some((url, schema));
                (
                    Arc::new(relay_auth::store::postgres::PgStore::new(pool.clone())),
                    billing,
                    Arc::new(relay_payments::store::postgres::PostgresWebhookEventStore::new(pool)),
                )
            }
        };
        let standing = Arc::new(LateStanding::default());
        let keys = Arc::new(
            ApiKeyService::new(auth_store.clone(), &[42u8; 32], shared.clone())
                .unwrap()
                .with_standing(standing.clone()),
        );
        let outbox = Arc::new(MemoryOutbox::new());
        let accounts = Arc::new(
            AccountService::new(auth_store, outbox.clone(), shared.clone())
                .with_hasher(PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS, 4).unwrap())
                .with_totp(SecretBox::new(&[7u8; 32]).unwrap())
                .with_key_service(keys.clone()),
        );
        let billing_sql = Arc::new(billing_store);
        let billing = Arc::new(Billing::new(
            billing_sql.clone(),
            shared.clone(),
            keys.clone(),
            BillingConfig::default(),
        ));
        standing.0.set(billing.clone()).unwrap();
        let stripe = StripeStandIn::start().await;
        let provider = StripeProvider::new(
            StripeConfig::new(
                "sk_test_123",
                STRIPE_SECRET,
                "https://relay.example/paid",
                "https://relay.example/cancel",
            )
            .with_api_base(stripe.base.clone()),
            shared.clone(),
        )
        .unwrap();
        let throttle = Arc::new(relay_usage::throttle::MemoryThrottle::new(shared.clone()));
        let state = ApiState::new(
            accounts,
            keys.clone(),
            billing.clone(),
            billing_sql,
            events,
            throttle,
            shared,
        )
        .with_provider(Arc::new(provider))
        .with_provider(Arc::new(relay_payments::manual::ManualProvider::new(
            clock.clone(),
        )))
        .with_config(config);
        Some(Self {
            app: api::router(state.clone()),
            state,
            outbox,
            clock,
            billing,
            keys,
            stripe,
            backend,
            cleanup,
            _dir: dir,
        })
    }

    pub async fn finish(self) {
        if let Some((url, schema)) = &self.cleanup {
            let _ = relay_billing::store::postgres::drop_schema(url, schema).await;
        }
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    /// A JSON request; the answer's body parsed as JSON (`Null` when it is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let (status, _, bytes) = self.send(req).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Register, verify (reading the notice from the outbox) and log in.
    pub async fn user(&self, email: &str) -> (String, UserId) {
        self.ok(
            "POST",
            "/api/user/register",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        let token = self
            .outbox
            .last_token(&Email::parse(email).unwrap(), false)
            .expect("verification notice");
        self.ok(
            "POST",
            "/api/user/verify-email",
            None,
            Some(json!({"token": token})),
        )
        .await;
        self.login(email).await
    }

    pub async fn login(&self, email: &str) -> (String, UserId) {
        let v = self
            .ok(
                "POST",
                "/api/user/login",
                None,
                Some(json!({"email": email, "password": PASSWORD})),
            )
            .await;
        (
            v["token"].as_str().unwrap().to_owned(),
            v["user_id"].as_str().unwrap().parse().unwrap(),
        )
    }

    /// A user with `role`, logged in.
    pub async fn staff(&self, email: &str, role: Role) -> (String, UserId) {
        self.state
            .accounts
            .create_user(email, PASSWORD, role)
            .await
            .unwrap();
        self.login(email).await
    }

    /// Create a plan through the admin API.
    pub async fn plan(&self, admin: &str, name: &str, price: &str, max_keys: u32) -> String {
        let v = self
            .ok(
                "POST",
                "/api/admin/plans",
                Some(admin),
                Some(plan_spec(name, price, max_keys)),
            )
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    /// POST a Stripe event, signed exactly as Stripe signs it, to `/webhooks/stripe`.
    pub async fn stripe_event(&self, event_id: &str, kind: &str, object: Value) -> StatusCode {
        let body = json!({"id": event_id, "object": "event", "type": kind,
            "created": self.clock_now().timestamp(), "data": {"object": object}})
        .to_string();
        let sig =
            stripe_signature_header(STRIPE_SECRET, self.clock_now().timestamp(), body.as_bytes());
        let req = Request::builder()
            .method("POST")
            .uri("/webhooks/stripe")
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(Body::from(body))
            .unwrap();
        self.send(req).await.0
    }

    /// The SQLite files' directory (SQLite backend).
    pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|d| d.path())
    }

    /// The PostgreSQL URL and schema (PostgreSQL backend).
    pub fn pg_schema(&self) -> Option<(&str, &str)> {
        self.cleanup.as_ref().map(|(u, s)| (u.as_str(), s.as_str()))
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        relay_core::Clock::now(self.clock.as_ref())
    }
}

/// A plan spec as the admin API takes it.
pub fn plan_spec(name: &str, price: &str, max_keys: u32) -> Value {
    json!({
        "name": name,
        "price": {"amount": price, "currency": "USD"},
        "period": {"kind": "monthly"},
        "trial_days": 0,
        "included_models": ["claude-*"],
        "policy": {"concurrency": 4, "rate_windows": [{"window_secs": 60, "max_requests": 100}]},
        "included_credit": {"amount": "5", "currency": "USD"},
        "overage": {"allowed": true, "multiplier": "1"},
        "max_keys": max_keys,
    })
}

/// A paid `checkout.session.completed` for `order`.
pub fn session_completed(order: &str, session: &str, amount_minor: i64, intent: &str) -> Value {
    json!({"id": session, "object": "checkout.session", "mode": "payment",
        "client_reference_id": order, "metadata": {"order_id": order},
        "payment_status": "paid", "status": "complete", "amount_total": amount_minor,
        "currency": "usd", "payment_intent": intent})
}

/// A `charge.refunded` (cumulative) for `order`.
pub fn charge_refunded(order: &str, intent: &str, refunded_minor: i64, full: bool) -> Value {
    json!({"id": "ch_1", "object": "charge", "payment_intent": intent,
        "metadata": {"order_id": order}, "amount": 2000, "amount_refunded": refunded_minor,
        "refunded": full, "currency": "usd"})
}
