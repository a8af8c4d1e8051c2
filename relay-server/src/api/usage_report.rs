//! Where the usage routes read from. The default reads billing's usage batches (by day,
//! no model); the server plugs in [`RecordUsageReport`], over relay-usage's durable usage
//! records (`UsageRecordStore::usage_by_day_and_model`: per day and model, with tokens and
//! exact cost), with [`ApiState::with_usage_report`].
//!
//! [`ApiState::with_usage_report`]: super::ApiState::with_usage_report

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_billing::store::SqlBillingStore;
use relay_core::{Money, UserId};
use relay_usage::sink::UsageRecordStore;

use super::dto::{TokensDto, UsageRowDto};
use super::error::{ApiError, ApiResult};
use super::listing;

/// A user's usage per UTC day and model.
#[async_trait]
pub trait UsageReport: Send + Sync + std::fmt::Debug + 'static {
    /// Rows of `user` between `from` (inclusive) and `to` (exclusive), ordered by day
    /// then model.
    async fn usage_by_day(
        &self,
        user: &UserId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<Vec<UsageRowDto>>;
}

/// Usage from billing's charged usage batches (model `*`: batches carry no model).
#[derive(Debug, Clone)]
pub struct BillingUsageReport(pub Arc<SqlBillingStore>);

#[async_trait]
impl UsageReport for BillingUsageReport {
    async fn usage_by_day(
        &self,
        user: &UserId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<Vec<UsageRowDto>> {
        listing::usage_by_day(&self.0, user, from, to).await
    }
}

/// Days per store call (the store's limit is 366).
const CHUNK_DAYS: i64 = 300;

/// Usage from relay-usage's durable usage records: one row per UTC day and model with
/// request count, tokens and exact cost. Records carry the key's owner, so a user only
/// ever sees their own keys' usage.
#[derive(Debug, Clone)]
pub struct RecordUsageReport(pub Arc<dyn UsageRecordStore>);

#[async_trait]
impl UsageReport for RecordUsageReport {
    async fn usage_by_day(
        &self,
        user: &UserId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<Vec<UsageRowDto>> {
        if to <= from {
            return Ok(Vec::new());
        }
        // `to` is exclusive, the store's last day inclusive. Records are summed per whole
        // UTC day, so a range is widened to the days it touches.
        let mut first = from.date_naive();
        let last = (to - chrono::Duration::milliseconds(1)).date_naive();
        // The store answers at most a year per call; the API allows longer ranges (the
        // export asks for the account's whole life), so ask in chunks, in day order.
        let mut rows = Vec::new();
        while first <= last {
            let end = (first + chrono::Duration::days(CHUNK_DAYS - 1)).min(last);
            rows.extend(
                self.0
                    .usage_by_day_and_model(user, first, end)
                    .await
                    .map_err(|e| match e {
                        relay_usage::sink::SinkError::InvalidInput(m) => {
                            ApiError::invalid("from", m)
                        }
                        other => ApiError::internal(other),
                    })?,
            );
            first = end + chrono::Duration::days(1);
        }
        Ok(rows
            .iter()
            .map(|r| UsageRowDto {
                day: r.day.format("%Y-%m-%d").to_string(),
                model: r.model.clone(),
                requests: r.usage.requests,
                cost: Money::new(r.cost, r.currency).into(),
                charged: None,
                tokens: Some(TokensDto::from(&r.usage)),
            })
            .collect())
    }
}
