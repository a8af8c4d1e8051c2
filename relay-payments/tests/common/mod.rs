//! Shared test helpers: a local HTTP server that records what it receives and answers
//! like a provider, and a small billing stand-in that applies events with `decide`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod keys;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use relay_core::{ManualClock, Money, OrderId};
use relay_payments::{
    decide, Decision, HandleOutcome, HandlerError, OrderSnapshot, OrderState, PaymentEvent,
    PaymentEventHandler,
};

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

pub fn clock() -> ManualClock {
    ManualClock::new(t0())
}

/// One request the mock server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the mock answers: status, extra headers, body.
pub type Answer = (u16, Vec<(String, String)>, String);
type Responder = Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;

#[derive(Clone)]
struct MockState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Responder,
}

/// A provider stand-in on 127.0.0.1 with a random port.
pub struct MockServer {
    pub base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rec = Recorded {
        method,
        uri: uri.to_string(),
        headers,
        body,
    };
    let (status, extra, body) = (state.responder)(&rec);
    state.requests.lock().push(rec);
    let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (k, v) in extra {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

impl MockServer {
    pub async fn start(responder: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = MockState {
            requests: Arc::clone(&requests),
            responder: Arc::new(responder),
        };
        let app = axum::Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().clone()
    }
}

/// Billing in miniature: orders, a credit total, and `decide` as its rule book.
#[derive(Debug, Default)]
pub struct SimBilling {
    pub orders: Mutex<HashMap<OrderId, OrderSnapshot>>,
    pub credited: Mutex<Vec<Money>>,
    pub reversed: Mutex<Vec<Money>>,
    pub held: Mutex<Vec<String>>,
    pub calls: AtomicUsize,
    pub fail_next: Mutex<usize>,
}

impl SimBilling {
    pub fn with_order(order: &OrderId, amount: Money) -> Arc<Self> {
        let sim = Self::default();
        sim.orders.lock().insert(
            order.clone(),
            OrderSnapshot {
                state: OrderState::Pending,
                amount,
                refunded: Money::zero(amount.currency()),
            },
        );
        Arc::new(sim)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn credited(&self) -> Vec<Money> {
        self.credited.lock().clone()
    }

    pub fn state(&self, order: &OrderId) -> OrderState {
        self.orders.lock()[order].state
    }
}

#[async_trait]
impl PaymentEventHandler for SimBilling {
    async fn handle(&self, event: &PaymentEvent) -> Result<HandleOutcome, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Let other deliveries run while this one is "in the database".
        tokio::task::yield_now().await;
        {
            let mut fail = self.fail_next.lock();
            if *fail > 0 {
                *fail -= 1;
                return Err(HandlerError("database unavailable".into()));
            }
        }
        let mut orders = self.orders.lock();
        let snapshot = event
            .order_id
            .as_ref()
            .and_then(|id| orders.get(id))
            .cloned();
        let decision = decide(snapshot.as_ref(), event);
        let order = event.order_id.as_ref().and_then(|id| orders.get_mut(id));
        Ok(match (decision, order) {
            (Decision::Credit(m), Some(o)) => {
                o.state = OrderState::Paid;
                self.credited.lock().push(m);
                HandleOutcome::Applied
            }
            (Decision::Renew(m), _) => {
                self.credited.lock().push(m);
                HandleOutcome::Applied
            }
            (Decision::Reverse(m), Some(o)) => {
                o.refunded = o.refunded.checked_add(&m).unwrap();
                self.reversed.lock().push(m);
                HandleOutcome::Applied
            }
            (Decision::MarkFailed | Decision::MarkExpired, Some(o)) => {
                o.state = OrderState::Closed;
                HandleOutcome::Applied
            }
            (Decision::Hold(reason), _) => {
                self.held.lock().push(format!("{reason:?}"));
                HandleOutcome::HeldForReview(format!("{reason:?}"))
            }
            _ => HandleOutcome::Ignored,
        })
    }
}

/// True when the Postgres suite should be skipped (server down, not in CI).
pub async fn postgres_pool() -> Option<sqlx::PgPool> {
    use sqlx::postgres::PgPoolOptions;
    let url = std::env::var("RELAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let schema = format!(
        "relay_payments_{}",
        &relay_payments::store::ClaimToken::new().0[..12]
    );
    let admin = match PgPoolOptions::new().max_connections(1).connect(&url).await {
        Ok(p) => p,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {url} is required in CI: {e}");
            }
            eprintln!("notice: PostgreSQL unreachable ({e}); skipping");
            return None;
        }
    };
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let search_path = schema.clone();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .after_connect(move |conn, _| {
            let sql = format!("SET search_path TO {search_path}");
            Box::pin(async move {
                sqlx::Executor::execute(conn, sql.as_str()).await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    Some(pool)
}

/// Drop a schema made by [`postgres_pool`].
pub async fn drop_schema(pool: &sqlx::PgPool) {
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pool)
        .await
        .unwrap();
    if schema.starts_with("relay_payments_") {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(pool)
            .await
            .unwrap();
    }
}

/// A SQLite pool on a fresh file (kept alive by the returned directory).
pub async fn sqlite_pool() -> (sqlx::SqlitePool, tempfile::TempDir) {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("payments.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    (pool, dir)
}
