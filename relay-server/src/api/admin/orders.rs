//! Orders and payments of any user.

use axum::extract::{Path, State};
use axum::Json;
use relay_auth::Permission;
use relay_core::{OrderId, UserId};

use crate::api::dto::OrderDto;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{parse_id, Admin};
use crate::api::{listing, ApiState};

/// One order.
#[utoipa::path(get, path = "/api/admin/orders/{id}", tag = "admin",
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, body = OrderDto), (status = "4XX", body = ErrorBody)))]
pub async fn get_order(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: OrderId = parse_id("id", &id)?;
    let order = s
        .billing
        .store()
        .order(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(Json(OrderDto::from(&order)))
}

/// A user's orders, newest first.
#[utoipa::path(get, path = "/api/admin/users/{id}/orders", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Vec<OrderDto>), (status = "4XX", body = ErrorBody)))]
pub async fn of_user(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<OrderDto>>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let orders = listing::orders_of_user(&s.billing_sql, &id, 1000).await?;
    Ok(Json(orders.iter().map(OrderDto::from).collect()))
}
