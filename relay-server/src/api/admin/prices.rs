//! Per-model price overrides: set, clear, list. Persisted in `server_price_overrides`
//! and applied at once through the running [`PriceBook`](relay_core::PriceBook)'s live
//! overrides (the layers hold the same book), so new requests are priced by them without
//! a restart. Prices are exact decimal strings per million tokens.

use std::str::FromStr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use relay_auth::Permission;
use relay_core::price::TokenPrices;
use relay_core::{LiveOverrides, ModelPrice};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{Admin, ApiJson};
use crate::api::ApiState;
use crate::audit::sql;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS server_price_overrides (\n\
    model TEXT PRIMARY KEY,\n\
    prices TEXT NOT NULL,\n\
    updated_at BIGINT NOT NULL\n\
);\n";

/// The stored overrides and the running book's live table.
#[derive(Debug, Clone)]
pub struct PriceAdmin {
    pool: AnyPool,
    live: LiveOverrides,
}

impl PriceAdmin {
    /// Overrides stored in `pool` (table created if missing), loaded into `live`.
    pub async fn open(pool: AnyPool, live: LiveOverrides) -> Result<Self, String> {
        let dialect = sql::dialect(&pool).await.map_err(|e| e.to_string())?;
        sql::apply(&pool, dialect, "price_overrides", SCHEMA)
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT model, prices FROM server_price_overrides ORDER BY model")
                .fetch_all(&pool)
                .await
                .map_err(|e| e.to_string())?;
        let mut prices = Vec::new();
        for (model, text) in rows {
            let p: TokenPrices =
                serde_json::from_str(&text).map_err(|e| format!("stored price of {model}: {e}"))?;
            prices.push((model, ModelPrice::new(p)));
        }
        live.replace_all(prices).map_err(|e| e.to_string())?;
        Ok(Self { pool, live })
    }
}

/// A price override, per million tokens (decimal strings).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    /// Uncached prompt tokens.
    pub input: String,
    /// Output tokens.
    pub output: String,
    /// 5-minute cache writes (default: 1.25 x input).
    #[serde(default)]
    pub cache_write_5m: Option<String>,
    /// 1-hour cache writes (default: 2 x input).
    #[serde(default)]
    pub cache_write_1h: Option<String>,
    /// Cache reads (default: 0.1 x input).
    #[serde(default)]
    pub cache_read: Option<String>,
}

/// An override as listed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PriceOverrideDto {
    /// The model name.
    pub model: String,
    /// Prices per million tokens.
    pub per_million: PriceBody,
}

fn million() -> Decimal {
    Decimal::from(1_000_000)
}

fn per_million(field: &str, raw: &str) -> ApiResult<Decimal> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 40 {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be a decimal string"),
        ));
    }
    let v = Decimal::from_str(raw)
        .map_err(|_| ApiError::invalid(field, format!("{field} must be a decimal string")))?;
    if v.is_sign_negative() && !v.is_zero() {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not be negative"),
        ));
    }
    Ok(v)
}

fn dto(model: &str, p: &ModelPrice) -> PriceOverrideDto {
    let m = |d: Decimal| (d * million()).normalize().to_string();
    PriceOverrideDto {
        model: model.to_owned(),
        per_million: PriceBody {
            input: m(p.base.input),
            output: m(p.base.output),
            cache_write_5m: Some(m(p.base.cache_write_5m)),
            cache_write_1h: Some(m(p.base.cache_write_1h)),
            cache_read: Some(m(p.base.cache_read)),
        },
    }
}

fn prices(s: &ApiState) -> ApiResult<&PriceAdmin> {
    s.prices.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "prices are not managed by this server",
        )
    })
}

fn check_model(model: &str) -> ApiResult<String> {
    let ok = (1..=200).contains(&model.len())
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'));
    if ok {
        Ok(model.to_owned())
    } else {
        Err(ApiError::invalid(
            "model",
            "model must be 1 to 200 of A-Z a-z 0-9 . _ - / : @",
        ))
    }
}

/// Every price override.
#[utoipa::path(get, path = "/api/admin/prices", tag = "admin",
    responses((status = 200, body = Vec<PriceOverrideDto>), (status = "4XX", body = ErrorBody)))]
pub async fn list(
    State(s): State<ApiState>,
    admin: Admin,
) -> ApiResult<Json<Vec<PriceOverrideDto>>> {
    admin.require(Permission::ManageService)?;
    let p = prices(&s)?;
    Ok(Json(
        p.live
            .list()
            .iter()
            .map(|(m, price)| dto(m, price))
            .collect(),
    ))
}

/// Set a model's price override; new requests are priced by it at once.
#[utoipa::path(put, path = "/api/admin/prices/{model}", tag = "admin", request_body = PriceBody,
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, body = PriceOverrideDto), (status = "4XX", body = ErrorBody)))]
pub async fn set(
    State(s): State<ApiState>,
    admin: Admin,
    Path(model): Path<String>,
    ApiJson(body): ApiJson<PriceBody>,
) -> ApiResult<Json<PriceOverrideDto>> {
    admin.require(Permission::ManageService)?;
    let p = prices(&s)?;
    let model = check_model(&model)?;
    let input = per_million("input", &body.input)?;
    let output = per_million("output", &body.output)?;
    let mut tp = TokenPrices::per_million(input, output);
    for (field, value, slot) in [
        (
            "cache_write_5m",
            &body.cache_write_5m,
            &mut tp.cache_write_5m,
        ),
        (
            "cache_write_1h",
            &body.cache_write_1h,
            &mut tp.cache_write_1h,
        ),
        ("cache_read", &body.cache_read, &mut tp.cache_read),
    ] {
        if let Some(v) = value {
            *slot = per_million(field, v)? / million();
        }
    }
    let price = ModelPrice::new(tp);
    let text = serde_json::to_string(&tp).map_err(ApiError::internal)?;
    // Stored first: a restart never loses a price the API said it set.
    sqlx::query(
        "INSERT INTO server_price_overrides (model, prices, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (model) DO UPDATE SET prices = excluded.prices, updated_at = excluded.updated_at",
    )
    .bind(&model)
    .bind(&text)
    .bind(s.clock.now().timestamp_millis())
    .execute(&p.pool)
    .await
    .map_err(ApiError::internal)?;
    p.live
        .set(&model, price.clone())
        .map_err(|e| ApiError::invalid("input", e.to_string()))?;
    Ok(Json(dto(&model, &price)))
}

/// Clear a model's price override (the catalog price applies again).
#[utoipa::path(delete, path = "/api/admin/prices/{model}", tag = "admin",
    params(("model" = String, Path, description = "model name")),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
pub async fn clear(
    State(s): State<ApiState>,
    admin: Admin,
    Path(model): Path<String>,
) -> ApiResult<StatusCode> {
    admin.require(Permission::ManageService)?;
    let p = prices(&s)?;
    let model = check_model(&model)?;
    let n = sqlx::query("DELETE FROM server_price_overrides WHERE model = $1")
        .bind(&model)
        .execute(&p.pool)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
    let live = p.live.clear(&model);
    if n == 0 && !live {
        return Err(ApiError::not_found("price override"));
    }
    Ok(StatusCode::NO_CONTENT)
}
