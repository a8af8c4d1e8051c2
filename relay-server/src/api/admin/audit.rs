//! Audit search over the server's audit log of admin requests, billing's audit log and
//! events, and auth's status history.

use axum::extract::State;
use axum::Json;
use relay_auth::Permission;
use relay_core::UserId;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{text, Admin, ApiQuery};
use crate::api::{listing, ApiState};
use crate::audit::{AuditError, AuditFilter};

/// What to look for.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Exact subject (a user, order, subscription or wallet id): its audit records,
    /// events and, for a user, status changes.
    pub subject: Option<String>,
    /// Substring of a subject or actor.
    pub q: Option<String>,
    /// Most records (1 to 1000, default 200; at most 500 from the admin request log).
    pub limit: Option<u32>,
    /// Admin request log only: exactly this actor (`admin:<user id>`).
    pub actor: Option<String>,
    /// Admin request log only: exactly this action (`admin.users.adjust`, ...).
    pub action: Option<String>,
    /// Admin request log only: exactly this target id.
    pub target: Option<String>,
    /// Admin request log only: entries older than this id (paging, newest first).
    pub before: Option<i64>,
}

fn audit_error(e: AuditError) -> ApiError {
    match e {
        AuditError::Invalid { field, reason } => ApiError::invalid(field, reason),
        other => ApiError::internal(other),
    }
}

fn server_entry(e: &crate::audit::AuditEntry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    v["source"] = "server.audit".into();
    v
}

/// Search the audit trail. With `actor`, `action`, `target` or `before`: the log of admin
/// requests (newest first, each entry with its `id` for paging). With `subject`: every
/// record about that id (admin requests included). With `q`: billing's audit by
/// substring. Admins only: the trail watches operators too.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<Object>), (status = "4XX", body = ErrorBody)))]
pub async fn search(
    State(s): State<ApiState>,
    admin: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    admin.require(Permission::ManageRoles)?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be 1 to 1000"));
    }
    let mut out = Vec::new();
    let filtered =
        q.actor.is_some() || q.action.is_some() || q.target.is_some() || q.before.is_some();
    if filtered {
        if q.subject.is_some() || q.q.is_some() {
            return Err(ApiError::invalid(
                "subject",
                "subject and q do not combine with actor, action, target or before",
            ));
        }
        let log = s.audit.as_ref().ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_configured",
                "no admin request log on this server",
            )
        })?;
        let filter = AuditFilter {
            actor: q.actor.clone(),
            action: q.action.clone(),
            target: q.target.clone(),
            before: q.before,
            limit: Some(limit.min(crate::audit::MAX_PAGE)),
            ..AuditFilter::default()
        };
        let page = log.search(&filter).await.map_err(audit_error)?;
        return Ok(Json(page.entries.iter().map(server_entry).collect()));
    }
    match (&q.subject, &q.q) {
        (Some(subject), None) => {
            let subject = text("subject", subject, 1, 200)?;
            if let Some(log) = &s.audit {
                let filter = AuditFilter::default()
                    .with_target(subject.clone())
                    .with_limit(limit.min(crate::audit::MAX_PAGE));
                let page = log.search(&filter).await.map_err(audit_error)?;
                out.extend(page.entries.iter().map(server_entry));
            }
            let store = s.billing.store();
            for r in store.audit(&subject).await? {
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                v["source"] = "billing.audit".into();
                out.push(v);
            }
            for e in store.events(Some(&subject)).await? {
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                v["source"] = "billing.event".into();
                out.push(v);
            }
            if let Ok(user) = subject.parse::<UserId>() {
                let history = s
                    .accounts
                    .store()
                    .status_history(&user)
                    .await
                    .map_err(relay_auth::AuthError::from)?;
                for h in history {
                    let mut v = serde_json::to_value(&h).unwrap_or_default();
                    v["source"] = "auth.status".into();
                    out.push(v);
                }
            }
        }
        (None, Some(needle)) => {
            let needle = text("q", needle, 2, 200)?;
            out = listing::audit_search(&s.billing_sql, &needle, i64::from(limit)).await?;
        }
        _ => {
            return Err(ApiError::invalid(
                "subject",
                "give exactly one of subject or q",
            ))
        }
    }
    out.truncate(limit as usize);
    Ok(Json(out))
}
