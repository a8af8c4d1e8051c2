//! Alipay (open platform, RSA2): page (redirect) and QR (precreate) payments, verified
//! asynchronous notifications, trade query and refund.

mod sign;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use http::HeaderMap;
use relay_core::{Currency, Money, OrderId, SharedClock};
use serde_json::value::RawValue;
use serde_json::{json, Value};

pub use sign::alipay_sign_content;

use crate::http_client::ApiClient;
use crate::rsa_keys::{PrivateKey, PublicKey};
use crate::{
    Capabilities, Checkout, CheckoutKind, CheckoutRequest, HttpOptions, OrderQuery, OrderStatus,
    ParsedWebhook, PaymentError, PaymentEvent, PaymentEventKind, PaymentProvider, Presentation,
    RefundRequest, RefundResult, WebhookError, WebhookOutcome, WebhookReply,
};

/// Alipay's production gateway.
pub const ALIPAY_GATEWAY: &str = "https://openapi.alipay.com/gateway.do";

const PROVIDER: &str = "alipay";

/// How to reach and trust Alipay.
#[derive(Clone)]
pub struct AlipayConfig {
    /// The application's id.
    pub app_id: String,
    /// The application's private key (PEM or base64; PKCS#8 or PKCS#1).
    pub private_key: String,
    /// Alipay's public key (PEM or base64 SPKI, as the console shows it).
    pub alipay_public_key: String,
    /// Gateway URL; tests point it at a local server.
    pub gateway: String,
    /// Where Alipay posts notifications.
    pub notify_url: String,
    /// Where the browser returns after a page payment.
    pub return_url: Option<String>,
    /// When set, notifications for another seller are refused.
    pub seller_id: Option<String>,
    /// Timeouts and retries.
    pub http: HttpOptions,
}

impl AlipayConfig {
    /// Production gateway, no return URL, no seller check.
    pub fn new(
        app_id: impl Into<String>,
        private_key: impl Into<String>,
        alipay_public_key: impl Into<String>,
        notify_url: impl Into<String>,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            private_key: private_key.into(),
            alipay_public_key: alipay_public_key.into(),
            gateway: ALIPAY_GATEWAY.to_owned(),
            notify_url: notify_url.into(),
            return_url: None,
            seller_id: None,
            http: HttpOptions::default(),
        }
    }

    /// Use another gateway URL.
    pub fn with_gateway(mut self, gateway: impl Into<String>) -> Self {
        self.gateway = gateway.into();
        self
    }

    /// Use other timeouts and retries.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }
}

impl fmt::Debug for AlipayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlipayConfig")
            .field("app_id", &self.app_id)
            .field("private_key", &"<redacted>")
            .field("gateway", &self.gateway)
            .field("notify_url", &self.notify_url)
            .finish_non_exhaustive()
    }
}

/// The Alipay provider.
#[derive(Debug)]
pub struct AlipayProvider {
    config: AlipayConfig,
    private_key: PrivateKey,
    alipay_key: PublicKey,
    clock: SharedClock,
    api: ApiClient,
}

/// Beijing time, in which Alipay writes its timestamps (checked at compile time).
const CHINA: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+8 is a valid offset"),
};

fn china() -> FixedOffset {
    CHINA
}

/// Alipay amounts: CNY yuan with two decimals.
fn yuan(amount: &Money) -> Result<String, PaymentError> {
    if amount.currency() != Currency::CNY {
        return Err(PaymentError::UnsupportedCurrency {
            provider: PROVIDER,
            currency: amount.currency(),
        });
    }
    if amount.is_zero() || amount.is_negative() || amount.to_minor().is_none() {
        return Err(PaymentError::Amount(format!(
            "{amount} is not a positive amount in whole fen"
        )));
    }
    Ok(format!("{:.2}", amount.amount()))
}

fn parse_yuan(text: &str) -> Option<Money> {
    Money::parse(text, Currency::CNY).ok()
}

/// Alipay's timestamps are Beijing time without an offset.
fn parse_china_time(text: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
    china()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

fn bad(msg: &str) -> PaymentError {
    PaymentError::BadResponse(format!("Alipay: {msg}"))
}

impl AlipayProvider {
    /// A provider with `config`; fails when a key cannot be parsed.
    pub fn new(config: AlipayConfig, clock: SharedClock) -> Result<Self, PaymentError> {
        let private_key = PrivateKey::parse(&config.private_key)?;
        let alipay_key = PublicKey::parse(&config.alipay_public_key)?;
        let api = ApiClient::new(config.http)?;
        Ok(Self {
            config,
            private_key,
            alipay_key,
            clock,
            api,
        })
    }

    /// The common parameters of a call, signed.
    fn signed_params(
        &self,
        method: &str,
        biz_content: &Value,
        with_return_url: bool,
    ) -> Result<BTreeMap<String, String>, PaymentError> {
        let mut params = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            params.insert(k.to_owned(), v);
        };
        put("app_id", self.config.app_id.clone());
        put("method", method.to_owned());
        put("format", "JSON".into());
        put("charset", "utf-8".into());
        put("sign_type", "RSA2".into());
        put(
            "timestamp",
            self.clock
                .now()
                .with_timezone(&china())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
        );
        put("version", "1.0".into());
        put("notify_url", self.config.notify_url.clone());
        if with_return_url {
            if let Some(url) = &self.config.return_url {
                put("return_url", url.clone());
            }
        }
        put("biz_content", biz_content.to_string());
        let content = alipay_sign_content(&params, &["sign"]);
        let sign = self.private_key.sign_base64(content.as_bytes())?;
        params.insert("sign".to_owned(), sign);
        Ok(params)
    }

    /// Call `method` and return its verified response node.
    async fn call(&self, method: &str, biz_content: &Value) -> Result<Value, PaymentError> {
        let gateway = self.config.gateway.clone();
        let resp = self
            .api
            .send(|c| {
                // Signed afresh for each attempt: the timestamp is part of the signature.
                let params = self.signed_params(method, biz_content, false)?;
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&params)
                    .finish();
                Ok(c.post(&gateway)
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded;charset=utf-8",
                    )
                    .body(body))
            })
            .await?;
        if !resp.status.is_success() {
            return Err(PaymentError::Provider {
                status: resp.status.as_u16(),
                code: "http".into(),
                message: String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        let doc: HashMap<String, Box<RawValue>> =
            serde_json::from_slice(&resp.body).map_err(|_| bad("answer is not JSON"))?;
        let node_name = format!("{}_response", method.replace('.', "_"));
        let raw = doc
            .get(&node_name)
            .or_else(|| doc.get("error_response"))
            .ok_or_else(|| bad("answer without a response node"))?;
        let node: Value = serde_json::from_str(raw.get()).map_err(|_| bad("bad response node"))?;
        let sign: Option<String> = doc
            .get("sign")
            .and_then(|s| serde_json::from_str(s.get()).ok());
        let code = node.get("code").and_then(Value::as_str).unwrap_or("");
        match sign {
            // The signature covers the response node's exact text.
            Some(sign) if !self.alipay_key.verify_base64(raw.get().as_bytes(), &sign) => {
                return Err(bad("response signature does not match"));
            }
            // Some gateway errors come unsigned; a success never does.
            None if code == "10000" => return Err(bad("unsigned success response")),
            _ => {}
        }
        if code != "10000" {
            let text = |k: &str| node.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let sub_code = text("sub_code");
            if sub_code == "ACQ.TRADE_NOT_EXIST" {
                return Err(PaymentError::NotFound);
            }
            return Err(PaymentError::Provider {
                status: resp.status.as_u16(),
                code: if sub_code.is_empty() {
                    code.to_owned()
                } else {
                    sub_code
                },
                message: text("sub_msg"),
            });
        }
        Ok(node)
    }

    fn check_notification(&self, params: &BTreeMap<String, String>) -> Result<(), WebhookError> {
        let sign = params.get("sign").ok_or(WebhookError::BadSignature)?;
        if params.get("sign_type").map(String::as_str) != Some("RSA2") {
            return Err(WebhookError::BadSignature);
        }
        let content = alipay_sign_content(params, &["sign", "sign_type"]);
        if !self.alipay_key.verify_base64(content.as_bytes(), sign) {
            return Err(WebhookError::BadSignature);
        }
        if params.get("app_id") != Some(&self.config.app_id) {
            return Err(WebhookError::WrongRecipient("app_id".into()));
        }
        if let Some(seller) = &self.config.seller_id {
            if params.get("seller_id") != Some(seller) {
                return Err(WebhookError::WrongRecipient("seller_id".into()));
            }
        }
        Ok(())
    }
}

fn notification_events(
    params: &BTreeMap<String, String>,
) -> Result<Vec<PaymentEvent>, WebhookError> {
    let get = |k: &'static str| {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| WebhookError::MalformedBody(format!("notification without {k}")))
    };
    let status = get("trade_status")?;
    if status == "WAIT_BUYER_PAY" {
        return Ok(Vec::new());
    }
    let order_id: OrderId = get("out_trade_no")?
        .parse()
        .map_err(|_| WebhookError::MalformedBody("out_trade_no is not one of our orders".into()))?;
    let total = parse_yuan(get("total_amount")?)
        .ok_or_else(|| WebhookError::MalformedBody("total_amount is not an amount".into()))?;
    let refund_fee = match params.get("refund_fee").filter(|v| !v.is_empty()) {
        Some(text) => Some(
            parse_yuan(text)
                .ok_or_else(|| WebhookError::MalformedBody("refund_fee is not an amount".into()))?,
        ),
        None => None,
    }
    .filter(|m| !m.is_zero());
    let (kind, amount) = match (status.as_str(), refund_fee) {
        ("TRADE_SUCCESS" | "TRADE_FINISHED", None) => (PaymentEventKind::PaymentSucceeded, total),
        ("TRADE_SUCCESS" | "TRADE_FINISHED", Some(refunded)) => (
            PaymentEventKind::Refunded {
                cumulative: true,
                full: false,
            },
            refunded,
        ),
        // Closed after a full refund, or closed unpaid.
        ("TRADE_CLOSED", Some(refunded)) => (
            PaymentEventKind::Refunded {
                cumulative: true,
                full: true,
            },
            refunded,
        ),
        ("TRADE_CLOSED", None) => (PaymentEventKind::CheckoutExpired, total),
        _ => return Err(WebhookError::MalformedBody("unknown trade_status".into())),
    };
    Ok(vec![PaymentEvent {
        provider: PROVIDER.to_owned(),
        event_id: get("notify_id")?.clone(),
        kind,
        order_id: Some(order_id),
        amount,
        provider_reference: get("trade_no")?.clone(),
        subscription_reference: None,
        occurred_at: params
            .get("gmt_refund")
            .or_else(|| params.get("gmt_payment"))
            .or_else(|| params.get("notify_time"))
            .and_then(|t| parse_china_time(t.split('.').next().unwrap_or(t))),
    }])
}

#[async_trait]
impl PaymentProvider for AlipayProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recurring: false,
            refunds: true,
            partial_refunds: true,
            qr_code: true,
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
        let mut biz = json!({
            "out_trade_no": request.order_id.as_str(),
            "total_amount": yuan(&request.amount)?,
            "subject": request.description,
        });
        if let Some(at) = request.expires_at {
            biz["time_expire"] = json!(at
                .with_timezone(&china())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string());
        }
        match request.presentation {
            Presentation::QrCode => {
                let node = self.call("alipay.trade.precreate", &biz).await?;
                if node.get("out_trade_no").and_then(Value::as_str)
                    != Some(request.order_id.as_str())
                {
                    return Err(bad("precreate answered for another order"));
                }
                let qr = node
                    .get("qr_code")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("precreate without qr_code"))?;
                Ok(Checkout {
                    provider_reference: request.order_id.to_string(),
                    redirect_url: None,
                    qr_code: Some(qr.to_owned()),
                    expires_at: request.expires_at,
                })
            }
            Presentation::Redirect => {
                biz["product_code"] = json!("FAST_INSTANT_TRADE_PAY");
                // A page payment is a signed link the browser follows; no call is made.
                let params = self.signed_params("alipay.trade.page.pay", &biz, true)?;
                let mut url = url::Url::parse(&self.config.gateway)
                    .map_err(|_| PaymentError::Config("gateway is not a URL".into()))?;
                url.query_pairs_mut().extend_pairs(&params);
                Ok(Checkout {
                    provider_reference: request.order_id.to_string(),
                    redirect_url: Some(url.to_string()),
                    qr_code: None,
                    expires_at: request.expires_at,
                })
            }
        }
    }

    async fn parse_webhook(
        &self,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError> {
        let params: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        self.check_notification(&params)?;
        Ok(ParsedWebhook {
            events: notification_events(&params)?,
        })
    }

    async fn query_order(&self, query: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        let biz = json!({ "out_trade_no": query.order_id.as_str() });
        let node = match self.call("alipay.trade.query", &biz).await {
            Err(PaymentError::NotFound) => return Ok(OrderStatus::NotFound),
            other => other?,
        };
        if node.get("out_trade_no").and_then(Value::as_str) != Some(query.order_id.as_str()) {
            return Err(bad("query answered for another order"));
        }
        let text = |k: &str| node.get(k).and_then(Value::as_str);
        let paid = || -> Result<(Money, String), PaymentError> {
            let amount = text("total_amount")
                .and_then(parse_yuan)
                .ok_or_else(|| bad("query without total_amount"))?;
            let reference = text("trade_no").ok_or_else(|| bad("query without trade_no"))?;
            Ok((amount, reference.to_owned()))
        };
        Ok(match text("trade_status") {
            Some("WAIT_BUYER_PAY") => OrderStatus::Pending,
            Some("TRADE_SUCCESS" | "TRADE_FINISHED") => {
                let (amount, reference) = paid()?;
                OrderStatus::Paid { amount, reference }
            }
            Some("TRADE_CLOSED") => OrderStatus::Closed,
            _ => return Err(bad("query with an unknown trade_status")),
        })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundResult, PaymentError> {
        let amount = request.amount.unwrap_or(request.payment_amount);
        let mut biz = json!({
            "out_trade_no": request.order_id.as_str(),
            "refund_amount": yuan(&amount)?,
            // Alipay treats a repeated out_request_no as the same refund.
            "out_request_no": request.refund_id,
        });
        if let Some(reason) = &request.reason {
            biz["refund_reason"] = json!(reason);
        }
        let node = self.call("alipay.trade.refund", &biz).await?;
        Ok(RefundResult {
            refund_reference: request.refund_id.clone(),
            amount,
            completed: node.get("fund_change").and_then(Value::as_str) == Some("Y"),
        })
    }

    fn webhook_reply(&self, outcome: WebhookOutcome) -> WebhookReply {
        match outcome {
            // Alipay stops retrying only on this exact body.
            WebhookOutcome::Accepted => WebhookReply::text(http::StatusCode::OK, "success"),
            WebhookOutcome::Rejected => WebhookReply::text(http::StatusCode::BAD_REQUEST, "fail"),
            WebhookOutcome::RetryLater => {
                WebhookReply::text(http::StatusCode::SERVICE_UNAVAILABLE, "fail")
            }
        }
    }
}
