//! The user's API keys: create (shown once), list, rotate, revoke; per-key limits never
//! looser than the plan's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use relay_auth::{KeyLimits, NewKey};
use relay_core::{ApiKeyId, Expiry, KeyPolicy, UserId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::dto::{IssuedKeyDto, KeyDto, OkDto};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, ApiJson, Session};
use crate::api::ApiState;

/// A new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// Name (1 to 64 characters).
    pub name: String,
    /// Tags (at most 16 of `a-z 0-9 - _ . :`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Limits (relay-core's `KeyPolicy`); default: the plan's. Must be no looser than
    /// the plan's.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<KeyPolicy>,
}

/// A rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old key keeps working, in seconds (0 to 30 days; default: the
    /// configured grace).
    #[serde(default)]
    pub grace_seconds: Option<i64>,
}

/// A key's own limits within the plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyBody {
    /// The key's own limits (relay-auth's `KeyLimits`: `allowed_models`, `concurrency`,
    /// `rate_windows`, `budgets`), each no wider than the plan's; they stay in force
    /// through renewals and plan changes (a smaller plan clamps them). `{}` removes them.
    #[schema(value_type = Object)]
    pub limits: KeyLimits,
}

/// The policy of `user`'s live plan, if they have one.
pub async fn plan_policy(s: &ApiState, user: &UserId) -> ApiResult<Option<KeyPolicy>> {
    let store = s.billing.store();
    let Some(sub) = store.latest_subscription(user).await? else {
        return Ok(None);
    };
    if !sub.status.is_live() {
        return Ok(None);
    }
    Ok(store.plan(&sub.plan_id).await?.map(|p| p.spec.policy()))
}

use relay_auth::keys::limits::covered;

/// Why `key` grants more than `plan` (field and reason), or `None` when it is within it.
pub fn looser_than(key: &KeyPolicy, plan: &KeyPolicy) -> Option<(&'static str, String)> {
    let fail = |f: &'static str, m: &str| Some((f, m.to_owned()));
    if let Some(p) = plan.concurrency {
        if key.concurrency.is_none_or(|k| k > p) {
            return fail(
                "policy.concurrency",
                &format!("the plan allows at most {p}"),
            );
        }
    }
    for pw in &plan.rate_windows {
        let ok = key.rate_windows.iter().any(|kw| {
            kw.window_secs == pw.window_secs
                && le(pw.max_requests, kw.max_requests)
                && le(pw.max_tokens, kw.max_tokens)
                && match (&pw.max_cost, &kw.max_cost) {
                    (None, _) => true,
                    (Some(p), Some(k)) => k.checked_cmp(p).is_ok_and(|o| o.is_le()),
                    (Some(_), None) => false,
                }
        });
        if !ok {
            return fail(
                "policy.rate_windows",
                &format!(
                    "the plan's {}-second window must be kept, with limits no higher",
                    pw.window_secs
                ),
            );
        }
    }
    for pb in &plan.budgets {
        let ok = key.budgets.iter().any(|kb| {
            kb.period == pb.period && kb.cap.checked_cmp(&pb.cap).is_ok_and(|o| o.is_le())
        });
        if !ok {
            return fail(
                "policy.budgets",
                &format!(
                    "the plan's {} budget must be kept, no higher",
                    pb.period.as_str()
                ),
            );
        }
    }
    if !plan.allowed_models.is_empty()
        && (key.allowed_models.is_empty()
            || !key
                .allowed_models
                .iter()
                .all(|m| covered(&plan.allowed_models, m)))
    {
        return fail("policy.allowed_models", "only models the plan includes");
    }
    if !plan
        .denied_models
        .iter()
        .all(|m| key.denied_models.contains(m))
    {
        return fail(
            "policy.denied_models",
            "the plan's denied models must stay denied",
        );
    }
    if !plan.services.is_empty()
        && (key.services.is_empty() || !key.services.is_subset(&plan.services))
    {
        return fail("policy.services", "only services the plan includes");
    }
    if !plan.clients.is_empty() && (key.clients.is_empty() || !key.clients.is_subset(&plan.clients))
    {
        return fail("policy.clients", "only clients the plan allows");
    }
    if !plan.ip_allow.is_empty()
        && (key.ip_allow.is_empty()
            || !key
                .ip_allow
                .iter()
                .all(|k| plan.ip_allow.iter().any(|p| p.contains(k))))
    {
        return fail("policy.ip_allow", "only networks the plan allows");
    }
    if let Some(Expiry::At(p)) = &plan.expiry {
        if !matches!(&key.expiry, Some(Expiry::At(k)) if k <= p) {
            return fail(
                "policy.expiry",
                "the key must expire no later than the plan",
            );
        }
    }
    for service in plan
        .service_multipliers
        .keys()
        .chain(key.service_multipliers.keys())
    {
        if key.multiplier(*service) < plan.multiplier(*service) {
            return fail(
                "policy.service_multipliers",
                "multipliers may not be lower than the plan's",
            );
        }
    }
    if (!plan.budgets.is_empty() || plan.rate_windows.iter().any(|w| w.max_cost.is_some()))
        && key.currency != plan.currency
    {
        return fail("policy.currency", "the plan's currency must be kept");
    }
    None
}

fn le(plan: Option<u64>, key: Option<u64>) -> bool {
    match (plan, key) {
        (None, _) => true,
        (Some(p), Some(k)) => k <= p,
        (Some(_), None) => false,
    }
}

async fn own_key(s: &ApiState, me: &Session, raw: &str) -> ApiResult<ApiKeyId> {
    let id: ApiKeyId = parse_id("id", raw)?;
    let owned = s
        .accounts
        .store()
        .key_by_id(&id)
        .await
        .map_err(relay_auth::AuthError::from)?
        .is_some_and(|k| k.user_id == me.user.user.id && k.revoked_at.is_none());
    if !owned {
        // Someone else's key is indistinguishable from no key.
        return Err(ApiError::not_found("API key"));
    }
    Ok(id)
}

/// The user's keys (records only).
#[utoipa::path(get, path = "/api/user/keys", tag = "keys",
    responses((status = 200, body = Vec<KeyDto>), (status = "4XX", body = ErrorBody)))]
pub async fn list(State(s): State<ApiState>, me: Session) -> ApiResult<Json<Vec<KeyDto>>> {
    let keys = s.keys.list(&me.user.user.id).await?;
    Ok(Json(keys.iter().map(KeyDto::from).collect()))
}

/// Issue a key; the key is in this answer and never again.
#[utoipa::path(post, path = "/api/user/keys", tag = "keys", request_body = CreateKeyBody,
    responses((status = 201, body = IssuedKeyDto), (status = "4XX", body = ErrorBody)))]
pub async fn create(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> ApiResult<(StatusCode, Json<IssuedKeyDto>)> {
    let user = &me.user.user.id;
    let flags = s.accounts.risk_flags(user).await?;
    if flags
        .iter()
        .any(|f| f.flag == crate::api::admin::users::BLOCK_NEW_KEYS)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "key_creation_blocked",
            "new API keys are blocked on this account: contact support",
        ));
    }
    let plan = plan_policy(&s, user).await?;
    let policy = match (body.policy, &plan) {
        (Some(p), Some(plan)) => {
            p.validate()
                .map_err(|e| ApiError::invalid("policy", e.to_string()))?;
            if let Some((field, why)) = looser_than(&p, plan) {
                return Err(ApiError::invalid(
                    field,
                    format!("key limits may not exceed the plan's: {why}"),
                ));
            }
            p
        }
        (Some(p), None) => p,
        (None, Some(plan)) => plan.clone(),
        (None, None) => KeyPolicy::default(),
    };
    let issued = s
        .keys
        .issue(
            user,
            NewKey {
                name: body.name,
                tags: body.tags,
                policy,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedKeyDto {
            key: issued.key.clone(),
            record: KeyDto::from(&issued.record),
        }),
    ))
}

/// Replace a key with a new one; the old one keeps working for the grace period.
#[utoipa::path(post, path = "/api/user/keys/{id}/rotate", tag = "keys", request_body = RotateBody,
    params(("id" = String, Path, description = "key id")),
    responses((status = 201, body = IssuedKeyDto), (status = "4XX", body = ErrorBody)))]
pub async fn rotate(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateBody>,
) -> ApiResult<(StatusCode, Json<IssuedKeyDto>)> {
    let grace = match body.grace_seconds {
        None => None,
        Some(g) if (0..=30 * 86_400).contains(&g) => Some(chrono::Duration::seconds(g)),
        Some(_) => {
            return Err(ApiError::invalid(
                "grace_seconds",
                "grace must be 0 to 2592000 seconds",
            ))
        }
    };
    let id = own_key(&s, &me, &id).await?;
    let issued = s.keys.rotate(&id, grace).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedKeyDto {
            key: issued.key.clone(),
            record: KeyDto::from(&issued.record),
        }),
    ))
}

/// Narrow one key within the plan: fewer models, lower rate windows, budgets and
/// concurrency. Wider than the plan is a 422 naming the field.
#[utoipa::path(patch, path = "/api/user/keys/{id}", tag = "keys", request_body = UpdateKeyBody,
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyDto), (status = "4XX", body = ErrorBody)))]
pub async fn update(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateKeyBody>,
) -> ApiResult<Json<KeyDto>> {
    let id = own_key(&s, &me, &id).await?;
    let Some(plan) = plan_policy(&s, &me.user.user.id).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_plan",
            "per-key limits narrow a plan: subscribe to a plan first",
        )
        .with_field("limits"));
    };
    if let Err(e) = body.limits.check_within(&plan) {
        return Err(ApiError::invalid(
            e.field,
            format!("key limits may not exceed the plan's: {}", e.reason),
        ));
    }
    let key = s.keys.set_limits(&id, Some(body.limits), &plan).await?;
    Ok(Json(KeyDto::from(&key)))
}

/// Revoke a key now, everywhere.
#[utoipa::path(delete, path = "/api/user/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn revoke(
    State(s): State<ApiState>,
    me: Session,
    Path(id): Path<String>,
) -> ApiResult<Json<OkDto>> {
    let id = own_key(&s, &me, &id).await?;
    s.keys.revoke(&id).await?;
    Ok(Json(OkDto::new("key revoked")))
}
