//! Subscriptions: look up, change plan, cancel.

use axum::extract::{Path, State};
use axum::Json;
use relay_auth::Permission;
use relay_core::{PlanId, SubscriptionId, UserId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::dto::SubscriptionDto;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, text, Admin, ApiJson};
use crate::api::ApiState;

/// A plan change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlanBody {
    /// The new plan version.
    pub plan_id: String,
    /// `now` (upgrade with proration) or `period_end` (downgrade at renewal).
    pub when: String,
}

/// A cancellation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// End at the end of the current period instead of now.
    #[serde(default)]
    pub at_period_end: bool,
}

/// A user's latest subscription.
#[utoipa::path(get, path = "/api/admin/users/{id}/subscription", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Option<SubscriptionDto>), (status = "4XX", body = ErrorBody)))]
pub async fn of_user(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Option<SubscriptionDto>>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let sub = s.billing.store().latest_subscription(&id).await?;
    Ok(Json(sub.as_ref().map(SubscriptionDto::from)))
}

/// Change a subscription's plan now or at period end.
#[utoipa::path(post, path = "/api/admin/subscriptions/{id}/change-plan", tag = "admin",
    request_body = ChangePlanBody,
    params(("id" = String, Path, description = "subscription id")),
    responses((status = 200, body = SubscriptionDto), (status = "4XX", body = ErrorBody)))]
pub async fn change_plan(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChangePlanBody>,
) -> ApiResult<Json<SubscriptionDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: SubscriptionId = parse_id("id", &id)?;
    let plan: PlanId = parse_id("plan_id", body.plan_id.trim())?;
    let change = match body.when.as_str() {
        "now" => s.billing.upgrade(&id, &plan).await,
        "period_end" => s.billing.schedule_downgrade(&id, &plan).await,
        _ => return Err(ApiError::invalid("when", "when must be now or period_end")),
    }
    .map_err(|e| ApiError::from(e).on_field("plan_id"))?;
    Ok(Json(SubscriptionDto::from(&change.subscription)))
}

/// Cancel a subscription now or at period end.
#[utoipa::path(post, path = "/api/admin/subscriptions/{id}/cancel", tag = "admin",
    request_body = CancelBody,
    params(("id" = String, Path, description = "subscription id")),
    responses((status = 200, body = SubscriptionDto), (status = "4XX", body = ErrorBody)))]
pub async fn cancel(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CancelBody>,
) -> ApiResult<Json<SubscriptionDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: SubscriptionId = parse_id("id", &id)?;
    let change = s
        .billing
        .cancel(&id, body.at_period_end, &admin.actor())
        .await?;
    Ok(Json(SubscriptionDto::from(&change.subscription)))
}

/// An extension of the current period.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// Days to add to the period's end (1 to 3660).
    pub days: i64,
    /// Why (kept in the audit log).
    pub reason: String,
}

/// Push a subscription's period end out by some days, free of charge.
#[utoipa::path(post, path = "/api/admin/subscriptions/{id}/extend", tag = "admin",
    request_body = ExtendBody,
    params(("id" = String, Path, description = "subscription id")),
    responses((status = 200, body = SubscriptionDto), (status = "4XX", body = ErrorBody)))]
pub async fn extend(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExtendBody>,
) -> ApiResult<Json<SubscriptionDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: SubscriptionId = parse_id("id", &id)?;
    let days = u32::try_from(body.days)
        .ok()
        .filter(|d| (1..=3660).contains(d))
        .ok_or_else(|| ApiError::invalid("days", "days must be 1 to 3660"))?;
    text("reason", &body.reason, 1, 500)?;
    let change = s
        .billing
        .extend(&id, days, &admin.actor())
        .await
        .map_err(|e| ApiError::from(e).on_field("days"))?;
    Ok(Json(SubscriptionDto::from(&change.subscription)))
}
