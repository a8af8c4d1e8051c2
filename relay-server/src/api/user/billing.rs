//! The user's money: plans, checkout, top-up, orders, invoices, balance, ledger, codes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use relay_billing::{OrderPurpose, PlanStatus};
use relay_core::{InvoiceId, Money, OrderId, PlanId};
use relay_payments::{CheckoutRequest, PaymentProvider};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::dto::{
    BalanceDto, CheckoutDto, InvoiceDto, LedgerEntryDto, OrderDto, PlanDto, SubscriptionDto,
};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, parse_money, text, ApiJson, Session};
use crate::api::{listing, ApiState};

/// Buy a plan through a provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// Provider name (`stripe`, `alipay`, `wechat`).
    pub provider: String,
    /// The plan version to buy.
    pub plan_id: String,
    /// Where the browser returns after paying.
    #[serde(default)]
    pub success_url: Option<String>,
    /// Where the browser returns after giving up.
    #[serde(default)]
    pub cancel_url: Option<String>,
}

/// Add money to the wallet through a provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpBody {
    /// Provider name.
    pub provider: String,
    /// Decimal string, e.g. `"20.00"`.
    pub amount: String,
    /// ISO currency code.
    pub currency: String,
    /// Where the browser returns after paying.
    #[serde(default)]
    pub success_url: Option<String>,
    /// Where the browser returns after giving up.
    #[serde(default)]
    pub cancel_url: Option<String>,
}

/// A redemption code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody {
    /// The code (`XXXX-XXXX-XXXX-XXXX`, dashes optional).
    pub code: String,
}

/// Largest top-up accepted in one order.
const MAX_TOP_UP: i64 = 100_000;

fn provider(s: &ApiState, name: &str) -> ApiResult<Arc<dyn PaymentProvider>> {
    let name = text("provider", name, 1, 32)?;
    s.providers.get(&name).cloned().ok_or_else(|| {
        let offered: Vec<&str> = s.providers.keys().map(String::as_str).collect();
        ApiError::invalid(
            "provider",
            format!("unknown provider; offered: {}", offered.join(", ")),
        )
    })
}

fn return_url(field: &str, v: Option<&String>) -> ApiResult<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let v = text(field, v, 8, 2000)?;
    if !(v.starts_with("https://") || v.starts_with("http://")) || v.contains(char::is_whitespace) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be an http(s) URL"),
        ));
    }
    Ok(Some(v))
}

async fn start_checkout(
    s: &ApiState,
    me: &Session,
    provider: &Arc<dyn PaymentProvider>,
    purpose: OrderPurpose,
    amount: Money,
    description: String,
    urls: (Option<String>, Option<String>),
) -> ApiResult<CheckoutDto> {
    let user = &me.user.user;
    let order = s.billing.create_order(&user.id, purpose, amount).await?;
    let mut req = CheckoutRequest::one_off(order.id.clone(), amount, description);
    req.customer_email = Some(user.email.to_string());
    req.expires_at = Some(order.expires_at);
    req.success_url = urls.0;
    req.cancel_url = urls.1;
    let checkout = provider.create_checkout(&req).await?;
    if let Some(log) = &s.checkouts {
        // Without it, reconciliation cannot ask the provider; the webhook still settles.
        let reference = Some(checkout.provider_reference.as_str());
        if let Err(e) = log.record(&order.id, provider.name(), reference).await {
            tracing::warn!(order = %order.id, error = %e, "checkout not recorded for reconciliation");
        }
    }
    Ok(CheckoutDto {
        order: OrderDto::from(&order),
        provider_reference: checkout.provider_reference,
        redirect_url: checkout.redirect_url,
        qr_code: checkout.qr_code,
    })
}

/// Plans on sale.
#[utoipa::path(get, path = "/api/user/plans", tag = "billing",
    responses((status = 200, body = Vec<PlanDto>), (status = "4XX", body = ErrorBody)))]
pub async fn plans(State(s): State<ApiState>, _me: Session) -> ApiResult<Json<Vec<PlanDto>>> {
    let plans = s.billing.store().plans(false).await?;
    Ok(Json(
        plans
            .iter()
            .filter(|p| p.status == PlanStatus::Active)
            .map(PlanDto::from)
            .collect(),
    ))
}

/// Buy a plan: creates an order and a checkout with the chosen provider.
#[utoipa::path(post, path = "/api/user/checkout", tag = "billing", request_body = CheckoutBody,
    responses((status = 201, body = CheckoutDto), (status = "4XX", body = ErrorBody),
              (status = 502, body = ErrorBody)))]
pub async fn checkout(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> ApiResult<(StatusCode, Json<CheckoutDto>)> {
    let plan_id: PlanId = parse_id("plan_id", body.plan_id.trim())?;
    let provider = provider(&s, &body.provider)?;
    let urls = (
        return_url("success_url", body.success_url.as_ref())?,
        return_url("cancel_url", body.cancel_url.as_ref())?,
    );
    let plan = s
        .billing
        .store()
        .plan(&plan_id)
        .await?
        .filter(|p| p.status == PlanStatus::Active)
        .ok_or_else(|| ApiError::not_found("plan").with_field("plan_id"))?;
    if plan.spec.price.is_zero() {
        return Err(ApiError::invalid(
            "plan_id",
            "this plan is free: subscribe without a checkout",
        ));
    }
    s.limit(
        &format!("api:checkout:{}", me.user.user.id),
        s.config.checkout_limit,
    )
    .await?;
    let dto = start_checkout(
        &s,
        &me,
        &provider,
        OrderPurpose::PlanPurchase(plan.id.clone()),
        plan.spec.price,
        format!("{} (v{})", plan.spec.name, plan.version),
        urls,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(dto)))
}

/// Top up the wallet through a provider.
#[utoipa::path(post, path = "/api/user/top-up", tag = "billing", request_body = TopUpBody,
    responses((status = 201, body = CheckoutDto), (status = "4XX", body = ErrorBody),
              (status = 502, body = ErrorBody)))]
pub async fn top_up(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<TopUpBody>,
) -> ApiResult<(StatusCode, Json<CheckoutDto>)> {
    let amount = parse_money(&body.amount, &body.currency)?;
    if amount.is_zero() || amount.is_negative() {
        return Err(ApiError::invalid("amount", "amount must be positive"));
    }
    if amount.amount() > rust_decimal::Decimal::from(MAX_TOP_UP) {
        return Err(ApiError::invalid(
            "amount",
            format!("at most {MAX_TOP_UP} per top-up"),
        ));
    }
    if amount.round_to_minor() != amount {
        return Err(ApiError::invalid(
            "amount",
            "amount has more decimals than the currency allows",
        ));
    }
    let provider = provider(&s, &body.provider)?;
    let urls = (
        return_url("success_url", body.success_url.as_ref())?,
        return_url("cancel_url", body.cancel_url.as_ref())?,
    );
    s.limit(
        &format!("api:checkout:{}", me.user.user.id),
        s.config.checkout_limit,
    )
    .await?;
    let dto = start_checkout(
        &s,
        &me,
        &provider,
        OrderPurpose::TopUp,
        amount,
        "relay balance top-up".into(),
        urls,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(dto)))
}

/// The user's orders, newest first.
#[utoipa::path(get, path = "/api/user/orders", tag = "billing",
    responses((status = 200, body = Vec<OrderDto>), (status = "4XX", body = ErrorBody)))]
pub async fn orders(State(s): State<ApiState>, me: Session) -> ApiResult<Json<Vec<OrderDto>>> {
    let orders = listing::orders_of_user(&s.billing_sql, &me.user.user.id, 500).await?;
    Ok(Json(orders.iter().map(OrderDto::from).collect()))
}

/// One of the user's orders (another user's is "not found").
#[utoipa::path(get, path = "/api/user/orders/{id}", tag = "billing",
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, body = OrderDto), (status = "4XX", body = ErrorBody)))]
pub async fn order(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderDto>> {
    let id: OrderId = parse_id("id", &id)?;
    let order = s
        .billing
        .store()
        .order(&id)
        .await?
        .filter(|o| o.user_id == me.user.user.id)
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(Json(OrderDto::from(&order)))
}

/// The user's invoices and credit notes.
#[utoipa::path(get, path = "/api/user/invoices", tag = "billing",
    responses((status = 200, body = Vec<InvoiceDto>), (status = "4XX", body = ErrorBody)))]
pub async fn invoices(State(s): State<ApiState>, me: Session) -> ApiResult<Json<Vec<InvoiceDto>>> {
    let docs = s.billing.store().invoices(&me.user.user.id).await?;
    Ok(Json(docs.iter().map(InvoiceDto::from).collect()))
}

/// One of the user's invoices (another user's is "not found").
#[utoipa::path(get, path = "/api/user/invoices/{id}", tag = "billing",
    params(("id" = String, Path, description = "invoice id")),
    responses((status = 200, body = InvoiceDto), (status = "4XX", body = ErrorBody)))]
pub async fn invoice(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
) -> ApiResult<Json<InvoiceDto>> {
    let id: InvoiceId = parse_id("id", &id)?;
    let doc = s
        .billing
        .store()
        .invoice(&id)
        .await?
        .filter(|i| i.user_id == me.user.user.id)
        .ok_or_else(|| ApiError::not_found("invoice"))?;
    Ok(Json(InvoiceDto::from(&doc)))
}

/// The wallet balance in the default currency.
#[utoipa::path(get, path = "/api/user/balance", tag = "billing",
    responses((status = 200, body = BalanceDto), (status = "4XX", body = ErrorBody)))]
pub async fn balance(State(s): State<ApiState>, me: Session) -> ApiResult<Json<BalanceDto>> {
    let w = s
        .billing
        .store()
        .wallet(&me.user.user.id, s.billing.config().default_currency)
        .await?;
    Ok(Json(BalanceDto::from(&w)))
}

/// The wallet's ledger history, oldest first.
#[utoipa::path(get, path = "/api/user/ledger", tag = "billing",
    responses((status = 200, body = Vec<LedgerEntryDto>), (status = "4XX", body = ErrorBody)))]
pub async fn ledger(
    State(s): State<ApiState>,
    me: Session,
) -> ApiResult<Json<Vec<LedgerEntryDto>>> {
    let user = &me.user.user.id;
    let txs = s.billing.store().transactions(Some(user)).await?;
    Ok(Json(
        txs.iter().map(|t| LedgerEntryDto::of(t, user)).collect(),
    ))
}

/// Redeem a code into the wallet.
#[utoipa::path(post, path = "/api/user/redeem", tag = "billing", request_body = RedeemBody,
    responses((status = 200, body = LedgerEntryDto), (status = "4XX", body = ErrorBody)))]
pub async fn redeem(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<RedeemBody>,
) -> ApiResult<Json<LedgerEntryDto>> {
    let code = relay_billing::redemption::normalize(&body.code)
        .map_err(|e| ApiError::from(e).with_field("code"))?;
    s.limit(
        &format!("api:redeem:{}", me.user.user.id),
        s.config.checkout_limit,
    )
    .await?;
    let user = &me.user.user.id;
    let posted = s.billing.redeem(&code, user).await?;
    Ok(Json(LedgerEntryDto::of(posted.transaction(), user)))
}

/// The user's latest subscription, if any.
#[utoipa::path(get, path = "/api/user/subscription", tag = "billing",
    responses((status = 200, body = Option<SubscriptionDto>), (status = "4XX", body = ErrorBody)))]
pub async fn subscription(
    State(s): State<ApiState>,
    me: Session,
) -> ApiResult<Json<Option<SubscriptionDto>>> {
    let sub = s
        .billing
        .store()
        .latest_subscription(&me.user.user.id)
        .await?;
    Ok(Json(sub.as_ref().map(SubscriptionDto::from)))
}
