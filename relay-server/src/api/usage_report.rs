//! Where the usage routes read from. The default reads billing's usage batches (by day,
//! no model); a server with relay-usage's durable records plugs in an adapter over
//! `UsageRecordStore::usage_by_day_and_model` with [`ApiState::with_usage_report`].
//!
//! [`ApiState::with_usage_report`]: super::ApiState::with_usage_report

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_billing::store::SqlBillingStore;
use relay_core::UserId;

use super::dto::UsageRowDto;
use super::error::ApiResult;
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
