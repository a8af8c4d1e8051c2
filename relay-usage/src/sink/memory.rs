//! In-memory real-time aggregates.

use std::collections::VecDeque;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use relay_core::{Currency, Money, Usage};
use rust_decimal::Decimal;

use super::{UsageEvent, UsageSink};

/// What an aggregate is counted per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Per API key.
    Key(String),
    /// Per user.
    User(String),
    /// Per model.
    Model(String),
}

/// Aggregate bucket size (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// Clock hours.
    Hourly,
    /// Calendar days.
    Daily,
    /// Calendar months.
    Monthly,
}

impl Granularity {
    /// Start of the bucket containing `at`.
    pub fn bucket(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let (y, m, d, h) = (at.year(), at.month(), at.day(), at.hour());
        let r = match self {
            Granularity::Hourly => Utc.with_ymd_and_hms(y, m, d, h, 0, 0),
            Granularity::Daily => Utc.with_ymd_and_hms(y, m, d, 0, 0, 0),
            Granularity::Monthly => Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0),
        };
        r.single().unwrap_or(at)
    }
}

/// (scope, granularity, bucket start).
pub type AggregateKey = (Scope, Granularity, DateTime<Utc>);

/// Totals of one aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Totals {
    /// Tokens by kind and requests.
    pub usage: Usage,
    /// Exact cost.
    pub cost: Decimal,
}

/// Real-time aggregates and the most recent events, in memory.
#[derive(Debug)]
pub struct MemoryUsageSink {
    currency: Currency,
    aggregates: DashMap<AggregateKey, Totals>,
    recent: Mutex<VecDeque<UsageEvent>>,
    keep_recent: usize,
}

impl MemoryUsageSink {
    /// A sink keeping the last `keep_recent` events.
    pub fn new(keep_recent: usize) -> Self {
        Self {
            currency: Currency::USD,
            aggregates: DashMap::new(),
            recent: Mutex::new(VecDeque::new()),
            keep_recent,
        }
    }

    /// Totals of one aggregate.
    pub fn totals(&self, scope: &Scope, granularity: Granularity, at: DateTime<Utc>) -> Totals {
        self.aggregates
            .get(&(scope.clone(), granularity, granularity.bucket(at)))
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Cost of one aggregate as money.
    pub fn cost(&self, scope: &Scope, granularity: Granularity, at: DateTime<Utc>) -> Money {
        Money::new(self.totals(scope, granularity, at).cost, self.currency)
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<UsageEvent> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Wait until at least `n` events were recorded (for tests of asynchronous paths).
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<UsageEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = self.recent();
            if events.len() >= n || tokio::time::Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl UsageSink for MemoryUsageSink {
    async fn record(&self, event: UsageEvent) {
        let scopes = [
            Scope::Key(event.key_id.to_string()),
            Scope::User(event.user_id.to_string()),
            Scope::Model(event.model.clone()),
        ];
        for scope in scopes {
            for g in [
                Granularity::Hourly,
                Granularity::Daily,
                Granularity::Monthly,
            ] {
                let mut t = self
                    .aggregates
                    .entry((scope.clone(), g, g.bucket(event.at)))
                    .or_default();
                t.usage.accumulate(&event.usage);
                t.cost += event.cost.amount();
            }
        }
        let mut recent = self.recent.lock();
        recent.push_back(event);
        while recent.len() > self.keep_recent {
            recent.pop_front();
        }
    }
}
