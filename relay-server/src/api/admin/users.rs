//! User search and listing, status, role and risk flags.

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relay_auth::{Email, Permission, Role, UserFilter};
use relay_core::{AccountStatus, UserId};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::dto::{OkDto, RiskFlagDto, UserDto};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, text, Admin, ApiJson, ApiQuery};
use crate::api::ApiState;

/// Find one user by exact email or id, or list users with filters, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Email address (exact, case-insensitive): at most one user.
    pub email: Option<String>,
    /// User id: at most one user.
    pub id: Option<String>,
    /// Email contains this text (case-insensitive, 1 to 254 characters).
    pub q: Option<String>,
    /// Only this status (`active`, `suspended`, `past_due`, `frozen`, `closed`).
    pub status: Option<String>,
    /// Only this role (`admin`, `operator`, `user`).
    pub role: Option<String>,
    /// Only users with this risk flag.
    pub flag: Option<String>,
    /// Only users with (`true`) or without (`false`) any risk flag.
    pub flagged: Option<bool>,
    /// Page size, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// The `x-next-cursor` header of the previous page.
    pub cursor: Option<String>,
}

/// A risk flag to set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagBody {
    /// Name: 1 to 32 of `a-z 0-9 _ -`. `block_new_keys` also stops the user from creating
    /// API keys while it is set; every other flag is a marker (shown and searchable).
    pub flag: String,
    /// Why (kept with the flag and in the audit log).
    pub reason: String,
}

/// Why a flag is cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearFlagBody {
    /// Why (kept in the audit log).
    pub reason: String,
}

/// The flag that stops a user from creating API keys.
pub const BLOCK_NEW_KEYS: &str = "block_new_keys";

const CURSOR_HEADER: &str = "x-next-cursor";

fn parse_cursor(raw: &str) -> Result<(chrono::DateTime<chrono::Utc>, UserId), ApiError> {
    let bad = || ApiError::invalid("cursor", "not a cursor from x-next-cursor");
    let (ms, id) = raw.split_once('.').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    let at = chrono::DateTime::from_timestamp_millis(ms).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// The admin view of users: each with their risk flags.
async fn with_flags(s: &ApiState, users: &[relay_auth::User]) -> ApiResult<Vec<UserDto>> {
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let mut dto = UserDto::from(u);
        dto.risk_flags = Some(
            s.accounts
                .risk_flags(&u.id)
                .await?
                .iter()
                .map(RiskFlagDto::from)
                .collect(),
        );
        out.push(dto);
    }
    Ok(out)
}

/// Find users: one by exact `email` or `id`, or a page of users matching the filters,
/// newest first; the next page's cursor is in the `x-next-cursor` header.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", params(SearchQuery),
    responses((status = 200, body = Vec<UserDto>,
        headers(("x-next-cursor" = String, description = "cursor of the next page, when there is one"))),
        (status = "4XX", body = ErrorBody)))]
pub async fn search(
    State(s): State<ApiState>,
    admin: Admin,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Response> {
    admin.require(Permission::ManageUsers)?;
    let listing = q.q.is_some()
        || q.status.is_some()
        || q.role.is_some()
        || q.flag.is_some()
        || q.flagged.is_some()
        || q.limit.is_some()
        || q.cursor.is_some();
    let store = s.accounts.store();
    let exact = match (&q.email, &q.id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "email",
                "give at most one of email or id",
            ))
        }
        (Some(_), None) | (None, Some(_)) if listing => {
            return Err(ApiError::invalid(
                "email",
                "an exact email or id lookup takes no list filters",
            ))
        }
        (Some(e), None) => {
            let email = Email::parse(e).map_err(|e| ApiError::invalid("email", e.to_string()))?;
            Some(store.user_by_email(&email).await)
        }
        (None, Some(id)) => Some(store.user_by_id(&parse_id::<UserId>("id", id)?).await),
        (None, None) => None,
    };
    if let Some(found) = exact {
        let found = found.map_err(relay_auth::AuthError::from)?;
        let users: Vec<_> = found.into_iter().collect();
        return Ok(Json(with_flags(&s, &users).await?).into_response());
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be 1 to 100"));
    }
    let filter = UserFilter {
        email_contains: q.q.as_deref().map(|t| text("q", t, 1, 254)).transpose()?,
        status: q
            .status
            .as_deref()
            .map(|st| {
                serde_json::from_value::<AccountStatus>(serde_json::Value::String(
                    st.trim().to_owned(),
                ))
                .map_err(|_| {
                    ApiError::invalid(
                        "status",
                        "status must be active, suspended, past_due, frozen or closed",
                    )
                })
            })
            .transpose()?,
        role: q
            .role
            .as_deref()
            .map(|r| {
                r.trim()
                    .parse::<Role>()
                    .map_err(|e| ApiError::invalid("role", e))
            })
            .transpose()?,
        flag: match q.flag.as_deref() {
            Some(f) if !relay_auth::profile::valid_flag_name(f) => {
                return Err(ApiError::invalid(
                    "flag",
                    "a flag is 1 to 32 characters of a-z, 0-9, _ or -",
                ))
            }
            f => f.map(str::to_owned),
        },
        flagged: q.flagged,
        before: q.cursor.as_deref().map(parse_cursor).transpose()?,
        // One more than asked, to know whether there is a next page.
        limit: limit + 1,
    };
    let mut users = s.accounts.list_users(&admin.0.user.user, &filter).await?;
    let more = users.len() > limit as usize;
    users.truncate(limit as usize);
    let mut resp = Json(with_flags(&s, &users).await?).into_response();
    if let (true, Some(last)) = (more, users.last()) {
        let cursor = format!("{}.{}", last.created_at.timestamp_millis(), last.id);
        if let Ok(v) = HeaderValue::from_str(&cursor) {
            resp.headers_mut().insert(CURSOR_HEADER, v);
        }
    }
    Ok(resp)
}

/// Set a risk flag on a user, with a reason (audited).
#[utoipa::path(post, path = "/api/admin/users/{id}/flags", tag = "admin", request_body = FlagBody,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = RiskFlagDto), (status = "4XX", body = ErrorBody)))]
pub async fn set_flag(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FlagBody>,
) -> ApiResult<Json<RiskFlagDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let reason = text("reason", &body.reason, 1, 500)?;
    let flag = s
        .accounts
        .set_risk_flag(&admin.0.user.user, &id, body.flag.trim(), &reason)
        .await?;
    audit(
        &s,
        &admin,
        "admin.user.flag.set",
        &id,
        serde_json::json!({"flag": flag.flag, "reason": flag.reason}),
    )
    .await?;
    Ok(Json(RiskFlagDto::from(&flag)))
}

/// Clear a risk flag, with a reason (audited).
#[utoipa::path(delete, path = "/api/admin/users/{id}/flags/{flag}", tag = "admin",
    request_body = ClearFlagBody,
    params(("id" = String, Path, description = "user id"), ("flag" = String, Path, description = "flag name")),
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn clear_flag(
    State(s): State<ApiState>,
    admin: Admin,
    Path((id, flag)): Path<(String, String)>,
    ApiJson(body): ApiJson<ClearFlagBody>,
) -> ApiResult<Json<OkDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let reason = text("reason", &body.reason, 1, 500)?;
    if !relay_auth::profile::valid_flag_name(&flag) {
        return Err(ApiError::invalid("flag", "no such flag"));
    }
    if !s
        .accounts
        .clear_risk_flag(&admin.0.user.user, &id, &flag)
        .await?
    {
        return Err(ApiError::not_found("risk flag"));
    }
    audit(
        &s,
        &admin,
        "admin.user.flag.clear",
        &id,
        serde_json::json!({"flag": flag, "reason": reason}),
    )
    .await?;
    Ok(Json(OkDto::new(format!("flag {flag} cleared"))))
}

/// Append to the audit log (on billing's pool; opening it is idempotent). sqlx's
/// `AnyPool` futures are not provably `Send`, so this runs off the async path like the
/// server's start-up does.
async fn audit(
    s: &ApiState,
    admin: &Admin,
    action: &'static str,
    target: &UserId,
    details: serde_json::Value,
) -> ApiResult<()> {
    let (pool, clock) = (s.billing_sql.pool().clone(), s.clock.clone());
    let (actor, target) = (admin.0.user.user.id.to_string(), target.to_string());
    crate::db::off_the_async_path(move || async move {
        let log = crate::audit::AuditLog::open(pool, clock).await?;
        log.record(&actor, action, &target, &details).await
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(())
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
