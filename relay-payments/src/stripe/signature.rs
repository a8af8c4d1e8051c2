//! `Stripe-Signature` verification: `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, each `v1` an
//! HMAC-SHA256 of `"{t}.{raw body}"` under the endpoint's signing secret.

use chrono::{DateTime, Utc};
use ring::hmac;

use crate::WebhookError;

/// Verify a `Stripe-Signature` header against the raw body.
///
/// Accepts when any `v1` signature matches any of `secrets` (so both sides can rotate
/// secrets) and `t` is within `tolerance_secs` of `now` in either direction. Comparison is
/// constant-time (`ring::hmac::verify`). Returns the signed timestamp.
pub fn verify_stripe_signature(
    header: &str,
    body: &[u8],
    secrets: &[String],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<i64, WebhookError> {
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            // A v1 that is not hex cannot match; skip it rather than fail the header, so a
            // future scheme sharing the key does not break verification.
            "v1" => {
                if let Ok(sig) = hex::decode(value) {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let t_text = timestamp.ok_or(WebhookError::MissingHeader("Stripe-Signature"))?;
    let t: i64 = t_text
        .parse()
        .map_err(|_| WebhookError::MissingHeader("Stripe-Signature"))?;
    if signatures.is_empty() {
        return Err(WebhookError::BadSignature);
    }
    let mut signed = Vec::with_capacity(t_text.len() + 1 + body.len());
    signed.extend_from_slice(t_text.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let matched = secrets.iter().any(|secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        signatures
            .iter()
            .any(|sig| hmac::verify(&key, &signed, sig).is_ok())
    });
    if !matched {
        return Err(WebhookError::BadSignature);
    }
    // Checked after the signature so a forged header learns nothing from the answer timing.
    if (now.timestamp() - t).abs() > tolerance_secs {
        return Err(WebhookError::StaleTimestamp);
    }
    Ok(t)
}

/// The `Stripe-Signature` header Stripe would send for `body` at `timestamp`: useful for
/// tests and for replaying events locally.
pub fn stripe_signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={timestamp},v1={}", hex::encode(ctx.sign().as_ref()))
}
