//! Composition: configuration in, a serving gateway out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use relay_auth::{AccountService, ApiKeyAuthLayer, ApiKeyService, MemoryOutbox};
use relay_billing::{Billing, BillingConfig};
use relay_core::{
    AccountStanding, PriceBook, SharedClock, Standing, StandingError, SystemClock, Throttle, UserId,
};
use relay_usage::layer::metering::MeteringLayer;
use relay_usage::layer::policy::PolicyLayer;
use relay_usage::sink::{MemoryUsageSink, SqlUsageWriter, UsageSink, WriterConfig};
use relay_usage::{Limiter, MemoryLimiter};
use tower::Layer as _;

use crate::api::{self, ApiState};
use crate::audit::AuditLog;
use crate::config::{AccountConfig, Config};
use crate::db::Database;
use crate::demo::{DemoSeed, DemoUpstream};
use crate::jobs::{
    BillingJob, BillingTask, CheckoutLog, JobScheduler, PaymentReconcileJob, RedisRunClaims,
    RunClaims, SqlRunClaims, UsageFlushJob, UsageRollupJob,
};
use crate::notify::{DeliveryWorker, Notifications, Outbox, SmtpMailer};
use crate::observe::{Observe, ObserveLayer};
use crate::routes::models::{models_from_catalog, ModelEntry};
use crate::routes::{llm, models, ops};
use crate::upstream::{store as account_store, CredentialCipher, Pools, Relay};
use crate::ServerError;

/// Wallet credit given to the demo user (in billing's default currency).
pub const DEMO_CREDIT: i64 = 1000;

/// The small catalog used when no other is found (the demo's models).
pub const EMBEDDED_CATALOG: &str = include_str!("../data/demo_prices.json");

/// Everything a request handler needs.
pub struct AppState {
    /// The durable store.
    pub db: Database,
    /// Redis, when configured.
    pub redis: Option<redis::aio::ConnectionManager>,
    /// API keys.
    pub keys: Arc<ApiKeyService>,
    /// Accounts.
    pub accounts: Arc<AccountService>,
    /// Account notices (verification, reset) kept in memory, when SMTP is not configured
    /// (demo, tests).
    pub outbox: Option<Arc<MemoryOutbox>>,
    /// Notifications through the durable outbox, when SMTP is configured.
    pub notifications: Option<Notifications>,
    /// The limiter (memory or Redis).
    pub limiter: Arc<dyn Limiter>,
    /// Prices.
    pub prices: Arc<PriceBook>,
    /// Where metered usage goes (observed in metrics).
    pub sink: crate::sink::ObservedSink,
    /// The in-memory aggregates and recent events behind `sink`.
    pub usage: Arc<MemoryUsageSink>,
    /// The durable usage records behind `sink` (drained at shutdown).
    pub usage_writer: SqlUsageWriter,
    /// Real-time aggregates in Redis behind `sink`, when Redis is configured (written at
    /// shutdown).
    pub usage_aggregates: Option<relay_usage::sink::redis::RedisUsageAggregates>,
    /// Billing (plans, wallets, subscriptions); also the keys' account standing.
    pub billing: Arc<Billing>,
    /// The append-only audit log (on billing's pool).
    pub audit: AuditLog,
    /// Billing's periodic jobs (renewals, expiry, dunning, usage into the ledger), one
    /// runner per tick.
    pub scheduler: Arc<JobScheduler>,
    /// Models offered by `/v1/models`.
    pub models: Vec<ModelEntry>,
    /// The relay.
    pub relay: Relay,
    /// Largest request body relayed.
    pub max_body_bytes: usize,
    /// Metrics, when the recorder could be installed.
    pub metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.db)
            .field("redis", &self.redis.is_some())
            .field("limiter", &self.limiter)
            .field("models", &self.models.len())
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// A built gateway: its state, its router, and the demo parts when in demo mode.
#[derive(Debug)]
pub struct Gateway {
    /// Shared state.
    pub state: Arc<AppState>,
    /// Demo seed (key and user), in demo mode.
    pub demo: Option<DemoSeed>,
    /// The in-process demo upstream, in demo mode without an external stand-in.
    pub demo_upstream: Option<DemoUpstream>,
    /// Where the catalog came from.
    pub price_source: String,
    /// The product API's state (`/api/...`, `/webhooks/...`).
    pub api: ApiState,
    flusher: tokio::task::JoinHandle<()>,
    key_bus: Option<tokio::task::JoinHandle<()>>,
    jobs: tokio::task::JoinHandle<()>,
    delivery: Option<(Arc<DeliveryWorker>, tokio::task::JoinHandle<()>)>,
    /// Shared by every router built here, so shutdown can wait for its settlements.
    metering: MeteringLayer,
}

/// Billing's standing for the key service, set once billing exists: billing needs the key
/// service (to provision keys) before the key service can ask billing.
#[derive(Debug, Default)]
struct LateStanding(std::sync::OnceLock<Arc<Billing>>);

#[async_trait::async_trait]
impl AccountStanding for LateStanding {
    async fn standing(&self, user: &UserId) -> Result<Standing, StandingError> {
        match self.0.get() {
            Some(b) => b.standing(user).await,
            None => Err(StandingError::Unavailable("billing not wired yet".into())),
        }
    }
}

fn load_prices(
    path: Option<&PathBuf>,
) -> Result<(PriceBook, Vec<ModelEntry>, String), ServerError> {
    let shared = PathBuf::from("../shared/data/model_prices.json");
    let (text, source) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| {
                ServerError::Startup(format!("RELAY_PRICE_CATALOG {}: {e}", p.display()))
            })?,
            p.display().to_string(),
        ),
        None => match std::fs::read_to_string(&shared) {
            Ok(t) => (t, shared.display().to_string()),
            Err(_) => (
                EMBEDDED_CATALOG.to_owned(),
                "embedded demo catalog".to_owned(),
            ),
        },
    };
    let (book, skipped) = PriceBook::from_litellm_json(&text)
        .map_err(|e| ServerError::Startup(format!("price catalog {source}: {e}")))?;
    tracing::info!(models = book.len(), skipped = skipped.len(), %source, "price catalog loaded");
    Ok((book, models_from_catalog(&text), source))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ServerError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ServerError::Startup("random number generator failed".into()))?;
    Ok(b)
}

/// A 32-byte key for one `purpose`, derived from `master` with HKDF-SHA256, so secrets of
/// different kinds never share a key.
fn derive_key(master: &[u8], purpose: &[u8]) -> Result<[u8; 32], ServerError> {
    use ring::hkdf;
    let failed = |_| ServerError::Startup("deriving a key failed".into());
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"relay").extract(master);
    let info = [purpose];
    let okm = prk.expand(&info, hkdf::HKDF_SHA256).map_err(failed)?;
    let mut out = [0u8; 32];
    okm.fill(&mut out).map_err(failed)?;
    Ok(out)
}

/// The Redis pub/sub channel of API-key cache invalidations between instances.
pub const KEY_INVALIDATION_CHANNEL: &str = "relay:keys:invalidate";

impl Gateway {
    /// Connect, migrate, seed (demo), load accounts and prices, and build the router.
    pub async fn build(config: &Config) -> Result<Self, ServerError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Gateway::build`] on `clock`: every component (limiter, keys, billing, jobs) reads
    /// time from it, so tests can let a subscription lapse on a manual clock.
    pub async fn build_with_clock(
        config: &Config,
        clock: SharedClock,
    ) -> Result<Self, ServerError> {
        let db = Database::connect(&config.database).await.map_err(|e| {
            ServerError::Startup(format!("database {}: {e}", config.database.redacted()))
        })?;
        let (limiter, redis): (Arc<dyn Limiter>, _) = match &config.redis_url {
            None => (Arc::new(MemoryLimiter::new(Arc::clone(&clock))), None),
            Some(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| ServerError::Startup(format!("REDIS_URL: {e}")))?;
                let conn = redis::aio::ConnectionManager::new(client.clone())
                    .await
                    .map_err(|e| ServerError::Startup(format!("REDIS_URL: {e}")))?;
                // Admissions and settlements run on the HTTP threads, each a runtime of its
                // own: each thread talks to Redis on a connection of its own.
                let limiter = relay_usage::limiter::redis::RedisLimiter::new(
                    conn.clone(),
                    Arc::clone(&clock),
                )
                .with_connection_per_thread(client);
                (Arc::new(limiter), Some(conn))
            }
        };
        let pepper = match &config.key_pepper {
            Some(p) => p.0.clone(),
            None => {
                tracing::warn!("RELAY_KEY_PEPPER is not set: using a pepper for this run only; API keys will not verify after a restart");
                random_bytes::<32>()?.to_vec()
            }
        };
        let enc_key = match &config.encryption_key {
            Some(k) => k.0.clone(),
            None => {
                tracing::warn!("RELAY_ENCRYPTION_KEY is not set: sealing upstream credentials with a key for this run only");
                CredentialCipher::generate_key()
                    .map_err(|e| ServerError::Startup(e.to_string()))?
                    .to_vec()
            }
        };
        let cipher =
            CredentialCipher::new(&enc_key).map_err(|e| ServerError::Startup(e.to_string()))?;
        let store = db.auth_store();
        let standing = Arc::new(LateStanding::default());
        let mut keys = ApiKeyService::new(Arc::clone(&store), &pepper, Arc::clone(&clock))
            .map_err(|e| ServerError::Startup(e.to_string()))?
            .with_standing(standing.clone());
        // Instances sharing a Redis tell each other about revoked keys and changed
        // standing, so no instance serves a stale key for the cache's lifetime.
        let key_bus = match &config.redis_url {
            None => None,
            Some(url) => {
                let (bus, task) = relay_auth::keys::redis_bus::RedisKeyBus::start(
                    url.as_str(),
                    KEY_INVALIDATION_CHANNEL,
                    keys.cache().clone(),
                )
                .await
                .map_err(|e| ServerError::Startup(format!("key invalidation bus: {e}")))?;
                keys = keys.with_bus(bus);
                Some(task)
            }
        };
        let keys = Arc::new(keys);
        let billing_sql = Arc::new(
            Database::billing_store(&config.database)
                .await
                .map_err(|e| ServerError::Startup(format!("billing store: {e}")))?,
        );
        let billing = Arc::new(Billing::new(
            billing_sql.clone(),
            Arc::clone(&clock),
            keys.clone(),
            BillingConfig::default(),
        ));
        if standing.0.set(billing.clone()).is_err() {
            return Err(ServerError::Startup("billing standing wired twice".into()));
        }
        let any_pool = billing_sql.pool().clone();
        let audit = {
            let (pool, clock) = (any_pool.clone(), Arc::clone(&clock));
            crate::db::off_the_async_path(move || AuditLog::open(pool, clock))
                .await
                .map_err(|e| ServerError::Startup(format!("audit log: {e}")))?
                .map_err(|e| ServerError::Startup(format!("audit log: {e}")))?
        };
        let claims: Arc<dyn RunClaims> = match &config.redis_url {
            Some(url) => Arc::new(
                RedisRunClaims::connect(url, "relay:jobs:")
                    .await
                    .map_err(|e| ServerError::Startup(format!("job claims: {e}")))?,
            ),
            None => {
                let (pool, clock) = (any_pool.clone(), Arc::clone(&clock));
                Arc::new(
                    crate::db::off_the_async_path(move || SqlRunClaims::open(pool, clock))
                        .await
                        .map_err(|e| ServerError::Startup(format!("job claims: {e}")))?
                        .map_err(|e| ServerError::Startup(format!("job claims: {e}")))?,
                )
            }
        };
        // Account mails: through the durable outbox when SMTP is configured, else kept in
        // memory (demo, tests).
        let (outbox, notifications, delivery, notifier) = match &config.mail {
            None => {
                let memory = Arc::new(MemoryOutbox::new());
                let notifier: Arc<dyn relay_auth::Notifier> = memory.clone();
                (Some(memory), None, None, notifier)
            }
            Some(mail) => {
                let (pool, c) = (any_pool.clone(), Arc::clone(&clock));
                let queue = crate::db::off_the_async_path(move || Outbox::open(pool, c))
                    .await
                    .map_err(|e| ServerError::Startup(format!("outbox: {e}")))?
                    .map_err(|e| ServerError::Startup(format!("outbox: {e}")))?;
                let mailer = SmtpMailer::new(&mail.smtp)
                    .map_err(|e| ServerError::Startup(format!("SMTP: {e}")))?;
                let worker = Arc::new(DeliveryWorker::new(
                    queue.clone(),
                    Arc::new(mailer),
                    Arc::clone(&clock),
                ));
                let handle = worker.spawn(Duration::from_secs(5));
                let notifications = Notifications::new(queue, "relay", mail.public_url.clone());
                let notifier: Arc<dyn relay_auth::Notifier> = Arc::new(notifications.clone());
                (None, Some(notifications), Some((worker, handle)), notifier)
            }
        };
        // With mail delivered, an address must be verified before its owner can log in
        // (and so pay or make keys); without SMTP nobody could verify, so it is not asked.
        let account_config = relay_auth::AccountConfig {
            require_verified_email: config.mail.is_some(),
            ..relay_auth::AccountConfig::default()
        };
        let mut accounts = AccountService::new(Arc::clone(&store), notifier, Arc::clone(&clock))
            .with_key_service(Arc::clone(&keys))
            .with_config(account_config);
        // TOTP secrets are sealed with a key derived from the configured encryption key;
        // with a key for this run only, enrolments would not survive a restart and lock
        // their owners out, so TOTP stays off.
        if let Some(k) = &config.encryption_key {
            let totp_key = derive_key(&k.0, b"relay totp secrets v1")?;
            let sealed = relay_auth::SecretBox::new(&totp_key)
                .map_err(|e| ServerError::Startup(format!("TOTP key: {e}")))?;
            accounts = accounts.with_totp(sealed);
        }
        let accounts = Arc::new(accounts);
        // Billing mails (payment received, past due, plan expiring, low balance) go with
        // the durable outbox: only when mail is configured.
        let billing_mails = match &notifications {
            None => None,
            Some(n) => {
                let settings = crate::notify::NotifySettings {
                    low_balance: vec![relay_core::Money::new(
                        rust_decimal::Decimal::ONE,
                        billing.config().default_currency,
                    )],
                    ..crate::notify::NotifySettings::default()
                };
                let (b, store, acc, n, c) = (
                    billing.clone(),
                    billing_sql.clone(),
                    Arc::clone(&accounts),
                    n.clone(),
                    Arc::clone(&clock),
                );
                let notifier = crate::db::off_the_async_path(move || {
                    crate::notify::BillingNotifier::open(b, store, acc, n, c, settings)
                })
                .await
                .map_err(|e| ServerError::Startup(format!("billing mails: {e}")))?
                .map_err(|e| ServerError::Startup(format!("billing mails: {e}")))?;
                Some(Arc::new(notifier))
            }
        };
        let webhook_events = db.webhook_events();
        let throttle: Arc<dyn Throttle> = match &redis {
            Some(conn) => Arc::new(relay_usage::RedisThrottle::new(
                conn.clone(),
                Arc::clone(&clock),
                "relay:throttle",
            )),
            None => Arc::new(relay_usage::MemoryThrottle::new(Arc::clone(&clock))),
        };
        let mut api_state = ApiState::new(
            Arc::clone(&accounts),
            Arc::clone(&keys),
            billing.clone(),
            billing_sql,
            webhook_events,
            throttle,
            Arc::clone(&clock),
        )
        .with_provider(Arc::new(relay_payments::manual::ManualProvider::new(
            Arc::clone(&clock),
        )))
        .with_usage_report(Arc::new(crate::api::usage_report::RecordUsageReport(
            db.usage_store(),
        )))
        .with_config(config.api.clone());
        if let Some(stripe) = &config.stripe {
            let mut sc = relay_payments::stripe::StripeConfig::new(
                stripe.secret.clone(),
                stripe.webhook_secret.clone(),
                stripe.success_url.clone(),
                stripe.cancel_url.clone(),
            );
            if let Some(base) = &stripe.api_base {
                sc = sc.with_api_base(base.clone());
            }
            let provider = relay_payments::stripe::StripeProvider::new(sc, Arc::clone(&clock))
                .map_err(|e| ServerError::Startup(format!("Stripe: {e}")))?;
            api_state = api_state.with_provider(Arc::new(provider));
        }

        let checkouts = {
            let (pool, b, c) = (any_pool.clone(), billing.clone(), Arc::clone(&clock));
            crate::db::off_the_async_path(move || CheckoutLog::open(pool, b, c))
                .await
                .map_err(|e| ServerError::Startup(format!("checkout log: {e}")))?
                .map_err(|e| ServerError::Startup(format!("checkout log: {e}")))?
        };
        let api_state = api_state.with_checkouts(checkouts.clone());
        let billing_job = |task| Arc::new(BillingJob::new(billing.clone(), task));
        let scheduler = Arc::new(
            JobScheduler::new(claims, Arc::clone(&clock))
                .with_job(billing_job(BillingTask::Renewals), Duration::from_secs(60))
                .and_then(|s| s.with_job(billing_job(BillingTask::Expiry), Duration::from_secs(60)))
                .and_then(|s| {
                    s.with_job(billing_job(BillingTask::Dunning), Duration::from_secs(300))
                })
                .and_then(|s| {
                    // Durable usage records into the ledger, each charged once.
                    let source = Arc::new(crate::usage_charges::RecordUsageSource::new(db.clone()));
                    s.with_job(
                        Arc::new(UsageFlushJob::new(billing.clone(), source)),
                        Duration::from_secs(60),
                    )
                })
                .and_then(|s| {
                    // The usage-by-day routes read these rollups: at most five minutes behind.
                    s.with_job(
                        Arc::new(UsageRollupJob::new(db.usage_store(), Arc::clone(&clock))),
                        Duration::from_secs(300),
                    )
                })
                .and_then(|s| {
                    let job = crate::jobs::AuthPurgeJob::new(
                        Arc::clone(&accounts),
                        chrono::Duration::days(7),
                    );
                    s.with_job(Arc::new(job), Duration::from_secs(3600))
                })
                .and_then(|s| {
                    // Pending orders looked up at the provider their checkout went to.
                    let providers: Vec<_> = api_state.providers.values().cloned().collect();
                    s.with_job(
                        Arc::new(PaymentReconcileJob::new(
                            providers,
                            Arc::new(checkouts.clone()),
                            Arc::new(api_state.processor.clone()),
                            Arc::clone(&clock),
                        )),
                        Duration::from_secs(300),
                    )
                })
                .and_then(|s| match billing_mails {
                    Some(n) => s.with_job(n, Duration::from_secs(60)),
                    None => Ok(s),
                })
                .map_err(|e| ServerError::Startup(format!("jobs: {e}")))?,
        );
        // Demo: seed, and point one account per service at the stand-in.
        let mut configured: Vec<AccountConfig> = config.accounts.clone();
        let (demo, demo_upstream) = match &config.demo {
            None => (None, None),
            Some(demo) => {
                let seed = crate::demo::seed(
                    &accounts,
                    &keys,
                    &store,
                    &pepper,
                    demo.key.as_deref(),
                    demo.policy.clone().unwrap_or_else(crate::demo::demo_policy),
                )
                .await
                .map_err(|e| ServerError::Startup(e.to_string()))?;
                let (base, upstream) = match &demo.upstream {
                    Some(url) => (url.trim_end_matches('/').to_owned(), None),
                    None => {
                        let up = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), false)
                            .await
                            .map_err(|e| ServerError::Startup(format!("demo upstream: {e}")))?;
                        (up.base_url(), Some(up))
                    }
                };
                for service in relay_core::Service::ALL {
                    configured.push(AccountConfig {
                        service,
                        name: format!("demo-{}", service.as_str()),
                        key: format!("demo-key-{}", service.as_str()),
                        base_url: Some(base.clone()),
                        weight: 1,
                    });
                }
                // Usage is charged to the wallet every minute, and a negative wallet refuses
                // the key: credit the demo user once (idempotent by the user's id).
                let credit = relay_core::Money::new(
                    rust_decimal::Decimal::from(DEMO_CREDIT),
                    billing.config().default_currency,
                );
                billing
                    .adjust(
                        &seed.user_id,
                        credit,
                        "demo credit",
                        "system",
                        &format!("demo-credit:{}", seed.user_id),
                    )
                    .await
                    .map_err(|e| ServerError::Startup(format!("demo credit: {e}")))?;
                (Some(seed), upstream)
            }
        };
        for a in &configured {
            account_store::upsert(&db, &cipher, a)
                .await
                .map_err(|e| ServerError::Startup(e.to_string()))?;
        }
        let (loaded, unreadable) = account_store::load(&db, &cipher)
            .await
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        for u in &unreadable {
            tracing::error!(account = %u.name, reason = %u.reason, "upstream account skipped");
        }
        tracing::info!(accounts = loaded.len(), "upstream accounts loaded");
        let pools = Arc::new(Pools::new(&loaded));
        let api_state = api_state.with_audit(audit.clone()).with_upstreams(
            crate::api::admin::upstreams::UpstreamAdmin::new(
                db.clone(),
                Arc::new(cipher),
                Arc::clone(&pools),
            ),
        );
        let relay = Relay::new(pools, config.timeouts);
        let (book, models, price_source) = load_prices(config.price_catalog.as_ref())?;
        // Admin price overrides: stored ones applied now, changes live through the book.
        let price_admin = {
            let (pool, live) = (any_pool.clone(), book.live().clone());
            crate::db::off_the_async_path(move || {
                crate::api::admin::prices::PriceAdmin::open(pool, live)
            })
            .await
            .map_err(|e| ServerError::Startup(format!("price overrides: {e}")))?
            .map_err(|e| ServerError::Startup(format!("price overrides: {e}")))?
        };
        let api_state = api_state.with_prices(price_admin);
        let flusher = keys.spawn_use_flusher(Duration::from_secs(5));
        let jobs = scheduler.spawn();
        let usage = Arc::new(MemoryUsageSink::new(1024));
        let usage_writer = SqlUsageWriter::spawn(db.usage_store(), WriterConfig::default());
        // The durable writer first and the in-process memory last: once an event is visible
        // in memory (recent events, aggregates), it is already queued for the database, so a
        // flush after seeing it writes it.
        let mut sinks: Vec<Arc<dyn UsageSink>> = vec![Arc::new(usage_writer.clone())];
        // With Redis, real-time aggregates are shared by every instance, batched in process
        // (one script per flush interval, not per request).
        let usage_aggregates = redis.as_ref().map(|conn| {
            relay_usage::sink::redis::RedisUsageAggregates::start(
                conn.clone(),
                relay_usage::sink::redis::AggregatesConfig::default(),
            )
        });
        if let Some(a) = &usage_aggregates {
            sinks.push(Arc::new(a.clone()));
        }
        sinks.push(usage.clone());
        let sink = crate::sink::ObservedSink::new(Arc::new(crate::sink::FanOutSink::new(sinks)));
        let state = Arc::new(AppState {
            db,
            redis,
            keys,
            accounts,
            outbox,
            notifications,
            limiter,
            prices: Arc::new(book),
            sink,
            usage,
            usage_writer,
            usage_aggregates,
            billing,
            audit,
            scheduler,
            models,
            relay,
            max_body_bytes: config.max_body_bytes,
            metrics: crate::metrics::install(),
        });
        let metering = MeteringLayer::new(Arc::clone(&state.prices), Arc::new(state.sink.clone()));
        Ok(Self {
            metering,
            state,
            demo,
            demo_upstream,
            price_source,
            api: api_state,
            flusher,
            key_bus,
            jobs,
            delivery,
        })
    }

    /// The gateway as a service: the router (LLM routes behind `ApiKeyAuthLayer` ->
    /// `PolicyLayer` -> `MeteringLayer` -> relay, operations and account routes open) in
    /// [`Observe`], which tags every response with a request id and counts it.
    pub fn service(&self) -> Observe<Router> {
        ObserveLayer.layer(self.router())
    }

    /// The routes alone, without [`Observe`] around them.
    fn router(&self) -> Router {
        let state = Arc::clone(&self.state);
        // Router::layer wraps what is above it: the last layer added runs first.
        let relayed = Router::new()
            .route("/v1/messages", post(llm::messages))
            // Admitted (model, client, address, request windows) but not billed: the policy
            // layer reserves nothing for it and metering settles it at zero.
            .route("/v1/messages/count_tokens", post(llm::count_tokens))
            .route("/v1/chat/completions", post(llm::chat_completions))
            .route("/v1/responses", post(llm::responses))
            .route("/v1beta/models/{target}", post(llm::gemini))
            // One `layer` call for the three: axum boxes the service (and each request's
            // future) once per call.
            .layer(
                tower::ServiceBuilder::new()
                    .layer(ApiKeyAuthLayer::new(Arc::clone(&state.keys)))
                    .layer(
                        PolicyLayer::new(Arc::clone(&state.limiter), Arc::clone(&state.prices))
                            .with_max_body_bytes(state.max_body_bytes),
                    )
                    .layer(self.metering.clone()),
            );
        // The model list: authenticated, filtered by the key's policy, not admitted.
        let unmetered = Router::new()
            .route("/v1/models", get(models::list))
            .layer(ApiKeyAuthLayer::new(Arc::clone(&state.keys)));
        Router::new()
            .merge(relayed)
            .merge(unmetered)
            .route("/healthz", get(ops::healthz))
            .route("/readyz", get(ops::readyz))
            .route("/metrics", get(ops::metrics))
            .fallback(llm::not_found)
            .with_state(state)
            // Full paths (`/api/...`, `/webhooks/...`, `/openapi.json`), no fallback of its own.
            .merge(api::router(self.api.clone()))
    }

    /// Serve on `listener` until `shutdown`, then drain in-flight requests (streams
    /// included), write the queued usage records, stop the jobs, flush buffered key uses, stop the demo upstream and close the database.
    /// Connections are served by this runtime's tasks; `relay-server` itself uses
    /// [`Gateway::serve_on_threads`].
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        use axum::serve::ListenerExt;
        let app = self.service();
        // Answers go out as soon as they are written: without TCP_NODELAY the end of a
        // streamed body can wait for the client's ACK of the previous segment (Nagle).
        let listener = listener.tap_io(crate::serve::set_nodelay);
        axum::serve(listener, app.make_service())
            .with_graceful_shutdown(shutdown)
            .await?;
        self.finish().await
    }

    /// As [`Gateway::serve`], with connections handed to `threads` threads, each running a
    /// single-threaded runtime of its own (see [`crate::serve`] for why).
    pub async fn serve_on_threads(
        self,
        listener: tokio::net::TcpListener,
        threads: usize,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let settled = self.metering.clone();
        crate::serve::on_threads(self.service(), listener, threads, shutdown, settled).await?;
        self.finish().await
    }

    /// After the last connection: flush and stop everything in order.
    async fn finish(self) -> Result<(), ServerError> {
        tracing::info!("in-flight requests drained; flushing");
        crate::serve::settle_metering(&self.metering).await;
        if let Some(a) = &self.state.usage_aggregates {
            if let Err(e) = a.shutdown().await {
                tracing::error!(error = %e, "usage aggregates not all written at shutdown");
            }
        }
        // Every metered request has settled and recorded its event by now: drain them to
        // the database.
        match self.state.usage_writer.shutdown().await {
            Ok(report) => tracing::info!(written = report.written, "usage records flushed"),
            Err(e) => tracing::error!(error = %e, "usage records not all written at shutdown"),
        }
        self.flusher.abort();
        if let Some(bus) = &self.key_bus {
            bus.abort();
        }
        // Runs in progress finish; no new tick starts.
        self.state.scheduler.shutdown();
        if let Err(e) = self.jobs.await {
            tracing::warn!(error = %e, "job scheduler ended abnormally");
        }
        if let Some((worker, handle)) = self.delivery {
            worker.shutdown();
            if let Err(e) = handle.await {
                tracing::warn!(error = %e, "mail delivery ended abnormally");
            }
        }
        if let Err(e) = self.state.keys.flush_uses().await {
            tracing::warn!(error = %e, "flushing API key uses at shutdown failed");
        }
        if let Some(up) = self.demo_upstream {
            up.stop().await;
        }
        self.state.db.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::derive_key;

    #[test]
    fn derived_keys_are_stable_and_differ_by_purpose_and_master() {
        let a = derive_key(&[1u8; 32], b"relay totp secrets v1").unwrap();
        assert_eq!(a, derive_key(&[1u8; 32], b"relay totp secrets v1").unwrap());
        assert_ne!(a, derive_key(&[1u8; 32], b"another purpose").unwrap());
        assert_ne!(a, derive_key(&[2u8; 32], b"relay totp secrets v1").unwrap());
        assert_ne!(a, [1u8; 32], "never the master key itself");
    }
}
