//! Manual top-ups, adjustments, manual payments and refunds.

use axum::extract::{Path, State};
use axum::Json;
use relay_auth::Permission;
use relay_billing::OrderPurpose;
use relay_core::{OrderId, UserId};
use relay_payments::manual::MANUAL_PROVIDER;
use relay_payments::{Delivery, HandleOutcome, RefundRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::dto::{LedgerEntryDto, OrderDto};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, parse_money, text, Admin, ApiJson};
use crate::api::ApiState;

/// An adjustment of a wallet.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    /// Decimal string; positive credits, negative debits.
    pub amount: String,
    /// ISO currency code.
    pub currency: String,
    /// Why (kept in the ledger).
    pub reason: String,
    /// Makes a retried request apply once (default: a fresh key).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Money received offline for a new top-up order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTopUpBody {
    /// Decimal string, positive.
    pub amount: String,
    /// ISO currency code.
    pub currency: String,
    /// The bank transfer id or receipt number (the dedupe key).
    pub reference: String,
}

/// Money received offline for an existing order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualPaymentBody {
    /// The order.
    pub order_id: String,
    /// Decimal string, positive.
    pub amount: String,
    /// ISO currency code.
    pub currency: String,
    /// The bank transfer id or receipt number (the dedupe key).
    pub reference: String,
}

/// A refund of a paid order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Decimal string; default: what is left to refund.
    #[serde(default)]
    pub amount: Option<String>,
    /// Why.
    pub reason: String,
    /// Refund reference (required for manual payments; the dedupe key).
    #[serde(default)]
    pub reference: Option<String>,
}

/// What a payment or refund did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentResultDto {
    /// The order as it is now.
    pub order: OrderDto,
    /// `applied`, `held_for_review`, `ignored`, `duplicate`, `in_progress`, or `requested`
    /// (sent to the provider, applied when its webhook arrives).
    pub outcome: String,
    /// Provider's refund reference, for provider refunds.
    pub refund_reference: Option<String>,
}

fn delivery_name(d: &Delivery) -> String {
    match d {
        Delivery::Handled(HandleOutcome::Applied) => "applied".into(),
        Delivery::Handled(HandleOutcome::HeldForReview(_)) => "held_for_review".into(),
        Delivery::Handled(HandleOutcome::Ignored) => "ignored".into(),
        Delivery::Duplicate => "duplicate".into(),
        Delivery::InProgress => "in_progress".into(),
    }
}

async fn order_dto(s: &ApiState, id: &OrderId) -> ApiResult<OrderDto> {
    let order = s
        .billing
        .store()
        .order(id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(OrderDto::from(&order))
}

async fn deliver(s: &ApiState, event: &relay_payments::PaymentEvent) -> ApiResult<String> {
    let d = s
        .processor
        .deliver(event)
        .await
        .map_err(ApiError::internal)?;
    Ok(delivery_name(&d))
}

/// Credit (positive) or debit (negative) a wallet, with a reason.
#[utoipa::path(post, path = "/api/admin/users/{id}/adjust", tag = "admin", request_body = AdjustBody,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = LedgerEntryDto), (status = "4XX", body = ErrorBody)))]
pub async fn adjust(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AdjustBody>,
) -> ApiResult<Json<LedgerEntryDto>> {
    admin.require(Permission::ManageUsers)?;
    let user: UserId = parse_id("id", &id)?;
    s.accounts.user(&user).await?;
    let amount = parse_money(&body.amount, &body.currency)?;
    let reason = text("reason", &body.reason, 1, 500)?;
    let key = match &body.idempotency_key {
        Some(k) => text("idempotency_key", k, 1, 100)?,
        None => OrderId::new().to_string(),
    };
    let posted = s
        .billing
        .adjust(&user, amount, &reason, &admin.actor(), &key)
        .await
        .map_err(|e| ApiError::from(e).on_field("amount"))?;
    Ok(Json(LedgerEntryDto::of(posted.transaction(), &user)))
}

/// Record money received offline as a top-up (order + manual payment).
#[utoipa::path(post, path = "/api/admin/users/{id}/top-up", tag = "admin", request_body = ManualTopUpBody,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = PaymentResultDto), (status = "4XX", body = ErrorBody)))]
pub async fn top_up(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ManualTopUpBody>,
) -> ApiResult<Json<PaymentResultDto>> {
    admin.require(Permission::ManageUsers)?;
    let user: UserId = parse_id("id", &id)?;
    s.accounts.user(&user).await?;
    let amount = parse_money(&body.amount, &body.currency)?;
    if amount.is_zero() || amount.is_negative() {
        return Err(ApiError::invalid("amount", "amount must be positive"));
    }
    let reference = text("reference", &body.reference, 1, 128)?;
    let order = s
        .billing
        .create_order(&user, OrderPurpose::TopUp, amount)
        .await
        .map_err(|e| ApiError::from(e).on_field("amount"))?;
    let event = s
        .manual
        .record_payment(order.id.clone(), amount, &reference)
        .map_err(|e| ApiError::from(e).on_field("reference"))?;
    let outcome = deliver(&s, &event).await?;
    Ok(Json(PaymentResultDto {
        order: order_dto(&s, &order.id).await?,
        outcome,
        refund_reference: None,
    }))
}

/// Record money received offline for an existing order.
#[utoipa::path(post, path = "/api/admin/payments/manual", tag = "admin", request_body = ManualPaymentBody,
    responses((status = 200, body = PaymentResultDto), (status = "4XX", body = ErrorBody)))]
pub async fn manual_payment(
    State(s): State<ApiState>,
    admin: Admin,
    ApiJson(body): ApiJson<ManualPaymentBody>,
) -> ApiResult<Json<PaymentResultDto>> {
    admin.require(Permission::ManageUsers)?;
    let order_id: OrderId = parse_id("order_id", body.order_id.trim())?;
    let amount = parse_money(&body.amount, &body.currency)?;
    let reference = text("reference", &body.reference, 1, 128)?;
    // Unknown orders are refused here rather than held: an admin typed the id.
    order_dto(&s, &order_id)
        .await
        .map_err(|e| e.with_field("order_id"))?;
    let event = s
        .manual
        .record_payment(order_id.clone(), amount, &reference)
        .map_err(|e| ApiError::from(e).on_field("amount"))?;
    let outcome = deliver(&s, &event).await?;
    Ok(Json(PaymentResultDto {
        order: order_dto(&s, &order_id).await?,
        outcome,
        refund_reference: None,
    }))
}

/// Refund a paid order: through its provider (applied when the provider's refund webhook
/// arrives) or, for manual payments, recorded at once.
#[utoipa::path(post, path = "/api/admin/orders/{id}/refund", tag = "admin", request_body = RefundBody,
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, body = PaymentResultDto), (status = "4XX", body = ErrorBody),
              (status = 502, body = ErrorBody)))]
pub async fn refund(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> ApiResult<Json<PaymentResultDto>> {
    admin.require(Permission::ManageUsers)?;
    let order_id: OrderId = parse_id("id", &id)?;
    let reason = text("reason", &body.reason, 1, 500)?;
    let order = s
        .billing
        .store()
        .order(&order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    let left = order
        .amount
        .checked_sub(&order.refunded)
        .map_err(ApiError::internal)?;
    let amount = match &body.amount {
        Some(a) => parse_money(a, order.amount.currency().code())?,
        None => left,
    };
    if amount.is_zero() || amount.is_negative() || amount.amount() > left.amount() {
        return Err(ApiError::invalid(
            "amount",
            format!(
                "refund between 0 and {} {}",
                left.amount(),
                left.currency().code()
            ),
        ));
    }
    let (Some(provider_name), Some(payment_ref)) = (&order.provider, &order.provider_ref) else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "invalid_transition",
            "only a paid order can be refunded",
        ));
    };
    let reference = body
        .reference
        .as_deref()
        .map(|r| text("reference", r, 1, 128))
        .transpose()?;
    if provider_name == MANUAL_PROVIDER {
        let reference = reference.ok_or_else(|| {
            ApiError::invalid("reference", "a manual refund needs the refund's reference")
        })?;
        let event = s
            .manual
            .record_refund(
                order_id.clone(),
                amount,
                payment_ref,
                &reference,
                amount == left,
            )
            .map_err(|e| ApiError::from(e).on_field("reference"))?;
        let outcome = deliver(&s, &event).await?;
        return Ok(Json(PaymentResultDto {
            order: order_dto(&s, &order_id).await?,
            outcome,
            refund_reference: Some(reference),
        }));
    }
    let provider = s.providers.get(provider_name).cloned().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "provider_not_configured",
            format!("provider {provider_name} is not configured on this server"),
        )
    })?;
    let result = provider
        .refund(&RefundRequest {
            order_id: order_id.clone(),
            provider_reference: payment_ref.clone(),
            refund_id: reference.unwrap_or_else(|| format!("rf_{}", OrderId::new())),
            amount: Some(amount),
            payment_amount: order.amount,
            reason: Some(reason),
        })
        .await?;
    Ok(Json(PaymentResultDto {
        order: order_dto(&s, &order_id).await?,
        outcome: "requested".into(),
        refund_reference: Some(result.refund_reference),
    }))
}
