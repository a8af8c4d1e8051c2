//! Orders and payments of any user.

use axum::extract::{Path, State};
use axum::Json;
use relay_auth::Permission;
use relay_core::{OrderId, UserId};

use crate::api::dto::{BalanceDto, InvoiceDto, LedgerEntryDto, OrderDto};
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

/// A user's wallet and ledger history (payments, charges, refunds, adjustments).
#[utoipa::path(get, path = "/api/admin/users/{id}/ledger", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserLedgerDto), (status = "4XX", body = ErrorBody)))]
pub async fn ledger_of_user(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<UserLedgerDto>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let store = s.billing.store();
    let wallet = store
        .wallet(&id, s.billing.config().default_currency)
        .await?;
    let txs = store.transactions(Some(&id)).await?;
    Ok(Json(UserLedgerDto {
        wallet: BalanceDto::from(&wallet),
        ledger: txs.iter().map(|t| LedgerEntryDto::of(t, &id)).collect(),
    }))
}

/// A user's invoices and credit notes.
#[utoipa::path(get, path = "/api/admin/users/{id}/invoices", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Vec<InvoiceDto>), (status = "4XX", body = ErrorBody)))]
pub async fn invoices_of_user(
    State(s): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<InvoiceDto>>> {
    admin.require(Permission::ManageUsers)?;
    let id: UserId = parse_id("id", &id)?;
    let docs = s.billing.store().invoices(&id).await?;
    Ok(Json(docs.iter().map(InvoiceDto::from).collect()))
}

/// A user's wallet and ledger.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UserLedgerDto {
    /// The wallet in the default currency.
    pub wallet: BalanceDto,
    /// Ledger history, oldest first.
    pub ledger: Vec<LedgerEntryDto>,
}
