//! Configuration from the environment (and command-line flags, which win).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | `sqlite://relay.db` | `sqlite://PATH` (embedded) or `postgres://…` |
//! | `REDIS_URL` | unset | unset: in-memory limiter, one instance; set: shared limiter |
//! | `RELAY_BIND` | `127.0.0.1:8080` | address to listen on |
//! | `RELAY_HTTP_THREADS` | the number of CPUs | threads serving HTTP (1 to 256); each runs a single-threaded runtime, takes whole connections from the acceptor in turn and keeps its own upstream connections, so a request never changes thread |
//! | `RELAY_CONFIG` (`--config`) | unset | a TOML file; it fills what flags and the environment leave at their default |
//! | `RELAY_DEMO` (`--demo`) | off | seed a demo user and key, relay every service to an in-process upstream |
//! | `RELAY_DEMO_KEY` | random | the demo key's value (`rk_live_` + 43 base64url characters) |
//! | `RELAY_DEMO_UPSTREAM` | in-process | demo mode: relay to this stand-in base URL instead |
//! | `RELAY_DEMO_POLICY` | the demo plan | demo mode: the demo key's `KeyPolicy` as JSON |
//! | `RELAY_ENCRYPTION_KEY` | generated per run, with a warning | base64 of 32 bytes: seals upstream credentials at rest (set it in production) |
//! | `RELAY_KEY_PEPPER` | generated per run, with a warning | base64 of at least 32 bytes: keys API-key hashes (set it in production) |
//! | `RELAY_PRICE_CATALOG` | `../shared/data/model_prices.json` when present, else a small embedded catalog | LiteLLM price catalog |
//! | `RELAY_MAX_BODY_BYTES` | `33554432` | largest request body relayed |
//! | `RELAY_CONNECT_TIMEOUT_SECS` | `10` | upstream connect timeout |
//! | `RELAY_IDLE_TIMEOUT_SECS` | `300` | longest wait for the next upstream byte |
//! | `ANTHROPIC_API_KEYS`, `OPENAI_API_KEYS`, `GEMINI_API_KEYS` | unset | comma-separated upstream keys, one account each |
//! | `OPENAI_BASE_URL` | `https://api.openai.com` | base URL of the OpenAI-compatible upstream |
//! | `STRIPE_SECRET`, `STRIPE_WEBHOOK_SECRET` | unset | both set: Stripe checkout at `/api/user/checkout` and its webhooks at `/webhooks/stripe`; one alone is refused |
//! | `STRIPE_SUCCESS_URL`, `STRIPE_CANCEL_URL` | unset | required with Stripe: where Stripe sends the buyer back (http(s) URLs) |
//! | `STRIPE_API_BASE` | `https://api.stripe.com` | Stripe's API base URL (a stand-in in tests) |
//! | `SMTP_HOST` | unset | set: account mails go through the durable outbox and are delivered over SMTP, and an address must be verified before its owner can log in; unset: kept in memory (demo, tests), no verification asked |
//! | `SMTP_PORT` | `587` (`465` with `tls`, `25` with `none`) | SMTP port |
//! | `SMTP_TLS` | `starttls` | `starttls`, `tls`, or `none` (a local relay only) |
//! | `SMTP_USERNAME`, `SMTP_PASSWORD` | unset | SMTP credentials (both or neither) |
//! | `SMTP_FROM` | required with SMTP | the `From:` mailbox, like `Relay <no-reply@example.com>` |
//! | `RELAY_PUBLIC_URL` | required with SMTP | the base URL of links in mails (http(s)) |
//! | `RELAY_CORS_ORIGINS` | unset (no CORS) | origins allowed to call `/api` from a browser, comma-separated (`https://app.example.com`; no wildcard) |
//! | `RELAY_API_MAX_BODY_BYTES` | `65536` | largest JSON body `/api` accepts (1024 to 16777216) |
//! | `RELAY_LIMIT_REGISTER`, `RELAY_LIMIT_LOGIN`, `RELAY_LIMIT_RESET`, `RELAY_LIMIT_CHECKOUT` | `10/3600`, `20/900`, `5/3600`, `30/3600` | attempts per window as `MAX/SECONDS`: registrations and resets per client IP, logins per IP and address, checkouts and top-ups per user |
//! | `RELAY_TRUST_FORWARDED_FOR` | `false` | take the client IP (for the limits above) from `X-Forwarded-For`; only behind a proxy that sets it |
//!
//! The product API (`/api/user/...`, `/api/admin/...`, `/webhooks/...`) runs on the same
//! database: billing, webhook events and durable usage records are migrated at start-up.
//! The manual payment provider is always on.
//!
//! Upstream accounts with weights and base URLs are configured in the TOML file:
//!
//! ```toml
//! [[accounts]]
//! service = "anthropic"   # anthropic | openai | gemini
//! name = "primary"
//! key = "sk-ant-..."
//! weight = 3              # optional, default 1
//! base_url = "https://api.anthropic.com"  # optional
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use clap::Parser;
use relay_core::Service;
use serde::Deserialize;

/// Why the configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `DATABASE_URL` is not a SQLite or PostgreSQL URL.
    #[error("DATABASE_URL `{0}` is not supported: use sqlite://PATH (for example sqlite://relay.db) or postgres://USER@HOST/DB")]
    Database(String),
    /// `REDIS_URL` is not a Redis URL.
    #[error("REDIS_URL `{0}` is not a Redis URL: use redis://HOST:PORT (or rediss:// for TLS), or unset it for the in-memory limiter")]
    Redis(String),
    /// `RELAY_BIND` is not an address.
    #[error("RELAY_BIND `{0}` is not a socket address: use HOST:PORT such as 127.0.0.1:8080 or 0.0.0.0:8080")]
    Bind(String),
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret is missing or malformed.
    #[error("{name}: {reason}")]
    Secret {
        /// The variable.
        name: &'static str,
        /// What is wrong (never the value).
        reason: String,
    },
    /// The SMTP settings are incomplete or malformed.
    #[error("SMTP: {0}")]
    Smtp(String),
    /// The Stripe settings are incomplete or malformed.
    #[error("Stripe: {0}")]
    Stripe(String),
    /// An upstream account is invalid.
    #[error("upstream account `{name}`: {reason}")]
    Account {
        /// The account's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `RELAY_DEMO_POLICY` is not a valid policy.
    #[error("RELAY_DEMO_POLICY: {0}")]
    Policy(String),
    /// A numeric setting is out of range.
    #[error("{name} must be {expected}")]
    Range {
        /// The variable.
        name: &'static str,
        /// The accepted range.
        expected: &'static str,
    },
}

/// Command-line flags; each also reads its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "relay-server",
    version,
    about = "Metered gateway in front of Anthropic, OpenAI and Gemini accounts"
)]
pub struct Args {
    /// Database: sqlite://PATH (embedded default) or postgres://USER@HOST/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://relay.db")]
    pub database_url: String,
    /// Redis for the shared limiter; unset runs the in-memory limiter (one instance).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "RELAY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// A TOML file with settings and upstream accounts.
    #[arg(long = "config", env = "RELAY_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Demo mode: seed a user and key, relay every service to an in-process upstream.
    #[arg(long, env = "RELAY_DEMO")]
    pub demo: bool,
    /// The demo key's value (`rk_live_` + 43 base64url characters); random when unset.
    #[arg(long, env = "RELAY_DEMO_KEY", hide_env_values = true)]
    pub demo_key: Option<String>,
    /// Demo mode: relay to this stand-in base URL instead of the in-process upstream.
    #[arg(long, env = "RELAY_DEMO_UPSTREAM")]
    pub demo_upstream: Option<String>,
    /// Demo mode: the demo key's policy as JSON (a `KeyPolicy`), instead of the demo plan.
    #[arg(long, env = "RELAY_DEMO_POLICY")]
    pub demo_policy: Option<String>,
    /// Base64 of 32 bytes sealing upstream credentials at rest (AES-256-GCM).
    #[arg(long, env = "RELAY_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Base64 of at least 32 bytes keying API-key hashes.
    #[arg(long, env = "RELAY_KEY_PEPPER", hide_env_values = true)]
    pub key_pepper: Option<String>,
    /// LiteLLM price catalog file.
    #[arg(long, env = "RELAY_PRICE_CATALOG")]
    pub price_catalog: Option<PathBuf>,
    /// Largest request body relayed, in bytes.
    #[arg(long, env = "RELAY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Threads serving HTTP (default: the number of CPUs).
    #[arg(long, env = "RELAY_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Upstream connect timeout in seconds.
    #[arg(long, env = "RELAY_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Longest wait for the next upstream byte, in seconds.
    #[arg(long, env = "RELAY_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Anthropic API keys, comma-separated (one account each).
    #[arg(long, env = "ANTHROPIC_API_KEYS", hide_env_values = true)]
    pub anthropic_api_keys: Option<String>,
    /// OpenAI-compatible API keys, comma-separated (one account each).
    #[arg(long, env = "OPENAI_API_KEYS", hide_env_values = true)]
    pub openai_api_keys: Option<String>,
    /// Base URL of the OpenAI-compatible upstream.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// Gemini API keys, comma-separated (one account each).
    #[arg(long, env = "GEMINI_API_KEYS", hide_env_values = true)]
    pub gemini_api_keys: Option<String>,
    /// Stripe secret API key (with `STRIPE_WEBHOOK_SECRET`: Stripe checkout).
    #[arg(long, env = "STRIPE_SECRET", hide_env_values = true)]
    pub stripe_secret: Option<String>,
    /// Stripe webhook signing secret.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Where Stripe sends the buyer after paying.
    #[arg(long, env = "STRIPE_SUCCESS_URL")]
    pub stripe_success_url: Option<String>,
    /// Where Stripe sends the buyer after cancelling.
    #[arg(long, env = "STRIPE_CANCEL_URL")]
    pub stripe_cancel_url: Option<String>,
    /// Stripe's API base URL.
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// SMTP server host; set, account mails are delivered through the durable outbox.
    #[arg(long, env = "SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port.
    #[arg(long, env = "SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// SMTP transport security: starttls, tls or none.
    #[arg(long, env = "SMTP_TLS")]
    pub smtp_tls: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// SMTP password.
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// The `From:` mailbox of mails.
    #[arg(long, env = "SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// Base URL of links in mails.
    #[arg(long, env = "RELAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Origins allowed by CORS on `/api`, comma-separated (`https://app.example.com`).
    #[arg(long, env = "RELAY_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Largest JSON body accepted by `/api`, in bytes.
    #[arg(long, env = "RELAY_API_MAX_BODY_BYTES")]
    pub api_max_body_bytes: Option<usize>,
    /// Registrations per client IP, as MAX/SECONDS.
    #[arg(long, env = "RELAY_LIMIT_REGISTER")]
    pub limit_register: Option<String>,
    /// Logins per client IP and address, as MAX/SECONDS.
    #[arg(long, env = "RELAY_LIMIT_LOGIN")]
    pub limit_login: Option<String>,
    /// Password reset requests per client IP, as MAX/SECONDS.
    #[arg(long, env = "RELAY_LIMIT_RESET")]
    pub limit_reset: Option<String>,
    /// Checkouts and top-ups per user, as MAX/SECONDS.
    #[arg(long, env = "RELAY_LIMIT_CHECKOUT")]
    pub limit_checkout: Option<String>,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy that sets it).
    #[arg(long, env = "RELAY_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<bool>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            database_url: "sqlite://relay.db".into(),
            redis_url: None,
            bind: "127.0.0.1:8080".into(),
            config_file: None,
            demo: false,
            demo_key: None,
            demo_upstream: None,
            demo_policy: None,
            encryption_key: None,
            key_pepper: None,
            price_catalog: None,
            max_body_bytes: None,
            http_threads: None,
            connect_timeout_secs: None,
            idle_timeout_secs: None,
            anthropic_api_keys: None,
            openai_api_keys: None,
            openai_base_url: None,
            gemini_api_keys: None,
            stripe_secret: None,
            stripe_webhook_secret: None,
            stripe_success_url: None,
            stripe_cancel_url: None,
            stripe_api_base: None,
            smtp_host: None,
            smtp_port: None,
            smtp_tls: None,
            smtp_username: None,
            smtp_password: None,
            smtp_from: None,
            public_url: None,
            cors_origins: None,
            api_max_body_bytes: None,
            limit_register: None,
            limit_login: None,
            limit_reset: None,
            limit_checkout: None,
            trust_forwarded_for: None,
        }
    }
}

/// The TOML file's shape: every field optional; flags and the environment win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// As `DATABASE_URL`.
    pub database_url: Option<String>,
    /// As `REDIS_URL`.
    pub redis_url: Option<String>,
    /// As `RELAY_BIND`.
    pub bind: Option<String>,
    /// As `RELAY_ENCRYPTION_KEY`.
    pub encryption_key: Option<String>,
    /// As `RELAY_KEY_PEPPER`.
    pub key_pepper: Option<String>,
    /// As `RELAY_PRICE_CATALOG`.
    pub price_catalog: Option<PathBuf>,
    /// As `RELAY_MAX_BODY_BYTES`.
    pub max_body_bytes: Option<usize>,
    /// As `RELAY_HTTP_THREADS`.
    pub http_threads: Option<usize>,
    /// As `RELAY_CONNECT_TIMEOUT_SECS`.
    pub connect_timeout_secs: Option<u64>,
    /// As `RELAY_IDLE_TIMEOUT_SECS`.
    pub idle_timeout_secs: Option<u64>,
    /// Upstream accounts.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

/// One upstream account as configured.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Which API it serves.
    pub service: Service,
    /// Unique name (shown in metrics and logs).
    pub name: String,
    /// The upstream credential.
    pub key: String,
    /// Base URL; the service's public API when unset.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Share of traffic relative to the pool's other accounts.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountConfig")
            .field("service", &self.service)
            .field("name", &self.name)
            .field("key", &"***")
            .field("base_url", &self.base_url)
            .field("weight", &self.weight)
            .finish()
    }
}

/// The public API base URL of `service`.
pub fn default_base_url(service: Service) -> &'static str {
    match service {
        Service::Anthropic => "https://api.anthropic.com",
        Service::Openai => "https://api.openai.com",
        Service::Gemini => "https://generativelanguage.googleapis.com",
    }
}

impl AccountConfig {
    /// Check name, key, weight and base URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |reason: &str| ConfigError::Account {
            name: self.name.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        let n = self.name.trim();
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "name must be 1 to 64 characters of a-z, A-Z, 0-9, -, _ or .",
            ));
        }
        if self.key.trim().is_empty() || self.key.chars().any(char::is_control) {
            return Err(bad("key is empty or contains control characters"));
        }
        if self.weight == 0 || self.weight > 1000 {
            return Err(bad("weight must be 1 to 1000"));
        }
        if let Some(url) = &self.base_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url::Url::parse(url).is_ok();
            if !ok {
                return Err(bad("base_url must be an http:// or https:// URL"));
            }
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url
            .as_deref()
            .unwrap_or(default_base_url(self.service))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Where durable state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (embedded default).
    Sqlite(String),
    /// A PostgreSQL server.
    Postgres(String),
}

impl DatabaseUrl {
    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(url) => url.clone(),
            DatabaseUrl::Postgres(url) => redact_password(url),
        }
    }

    fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(ConfigError::Database(url.to_owned()));
            }
            return Ok(DatabaseUrl::Sqlite(url.to_owned()));
        }
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            if !rest.is_empty() {
                return Ok(DatabaseUrl::Postgres(url.to_owned()));
            }
        }
        Err(ConfigError::Database(redact_password(url)))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn redact_password(url: &str) -> String {
    // scheme://user:password@host -> scheme://user:***@host
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}

/// A secret from configuration; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Upstream connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// TCP (and TLS) connect timeout.
    pub connect: Duration,
    /// Longest wait for response headers or for the next body byte.
    pub idle: Duration,
}

/// Demo mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// The demo key's value, when fixed.
    pub key: Option<String>,
    /// An external stand-in upstream instead of the in-process one.
    pub upstream: Option<String>,
    /// The demo key's policy, instead of the demo plan.
    pub policy: Option<relay_core::KeyPolicy>,
}

/// Stripe checkout settings.
#[derive(Clone, PartialEq, Eq)]
pub struct StripeSettings {
    /// Secret API key.
    pub secret: String,
    /// Webhook signing secret.
    pub webhook_secret: String,
    /// Where the buyer returns after paying.
    pub success_url: String,
    /// Where the buyer returns after cancelling.
    pub cancel_url: String,
    /// API base URL; `None` is Stripe's.
    pub api_base: Option<String>,
}

impl fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeSettings")
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn http_url(name: &str, v: Option<String>) -> Result<String, ConfigError> {
    let v = v.ok_or_else(|| ConfigError::Stripe(format!("{name} is required with Stripe")))?;
    match url::Url::parse(&v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(v),
        _ => Err(ConfigError::Stripe(format!(
            "{name} `{v}` is not an http(s) URL"
        ))),
    }
}

fn stripe_settings(args: &Args) -> Result<Option<StripeSettings>, ConfigError> {
    match (
        non_empty(&args.stripe_secret),
        non_empty(&args.stripe_webhook_secret),
    ) {
        (None, None) => Ok(None),
        (Some(secret), Some(webhook_secret)) => Ok(Some(StripeSettings {
            secret,
            webhook_secret,
            success_url: http_url("STRIPE_SUCCESS_URL", non_empty(&args.stripe_success_url))?,
            cancel_url: http_url("STRIPE_CANCEL_URL", non_empty(&args.stripe_cancel_url))?,
            api_base: non_empty(&args.stripe_api_base)
                .map(|b| http_url("STRIPE_API_BASE", Some(b)))
                .transpose()?,
        })),
        _ => Err(ConfigError::Stripe(
            "set both STRIPE_SECRET and STRIPE_WEBHOOK_SECRET, or neither".into(),
        )),
    }
}

/// Mail delivery settings.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The SMTP server.
    pub smtp: crate::notify::SmtpConfig,
    /// Base URL of links in mails.
    pub public_url: String,
}

fn mail_settings(args: &Args) -> Result<Option<MailSettings>, ConfigError> {
    let Some(host) = non_empty(&args.smtp_host) else {
        return Ok(None);
    };
    use crate::notify::SmtpTls;
    let smtp = |m: String| ConfigError::Smtp(m);
    let tls = match non_empty(&args.smtp_tls)
        .map(|t| t.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("starttls") => SmtpTls::StartTls,
        Some("tls") => SmtpTls::Tls,
        Some("none") => SmtpTls::None,
        Some(other) => {
            return Err(smtp(format!(
                "SMTP_TLS `{other}` is not one of starttls, tls, none"
            )))
        }
    };
    let port = match (args.smtp_port, tls) {
        (Some(0), _) => return Err(smtp("SMTP_PORT must be between 1 and 65535".into())),
        (Some(p), _) => p,
        (None, SmtpTls::StartTls) => 587,
        (None, SmtpTls::Tls) => 465,
        (None, SmtpTls::None) => 25,
    };
    let credentials = match (
        non_empty(&args.smtp_username),
        non_empty(&args.smtp_password),
    ) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((u, p)),
        _ => {
            return Err(smtp(
                "set both SMTP_USERNAME and SMTP_PASSWORD, or neither".into(),
            ))
        }
    };
    let from = non_empty(&args.smtp_from)
        .ok_or_else(|| smtp("SMTP_FROM is required with SMTP_HOST".into()))?;
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(smtp(format!("SMTP_FROM `{from}` is not a mailbox")));
    }
    let public_url = non_empty(&args.public_url)
        .ok_or_else(|| smtp("RELAY_PUBLIC_URL is required with SMTP_HOST".into()))?;
    match url::Url::parse(&public_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => {
            return Err(smtp(format!(
                "RELAY_PUBLIC_URL `{public_url}` is not an http(s) URL"
            )))
        }
    }
    Ok(Some(MailSettings {
        smtp: crate::notify::SmtpConfig {
            host,
            port,
            tls,
            credentials,
            from,
            timeout: Duration::from_secs(30),
        },
        public_url: public_url.trim_end_matches('/').to_owned(),
    }))
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Durable store.
    pub database: DatabaseUrl,
    /// Shared limiter, when set.
    pub redis_url: Option<String>,
    /// Listening address.
    pub bind: SocketAddr,
    /// Demo mode, when on.
    pub demo: Option<DemoConfig>,
    /// Seals upstream credentials. When unset an ephemeral key is generated with a
    /// warning, and credentials sealed by an earlier run cannot be opened.
    pub encryption_key: Option<SecretBytes>,
    /// Keys API-key hashes. When unset an ephemeral pepper is generated with a warning,
    /// and keys issued by an earlier run stop verifying.
    pub key_pepper: Option<SecretBytes>,
    /// Price catalog file; `None` picks the shared catalog or the embedded one.
    pub price_catalog: Option<PathBuf>,
    /// Largest request body relayed.
    pub max_body_bytes: usize,
    /// Threads serving HTTP, each with its own listener and upstream connections.
    pub http_threads: usize,
    /// Upstream timeouts.
    pub timeouts: UpstreamTimeouts,
    /// Upstream accounts from the file and the environment.
    pub accounts: Vec<AccountConfig>,
    /// Stripe checkout, when configured.
    pub stripe: Option<StripeSettings>,
    /// Mail delivery, when SMTP is configured.
    pub mail: Option<MailSettings>,
    /// The REST API's settings (CORS, body limit, rate limits, proxy trust).
    pub api: crate::api::ApiConfig,
}

const DEFAULT_DATABASE: &str = "sqlite://relay.db";
const DEFAULT_BIND: &str = "127.0.0.1:8080";

fn decode_secret(
    name: &'static str,
    value: &str,
    exact: Option<usize>,
) -> Result<SecretBytes, ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim()))
        .map_err(|_| ConfigError::Secret {
            name,
            reason: "is not valid base64".into(),
        })?;
    match exact {
        Some(n) if bytes.len() != n => Err(ConfigError::Secret {
            name,
            reason: format!("must decode to exactly {n} bytes (got {}); generate one with `openssl rand -base64 {n}`", bytes.len()),
        }),
        None if bytes.len() < 32 => Err(ConfigError::Secret {
            name,
            reason: format!("must decode to at least 32 bytes (got {}); generate one with `openssl rand -base64 32`", bytes.len()),
        }),
        _ => Ok(SecretBytes(bytes)),
    }
}

fn env_accounts(
    service: Service,
    keys: Option<&str>,
    base_url: Option<&str>,
) -> Vec<AccountConfig> {
    keys.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .enumerate()
        .map(|(i, key)| AccountConfig {
            service,
            name: format!("{}-env-{}", service.as_str(), i + 1),
            key: key.to_owned(),
            base_url: base_url.map(str::to_owned),
            weight: 1,
        })
        .collect()
}

impl Config {
    /// Validate parsed flags, reading the TOML file they name (if any) for what they leave
    /// at its default.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config_file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    reason: e.message().to_owned(),
                })?
            }
        };
        let mut merged = args.clone();
        if merged.database_url == DEFAULT_DATABASE {
            if let Some(db) = file.database_url {
                merged.database_url = db;
            }
        }
        if merged.bind == DEFAULT_BIND {
            if let Some(bind) = file.bind {
                merged.bind = bind;
            }
        }
        merged.redis_url = merged.redis_url.or(file.redis_url);
        merged.encryption_key = merged.encryption_key.or(file.encryption_key);
        merged.key_pepper = merged.key_pepper.or(file.key_pepper);
        merged.price_catalog = merged.price_catalog.or(file.price_catalog);
        merged.max_body_bytes = merged.max_body_bytes.or(file.max_body_bytes);
        merged.http_threads = merged.http_threads.or(file.http_threads);
        merged.connect_timeout_secs = merged.connect_timeout_secs.or(file.connect_timeout_secs);
        merged.idle_timeout_secs = merged.idle_timeout_secs.or(file.idle_timeout_secs);
        let mut config = Self::from_args(&merged)?;
        let mut accounts = file.accounts;
        accounts.append(&mut config.accounts);
        let mut seen = std::collections::HashSet::new();
        for a in &accounts {
            a.validate()?;
            if !seen.insert(a.name.clone()) {
                return Err(ConfigError::Account {
                    name: a.name.clone(),
                    reason: "two accounts have this name".into(),
                });
            }
        }
        config.accounts = accounts;
        Ok(config)
    }

    /// Validate parsed flags (without reading a file).
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let database = DatabaseUrl::parse(&args.database_url)?;
        let redis_url = match args.redis_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(url.to_owned())
            }
            Some(url) => return Err(ConfigError::Redis(redact_password(url))),
        };
        let bind = args
            .bind
            .trim()
            .parse()
            .map_err(|_| ConfigError::Bind(args.bind.clone()))?;
        let demo_policy = match args.demo_policy.as_deref().filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(json) => {
                let policy: relay_core::KeyPolicy =
                    serde_json::from_str(json).map_err(|e| ConfigError::Policy(e.to_string()))?;
                policy
                    .validate()
                    .map_err(|e| ConfigError::Policy(e.to_string()))?;
                Some(policy)
            }
        };
        let demo = args.demo.then(|| DemoConfig {
            key: args.demo_key.clone().filter(|k| !k.trim().is_empty()),
            upstream: args.demo_upstream.clone().filter(|u| !u.trim().is_empty()),
            policy: demo_policy,
        });
        let encryption_key = args
            .encryption_key
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|v| decode_secret("RELAY_ENCRYPTION_KEY", v, Some(32)))
            .transpose()?;
        let key_pepper = args
            .key_pepper
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|v| decode_secret("RELAY_KEY_PEPPER", v, None))
            .transpose()?;
        let max_body_bytes = args.max_body_bytes.unwrap_or(32 * 1024 * 1024);
        if !(1024..=1024 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::Range {
                name: "RELAY_MAX_BODY_BYTES",
                expected: "between 1024 and 1073741824",
            });
        }
        let http_threads = args.http_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if !(1..=256).contains(&http_threads) {
            return Err(ConfigError::Range {
                name: "RELAY_HTTP_THREADS",
                expected: "between 1 and 256",
            });
        }
        let secs = |v: Option<u64>, default: u64, name: &'static str| match v.unwrap_or(default) {
            0 | 3601.. => Err(ConfigError::Range {
                name,
                expected: "between 1 and 3600 seconds",
            }),
            s => Ok(Duration::from_secs(s)),
        };
        let timeouts = UpstreamTimeouts {
            connect: secs(args.connect_timeout_secs, 10, "RELAY_CONNECT_TIMEOUT_SECS")?,
            idle: secs(args.idle_timeout_secs, 300, "RELAY_IDLE_TIMEOUT_SECS")?,
        };
        let mut accounts =
            env_accounts(Service::Anthropic, args.anthropic_api_keys.as_deref(), None);
        accounts.extend(env_accounts(
            Service::Openai,
            args.openai_api_keys.as_deref(),
            args.openai_base_url
                .as_deref()
                .filter(|u| !u.trim().is_empty()),
        ));
        accounts.extend(env_accounts(
            Service::Gemini,
            args.gemini_api_keys.as_deref(),
            None,
        ));
        for a in &accounts {
            a.validate()?;
        }
        let stripe = stripe_settings(args)?;
        let mail = mail_settings(args)?;
        let api = api_settings(args)?;
        Ok(Self {
            database,
            redis_url,
            bind,
            demo,
            encryption_key,
            key_pepper,
            price_catalog: args.price_catalog.clone(),
            max_body_bytes,
            http_threads,
            timeouts,
            accounts,
            stripe,
            mail,
            api,
        })
    }
}

/// A rate limit written `MAX/SECONDS` (like `10/3600`).
fn rate_limit(
    name: &'static str,
    raw: Option<&str>,
    default: crate::api::RateLimit,
) -> Result<crate::api::RateLimit, ConfigError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(default);
    };
    let bad = || ConfigError::Range {
        name,
        expected: "MAX/SECONDS with MAX 1 to 1000000 and SECONDS 1 to 86400 (like 10/3600)",
    };
    let (max, secs) = raw.split_once('/').ok_or_else(bad)?;
    let max: u32 = max.trim().parse().map_err(|_| bad())?;
    let secs: u64 = secs.trim().parse().map_err(|_| bad())?;
    if !(1..=1_000_000).contains(&max) || !(1..=86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(crate::api::RateLimit::new(max, Duration::from_secs(secs)))
}

fn api_settings(args: &Args) -> Result<crate::api::ApiConfig, ConfigError> {
    let d = crate::api::ApiConfig::default();
    let mut cors_origins = Vec::new();
    for o in args
        .cors_origins
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        // An origin is scheme://host[:port], nothing more: browsers send exactly that.
        let ok = url::Url::parse(o).ok().is_some_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.username().is_empty()
                && !o.trim_end_matches('/').ends_with(':')
        }) && !o.contains('*');
        if !ok {
            return Err(ConfigError::Range {
                name: "RELAY_CORS_ORIGINS",
                expected: "comma-separated origins like https://app.example.com (scheme, host and port only; no wildcard)",
            });
        }
        cors_origins.push(o.trim_end_matches('/').to_owned());
    }
    let max_body_bytes = args.api_max_body_bytes.unwrap_or(d.max_body_bytes);
    if !(1024..=16 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(ConfigError::Range {
            name: "RELAY_API_MAX_BODY_BYTES",
            expected: "between 1024 and 16777216",
        });
    }
    Ok(crate::api::ApiConfig {
        max_body_bytes,
        cors_origins,
        register_limit: rate_limit(
            "RELAY_LIMIT_REGISTER",
            args.limit_register.as_deref(),
            d.register_limit,
        )?,
        login_limit: rate_limit(
            "RELAY_LIMIT_LOGIN",
            args.limit_login.as_deref(),
            d.login_limit,
        )?,
        reset_limit: rate_limit(
            "RELAY_LIMIT_RESET",
            args.limit_reset.as_deref(),
            d.reset_limit,
        )?,
        checkout_limit: rate_limit(
            "RELAY_LIMIT_CHECKOUT",
            args.limit_checkout.as_deref(),
            d.checkout_limit,
        )?,
        session_cookie: d.session_cookie,
        trust_forwarded_for: args.trust_forwarded_for.unwrap_or(d.trust_forwarded_for),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_settings_come_from_the_environment_and_are_checked() {
        let ok = Args {
            cors_origins: Some("https://app.example.com, http://localhost:5173/".into()),
            api_max_body_bytes: Some(4096),
            limit_login: Some("5/60".into()),
            trust_forwarded_for: Some(true),
            ..Args::default()
        };
        let c = Config::from_args(&ok).unwrap();
        assert_eq!(
            c.api.cors_origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        assert_eq!(c.api.max_body_bytes, 4096);
        assert_eq!(
            c.api.login_limit,
            crate::api::RateLimit::new(5, Duration::from_secs(60))
        );
        assert_eq!(
            c.api.register_limit,
            crate::api::ApiConfig::default().register_limit
        );
        assert!(c.api.trust_forwarded_for);
        let bad = |a: Args, name: &str| {
            let e = Config::from_args(&a).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        };
        for origin in [
            "*",
            "https://*.example.com",
            "ftp://x.example",
            "https://a.example/path",
            "nonsense",
        ] {
            bad(
                Args {
                    cors_origins: Some(origin.into()),
                    ..Args::default()
                },
                "RELAY_CORS_ORIGINS",
            );
        }
        bad(
            Args {
                api_max_body_bytes: Some(10),
                ..Args::default()
            },
            "RELAY_API_MAX_BODY_BYTES",
        );
        for threads in [0, 257] {
            bad(
                Args {
                    http_threads: Some(threads),
                    ..Args::default()
                },
                "RELAY_HTTP_THREADS",
            );
        }
        for limit in ["10", "0/60", "10/0", "ten/60", "10/90000"] {
            bad(
                Args {
                    limit_checkout: Some(limit.into()),
                    ..Args::default()
                },
                "RELAY_LIMIT_CHECKOUT",
            );
        }
    }

    fn args(db: &str, redis: Option<&str>, bind: &str) -> Args {
        Args {
            database_url: db.into(),
            redis_url: redis.map(Into::into),
            bind: bind.into(),
            ..Args::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        let a = Args::parse_from(["relay-server"]);
        // The environment may set these in CI; only check parsing when it does not.
        if std::env::var_os("DATABASE_URL").is_none() && std::env::var_os("RELAY_BIND").is_none() {
            let c = Config::from_args(&a).unwrap();
            assert_eq!(c.database, DatabaseUrl::Sqlite("sqlite://relay.db".into()));
            assert_eq!(c.bind, "127.0.0.1:8080".parse().unwrap());
        }
        let c = Config::from_args(&Args::default()).unwrap();
        assert!(c.http_threads >= 1, "one HTTP thread per CPU by default");
    }

    #[test]
    fn accepts_postgres_and_redis() {
        let c = Config::from_args(&args(
            "postgres://root:secret@127.0.0.1/test",
            Some("redis://127.0.0.1:6379"),
            "0.0.0.0:9000",
        ))
        .unwrap();
        assert!(matches!(c.database, DatabaseUrl::Postgres(_)));
        assert_eq!(c.database.redacted(), "postgres://root:***@127.0.0.1/test");
        assert!(!format!("{:?}", c).contains("secret"));
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    }

    #[test]
    fn rejects_bad_values_with_clear_messages() {
        let e = Config::from_args(&args("mysql://x:pw@h/db", None, "127.0.0.1:1")).unwrap_err();
        assert!(e.to_string().contains("sqlite://PATH"));
        assert!(!e.to_string().contains("pw"), "password leaked: {e}");
        assert!(Config::from_args(&args("sqlite://", None, "127.0.0.1:1")).is_err());
        let e =
            Config::from_args(&args("sqlite://x.db", Some("http://h"), "127.0.0.1:1")).unwrap_err();
        assert!(e.to_string().contains("redis://HOST:PORT"));
        let e = Config::from_args(&args("sqlite://x.db", None, "localhost")).unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"));
        // An empty REDIS_URL means unset.
        assert!(
            Config::from_args(&args("sqlite://x.db", Some(""), "127.0.0.1:1"))
                .unwrap()
                .redis_url
                .is_none()
        );
    }

    #[test]
    fn file_fills_defaults_and_accounts_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            r#"
database_url = "sqlite://from-file.db"
bind = "127.0.0.1:9999"
encryption_key = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
idle_timeout_secs = 60

[[accounts]]
service = "anthropic"
name = "primary"
key = "sk-ant-xyz"
weight = 3

[[accounts]]
service = "openai"
name = "compat"
key = "sk-oai"
base_url = "https://llm.example.com/v1/"
"#,
        )
        .unwrap();
        let a = Args {
            config_file: Some(path.clone()),
            bind: "127.0.0.1:7000".into(),
            anthropic_api_keys: Some("k1, k2".into()),
            ..Args::default()
        };
        let c = Config::load(&a).unwrap();
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite("sqlite://from-file.db".into())
        );
        // The flag wins over the file.
        assert_eq!(c.bind, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.encryption_key.as_ref().map(|k| k.0.len()), Some(32));
        assert_eq!(c.timeouts.idle, Duration::from_secs(60));
        let names: Vec<&str> = c.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["primary", "compat", "anthropic-env-1", "anthropic-env-2"]
        );
        assert_eq!(c.accounts[1].base_url(), "https://llm.example.com/v1");
        assert_eq!(c.accounts[0].weight, 3);
        assert!(
            !format!("{:?}", c).contains("sk-ant-xyz"),
            "secret in Debug"
        );

        let bad = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(&Args {
                config_file: Some(path.clone()),
                ..Args::default()
            })
            .unwrap_err()
        };
        let e =
            bad("[[accounts]]\nservice = \"anthropic\"\nname = \"a\"\nkey = \"k\"\nweight = 0\n");
        assert!(e.to_string().contains("weight"), "{e}");
        let e = bad("[[accounts]]\nservice = \"mistral\"\nname = \"a\"\nkey = \"k\"\n");
        assert!(e.to_string().contains("config file"), "{e}");
        let e = bad("[[accounts]]\nservice = \"openai\"\nname = \"a\"\nkey = \"k\"\nbase_url = \"ftp://x\"\n");
        assert!(e.to_string().contains("base_url"), "{e}");
        let e = bad("[[accounts]]\nservice = \"openai\"\nname = \"a\"\nkey = \"k\"\n[[accounts]]\nservice = \"gemini\"\nname = \"a\"\nkey = \"k\"\n");
        assert!(e.to_string().contains("two accounts"), "{e}");
        let e = bad("surprise = 1\n");
        assert!(e.to_string().contains("surprise"), "{e}");
        let e = Config::load(&Args {
            config_file: Some(dir.path().join("missing.toml")),
            ..Args::default()
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }));
    }

    #[test]
    fn stripe_needs_both_secrets_and_return_urls() {
        assert_eq!(Config::from_args(&Args::default()).unwrap().stripe, None);
        let half = Config::from_args(&Args {
            stripe_secret: Some("sk_test_1".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(half.to_string().contains("both"), "{half}");
        assert!(!half.to_string().contains("sk_test_1"));
        let full = Args {
            stripe_secret: Some("sk_test_1".into()),
            stripe_webhook_secret: Some("whsec_1".into()),
            stripe_success_url: Some("https://relay.example/paid".into()),
            stripe_cancel_url: Some("https://relay.example/cancel".into()),
            ..Args::default()
        };
        let no_url = Config::from_args(&Args {
            stripe_cancel_url: None,
            ..full.clone()
        })
        .unwrap_err();
        assert!(no_url.to_string().contains("STRIPE_CANCEL_URL"), "{no_url}");
        let bad_url = Config::from_args(&Args {
            stripe_success_url: Some("ftp://x".into()),
            ..full.clone()
        })
        .unwrap_err();
        assert!(
            bad_url.to_string().contains("STRIPE_SUCCESS_URL"),
            "{bad_url}"
        );
        let ok = Config::from_args(&full).unwrap().stripe.unwrap();
        assert_eq!(ok.secret, "sk_test_1");
        assert_eq!(ok.api_base, None);
        assert!(!format!("{ok:?}").contains("sk_test_1"));
    }

    #[test]
    fn smtp_needs_a_sender_and_a_public_url() {
        assert!(Config::from_args(&Args::default()).unwrap().mail.is_none());
        let full = Args {
            smtp_host: Some("smtp.example.com".into()),
            smtp_from: Some("Relay <no-reply@example.com>".into()),
            public_url: Some("https://relay.example/".into()),
            ..Args::default()
        };
        let mail = Config::from_args(&full).unwrap().mail.unwrap();
        assert_eq!(mail.smtp.port, 587);
        assert_eq!(mail.public_url, "https://relay.example");
        let tls = Config::from_args(&Args {
            smtp_tls: Some("TLS".into()),
            ..full.clone()
        })
        .unwrap()
        .mail
        .unwrap();
        assert_eq!(tls.smtp.port, 465);
        let refused = [
            Args {
                smtp_from: None,
                ..full.clone()
            },
            Args {
                smtp_from: Some("not a mailbox".into()),
                ..full.clone()
            },
            Args {
                public_url: Some("relay.example".into()),
                ..full.clone()
            },
            Args {
                smtp_tls: Some("ssl3".into()),
                ..full.clone()
            },
            Args {
                smtp_port: Some(0),
                ..full.clone()
            },
            Args {
                smtp_password: Some("hunter2hunter2".into()),
                ..full.clone()
            },
        ];
        for args in refused {
            let e = Config::from_args(&args).unwrap_err();
            assert!(matches!(e, ConfigError::Smtp(_)), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secrets_and_ranges_are_validated_without_echoing_them() {
        let e = Config::from_args(&Args {
            encryption_key: Some("c2hvcnQ=".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("exactly 32 bytes"), "{e}");
        assert!(!e.to_string().contains("c2hvcnQ"));
        let e = Config::from_args(&Args {
            key_pepper: Some("!!not base64!!".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("RELAY_KEY_PEPPER"), "{e}");
        let e = Config::from_args(&Args {
            max_body_bytes: Some(10),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("RELAY_MAX_BODY_BYTES"));
        let e = Config::from_args(&Args {
            connect_timeout_secs: Some(0),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("RELAY_CONNECT_TIMEOUT_SECS"));
        let e = Config::from_args(&Args {
            openai_api_keys: Some("bad\u{7}key".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("control"), "{e}");
        let c = Config::from_args(&Args {
            demo: true,
            demo_key: Some(" ".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            c.demo,
            Some(DemoConfig {
                key: None,
                upstream: None,
                policy: None
            })
        );
        let e = Config::from_args(&Args {
            demo: true,
            demo_policy: Some(r#"{"concurrency":0}"#.into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let c = Config::from_args(&Args {
            demo: true,
            demo_policy: Some(r#"{"concurrency":100}"#.into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(c.demo.unwrap().policy.unwrap().concurrency, Some(100));
    }
}
