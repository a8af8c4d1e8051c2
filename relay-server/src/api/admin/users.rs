//! User search, status and role.

use axum::extract::{Path, State};
use axum::Json;
use relay_auth::{Email, Permission, Role};
use relay_core::{AccountStatus, UserId};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::dto::{OkDto, UserDto};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, text, Admin, ApiJson, ApiQuery};
use crate::api::ApiState;

/// Find a user by exact email or id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Email address (exact, case-insensitive).
    pub email: Option<String>,
    /// User id.
    pub id: Option<String>,
}

/// A status change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    /// `active`, `suspended`, `past_due`, `frozen` or `closed`.
    pub status: String,
    /// Why (kept in the audit trail).
    pub reason: String,
}

/// A role change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// `admin`, `operator` or `user`.
    pub role: String,
}

/// Find users (exact email or id).
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", params(SearchQuery),
    responses((status = 200, body = Vec<UserDto>), (status = "4XX", body = ErrorBody)))]
pub async fn search(
    State(s): State<ApiState>,
    admin: Admin,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Vec<UserDto>>> {
    admin.require(Permission::ManageUsers)?;
    let store = s.accounts.store();
    let user = match (&q.email, &q.id) {
        (Some(e), None) => {
            let email = Email::parse(e).map_err(|e| ApiError::invalid("email", e.to_string()))?;
            store.user_by_email(&email).await
        }
        (None, Some(id)) => store.user_by_id(&parse_id::<UserId>("id", id)?).await,
        _ => {
            return Err(ApiError::invalid(
                "email",
                "give exactly one of email or id",
            ))
        }
    }
    .map_err(relay_auth::AuthError::from)?;
    Ok(Json(user.iter().map(UserDto::from).collect()))
}

/// Change a user's status (with a reason).
#[utoipa::path(post, path = "/api/admin/users/{id}/status", tag = "admin", request_body = StatusBody,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn set_status(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusBody>,
) -> ApiResult<Json<OkDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let status: AccountStatus = serde_json::from_value(serde_json::Value::String(
        body.status.trim().to_owned(),
    ))
    .map_err(|_| {
        ApiError::invalid(
            "status",
            "status must be active, suspended, past_due, frozen or closed",
        )
    })?;
    let reason = text("reason", &body.reason, 1, 500)?;
    let change = s
        .accounts
        .set_status(Some(&admin.0.user.user), &id, status, &reason)
        .await?;
    Ok(Json(OkDto::new(format!(
        "status changed from {:?} to {:?}",
        change.from, change.to
    ))))
}

/// Change a user's role (admins only).
#[utoipa::path(post, path = "/api/admin/users/{id}/role", tag = "admin", request_body = RoleBody,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn set_role(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RoleBody>,
) -> ApiResult<Json<OkDto>> {
    admin.require(Permission::ManageRoles)?;
    let id: UserId = parse_id("id", &id)?;
    let role: Role = body
        .role
        .trim()
        .parse()
        .map_err(|e: String| ApiError::invalid("role", e))?;
    s.accounts.set_role(&admin.0.user.user, &id, role).await?;
    Ok(Json(OkDto::new(format!("role set to {role}"))))
}
