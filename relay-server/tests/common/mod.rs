//! An in-process gateway on 127.0.0.1:0 in front of a recording demo upstream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use relay_auth::{NewKey, Role};
use relay_core::{ApiKeyId, KeyPolicy, Service, UserId};
use relay_server::config::{AccountConfig, Args, Config};
use relay_server::demo::{DemoState, DemoUpstream};
use relay_server::{AppState, Gateway};

/// Which stores the gateway runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file and the in-memory limiter.
    SqliteMemory,
    /// PostgreSQL (a fresh schema) and Redis.
    PostgresRedis { postgres: String, redis: String },
}

/// PostgreSQL and Redis from the environment, or `None` (outside CI) when unreachable.
pub async fn postgres_redis() -> Option<Backend> {
    let pg = std::env::var("RELAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let redis =
        std::env::var("RELAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let pg_ok = sqlx::PgPool::connect(&pg).await;
    let redis_ok = async {
        let c = redis::Client::open(redis.as_str()).ok()?;
        let mut conn = c.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    }
    .await;
    match (pg_ok, redis_ok) {
        (Ok(pool), Some(_)) => {
            let schema = format!("relay_server_{}", hex_suffix());
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .expect("create test schema");
            pool.close().await;
            let sep = if pg.contains('?') { '&' } else { '?' };
            Some(Backend::PostgresRedis {
                postgres: format!("{pg}{sep}options=-c%20search_path%3D{schema}"),
                redis,
            })
        }
        (pg, r) => {
            let msg = format!(
                "PostgreSQL ({}) or Redis ({}) unreachable",
                pg.err().map_or("ok".into(), |e| e.to_string()),
                if r.is_some() { "ok" } else { "down" }
            );
            assert!(!ci, "{msg}; CI=true requires both");
            eprintln!("skipping: {msg}");
            None
        }
    }
}

fn hex_suffix() -> String {
    // The random end of a request id (its first digits are the time).
    let id = relay_core::RequestId::new();
    id.as_str()[id.as_str().len() - 12..].to_owned()
}

/// One account of a test pool (all point at the demo upstream).
pub fn account(
    service: Service,
    name: &str,
    key: &str,
    weight: u32,
) -> (Service, String, String, u32) {
    (service, name.to_owned(), key.to_owned(), weight)
}

/// A running test gateway.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub upstream: Arc<DemoState>,
    pub user: UserId,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), relay_server::ServerError>>>,
    demo: Option<DemoUpstream>,
}

impl TestServer {
    /// A gateway on `backend` whose pools hold `accounts` (service, name, credential,
    /// weight); by default one good account per service.
    pub async fn start(
        backend: &Backend,
        accounts: Option<Vec<(Service, String, String, u32)>>,
    ) -> Self {
        let demo = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), true)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut args = Args {
            bind: "127.0.0.1:0".into(),
            encryption_key: Some(b64(&[3u8; 32])),
            key_pepper: Some(b64(&[5u8; 32])),
            price_catalog: Some(
                concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo_prices.json").into(),
            ),
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
        let accounts = accounts.unwrap_or_else(|| {
            Service::ALL
                .iter()
                .map(|s| {
                    account(
                        *s,
                        &format!("good-{}", s.as_str()),
                        &format!("good-key-{}", s.as_str()),
                        1,
                    )
                })
                .collect()
        });
        // Names are unique per database: a Postgres schema is shared by nothing else, a
        // SQLite file is fresh.
        config.accounts = accounts
            .into_iter()
            .map(|(service, name, key, weight)| AccountConfig {
                service,
                name,
                key,
                base_url: Some(demo.base_url()),
                weight,
            })
            .collect();
        let gateway = Gateway::build(&config).await.unwrap();
        let state = Arc::clone(&gateway.state);
        let user = state
            .accounts
            .create_user(
                &format!("u{}@example.com", hex_suffix()),
                "correct horse battery",
                Role::User,
            )
            .await
            .unwrap()
            .id;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // As `relay-server` serves: connections handed to HTTP threads of their own.
        let task = tokio::spawn(gateway.serve_on_threads(listener, 2, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            upstream: Arc::clone(&demo.state),
            user,
            http: reqwest::Client::new(),
            _dir: dir,
            stop: Some(tx),
            task: Some(task),
            demo: Some(demo),
        }
    }

    /// Issue a key with `policy` to the test user.
    pub async fn key(&self, policy: KeyPolicy) -> (String, ApiKeyId) {
        let issued = self
            .state
            .keys
            .issue(
                &self.user,
                NewKey {
                    name: "test".into(),
                    tags: vec![],
                    policy,
                },
            )
            .await
            .unwrap();
        (issued.key, issued.record.id)
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST JSON with `key` in `x-api-key`.
    pub async fn post(&self, path: &str, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Wait (bounded) until the sink holds `n` events.
    pub async fn events(&self, n: usize) -> Vec<relay_usage::sink::UsageEvent> {
        self.state.usage.wait_for(n, Duration::from_secs(20)).await
    }

    /// Wait (bounded) until `key` has no request in flight; returns the last count.
    pub async fn in_flight_settles(&self, key: &ApiKeyId) -> u32 {
        let mut n = u32::MAX;
        for _ in 0..400 {
            n = self.state.limiter.in_flight(key).await.unwrap();
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        n
    }

    /// Shut down gracefully.
    pub async fn stop(self) {
        drop(self.stop_keeping_files().await);
    }

    /// Shut down gracefully, handing back the directory of the SQLite file to look at.
    pub async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("gateway stops")
                .unwrap()
                .unwrap();
        }
        if let Some(d) = self.demo.take() {
            d.stop().await;
        }
        self._dir
    }
}
pub mod smtp;
