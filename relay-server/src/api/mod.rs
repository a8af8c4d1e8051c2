//! The product REST API: `/api/user/...`, `/api/admin/...`, `/webhooks/{provider}` and
//! `/openapi.json`.
//!
//! Build an [`ApiState`] from the services, then [`router`] gives an axum router with the
//! full paths (merge it into the gateway's router). Every error is a JSON body
//! `{"error":{"code","message","field"}}` ([`error::ApiError`]); every JSON body goes
//! through [`extract::ApiJson`], so bad input is a 4xx and never a 5xx.

pub mod admin;
pub mod dto;
pub mod error;
pub mod extract;
pub mod listing;
pub mod openapi;
pub mod security;
pub mod usage_report;
pub mod user;
pub mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, patch, post};
use axum::Router;
use relay_auth::{AccountService, ApiKeyService};
use relay_billing::store::SqlBillingStore;
use relay_billing::Billing;
use relay_core::{SharedClock, Throttle, ThrottleDecision};
use relay_payments::manual::ManualProvider;
use relay_payments::store::WebhookEventStore;
use relay_payments::{PaymentProvider, WebhookProcessor};

use self::error::ApiError;
use self::webhooks::BillingEventHandler;

/// One attempt limit: at most `max` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Attempts allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

impl RateLimit {
    /// `max` attempts per `window`.
    pub const fn new(max: u32, window: Duration) -> Self {
        Self { max, window }
    }
}

/// Settings of the REST API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest JSON body accepted (bytes).
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (exact, e.g. `https://app.example.com`); empty: no CORS.
    pub cors_origins: Vec<String>,
    /// Registrations per client IP.
    pub register_limit: RateLimit,
    /// Logins per client IP and address.
    pub login_limit: RateLimit,
    /// Password reset requests per client IP.
    pub reset_limit: RateLimit,
    /// Checkouts and top-ups per user.
    pub checkout_limit: RateLimit,
    /// Set the session cookie on login (besides returning the token).
    pub session_cookie: bool,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            cors_origins: Vec::new(),
            register_limit: RateLimit::new(10, Duration::from_secs(3600)),
            login_limit: RateLimit::new(20, Duration::from_secs(900)),
            reset_limit: RateLimit::new(5, Duration::from_secs(3600)),
            checkout_limit: RateLimit::new(30, Duration::from_secs(3600)),
            session_cookie: true,
            trust_forwarded_for: false,
        }
    }
}

/// Everything the REST API's handlers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Accounts, sessions, TOTP, roles.
    pub accounts: Arc<AccountService>,
    /// API keys.
    pub keys: Arc<ApiKeyService>,
    /// Billing.
    pub billing: Arc<Billing>,
    /// Billing's SQL store, for listings its trait lacks (see [`listing`]).
    pub billing_sql: Arc<SqlBillingStore>,
    /// Where usage by day and model comes from.
    pub usage: Arc<dyn usage_report::UsageReport>,
    /// Checkout providers by name (`stripe`, `alipay`, `wechat`, ...).
    pub providers: Arc<BTreeMap<String, Arc<dyn PaymentProvider>>>,
    /// Manual payments recorded by admins.
    pub manual: Arc<ManualProvider>,
    /// Verified, deduplicated payment events into billing.
    pub processor: WebhookProcessor,
    /// Counts attempts for the rate limits.
    pub throttle: Arc<dyn Throttle>,
    /// Time.
    pub clock: SharedClock,
    /// Settings.
    pub config: ApiConfig,
    /// The server's audit log: every mutating admin request is recorded there (see
    /// [`admin::trail`]); `None` records nothing (bare test harnesses).
    pub audit: Option<crate::audit::AuditLog>,
    /// Upstream accounts for the admin routes; `None` answers those routes 404.
    pub upstreams: Option<admin::upstreams::UpstreamAdmin>,
    /// Where checkouts are remembered for payment reconciliation; `None`: not kept.
    pub checkouts: Option<crate::jobs::CheckoutLog>,
    /// Price overrides for the admin routes; `None` answers those routes 404.
    pub prices: Option<admin::prices::PriceAdmin>,
}

impl ApiState {
    /// The API over these services. Webhook events are deduplicated in `webhook_events`
    /// and applied to `billing` by a [`BillingEventHandler`]. Add checkout providers with
    /// [`ApiState::with_provider`].
    pub fn new(
        accounts: Arc<AccountService>,
        keys: Arc<ApiKeyService>,
        billing: Arc<Billing>,
        billing_sql: Arc<SqlBillingStore>,
        webhook_events: Arc<dyn WebhookEventStore>,
        throttle: Arc<dyn Throttle>,
        clock: SharedClock,
    ) -> Self {
        let handler = Arc::new(BillingEventHandler::new(billing.clone()));
        let processor = WebhookProcessor::new(webhook_events, handler, clock.clone());
        Self {
            accounts,
            keys,
            billing,
            usage: Arc::new(usage_report::BillingUsageReport(billing_sql.clone())),
            billing_sql,
            providers: Arc::new(BTreeMap::new()),
            manual: Arc::new(ManualProvider::new(clock.clone())),
            processor,
            throttle,
            clock,
            config: ApiConfig::default(),
            audit: None,
            upstreams: None,
            checkouts: None,
            prices: None,
        }
    }

    /// Record admin requests in `audit`.
    pub fn with_audit(mut self, audit: crate::audit::AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Remember each checkout's provider and session in `log` (for reconciliation).
    pub fn with_checkouts(mut self, log: crate::jobs::CheckoutLog) -> Self {
        self.checkouts = Some(log);
        self
    }

    /// Manage price overrides through `prices`.
    pub fn with_prices(mut self, prices: admin::prices::PriceAdmin) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Manage upstream accounts through `upstreams`.
    pub fn with_upstreams(mut self, upstreams: admin::upstreams::UpstreamAdmin) -> Self {
        self.upstreams = Some(upstreams);
        self
    }

    /// Offer `provider` at checkout and receive its webhooks at `/webhooks/<name>`.
    pub fn with_provider(mut self, provider: Arc<dyn PaymentProvider>) -> Self {
        let mut map = (*self.providers).clone();
        map.insert(provider.name().to_owned(), provider);
        self.providers = Arc::new(map);
        self
    }

    /// Read usage from `report` (for example relay-usage's durable records).
    pub fn with_usage_report(mut self, report: Arc<dyn usage_report::UsageReport>) -> Self {
        self.usage = report;
        self
    }

    /// Replace the settings.
    pub fn with_config(mut self, config: ApiConfig) -> Self {
        self.config = config;
        self
    }

    /// Count one attempt against `key` under `limit`; 429 when over.
    pub async fn limit(&self, key: &str, limit: RateLimit) -> Result<(), ApiError> {
        match self.throttle.attempt(key, limit.max, limit.window).await {
            Ok(ThrottleDecision::Allowed { .. }) => Ok(()),
            Ok(ThrottleDecision::Limited { retry_after }) => Err(ApiError::throttled(retry_after)),
            Err(e) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )),
        }
    }
}

/// The REST API: `/api/user/...`, `/api/admin/...`, `/webhooks/...`, `/openapi.json`,
/// with the body limit, security headers and CORS of `state.config`.
pub fn router(state: ApiState) -> Router {
    use admin::{audit, codes, money, orders, plans, reports, subscriptions, users};
    use user::{account, billing as ub, keys, usage};
    let api = Router::new()
        // account
        .route("/user/register", post(account::register))
        .route("/user/verify-email", post(account::verify_email))
        .route("/user/login", post(account::login))
        .route("/user/logout", post(account::logout))
        .route("/user/password-reset", post(account::request_reset))
        .route("/user/password-reset/confirm", post(account::confirm_reset))
        .route("/user/profile", get(account::profile))
        .route("/user/profile", patch(account::update_profile))
        .route("/user/totp/enrol", post(account::totp_enrol))
        .route("/user/totp/confirm", post(account::totp_confirm))
        .route("/user/totp/disable", post(account::totp_disable))
        .route("/user/account", delete(account::delete_account))
        .route("/user/export", get(account::export))
        // billing
        .route("/user/plans", get(ub::plans))
        .route("/user/checkout", post(ub::checkout))
        .route("/user/top-up", post(ub::top_up))
        .route("/user/orders", get(ub::orders))
        .route("/user/orders/{id}", get(ub::order))
        .route("/user/invoices", get(ub::invoices))
        .route("/user/invoices/{id}", get(ub::invoice))
        .route("/user/balance", get(ub::balance))
        .route("/user/ledger", get(ub::ledger))
        .route("/user/redeem", post(ub::redeem))
        .route("/user/subscription", get(ub::subscription))
        // keys and usage
        .route("/user/keys", get(keys::list).post(keys::create))
        .route("/user/keys/{id}/rotate", post(keys::rotate))
        .route("/user/keys/{id}", delete(keys::revoke).patch(keys::update))
        .route("/user/usage", get(usage::usage))
        // admin
        .route("/admin/users", get(users::search))
        .route("/admin/users/{id}/status", post(users::set_status))
        .route("/admin/users/{id}/role", post(users::set_role))
        .route("/admin/users/{id}/flags", post(users::set_flag))
        .route("/admin/users/{id}/flags/{flag}", delete(users::clear_flag))
        .route("/admin/users/{id}/orders", get(orders::of_user))
        .route("/admin/users/{id}/ledger", get(orders::ledger_of_user))
        .route("/admin/users/{id}/invoices", get(orders::invoices_of_user))
        .route(
            "/admin/users/{id}/subscription",
            get(subscriptions::of_user),
        )
        .route("/admin/users/{id}/adjust", post(money::adjust))
        .route("/admin/users/{id}/top-up", post(money::top_up))
        .route("/admin/orders/{id}", get(orders::get_order))
        .route("/admin/orders/{id}/refund", post(money::refund))
        .route("/admin/payments/manual", post(money::manual_payment))
        .route("/admin/plans", get(plans::list).post(plans::create))
        .route(
            "/admin/plans/{id}",
            axum::routing::put(plans::revise).delete(plans::archive),
        )
        .route(
            "/admin/subscriptions/{id}/change-plan",
            post(subscriptions::change_plan),
        )
        .route(
            "/admin/subscriptions/{id}/cancel",
            post(subscriptions::cancel),
        )
        .route("/admin/codes", post(codes::generate))
        .route("/admin/codes/{code}", get(codes::get_code))
        .route("/admin/reports/revenue", get(reports::revenue))
        .route("/admin/reports/subscriptions", get(reports::subscriptions))
        .route(
            "/admin/reports/usage-vs-revenue",
            get(reports::usage_vs_revenue),
        )
        .route("/admin/reports/overdue", get(reports::overdue))
        .route("/admin/audit", get(audit::search))
        .route(
            "/admin/subscriptions/{id}/extend",
            post(subscriptions::extend),
        )
        .route(
            "/admin/upstreams",
            get(admin::upstreams::list).post(admin::upstreams::create),
        )
        .route(
            "/admin/upstreams/{name}",
            patch(admin::upstreams::update).delete(admin::upstreams::remove),
        )
        .route("/admin/prices", get(admin::prices::list))
        .route(
            "/admin/prices/{model}",
            axum::routing::put(admin::prices::set).delete(admin::prices::clear),
        )
        // Runs after routing, on every route above: records mutating admin requests.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::trail::record,
        ))
        .fallback(security::not_found)
        .method_not_allowed_fallback(security::method_not_allowed);
    let config = state.config.clone();
    let webhooks = webhooks::routes(&state);
    let api = security::layered(api.with_state(state), &config);
    // Nested, so the JSON fallbacks answer only under /api and the router merges into
    // the gateway's (which has its own fallback).
    Router::new()
        .nest("/api", api)
        .merge(webhooks)
        .route("/openapi.json", get(openapi::spec))
}

/// Every `/api` route as `(method, path)`, as the router and the OpenAPI document have
/// them; tests walk it.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/user/register"),
    ("POST", "/api/user/verify-email"),
    ("POST", "/api/user/login"),
    ("POST", "/api/user/logout"),
    ("POST", "/api/user/password-reset"),
    ("POST", "/api/user/password-reset/confirm"),
    ("GET", "/api/user/profile"),
    ("PATCH", "/api/user/profile"),
    ("POST", "/api/user/totp/enrol"),
    ("POST", "/api/user/totp/confirm"),
    ("POST", "/api/user/totp/disable"),
    ("DELETE", "/api/user/account"),
    ("GET", "/api/user/export"),
    ("GET", "/api/user/plans"),
    ("POST", "/api/user/checkout"),
    ("POST", "/api/user/top-up"),
    ("GET", "/api/user/orders"),
    ("GET", "/api/user/orders/{id}"),
    ("GET", "/api/user/invoices"),
    ("GET", "/api/user/invoices/{id}"),
    ("GET", "/api/user/balance"),
    ("GET", "/api/user/ledger"),
    ("POST", "/api/user/redeem"),
    ("GET", "/api/user/subscription"),
    ("GET", "/api/user/keys"),
    ("POST", "/api/user/keys"),
    ("POST", "/api/user/keys/{id}/rotate"),
    ("DELETE", "/api/user/keys/{id}"),
    ("PATCH", "/api/user/keys/{id}"),
    ("GET", "/api/user/usage"),
    ("GET", "/api/admin/users"),
    ("POST", "/api/admin/users/{id}/status"),
    ("POST", "/api/admin/users/{id}/role"),
    ("POST", "/api/admin/users/{id}/flags"),
    ("DELETE", "/api/admin/users/{id}/flags/{flag}"),
    ("GET", "/api/admin/users/{id}/orders"),
    ("GET", "/api/admin/users/{id}/ledger"),
    ("GET", "/api/admin/users/{id}/invoices"),
    ("GET", "/api/admin/users/{id}/subscription"),
    ("POST", "/api/admin/users/{id}/adjust"),
    ("POST", "/api/admin/users/{id}/top-up"),
    ("GET", "/api/admin/orders/{id}"),
    ("POST", "/api/admin/orders/{id}/refund"),
    ("POST", "/api/admin/payments/manual"),
    ("GET", "/api/admin/plans"),
    ("POST", "/api/admin/plans"),
    ("PUT", "/api/admin/plans/{id}"),
    ("DELETE", "/api/admin/plans/{id}"),
    ("POST", "/api/admin/subscriptions/{id}/change-plan"),
    ("POST", "/api/admin/subscriptions/{id}/cancel"),
    ("POST", "/api/admin/codes"),
    ("GET", "/api/admin/codes/{code}"),
    ("GET", "/api/admin/reports/revenue"),
    ("GET", "/api/admin/reports/subscriptions"),
    ("GET", "/api/admin/reports/usage-vs-revenue"),
    ("GET", "/api/admin/reports/overdue"),
    ("GET", "/api/admin/audit"),
    ("POST", "/api/admin/subscriptions/{id}/extend"),
    ("GET", "/api/admin/upstreams"),
    ("POST", "/api/admin/upstreams"),
    ("PATCH", "/api/admin/upstreams/{name}"),
    ("DELETE", "/api/admin/upstreams/{name}"),
    ("GET", "/api/admin/prices"),
    ("PUT", "/api/admin/prices/{model}"),
    ("DELETE", "/api/admin/prices/{model}"),
];
