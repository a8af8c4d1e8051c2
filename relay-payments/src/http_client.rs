//! Outgoing HTTP to providers: timeouts, and retries only where a retry cannot pay twice.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use crate::PaymentError;

/// Timeouts and retries for calls to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Extra attempts after the first, for failures that are safe to retry.
    pub max_retries: u32,
    /// Pause before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_retries: 2,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// A provider's answer, read whole.
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    client: reqwest::Client,
    options: HttpOptions,
}

impl ApiClient {
    pub(crate) fn new(options: HttpOptions) -> Result<Self, PaymentError> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| PaymentError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { client, options })
    }

    /// Send the request `build` makes (called again for each attempt, so signatures with a
    /// timestamp and nonce are fresh). Connect errors, timeouts and 5xx are retried: every
    /// call this crate makes is a read or a write the provider deduplicates (Stripe's
    /// `Idempotency-Key`, Alipay's and WeChat's merchant order and refund numbers), so a
    /// repeat cannot pay or refund twice.
    pub(crate) async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> Result<reqwest::RequestBuilder, PaymentError>,
    ) -> Result<ApiResponse, PaymentError> {
        let mut attempt = 0u32;
        loop {
            let outcome = build(&self.client)?.send().await;
            let retryable = match &outcome {
                Ok(resp) => resp.status().is_server_error(),
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if retryable && attempt < self.options.max_retries {
                let pause = self.options.retry_backoff * 2u32.saturating_pow(attempt);
                attempt += 1;
                tracing::debug!(attempt, "retrying payment provider request");
                tokio::time::sleep(pause).await;
                continue;
            }
            let resp = outcome.map_err(|e| PaymentError::Transport(e.without_url().to_string()))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .await
                .map_err(|e| PaymentError::Transport(e.without_url().to_string()))?;
            return Ok(ApiResponse {
                status,
                headers,
                body,
            });
        }
    }
}
