//! The reference relay gateway, as a library so tests and embedders can build its router
//! in-process. The `relay-server` binary is a thin wrapper around [`run`].
//!
//! A request to an LLM route passes `ApiKeyAuthLayer` (relay-auth), `PolicyLayer` and
//! `MeteringLayer` (relay-usage), then the relay ([`upstream::Relay`]): an account is picked from the service's pool (weighted, sticky
//! per conversation), the request is sent with that account's credential, and the response
//! streams back unbuffered. See [`app::Gateway`] for the composition.
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod audit;
pub mod config;
pub mod db;
pub mod demo;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod routes;
mod serve;
pub mod sink;
pub mod upstream;
pub mod usage_charges;

use std::future::Future;

pub use app::{AppState, Gateway};
pub use config::{Config, ConfigError, DatabaseUrl};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A dependency (database, Redis, catalog, seed) could not be set up.
    #[error("start-up failed: {0}")]
    Startup(String),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serve the gateway on `config.bind` until `shutdown` resolves, then finish in-flight
/// requests and return.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let gateway = Gateway::build(&config).await?;
    let addr = listener.local_addr().unwrap_or(config.bind);
    tracing::info!(%addr, http_threads = config.http_threads, database = %config.database.redacted(), redis = config.redis_url.is_some(), prices = %gateway.price_source, "relay-server listening");
    if let Some(seed) = &gateway.demo {
        print_demo_banner(addr, &seed.key);
    }
    gateway
        .serve_on_threads(listener, config.http_threads, shutdown)
        .await?;
    tracing::info!("relay-server stopped");
    Ok(())
}

fn print_demo_banner(addr: std::net::SocketAddr, key: &str) {
    println!(
        "\nrelay demo is up on http://{addr}\n  API key: {key}\n\n  curl http://{addr}/v1/messages -H 'x-api-key: {key}' -H 'content-type: application/json' \\\n    -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n  Python: anthropic.Anthropic(base_url=\"http://{addr}\", api_key=\"{key}\")\n          openai.OpenAI(base_url=\"http://{addr}/v1\", api_key=\"{key}\")\n"
    );
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}

/// The README's examples, compiled and run as doctests so the docs match the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
