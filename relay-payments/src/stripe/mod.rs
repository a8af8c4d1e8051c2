//! Stripe over its REST API: Checkout Sessions (payment and subscription mode), customers,
//! refunds, and signed webhooks. Form-encoded requests, `Idempotency-Key` on every POST.

mod events;
mod signature;

use std::fmt;

use async_trait::async_trait;
use http::HeaderMap;
use relay_core::{Money, SharedClock};
use serde_json::Value;

pub use signature::{stripe_signature_header, verify_stripe_signature};

use crate::http_client::{ApiClient, ApiResponse};
use crate::{
    Capabilities, Checkout, CheckoutKind, CheckoutRequest, HttpOptions, OrderQuery, OrderStatus,
    ParsedWebhook, PaymentError, PaymentProvider, RefundRequest, RefundResult, WebhookError,
};

/// Stripe's production API.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com";

/// How to reach and trust Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// Secret API key (`sk_live_...`).
    pub secret_key: String,
    /// Webhook signing secrets (`whsec_...`); a signature under any of them is accepted, so
    /// a new secret can be added before the old one is removed.
    pub webhook_secrets: Vec<String>,
    /// API base URL; tests point it at a local server.
    pub api_base: String,
    /// Accepted distance between a webhook's signed timestamp and now, in seconds.
    pub tolerance_secs: i64,
    /// Where the browser goes after paying, when the request does not say.
    pub success_url: String,
    /// Where the browser goes after giving up, when the request does not say.
    pub cancel_url: String,
    /// Timeouts and retries.
    pub http: HttpOptions,
}

impl StripeConfig {
    /// Production defaults: Stripe's API, 300 s tolerance.
    pub fn new(
        secret_key: impl Into<String>,
        webhook_secret: impl Into<String>,
        success_url: impl Into<String>,
        cancel_url: impl Into<String>,
    ) -> Self {
        Self {
            secret_key: secret_key.into(),
            webhook_secrets: vec![webhook_secret.into()],
            api_base: STRIPE_API_BASE.to_owned(),
            tolerance_secs: 300,
            success_url: success_url.into(),
            cancel_url: cancel_url.into(),
            http: HttpOptions::default(),
        }
    }

    /// Use another API base URL.
    pub fn with_api_base(mut self, base: impl Into<String>) -> Self {
        self.api_base = base.into();
        self
    }

    /// Use another timestamp tolerance.
    pub fn with_tolerance_secs(mut self, secs: i64) -> Self {
        self.tolerance_secs = secs;
        self
    }

    /// Also accept signatures under `secret` (secret rotation).
    pub fn with_additional_webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.webhook_secrets.push(secret.into());
        self
    }

    /// Use other timeouts and retries.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("secret_key", &"<redacted>")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("api_base", &self.api_base)
            .field("tolerance_secs", &self.tolerance_secs)
            .finish_non_exhaustive()
    }
}

/// The Stripe provider.
#[derive(Debug)]
pub struct StripeProvider {
    config: StripeConfig,
    clock: SharedClock,
    api: ApiClient,
}

/// Stripe ids are ASCII letters, digits and underscores; anything else never reaches a URL.
fn checked_id(id: &str) -> Result<&str, PaymentError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(PaymentError::InvalidRequest(
            "not a Stripe object id".into(),
        ))
    }
}

fn minor(amount: &Money) -> Result<i64, PaymentError> {
    if amount.is_negative() || amount.is_zero() {
        return Err(PaymentError::Amount("amount must be positive".into()));
    }
    amount.to_minor().ok_or_else(|| {
        PaymentError::Amount(format!(
            "{amount} has more decimals than {} allows",
            amount.currency()
        ))
    })
}

fn json_body(resp: &ApiResponse) -> Result<Value, PaymentError> {
    let value: Value = serde_json::from_slice(&resp.body)
        .map_err(|_| PaymentError::BadResponse("Stripe answered with non-JSON".into()))?;
    if resp.status.is_success() {
        return Ok(value);
    }
    if resp.status == http::StatusCode::NOT_FOUND {
        return Err(PaymentError::NotFound);
    }
    let err = value.get("error");
    let text = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Err(PaymentError::Provider {
        status: resp.status.as_u16(),
        code: text("type"),
        message: text("message"),
    })
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a str, PaymentError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| PaymentError::BadResponse(format!("Stripe answer without `{key}`")))
}

impl StripeProvider {
    /// A provider with `config`, reading time from `clock` for webhook tolerance.
    pub fn new(config: StripeConfig, clock: SharedClock) -> Result<Self, PaymentError> {
        if config.webhook_secrets.iter().any(String::is_empty) || config.secret_key.is_empty() {
            return Err(PaymentError::Config("Stripe keys must not be empty".into()));
        }
        let api = ApiClient::new(config.http)?;
        Ok(Self { config, clock, api })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_base.trim_end_matches('/'))
    }

    /// POST a form with an idempotency key; Stripe replays the first answer for a repeated
    /// key, so these are retried like reads.
    async fn post(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<Value, PaymentError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let url = self.url(path);
        let resp = self
            .api
            .send(|c| {
                Ok(c.post(&url)
                    .bearer_auth(&self.config.secret_key)
                    .header("Idempotency-Key", idempotency_key)
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body.clone()))
            })
            .await?;
        json_body(&resp)
    }

    async fn get(&self, path: &str) -> Result<Value, PaymentError> {
        let url = self.url(path);
        let resp = self
            .api
            .send(|c| Ok(c.get(&url).bearer_auth(&self.config.secret_key)))
            .await?;
        json_body(&resp)
    }

    /// Create a Stripe customer; returns its id (`cus_...`). `idempotency_key` makes a
    /// retried call return the same customer.
    pub async fn create_customer(
        &self,
        email: &str,
        name: Option<&str>,
        idempotency_key: &str,
    ) -> Result<String, PaymentError> {
        let mut form = vec![("email".to_owned(), email.to_owned())];
        if let Some(name) = name {
            form.push(("name".to_owned(), name.to_owned()));
        }
        let v = self.post("/v1/customers", &form, idempotency_key).await?;
        Ok(field(&v, "id")?.to_owned())
    }

    fn checkout_form(&self, req: &CheckoutRequest) -> Result<Vec<(String, String)>, PaymentError> {
        let order = req.order_id.as_str().to_owned();
        let mut form: Vec<(String, String)> = vec![
            ("client_reference_id".into(), order.clone()),
            ("metadata[order_id]".into(), order.clone()),
            (
                "success_url".into(),
                req.success_url
                    .clone()
                    .unwrap_or_else(|| self.config.success_url.clone()),
            ),
            (
                "cancel_url".into(),
                req.cancel_url
                    .clone()
                    .unwrap_or_else(|| self.config.cancel_url.clone()),
            ),
        ];
        match &req.kind {
            CheckoutKind::OneOff => {
                form.extend([
                    ("mode".into(), "payment".into()),
                    (
                        "line_items[0][price_data][currency]".into(),
                        req.amount.currency().code().to_ascii_lowercase(),
                    ),
                    (
                        "line_items[0][price_data][unit_amount]".into(),
                        minor(&req.amount)?.to_string(),
                    ),
                    (
                        "line_items[0][price_data][product_data][name]".into(),
                        req.description.clone(),
                    ),
                    ("line_items[0][quantity]".into(), "1".into()),
                    // Charges and refunds then carry the order id too.
                    ("payment_intent_data[metadata][order_id]".into(), order),
                ]);
            }
            CheckoutKind::Subscription { plan_reference } => {
                checked_id(plan_reference)?;
                form.extend([
                    ("mode".into(), "subscription".into()),
                    ("line_items[0][price]".into(), plan_reference.clone()),
                    ("line_items[0][quantity]".into(), "1".into()),
                    // Renewal invoices carry the subscription's metadata.
                    ("subscription_data[metadata][order_id]".into(), order),
                ]);
            }
        }
        if let Some(customer) = &req.customer_reference {
            form.push(("customer".into(), checked_id(customer)?.to_owned()));
        } else if let Some(email) = &req.customer_email {
            form.push(("customer_email".into(), email.clone()));
        }
        if let Some(at) = req.expires_at {
            form.push(("expires_at".into(), at.timestamp().to_string()));
        }
        Ok(form)
    }

    async fn payment_intent_of(&self, reference: &str) -> Result<(String, String), PaymentError> {
        let id = checked_id(reference)?;
        if id.starts_with("cs_") {
            let session = self.get(&format!("/v1/checkout/sessions/{id}")).await?;
            let pi = field(&session, "payment_intent").map_err(|_| {
                PaymentError::InvalidRequest("checkout session has no payment to refund".into())
            })?;
            Ok(("payment_intent".into(), pi.to_owned()))
        } else if id.starts_with("ch_") || id.starts_with("py_") {
            Ok(("charge".into(), id.to_owned()))
        } else {
            Ok(("payment_intent".into(), id.to_owned()))
        }
    }
}

#[async_trait]
impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        events::PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recurring: true,
            refunds: true,
            partial_refunds: true,
            qr_code: false,
            redirect: true,
            webhooks: true,
        }
    }

    async fn create_checkout(&self, request: &CheckoutRequest) -> Result<Checkout, PaymentError> {
        let form = self.checkout_form(request)?;
        let key = format!("checkout-{}", request.order_id);
        let v = self.post("/v1/checkout/sessions", &form, &key).await?;
        Ok(Checkout {
            provider_reference: field(&v, "id")?.to_owned(),
            redirect_url: v.get("url").and_then(Value::as_str).map(str::to_owned),
            qr_code: None,
            expires_at: v
                .get("expires_at")
                .and_then(Value::as_i64)
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
        })
    }

    async fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ParsedWebhook, WebhookError> {
        let header = headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or(WebhookError::MissingHeader("Stripe-Signature"))?;
        verify_stripe_signature(
            header,
            body,
            &self.config.webhook_secrets,
            self.clock.now(),
            self.config.tolerance_secs,
        )?;
        let event: Value = serde_json::from_slice(body)
            .map_err(|_| WebhookError::MalformedBody("not JSON".into()))?;
        Ok(ParsedWebhook {
            events: events::events_from(&event)?,
        })
    }

    async fn query_order(&self, query: &OrderQuery) -> Result<OrderStatus, PaymentError> {
        let reference = query.provider_reference.as_deref().ok_or_else(|| {
            PaymentError::InvalidRequest("Stripe needs the checkout session id".into())
        })?;
        let id = checked_id(reference)?;
        let session = match self.get(&format!("/v1/checkout/sessions/{id}")).await {
            Err(PaymentError::NotFound) => return Ok(OrderStatus::NotFound),
            other => other?,
        };
        let status = session.get("status").and_then(Value::as_str);
        let paid = session.get("payment_status").and_then(Value::as_str) == Some("paid");
        Ok(match (status, paid) {
            (Some("complete"), true) => {
                let amount = events::stripe_money(&session, "amount_total")
                    .map_err(|e| PaymentError::BadResponse(e.to_string()))?;
                let reference = session
                    .get("payment_intent")
                    .or_else(|| session.get("subscription"))
                    .and_then(Value::as_str)
                    .unwrap_or(id)
                    .to_owned();
                OrderStatus::Paid { amount, reference }
            }
            (Some("expired"), _) => OrderStatus::Closed,
            (Some("open" | "complete"), _) => OrderStatus::Pending,
            _ => {
                return Err(PaymentError::BadResponse(
                    "checkout session without a known status".into(),
                ))
            }
        })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundResult, PaymentError> {
        let (target_field, target) = self.payment_intent_of(&request.provider_reference).await?;
        let mut form = vec![
            (target_field, target),
            (
                "metadata[order_id]".to_owned(),
                request.order_id.as_str().to_owned(),
            ),
        ];
        if let Some(reason) = &request.reason {
            // Stripe's own `reason` is an enum; free text goes to metadata.
            form.push(("metadata[reason]".to_owned(), reason.clone()));
        }
        if let Some(amount) = &request.amount {
            if amount.currency() != request.payment_amount.currency() {
                return Err(PaymentError::InvalidRequest(
                    "refund currency differs from the payment's".into(),
                ));
            }
            form.push(("amount".to_owned(), minor(amount)?.to_string()));
        }
        let v = self
            .post(
                "/v1/refunds",
                &form,
                &format!("refund-{}", request.refund_id),
            )
            .await?;
        let amount = events::stripe_money(&v, "amount")
            .map_err(|e| PaymentError::BadResponse(e.to_string()))?;
        Ok(RefundResult {
            refund_reference: field(&v, "id")?.to_owned(),
            amount,
            completed: v.get("status").and_then(Value::as_str) == Some("succeeded"),
        })
    }
}
