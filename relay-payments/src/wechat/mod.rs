//! WeChat Pay API v3: Native (QR code) orders signed with `WECHATPAY2-SHA256-RSA2048`,
//! signed responses and notifications checked with the platform public key, notification
//! resources decrypted with the APIv3 key, order query and refund.

mod crypto;

use std::fmt;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, FixedOffset, Utc};
use http::HeaderMap;
use relay_core::{Currency, Money, OrderId, SharedClock};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

pub use crypto::{aes_256_gcm_open, wechat_request_message, wechat_response_message};

use crate::http_client::{ApiClient, ApiResponse};
use crate::rsa_keys::{PrivateKey, PublicKey};
use crate::{
    Capabilities, Checkout, CheckoutKind, CheckoutRequest, HttpOptions, OrderQuery, OrderStatus,
    ParsedWebhook, PaymentError, PaymentEvent, PaymentEventKind, PaymentProvider, RefundRequest,
    RefundResult, WebhookError, WebhookOutcome, WebhookReply,
};

/// WeChat Pay's production API.
pub const WECHAT_API_BASE: &str = "https://api.mch.weixin.qq.com";

const PROVIDER: &str = "wechat";

/// How to reach and trust WeChat Pay.
#[derive(Clone)]
pub struct WechatPayConfig {
    /// Merchant id (`mchid`).
    pub mchid: String,
    /// The app id the orders belong to.
    pub appid: String,
    /// Serial number of the merchant API certificate.
    pub merchant_serial_no: String,
    /// The merchant's private key (PEM or base64, PKCS#8 or PKCS#1).
    pub private_key: String,
    /// The platform public key (PEM or base64 SPKI).
    pub platform_public_key: String,
    /// Serial (or public key id) of the platform key; notifications naming another are refused.
    pub platform_serial: String,
    /// More (serial, public key) pairs accepted while WeChat Pay rotates its platform key.
    pub additional_platform_keys: Vec<(String, String)>,
    /// The 32-byte APIv3 key that encrypts notification resources.
    pub apiv3_key: String,
    /// Where WeChat Pay posts notifications.
    pub notify_url: String,
    /// API base URL; tests point it at a local server.
    pub api_base: String,
    /// Accepted distance between a signed timestamp and now, in seconds.
    pub tolerance_secs: i64,
    /// Timeouts and retries.
    pub http: HttpOptions,
}

impl WechatPayConfig {
    /// Production API, 300 s tolerance.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mchid: impl Into<String>,
        appid: impl Into<String>,
        merchant_serial_no: impl Into<String>,
        private_key: impl Into<String>,
        platform_public_key: impl Into<String>,
        platform_serial: impl Into<String>,
        apiv3_key: impl Into<String>,
        notify_url: impl Into<String>,
    ) -> Self {
        Self {
            mchid: mchid.into(),
            appid: appid.into(),
            merchant_serial_no: merchant_serial_no.into(),
            private_key: private_key.into(),
            platform_public_key: platform_public_key.into(),
            platform_serial: platform_serial.into(),
            additional_platform_keys: Vec::new(),
            apiv3_key: apiv3_key.into(),
            notify_url: notify_url.into(),
            api_base: WECHAT_API_BASE.to_owned(),
            tolerance_secs: 300,
            http: HttpOptions::default(),
        }
    }

    /// Use another API base URL.
    pub fn with_api_base(mut self, base: impl Into<String>) -> Self {
        self.api_base = base.into();
        self
    }

    /// Use other timeouts and retries.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }

    /// Also trust the platform key `public_key` named `serial` (during a rotation).
    pub fn with_additional_platform_key(
        mut self,
        serial: impl Into<String>,
        public_key: impl Into<String>,
    ) -> Self {
        self.additional_platform_keys
            .push((serial.into(), public_key.into()));
        self
    }
}

impl fmt::Debug for WechatPayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatPayConfig")
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .field("private_key", &"<redacted>")
            .field("apiv3_key", &"<redacted>")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// The WeChat Pay provider.
#[derive(Debug)]
pub struct WechatPayProvider {
    config: WechatPayConfig,
    private_key: PrivateKey,
    /// (serial, key) of every trusted platform key.
    platform_keys: Vec<(String, PublicKey)>,
    clock: SharedClock,
    api: ApiClient,
}

fn bad(msg: &str) -> PaymentError {
    PaymentError::BadResponse(format!("WeChat Pay: {msg}"))
}

/// WeChat amounts are integer fen, CNY only here.
fn fen(amount: &Money) -> Result<i64, PaymentError> {
    if amount.currency() != Currency::CNY {
        return Err(PaymentError::UnsupportedCurrency {
            provider: PROVIDER,
            currency: amount.currency(),
        });
    }
    match amount.to_minor() {
        Some(f) if f > 0 => Ok(f),
        _ => Err(PaymentError::Amount(format!(
            "{amount} is not a positive amount in whole fen"
        ))),
    }
}

/// `out_trade_no` is limited to 32 characters: our order id without its `ord_` prefix.
fn out_trade_no(order: &OrderId) -> &str {
    order
        .as_str()
        .strip_prefix("ord_")
        .unwrap_or(order.as_str())
}

fn order_from_out_trade_no(text: &str) -> Option<OrderId> {
    format!("{}_{text}", OrderId::PREFIX).parse().ok()
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    // A nonce only needs to be unique; fall back to the time if the RNG fails.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
    }
    hex::encode_upper(bytes)
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, WebhookError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(WebhookError::MissingHeader(name))
}

fn cny_fen(v: Option<&Value>, what: &str) -> Result<Money, WebhookError> {
    v.and_then(Value::as_i64)
        .map(|f| Money::from_minor(f, Currency::CNY))
        .ok_or_else(|| WebhookError::MalformedBody(format!("resource without {what}")))
}

impl WechatPayProvider {
    /// A provider with `config`; fails when a key is unusable.
    pub fn new(config: WechatPayConfig, clock: SharedClock) -> Result<Self, PaymentError> {
        if config.apiv3_key.len() != 32 {
            return Err(PaymentError::Config(
                "the APIv3 key must be 32 bytes".into(),
            ));
        }
        let private_key = PrivateKey::parse(&config.private_key)?;
        let mut platform_keys = vec![(
            config.platform_serial.clone(),
            PublicKey::parse(&config.platform_public_key)?,
        )];
        for (serial, key) in &config.additional_platform_keys {
            platform_keys.push((serial.clone(), PublicKey::parse(key)?));
        }
        let api = ApiClient::new(config.http)?;
        Ok(Self {
            config,
            private_key,
            platform_keys,
            clock,
            api,
        })
    }

    /// Check `Wechatpay-*` signature headers over `body` (a response or a notification).
    fn verify_signed(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        let timestamp = header(headers, "wechatpay-timestamp")?;
        let nonce = header(headers, "wechatpay-nonce")?;
        let signature = header(headers, "wechatpay-signature")?;
        let serial = header(headers, "wechatpay-serial")?;
        // Signed with a key we were not given: cannot be trusted.
        let (_, key) = self
            .platform_keys
            .iter()
            .find(|(s, _)| s == serial)
            .ok_or(WebhookError::BadSignature)?;
        let message = wechat_response_message(timestamp, nonce, body);
        if !key.verify_base64(&message, signature) {
            return Err(WebhookError::BadSignature);
        }
        let t: i64 = timestamp
            .parse()
            .map_err(|_| WebhookError::MissingHeader("wechatpay-timestamp"))?;
        if (self.clock.now().timestamp() - t).abs() > self.config.tolerance_secs {
            return Err(WebhookError::StaleTimestamp);
        }
        Ok(())
    }

    async fn request(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, PaymentError> {
        let url = format!(
            "{}{path_and_query}",
            self.config.api_base.trim_end_matches('/')
        );
        let body_text = body.map(Value::to_string).unwrap_or_default();
        let resp = self
            .api
            .send(|c| {
                // Signed afresh per attempt: a new timestamp and nonce each time.
                let timestamp = self.clock.now().timestamp();
                let nonce = nonce();
                let message = wechat_request_message(
                    method.as_str(),
                    path_and_query,
                    timestamp,
                    &nonce,
                    &body_text,
                );
                let signature = self.private_key.sign_base64(message.as_bytes())?;
                let authorization = format!(
                    "WECHATPAY2-SHA256-RSA2048 mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
                    self.config.mchid, self.config.merchant_serial_no
                );
                let mut req = c
                    .request(method.clone(), &url)
                    .header(http::header::AUTHORIZATION, authorization)
                    .header(http::header::ACCEPT, "application/json")
                    .header(http::header::USER_AGENT, "relay-payments");
                if body.is_some() {
                    req = req
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(body_text.clone());
                }
                Ok(req)
            })
            .await?;
        if resp.status.is_success() {
            self.verify_signed(&resp.headers, &resp.body)
                .map_err(|e| bad(&format!("response not trusted: {e}")))?;
        }
        Ok(resp)
    }

    fn json_of(resp: &ApiResponse) -> Result<Value, PaymentError> {
        let value: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if resp.status.is_success() {
            return Ok(value);
        }
        let text = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        if text("code") == "ORDER_NOT_EXIST" || text("code") == "RESOURCE_NOT_EXISTS" {
            return Err(PaymentError::NotFound);
        }
        Err(PaymentError::Provider {
            status: resp.status.as_u16(),
            code: text("code"),
            message: text("message"),
        })
    }

    fn decrypt_resource(&self, resource: &Value) -> Result<Value, WebhookError> {
        let field = |k: &str| {
            resource
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| WebhookError::MalformedBody(format!("resource without {k}")))
        };
        if field("algorithm")? != "AEAD_AES_256_GCM" {
            return Err(WebhookError::MalformedBody("unknown algorithm".into()));
        }
        let ciphertext = base64::engine::general_purpose::STANDARD
            .decode(field("ciphertext")?)
            .map_err(|_| WebhookError::Decrypt)?;
        let associated = resource
            .get("associated_data")
            .and_then(Value::as_str)
            .unwrap_or("");
        let plain = aes_256_gcm_open(
            self.config.apiv3_key.as_bytes(),
            field("nonce")?.as_bytes(),
            associated.as_bytes(),
            &ciphertext,
        )?;
        serde_json::from_slice(&plain)
            .map_err(|_| WebhookError::MalformedBody("decrypted resource is not JSON".into()))
    }

    fn check_recipient(&self, resource: &Value) -> Result<(), WebhookError> {
        if resource.get("mchid").and_then(Value::as_str) != Some(self.config.mchid.as_str()) {
            return Err(WebhookError::WrongRecipient("mchid".into()));
        }
        // Refund resources carry no appid.
        if let Some(appid) = resource.get("appid").and_then(Value::as_str) {
            if appid != self.config.appid {
                return Err(WebhookError::WrongRecipient("appid".into()));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl PaymentProvider for WechatPayProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recurring: false,
            refunds: true,
            partial_refunds: true,
            qr_code: true,
            redirect: false,
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
        let description: String = request.description.chars().take(127).collect();
        let mut body = json!({
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "description": description,
            "out_trade_no": out_trade_no(&request.order_id),
            "notify_url": self.config.notify_url,
            "amount": { "total": fen(&request.amount)?, "currency": "CNY" },
        });
        if let Some(at) = request.expires_at {
            let china = FixedOffset::east_opt(8 * 3600).ok_or_else(|| bad("offset"))?;
            body["time_expire"] = json!(at.with_timezone(&china).to_rfc3339());
        }
        let resp = self
            .request(
                http::Method::POST,
                "/v3/pay/transactions/native",
                Some(&body),
            )
            .await?;
        let v = Self::json_of(&resp)?;
        let code_url = v
            .get("code_url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("native order without code_url"))?;
        Ok(Checkout {
            provider_reference: out_trade_no(&request.order_id).to_owned(),
            redirect_url: None,
            qr_code: Some(code_url.to_owned()),
            expires_at: request.expires_at,
        })
    }

    async fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError> {
        self.verify_signed(headers, body)?;
        let note: Value = serde_json::from_slice(body)
            .map_err(|_| WebhookError::MalformedBody("not JSON".into()))?;
        let id = note
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| WebhookError::MalformedBody("notification without id".into()))?;
        let event_type = note
            .get("event_type")
            .and_then(Value::as_str)
            .ok_or_else(|| WebhookError::MalformedBody("notification without event_type".into()))?;
        let resource = note
            .get("resource")
            .ok_or_else(|| WebhookError::MalformedBody("notification without resource".into()))?;
        let plain = self.decrypt_resource(resource)?;
        self.check_recipient(&plain)?;
        let text = |k: &str| {
            plain
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| WebhookError::MalformedBody(format!("resource without {k}")))
        };
        let order_id = order_from_out_trade_no(text("out_trade_no")?)
            .ok_or_else(|| WebhookError::MalformedBody("out_trade_no is not one of ours".into()))?;
        let amount = plain.get("amount");
        let (kind, money, time_field) = match event_type {
            "TRANSACTION.SUCCESS" => {
                if text("trade_state")? != "SUCCESS" {
                    return Ok(ParsedWebhook { events: Vec::new() });
                }
                let currency = amount
                    .and_then(|a| a.get("currency"))
                    .and_then(Value::as_str)
                    .unwrap_or("CNY");
                if currency != "CNY" {
                    return Err(WebhookError::MalformedBody("unsupported currency".into()));
                }
                (
                    PaymentEventKind::PaymentSucceeded,
                    cny_fen(amount.and_then(|a| a.get("total")), "amount.total")?,
                    "success_time",
                )
            }
            "REFUND.SUCCESS" => {
                let refund = cny_fen(amount.and_then(|a| a.get("refund")), "amount.refund")?;
                let total = cny_fen(amount.and_then(|a| a.get("total")), "amount.total")?;
                (
                    PaymentEventKind::Refunded {
                        cumulative: false,
                        full: refund == total,
                    },
                    refund,
                    "success_time",
                )
            }
            // Refunds that did not happen, and types relay does not act on.
            _ => return Ok(ParsedWebhook { events: Vec::new() }),
        };
        Ok(ParsedWebhook {
            events: vec![PaymentEvent {
                provider: PROVIDER.to_owned(),
                event_id: id.to_owned(),
                kind,
                order_id: Some(order_id),
                amount: money,
                provider_reference: text("transaction_id")?.to_owned(),
                subscription_reference: None,
                occurred_at: plain
                    .get(time_field)
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
            }],
        })
    }

    async fn query_order(&self, query: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            out_trade_no(&query.order_id),
            form_urlencoded::byte_serialize(self.config.mchid.as_bytes()).collect::<String>()
        );
        let resp = self.request(http::Method::GET, &path, None).await?;
        let v = match Self::json_of(&resp) {
            Err(PaymentError::NotFound) => return Ok(OrderStatus::NotFound),
            other => other?,
        };
        if v.get("out_trade_no").and_then(Value::as_str) != Some(out_trade_no(&query.order_id)) {
            return Err(bad("query answered for another order"));
        }
        let paid = || -> Result<(Money, String), PaymentError> {
            let total = v
                .get("amount")
                .and_then(|a| a.get("total"))
                .and_then(Value::as_i64)
                .ok_or_else(|| bad("query without amount.total"))?;
            let reference = v
                .get("transaction_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("query without transaction_id"))?;
            Ok((
                Money::from_minor(total, Currency::CNY),
                reference.to_owned(),
            ))
        };
        Ok(match v.get("trade_state").and_then(Value::as_str) {
            Some("SUCCESS") => {
                let (amount, reference) = paid()?;
                OrderStatus::Paid { amount, reference }
            }
            Some("REFUND") => {
                let (amount, reference) = paid()?;
                OrderStatus::Refunded { amount, reference }
            }
            Some("NOTPAY" | "USERPAYING") => OrderStatus::Pending,
            Some("CLOSED" | "REVOKED" | "PAYERROR") => OrderStatus::Closed,
            _ => return Err(bad("query with an unknown trade_state")),
        })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundResult, PaymentError> {
        let amount = request.amount.unwrap_or(request.payment_amount);
        let refund_id_ok = !request.refund_id.is_empty()
            && request.refund_id.len() <= 64
            && request
                .refund_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b));
        if !refund_id_ok {
            return Err(PaymentError::InvalidRequest(
                "WeChat refund ids are 1-64 letters, digits or _-|*@".into(),
            ));
        }
        let mut body = json!({
            "out_trade_no": out_trade_no(&request.order_id),
            // WeChat treats a repeated out_refund_no as the same refund.
            "out_refund_no": request.refund_id,
            "notify_url": self.config.notify_url,
            "amount": {
                "refund": fen(&amount)?,
                "total": fen(&request.payment_amount)?,
                "currency": "CNY",
            },
        });
        if let Some(reason) = &request.reason {
            body["reason"] = json!(reason);
        }
        let resp = self
            .request(
                http::Method::POST,
                "/v3/refund/domestic/refunds",
                Some(&body),
            )
            .await?;
        let v = Self::json_of(&resp)?;
        let status = v.get("status").and_then(Value::as_str);
        if matches!(status, Some("CLOSED" | "ABNORMAL")) {
            return Err(PaymentError::Provider {
                status: resp.status.as_u16(),
                code: status.unwrap_or_default().to_owned(),
                message: "refund not made".into(),
            });
        }
        Ok(RefundResult {
            refund_reference: v
                .get("refund_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("refund without refund_id"))?
                .to_owned(),
            amount,
            completed: status == Some("SUCCESS"),
        })
    }

    fn webhook_reply(&self, outcome: WebhookOutcome) -> WebhookReply {
        match outcome {
            WebhookOutcome::Accepted => WebhookReply::json(
                http::StatusCode::OK,
                r#"{"code":"SUCCESS","message":"成功"}"#,
            ),
            WebhookOutcome::Rejected => WebhookReply::json(
                http::StatusCode::BAD_REQUEST,
                r#"{"code":"FAIL","message":"失败"}"#,
            ),
            WebhookOutcome::RetryLater => WebhookReply::json(
                http::StatusCode::SERVICE_UNAVAILABLE,
                r#"{"code":"FAIL","message":"失败"}"#,
            ),
        }
    }
}
