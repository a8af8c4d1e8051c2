//! Reports: revenue, live subscriptions, usage against revenue, overdue invoices.

use axum::extract::State;
use axum::Json;
use relay_auth::Permission;

use crate::api::error::{ApiResult, ErrorBody};
use crate::api::extract::{Admin, ApiQuery, RangeQuery};
use crate::api::ApiState;

fn rows<T: serde::Serialize>(v: &[T]) -> Json<Vec<serde_json::Value>> {
    Json(
        v.iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect(),
    )
}

/// Revenue, refunds, promotions and tax per currency in a range.
#[utoipa::path(get, path = "/api/admin/reports/revenue", tag = "reports", params(RangeQuery),
    responses((status = 200, body = Vec<Object>), (status = "4XX", body = ErrorBody)))]
pub async fn revenue(
    State(s): State<ApiState>,
    admin: Admin,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    admin.require(Permission::ManageService)?;
    let (from, to) = q.resolve(s.clock.now())?;
    Ok(rows(&s.billing.store().revenue(from, to).await?))
}

/// Live subscriptions per plan version.
#[utoipa::path(get, path = "/api/admin/reports/subscriptions", tag = "reports",
    responses((status = 200, body = Vec<Object>), (status = "4XX", body = ErrorBody)))]
pub async fn subscriptions(
    State(s): State<ApiState>,
    admin: Admin,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    admin.require(Permission::ManageService)?;
    Ok(rows(
        &s.billing.store().active_subscriptions_by_plan().await?,
    ))
}

/// Usage cost against money charged, per user and plan, in a range.
#[utoipa::path(get, path = "/api/admin/reports/usage-vs-revenue", tag = "reports",
    params(RangeQuery),
    responses((status = 200, body = Vec<Object>), (status = "4XX", body = ErrorBody)))]
pub async fn usage_vs_revenue(
    State(s): State<ApiState>,
    admin: Admin,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    admin.require(Permission::ManageService)?;
    let (from, to) = q.resolve(s.clock.now())?;
    Ok(rows(&s.billing.store().usage_vs_revenue(from, to).await?))
}

/// Overdue and written-off invoices.
#[utoipa::path(get, path = "/api/admin/reports/overdue", tag = "reports",
    responses((status = 200, body = Vec<Object>), (status = "4XX", body = ErrorBody)))]
pub async fn overdue(
    State(s): State<ApiState>,
    admin: Admin,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    admin.require(Permission::ManageService)?;
    Ok(rows(&s.billing.store().overdue(s.clock.now()).await?))
}
