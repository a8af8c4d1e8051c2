//! The optional webhook channel: notifications POSTed as JSON, signed with HMAC-SHA256.
//!
//! The header is `x-relay-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, the scheme Stripe uses, so receivers check the timestamp window and
//! the signature over the raw body with [`verify_signature`].

use std::time::Duration;

use ring::hmac;

use super::smtp::SendError;
use super::NotifyError;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-relay-signature";

/// Posts signed JSON to one URL.
#[derive(Clone)]
pub struct WebhookChannel {
    url: reqwest::Url,
    key: hmac::Key,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookChannel")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// `t=..,v1=..` for `body` at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    header_value(&key, timestamp, body)
}

fn header_value(key: &hmac::Key, timestamp: i64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={timestamp},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// Check a signature header against `body` (constant-time), with the timestamp within
/// `tolerance` seconds of `now`.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), NotifyError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(NotifyError::Invalid(
            "signature header must be `t=<seconds>,v1=<hex>`".into(),
        ));
    };
    if (now - t).abs() > tolerance {
        return Err(NotifyError::Invalid(
            "signature timestamp outside the window".into(),
        ));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = t.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    hmac::verify(&key, &signed, &v1)
        .map_err(|_| NotifyError::Invalid("signature does not match".into()))
}

impl WebhookChannel {
    /// Post to `url` (http or https), signing with `secret` (at least 16 bytes).
    pub fn new(url: &str, secret: &[u8], timeout: Duration) -> Result<Self, NotifyError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| NotifyError::Invalid(format!("webhook url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::Invalid(
                "webhook url must be http or https".into(),
            ));
        }
        if secret.len() < 16 {
            return Err(NotifyError::Invalid(
                "webhook secret must be at least 16 bytes".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Invalid(format!("webhook client: {e}")))?;
        Ok(Self {
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            client,
        })
    }

    /// POST `body` signed at `timestamp`. 2xx is delivered; 4xx other than 408 and 429
    /// is permanent; anything else is retried.
    pub async fn post(&self, body: &str, timestamp: i64) -> Result<(), SendError> {
        let signature = header_value(&self.key, timestamp, body.as_bytes());
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| SendError {
                permanent: false,
                message: format!("webhook: {}", e.without_url()),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let permanent = status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(SendError {
            permanent,
            message: format!("webhook answered {status}"),
        })
    }
}
