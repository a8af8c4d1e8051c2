//! Jobs over other crates' stores that need a little state of the server's own:
//!
//! * [`UsageRollupJob`]: relay-usage's daily rollups (`usage_daily`) for today and
//!   yesterday (records written just after midnight still land in yesterday's row).
//! * [`CheckoutLog`]: which provider (and which session there) each checkout went to, so
//!   payment reconciliation can ask the right provider about orders still pending
//!   (billing's orders learn their provider only when paid). It is the
//!   [`PendingOrderSource`] of [`PaymentReconcileJob`](super::PaymentReconcileJob).

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use relay_billing::jobs::JobReport;
use relay_billing::{Billing, OrderStatus};
use relay_core::{OrderId, SharedClock};
use relay_payments::reconcile::{PendingOrder, PendingOrderSource, SourceError};
use relay_usage::sink::UsageRecordStore;
use sqlx::AnyPool;

use super::Job;
use crate::audit::sql;

/// Rolls up today's and yesterday's usage records into `usage_daily` (idempotent: each
/// run recomputes the days from the records).
#[derive(Debug, Clone)]
pub struct UsageRollupJob {
    store: Arc<dyn UsageRecordStore>,
    clock: SharedClock,
}

impl UsageRollupJob {
    /// Roll up `store`'s records by `clock`'s days (UTC).
    pub fn new(store: Arc<dyn UsageRecordStore>, clock: SharedClock) -> Self {
        Self { store, clock }
    }
}

#[async_trait]
impl Job for UsageRollupJob {
    fn name(&self) -> &str {
        "usage_rollup"
    }

    async fn run(&self) -> Result<JobReport, String> {
        let today = self.clock.now().date_naive();
        let mut report = JobReport::default();
        for day in [today - Duration::days(1), today] {
            match self.store.rollup_day(day).await {
                Ok(rows) => report.changed += rows,
                Err(e) => report.errors.push(format!("{day}: {e}")),
            }
        }
        Ok(report)
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS server_checkouts (\n\
    order_id TEXT PRIMARY KEY,\n\
    provider TEXT NOT NULL,\n\
    reference TEXT,\n\
    created_at BIGINT NOT NULL\n\
);\n\
--;\n\
CREATE INDEX IF NOT EXISTS server_checkouts_provider ON server_checkouts (provider, created_at);\n";

/// Orders listed per reconciliation run and provider, at most.
const PAGE: i64 = 500;

/// The provider and session of each checkout, in billing's database.
#[derive(Debug, Clone)]
pub struct CheckoutLog {
    pool: AnyPool,
    billing: Arc<Billing>,
    clock: SharedClock,
}

impl CheckoutLog {
    /// The log in `pool` (its table created if missing); orders are read from `billing`.
    pub async fn open(
        pool: AnyPool,
        billing: Arc<Billing>,
        clock: SharedClock,
    ) -> Result<Self, sqlx::Error> {
        let dialect = sql::dialect(&pool).await?;
        sql::apply(&pool, dialect, "checkouts", SCHEMA).await?;
        Ok(Self {
            pool,
            billing,
            clock,
        })
    }

    /// Remember that `order`'s checkout went to `provider` (with its `reference`, like
    /// Stripe's session id). A repeat keeps the first.
    pub async fn record(
        &self,
        order: &OrderId,
        provider: &str,
        reference: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO server_checkouts (order_id, provider, reference, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order.as_str())
        .bind(provider)
        .bind(reference)
        .bind(self.clock.now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl PendingOrderSource for CheckoutLog {
    async fn pending_orders(
        &self,
        provider: &str,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<PendingOrder>, SourceError> {
        let err = |e: &dyn std::fmt::Display| SourceError(e.to_string());
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT order_id, reference FROM server_checkouts \
             WHERE provider = $1 AND created_at <= $2 ORDER BY created_at LIMIT $3",
        )
        .bind(provider)
        .bind(created_before.timestamp_millis())
        .bind(PAGE)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for (id, reference) in rows {
            let Ok(order_id) = OrderId::from_str(&id) else {
                continue;
            };
            let order = self
                .billing
                .store()
                .order(&order_id)
                .await
                .map_err(|e| err(&e))?;
            match order {
                Some(o) if o.status == OrderStatus::Pending => out.push(PendingOrder {
                    order_id,
                    provider_reference: reference,
                    amount: o.amount,
                    created_at: o.created_at,
                }),
                // Paid, expired or gone: nothing left to reconcile, forget it.
                _ => {
                    sqlx::query("DELETE FROM server_checkouts WHERE order_id = $1")
                        .bind(&id)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| err(&e))?;
                }
            }
        }
        Ok(out)
    }
}
