//! Redemption codes: generate a batch, look one up.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use relay_auth::Permission;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::dto::MoneyDto;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_money, Admin, ApiJson};
use crate::api::ApiState;

/// A batch to generate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// How many (1 to 1000).
    pub count: u32,
    /// Value of each, decimal string.
    pub amount: String,
    /// ISO currency code.
    pub currency: String,
    /// Last moment they can be redeemed.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A generated batch (codes shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchDto {
    /// Batch id.
    pub batch_id: String,
    /// The codes.
    pub codes: Vec<String>,
}

/// One code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodeDto {
    /// Canonical form.
    pub code: String,
    /// Batch id.
    pub batch_id: String,
    /// Value.
    pub value: MoneyDto,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Who redeemed it.
    pub redeemed_by: Option<String>,
    /// When.
    pub redeemed_at: Option<DateTime<Utc>>,
}

/// Generate a batch of codes.
#[utoipa::path(post, path = "/api/admin/codes", tag = "admin", request_body = GenerateBody,
    responses((status = 201, body = BatchDto), (status = "4XX", body = ErrorBody)))]
pub async fn generate(
    State(s): State<ApiState>,
    admin: Admin,
    ApiJson(body): ApiJson<GenerateBody>,
) -> ApiResult<(StatusCode, Json<BatchDto>)> {
    admin.require(Permission::ManageService)?;
    if !(1..=1000).contains(&body.count) {
        return Err(ApiError::invalid("count", "count must be 1 to 1000"));
    }
    let value = parse_money(&body.amount, &body.currency)?;
    if value.is_zero() || value.is_negative() {
        return Err(ApiError::invalid("amount", "amount must be positive"));
    }
    if body.expires_at.is_some_and(|t| t <= s.clock.now()) {
        return Err(ApiError::invalid(
            "expires_at",
            "expiry must be in the future",
        ));
    }
    let (batch_id, codes) = s
        .billing
        .generate_codes(body.count as usize, value, body.expires_at)
        .await?;
    Ok((StatusCode::CREATED, Json(BatchDto { batch_id, codes })))
}

/// Look up one code.
#[utoipa::path(get, path = "/api/admin/codes/{code}", tag = "admin",
    params(("code" = String, Path, description = "the code")),
    responses((status = 200, body = CodeDto), (status = "4XX", body = ErrorBody)))]
pub async fn get_code(
    State(s): State<ApiState>,
    admin: Admin,
    Path(code): Path<String>,
) -> ApiResult<Json<CodeDto>> {
    admin.require(Permission::ManageService)?;
    let code = relay_billing::redemption::normalize(&code)
        .map_err(|e| ApiError::from(e).with_field("code"))?;
    let c = s
        .billing
        .store()
        .code(&code)
        .await?
        .ok_or_else(|| ApiError::not_found("code"))?;
    Ok(Json(CodeDto {
        code: c.code,
        batch_id: c.batch_id,
        value: c.value.into(),
        expires_at: c.expires_at,
        redeemed_by: c.redeemed_by.map(|u| u.to_string()),
        redeemed_at: c.redeemed_at,
    }))
}
