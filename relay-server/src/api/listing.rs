//! Read-only listings the billing store trait does not offer yet (orders of a user, usage
//! batches by day), read from billing's own tables through its pool. They go away when
//! relay-billing grows the equivalent methods.

use chrono::{DateTime, Utc};
use relay_billing::store::SqlBillingStore;
use relay_billing::Order;
use relay_core::{Currency, Money, OrderId, UserId};
use sqlx::Row;

use super::dto::UsageRowDto;
use super::error::{ApiError, ApiResult};

/// Orders of `user`, newest first (at most `limit`).
pub async fn orders_of_user(
    sql: &SqlBillingStore,
    user: &UserId,
    limit: i64,
) -> ApiResult<Vec<Order>> {
    let rows = sqlx::query(
        "SELECT id FROM billing_orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(user.as_str())
    .bind(limit)
    .fetch_all(sql.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get("id")?;
        let id: OrderId = id.parse().map_err(ApiError::internal)?;
        if let Some(o) = relay_billing::BillingStore::order(sql, &id).await? {
            out.push(o);
        }
    }
    Ok(out)
}

/// Usage of `user` by UTC day between `from` and `to`, from billing's usage batches
/// (which carry no model: the model column is `*`).
pub async fn usage_by_day(
    sql: &SqlBillingStore,
    user: &UserId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> ApiResult<Vec<UsageRowDto>> {
    let rows = sqlx::query(
        "SELECT currency, cost, charged, created_at FROM billing_usage_batches \
         WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 ORDER BY created_at",
    )
    .bind(user.as_str())
    .bind(from.timestamp_millis())
    .bind(to.timestamp_millis())
    .fetch_all(sql.pool())
    .await?;
    let mut days: std::collections::BTreeMap<(String, String), (u64, Money, Money)> =
        Default::default();
    for r in rows {
        let currency: String = r.try_get("currency")?;
        let currency: Currency = currency.parse().map_err(ApiError::internal)?;
        let cost: String = r.try_get("cost")?;
        let charged: String = r.try_get("charged")?;
        let at: i64 = r.try_get("created_at")?;
        let cost = Money::parse(&cost, currency).map_err(ApiError::internal)?;
        let charged = Money::parse(&charged, currency).map_err(ApiError::internal)?;
        let day = DateTime::<Utc>::from_timestamp_millis(at)
            .ok_or_else(|| ApiError::internal("bad usage timestamp"))?
            .format("%Y-%m-%d")
            .to_string();
        let entry = days.entry((day, currency.code().to_owned())).or_insert((
            0,
            Money::zero(currency),
            Money::zero(currency),
        ));
        entry.0 += 1;
        entry.1 = entry.1.checked_add(&cost).map_err(ApiError::internal)?;
        entry.2 = entry.2.checked_add(&charged).map_err(ApiError::internal)?;
    }
    Ok(days
        .into_iter()
        .map(|((day, _), (requests, cost, charged))| UsageRowDto {
            day,
            model: "*".into(),
            requests,
            cost: cost.into(),
            charged: Some(charged.into()),
            tokens: None,
        })
        .collect())
}

/// Billing audit records whose subject or actor contains `needle`, newest first.
pub async fn audit_search(
    sql: &SqlBillingStore,
    needle: &str,
    limit: i64,
) -> ApiResult<Vec<serde_json::Value>> {
    let pattern = format!("%{}%", needle.replace(['\\', '%', '_'], ""));
    let rows = sqlx::query(
        "SELECT seq, actor, action, subject, detail, at FROM billing_audit \
         WHERE subject LIKE $1 OR actor LIKE $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(pattern)
    .bind(limit)
    .fetch_all(sql.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let detail: String = r.try_get("detail")?;
        let at: i64 = r.try_get("at")?;
        out.push(serde_json::json!({
            "source": "billing",
            "seq": r.try_get::<i64, _>("seq")?,
            "actor": r.try_get::<String, _>("actor")?,
            "action": r.try_get::<String, _>("action")?,
            "subject": r.try_get::<String, _>("subject")?,
            "detail": serde_json::from_str::<serde_json::Value>(&detail).unwrap_or(serde_json::Value::String(detail)),
            "at": DateTime::<Utc>::from_timestamp_millis(at),
        }));
    }
    Ok(out)
}
