//! Plans: list, create, revise (a new version), archive.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use relay_auth::Permission;
use relay_billing::{BillingError, PlanSpec};
use relay_core::PlanId;

use crate::api::dto::PlanDto;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, Admin, ApiJson};
use crate::api::ApiState;

/// The body of plan creation and revision: relay-billing's `PlanSpec` (documented here).
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = PlanSpec)]
#[allow(dead_code)] // only its schema is used; the handlers deserialize `PlanSpec`
pub struct PlanSpecSchema {
    /// Display name (1 to 100 characters).
    name: String,
    /// Price of one period.
    price: crate::api::dto::MoneyDto,
    /// `{"kind":"monthly"}`, `{"kind":"yearly"}`, `{"kind":"one_off"}` or
    /// `{"kind":"days","days":30}`.
    #[schema(value_type = Object)]
    period: serde_json::Value,
    /// Free days before the first charge (0 to 365).
    trial_days: u32,
    /// Model patterns the plan includes (`claude-*`).
    included_models: Vec<String>,
    /// relay-core `KeyPolicy` template for the subscriber's keys.
    #[schema(value_type = Object)]
    policy: serde_json::Value,
    /// Usage credit included per period.
    included_credit: crate::api::dto::MoneyDto,
    /// `{"allowed": true, "multiplier": "1.2"}`.
    #[schema(value_type = Object)]
    overage: serde_json::Value,
    /// Keys a subscriber may hold (1 to 1000).
    max_keys: u32,
}

/// The field a plan validation message is about.
fn plan_field(message: &str) -> &'static str {
    const FIELDS: &[(&str, &str)] = &[
        ("name", "name"),
        ("included credit", "included_credit"),
        ("price", "price"),
        ("overage", "overage.multiplier"),
        ("keys", "max_keys"),
        ("trial", "trial_days"),
        ("period", "period"),
        ("models", "included_models"),
        ("policy", "policy"),
    ];
    FIELDS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("spec", |(_, f)| f)
}

fn validated(spec: &PlanSpec) -> ApiResult<()> {
    spec.validate().map_err(|e| {
        let msg = e.to_string();
        match e {
            BillingError::InvalidInput(_) => ApiError::invalid(plan_field(&msg), msg),
            other => ApiError::from(other),
        }
    })
}

/// All plan versions, archived ones too.
#[utoipa::path(get, path = "/api/admin/plans", tag = "admin",
    responses((status = 200, body = Vec<PlanDto>), (status = "4XX", body = ErrorBody)))]
pub async fn list(State(s): State<ApiState>, admin: Admin) -> ApiResult<Json<Vec<PlanDto>>> {
    admin.require(Permission::ManageService)?;
    let plans = s.billing.store().plans(true).await?;
    Ok(Json(plans.iter().map(PlanDto::from).collect()))
}

/// Create a plan (its first version). The body is relay-billing's `PlanSpec`.
#[utoipa::path(post, path = "/api/admin/plans", tag = "admin", request_body = PlanSpecSchema,
    responses((status = 201, body = PlanDto), (status = "4XX", body = ErrorBody)))]
pub async fn create(
    State(s): State<ApiState>,
    admin: Admin,
    ApiJson(spec): ApiJson<PlanSpec>,
) -> ApiResult<(StatusCode, Json<PlanDto>)> {
    admin.require(Permission::ManageService)?;
    validated(&spec)?;
    let plan = s
        .billing
        .store()
        .create_plan(&spec, s.billing.now())
        .await?;
    Ok((StatusCode::CREATED, Json(PlanDto::from(&plan))))
}

/// Revise a plan: a new version; the old one is archived, its subscribers keep it.
#[utoipa::path(put, path = "/api/admin/plans/{id}", tag = "admin", request_body = PlanSpecSchema,
    params(("id" = String, Path, description = "plan version id")),
    responses((status = 201, body = PlanDto), (status = "4XX", body = ErrorBody)))]
pub async fn revise(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<PlanSpec>,
) -> ApiResult<(StatusCode, Json<PlanDto>)> {
    admin.require(Permission::ManageService)?;
    let id: PlanId = parse_id("id", &id)?;
    validated(&spec)?;
    let plan = s
        .billing
        .store()
        .revise_plan(&id, &spec, s.billing.now())
        .await?;
    Ok((StatusCode::CREATED, Json(PlanDto::from(&plan))))
}

/// Stop selling a plan version.
#[utoipa::path(delete, path = "/api/admin/plans/{id}", tag = "admin",
    params(("id" = String, Path, description = "plan version id")),
    responses((status = 200, body = PlanDto), (status = "4XX", body = ErrorBody)))]
pub async fn archive(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<PlanDto>> {
    admin.require(Permission::ManageService)?;
    let id: PlanId = parse_id("id", &id)?;
    let plan = s.billing.store().archive_plan(&id).await?;
    Ok(Json(PlanDto::from(&plan)))
}
