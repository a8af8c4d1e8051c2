//! Audit search over billing's audit log and events and auth's status history.

use axum::extract::State;
use axum::Json;
use relay_auth::Permission;
use relay_core::UserId;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{text, Admin, ApiQuery};
use crate::api::{listing, ApiState};

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
    /// Most records (1 to 1000, default 200).
    pub limit: Option<u32>,
}

/// Search the audit trail.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<Object>), (status = "4XX", body = ErrorBody)))]
pub async fn search(
    State(s): State<ApiState>,
    admin: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    admin.require(Permission::ManageUsers)?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be 1 to 1000"));
    }
    let mut out = Vec::new();
    match (&q.subject, &q.q) {
        (Some(subject), None) => {
            let subject = text("subject", subject, 1, 200)?;
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
