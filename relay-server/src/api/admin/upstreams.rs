//! Upstream accounts: list (never the credential), add (the credential sealed at rest
//! with the server's [`CredentialCipher`]), change weight or enable/disable, delete.
//! Every change reloads the running pools, so the next request sees it.
//!
//! The reload is this instance's; other instances pick the change up when they restart.
//! Accounts named in the configuration file are written again at every start-up, so
//! change those in the file rather than here.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use relay_auth::Permission;
use relay_core::Service;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{Admin, ApiJson};
use crate::api::ApiState;
use crate::config::AccountConfig;
use crate::db::Database;
use crate::upstream::store::{self, AccountChange, AccountInfo};
use crate::upstream::{CredentialCipher, Pools};

/// Largest weight accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// What the upstream routes work on: the store, the cipher and the running pools.
#[derive(Clone)]
pub struct UpstreamAdmin {
    db: Database,
    cipher: Arc<CredentialCipher>,
    pools: Arc<Pools>,
}

impl std::fmt::Debug for UpstreamAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAdmin").finish_non_exhaustive()
    }
}

impl UpstreamAdmin {
    /// Accounts in `db`, sealed with `cipher`, served by `pools`.
    pub fn new(db: Database, cipher: Arc<CredentialCipher>, pools: Arc<Pools>) -> Self {
        Self { db, cipher, pools }
    }

    /// Load the enabled accounts and swap them into the pools.
    pub async fn reload(&self) -> Result<usize, store::AccountStoreError> {
        let (loaded, unreadable) = store::load(&self.db, &self.cipher).await?;
        for u in &unreadable {
            tracing::error!(account = %u.name, reason = %u.reason, "upstream account skipped");
        }
        self.pools.reload(&loaded);
        Ok(loaded.len())
    }
}

/// A stored account as listed (no credential).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UpstreamDto {
    /// Unique name.
    pub name: String,
    /// `anthropic`, `openai` or `gemini`.
    pub service: String,
    /// Base URL.
    pub base_url: String,
    /// Share of traffic.
    pub weight: u32,
    /// In the pool.
    pub enabled: bool,
    /// Last change, milliseconds since the epoch.
    pub updated_at_ms: i64,
}

impl From<AccountInfo> for UpstreamDto {
    fn from(a: AccountInfo) -> Self {
        Self {
            name: a.name,
            service: a.service,
            base_url: a.base_url,
            weight: a.weight,
            enabled: a.enabled,
            updated_at_ms: a.updated_at_ms,
        }
    }
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpstreamBody {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// `anthropic`, `openai` or `gemini`.
    pub service: String,
    /// The credential (sealed at rest, never returned).
    pub key: String,
    /// Base URL (`http` or `https`); the service's public API when unset.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Share of traffic, 1 to 1000 (default 1).
    #[serde(default)]
    pub weight: Option<i64>,
}

/// A change of an account; give at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamChangeBody {
    /// New share of traffic, 1 to 1000.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Put in (`true`) or take out of (`false`) the pool.
    #[serde(default)]
    pub enabled: Option<bool>,
}

fn upstreams(s: &ApiState) -> ApiResult<&UpstreamAdmin> {
    s.upstreams.as_ref().ok_or_else(|| {
        // A 4xx: the route exists, but this embedding of the API has no pools to manage.
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "upstream accounts are not managed by this server",
        )
    })
}

fn check_name(name: &str) -> ApiResult<String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(ApiError::invalid(
            "name",
            "name must be 1 to 64 of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn check_weight(weight: i64) -> ApiResult<u32> {
    u32::try_from(weight)
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| ApiError::invalid("weight", format!("weight must be 1 to {MAX_WEIGHT}")))
}

fn check_base_url(raw: &str) -> ApiResult<String> {
    let parsed = url::Url::parse(raw.trim())
        .map_err(|e| ApiError::invalid("base_url", format!("base_url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::invalid(
            "base_url",
            "base_url must be an http or https URL",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(ApiError::invalid(
            "base_url",
            "base_url takes no query, fragment or credentials",
        ));
    }
    Ok(raw.trim().trim_end_matches('/').to_owned())
}

async fn reload(u: &UpstreamAdmin) -> ApiResult<()> {
    u.reload().await.map_err(ApiError::internal)?;
    Ok(())
}

async fn one(u: &UpstreamAdmin, name: &str) -> ApiResult<UpstreamDto> {
    store::list(&u.db)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .find(|a| a.name == name)
        .map(UpstreamDto::from)
        .ok_or_else(|| ApiError::not_found("upstream account"))
}

/// Every stored upstream account, without credentials.
#[utoipa::path(get, path = "/api/admin/upstreams", tag = "admin",
    responses((status = 200, body = Vec<UpstreamDto>), (status = "4XX", body = ErrorBody)))]
pub async fn list(State(s): State<ApiState>, admin: Admin) -> ApiResult<Json<Vec<UpstreamDto>>> {
    admin.require(Permission::ManageService)?;
    let u = upstreams(&s)?;
    let all = store::list(&u.db).await.map_err(ApiError::internal)?;
    Ok(Json(all.into_iter().map(UpstreamDto::from).collect()))
}

/// Add an upstream account (its credential sealed at rest) and reload the pools.
#[utoipa::path(post, path = "/api/admin/upstreams", tag = "admin", request_body = NewUpstreamBody,
    responses((status = 200, body = UpstreamDto), (status = "4XX", body = ErrorBody)))]
pub async fn create(
    State(s): State<ApiState>,
    admin: Admin,
    ApiJson(body): ApiJson<NewUpstreamBody>,
) -> ApiResult<Json<UpstreamDto>> {
    admin.require(Permission::ManageService)?;
    let u = upstreams(&s)?;
    let name = check_name(&body.name)?;
    let service: Service = body
        .service
        .parse()
        .map_err(|_| ApiError::invalid("service", "service must be anthropic, openai or gemini"))?;
    let key = body.key.trim();
    if key.is_empty() || key.len() > 4096 || key.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ApiError::invalid(
            "key",
            "key must be 1 to 4096 characters without spaces or control characters",
        ));
    }
    let base_url = body.base_url.as_deref().map(check_base_url).transpose()?;
    let weight = body.weight.map(check_weight).transpose()?.unwrap_or(1);
    let account = AccountConfig {
        service,
        name: name.clone(),
        key: key.to_owned(),
        base_url,
        weight,
    };
    let created = store::insert(&u.db, &u.cipher, &account)
        .await
        .map_err(ApiError::internal)?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("an upstream account named {name} exists"),
        )
        .with_field("name"));
    }
    reload(u).await?;
    Ok(Json(one(u, &name).await?))
}

/// Change an account's weight or take it in or out of the pool, and reload the pools.
#[utoipa::path(patch, path = "/api/admin/upstreams/{name}", tag = "admin",
    request_body = UpstreamChangeBody,
    params(("name" = String, Path, description = "account name")),
    responses((status = 200, body = UpstreamDto), (status = "4XX", body = ErrorBody)))]
pub async fn update(
    State(s): State<ApiState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpstreamChangeBody>,
) -> ApiResult<Json<UpstreamDto>> {
    admin.require(Permission::ManageService)?;
    let u = upstreams(&s)?;
    let name = check_name(&name)?;
    if body.weight.is_none() && body.enabled.is_none() {
        return Err(ApiError::invalid("weight", "give weight or enabled"));
    }
    let change = AccountChange {
        weight: body.weight.map(check_weight).transpose()?,
        enabled: body.enabled,
    };
    if !store::change(&u.db, &name, change)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::not_found("upstream account"));
    }
    reload(u).await?;
    Ok(Json(one(u, &name).await?))
}

/// Delete an account and reload the pools.
#[utoipa::path(delete, path = "/api/admin/upstreams/{name}", tag = "admin",
    params(("name" = String, Path, description = "account name")),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
pub async fn remove(
    State(s): State<ApiState>,
    admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    admin.require(Permission::ManageService)?;
    let u = upstreams(&s)?;
    let name = check_name(&name)?;
    if !store::delete(&u.db, &name)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::not_found("upstream account"));
    }
    reload(u).await?;
    Ok(StatusCode::NO_CONTENT)
}
