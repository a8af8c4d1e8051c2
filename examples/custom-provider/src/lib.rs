//! A payment provider for an MD5-signed aggregator of the kind common in China (the
//! "易支付" / epay protocol), written against relay's [`PaymentProvider`] trait.
//!
//! The protocol in four lines:
//! - every request and notification carries `sign` = md5 of the parameters sorted by name,
//!   without `sign`, `sign_type` and empty values, joined as `k=v&k=v`, followed directly by
//!   the merchant key; `sign_type=MD5`;
//! - checkout is a signed link to `{gateway}/submit.php`;
//! - the gateway notifies `notify_url` with the same signed parameters and
//!   `trade_status=TRADE_SUCCESS`, and stops when the answer is exactly `success`;
//! - `{gateway}/api.php?act=order` queries an order, `act=refund` refunds.
//!
//! Everything else (deduplication, the order and amount checks, the HTTP answer) is done
//! by relay's `WebhookProcessor` and `WebhookService`; a provider only speaks its protocol.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use md5::{Digest, Md5};
use relay_core::{Currency, Money, OrderId};
use relay_payments::{
    Capabilities, Checkout, CheckoutKind, CheckoutRequest, OrderQuery, OrderStatus, ParsedWebhook,
    PaymentError, PaymentEvent, PaymentEventKind, PaymentProvider, RefundRequest, RefundResult,
    WebhookError, WebhookOutcome, WebhookReply,
};
use serde_json::Value;

/// The name in events and dedupe records.
pub const PROVIDER: &str = "epay";

/// Merchant settings from the aggregator's dashboard.
#[derive(Clone)]
pub struct EpayConfig {
    /// Gateway base URL, e.g. `https://pay.example.com`.
    pub gateway: String,
    /// Merchant id (`pid`).
    pub pid: String,
    /// Merchant key (the MD5 secret).
    pub key: String,
    /// Payment channel: `alipay`, `wxpay`, `qqpay`...
    pub channel: String,
    /// Where the gateway sends notifications.
    pub notify_url: String,
    /// Where the browser returns after paying.
    pub return_url: String,
}

impl std::fmt::Debug for EpayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpayConfig")
            .field("gateway", &self.gateway)
            .field("pid", &self.pid)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The provider.
#[derive(Debug)]
pub struct EpayProvider {
    config: EpayConfig,
    http: reqwest::Client,
}

/// `md5(sorted k=v&k=v + key)`, lowercase hex.
pub fn epay_sign(params: &BTreeMap<String, String>, key: &str) -> String {
    let content = params
        .iter()
        .filter(|(k, v)| !v.is_empty() && k.as_str() != "sign" && k.as_str() != "sign_type")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let digest = Md5::digest(format!("{content}{key}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit, so timing does not reveal how much of a forgery matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Yuan with two decimals; this aggregator only takes CNY.
fn money_text(amount: &Money) -> Result<String, PaymentError> {
    if amount.currency() != Currency::CNY {
        return Err(PaymentError::UnsupportedCurrency {
            provider: PROVIDER,
            currency: amount.currency(),
        });
    }
    if amount.is_zero() || amount.is_negative() || amount.to_minor().is_none() {
        return Err(PaymentError::Amount(format!("{amount} is not payable")));
    }
    Ok(format!("{:.2}", amount.amount()))
}

impl EpayProvider {
    /// A provider with `config`.
    pub fn new(config: EpayConfig) -> Result<Self, PaymentError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PaymentError::Config(e.to_string()))?;
        Ok(Self { config, http })
    }

    fn signed(&self, mut params: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let sign = epay_sign(&params, &self.config.key);
        params.insert("sign".into(), sign);
        params.insert("sign_type".into(), "MD5".into());
        params
    }

    /// Call `api.php?act={act}` (authenticated by pid + key, as the protocol does) and
    /// return its JSON when `code` is 1.
    async fn api(&self, act: &str, extra: &[(&str, String)]) -> Result<Value, PaymentError> {
        let mut form: Vec<(&str, String)> = vec![
            ("pid", self.config.pid.clone()),
            ("key", self.config.key.clone()),
        ];
        form.extend(extra.iter().cloned());
        let url = format!(
            "{}/api.php?act={act}",
            self.config.gateway.trim_end_matches('/')
        );
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| PaymentError::Transport(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let v: Value = resp
            .json()
            .await
            .map_err(|_| PaymentError::BadResponse("epay answered with non-JSON".into()))?;
        if v.get("code").and_then(Value::as_i64) == Some(1) {
            Ok(v)
        } else {
            Err(PaymentError::Provider {
                status,
                code: v.get("code").map(Value::to_string).unwrap_or_default(),
                message: v
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
        }
    }
}

#[async_trait]
impl PaymentProvider for EpayProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recurring: false,
            refunds: true,
            partial_refunds: true,
            qr_code: false,
            redirect: true,
            webhooks: true,
        }
    }

    async fn create_checkout(&self, request: &CheckoutRequest) -> Result<Checkout, PaymentError> {
        if request.kind != CheckoutKind::OneOff {
            return Err(PaymentError::Unsupported {
                provider: PROVIDER,
                operation: "subscriptions",
            });
        }
        let params = self.signed(BTreeMap::from([
            ("pid".into(), self.config.pid.clone()),
            ("type".into(), self.config.channel.clone()),
            ("out_trade_no".into(), request.order_id.to_string()),
            ("notify_url".into(), self.config.notify_url.clone()),
            ("return_url".into(), self.config.return_url.clone()),
            ("name".into(), request.description.clone()),
            ("money".into(), money_text(&request.amount)?),
        ]));
        let mut url = url::Url::parse(&format!(
            "{}/submit.php",
            self.config.gateway.trim_end_matches('/')
        ))
        .map_err(|_| PaymentError::Config("gateway is not a URL".into()))?;
        url.query_pairs_mut().extend_pairs(&params);
        Ok(Checkout {
            provider_reference: request.order_id.to_string(),
            redirect_url: Some(url.to_string()),
            qr_code: None,
            expires_at: request.expires_at,
        })
    }

    /// The notification is the form (or query string) of signed parameters.
    async fn parse_webhook(
        &self,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError> {
        let params: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let sign = params.get("sign").ok_or(WebhookError::BadSignature)?;
        let expected = epay_sign(&params, &self.config.key);
        if !constant_time_eq(sign.as_bytes(), expected.as_bytes()) {
            return Err(WebhookError::BadSignature);
        }
        if params.get("pid") != Some(&self.config.pid) {
            return Err(WebhookError::WrongRecipient("pid".into()));
        }
        let field = |k: &'static str| {
            params
                .get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| WebhookError::MalformedBody(format!("notification without {k}")))
        };
        if field("trade_status")? != "TRADE_SUCCESS" {
            return Ok(ParsedWebhook { events: Vec::new() });
        }
        let order_id: OrderId = field("out_trade_no")?
            .parse()
            .map_err(|_| WebhookError::MalformedBody("out_trade_no is not ours".into()))?;
        let amount = Money::parse(field("money")?, Currency::CNY)
            .map_err(|_| WebhookError::MalformedBody("money is not an amount".into()))?;
        let trade_no = field("trade_no")?;
        Ok(ParsedWebhook {
            events: vec![PaymentEvent {
                provider: PROVIDER.to_owned(),
                // The gateway notifies each trade once (and retries it): its number is the
                // event's identity.
                event_id: trade_no.clone(),
                kind: PaymentEventKind::PaymentSucceeded,
                order_id: Some(order_id),
                amount,
                provider_reference: trade_no.clone(),
                subscription_reference: None,
                occurred_at: None,
            }],
        })
    }

    async fn query_order(&self, query: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        let v = match self
            .api("order", &[("out_trade_no", query.order_id.to_string())])
            .await
        {
            Ok(v) => v,
            // The protocol reports an unknown order as code -1.
            Err(PaymentError::Provider { code, .. }) if code == "-1" => {
                return Ok(OrderStatus::NotFound)
            }
            Err(e) => return Err(e),
        };
        let text = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        if text("status").as_deref() != Some("1") {
            return Ok(OrderStatus::Pending);
        }
        let amount = text("money")
            .and_then(|m| Money::parse(&m, Currency::CNY).ok())
            .ok_or_else(|| PaymentError::BadResponse("order without money".into()))?;
        let reference = text("trade_no")
            .ok_or_else(|| PaymentError::BadResponse("order without trade_no".into()))?;
        Ok(OrderStatus::Paid { amount, reference })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundResult, PaymentError> {
        let amount = request.amount.unwrap_or(request.payment_amount);
        self.api(
            "refund",
            &[
                ("trade_no", request.provider_reference.clone()),
                ("money", money_text(&amount)?),
            ],
        )
        .await?;
        Ok(RefundResult {
            refund_reference: request.refund_id.clone(),
            amount,
            completed: true,
        })
    }

    fn webhook_reply(&self, outcome: WebhookOutcome) -> WebhookReply {
        match outcome {
            WebhookOutcome::Accepted => WebhookReply::text(http::StatusCode::OK, "success"),
            WebhookOutcome::Rejected => WebhookReply::text(http::StatusCode::BAD_REQUEST, "fail"),
            WebhookOutcome::RetryLater => {
                WebhookReply::text(http::StatusCode::SERVICE_UNAVAILABLE, "fail")
            }
        }
    }
}
