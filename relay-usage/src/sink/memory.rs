//! In-memory real-time aggregates.
//!
//! Kept per scope kind in a map keyed by the scope's name, looked up by `&str`: a name is
//! copied once, when first seen, never per event. Under each name, each granularity has
//! its buckets sorted by start; an event almost always lands in the newest one.

use std::collections::VecDeque;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, TimeZone, Utc};
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
        // Hours and days are fixed lengths of UTC seconds: truncate the timestamp.
        let truncate = |len: i64| {
            let secs = at.timestamp();
            DateTime::from_timestamp(secs - secs.rem_euclid(len), 0).unwrap_or(at)
        };
        match self {
            Granularity::Hourly => truncate(3600),
            Granularity::Daily => truncate(86_400),
            Granularity::Monthly => Utc
                .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or(at),
        }
    }

    const ALL: [Granularity; 3] = [
        Granularity::Hourly,
        Granularity::Daily,
        Granularity::Monthly,
    ];

    fn index(self) -> usize {
        match self {
            Granularity::Hourly => 0,
            Granularity::Daily => 1,
            Granularity::Monthly => 2,
        }
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

/// The buckets of one scope: per granularity, (bucket start, totals) sorted by start.
#[derive(Debug, Default)]
struct Buckets([Vec<(DateTime<Utc>, Totals)>; 3]);

impl Buckets {
    fn add(&mut self, starts: &[DateTime<Utc>; 3], event: &UsageEvent) {
        for (buckets, start) in self.0.iter_mut().zip(starts) {
            let i = match buckets.last() {
                Some((last, _)) if last == start => buckets.len() - 1,
                _ => match buckets.binary_search_by(|(s, _)| s.cmp(start)) {
                    Ok(i) => i,
                    Err(i) => {
                        buckets.insert(i, (*start, Totals::default()));
                        i
                    }
                },
            };
            let t = &mut buckets[i].1;
            t.usage.accumulate(&event.usage);
            t.cost += event.cost.amount();
        }
    }

    fn get(&self, granularity: Granularity, start: DateTime<Utc>) -> Option<&Totals> {
        let buckets = &self.0[granularity.index()];
        let i = buckets.binary_search_by(|(s, _)| s.cmp(&start)).ok()?;
        Some(&buckets[i].1)
    }
}

/// Buckets by name, updated on every event: hashed with foldhash, not SipHash.
type Aggregates = DashMap<String, Buckets, foldhash::fast::RandomState>;

/// Add `event` to the buckets of `name` in `map`, copying the name only when it is new.
fn add_to(map: &Aggregates, name: &str, starts: &[DateTime<Utc>; 3], event: &UsageEvent) {
    match map.get_mut(name) {
        Some(mut buckets) => buckets.add(starts, event),
        None => map.entry(name.to_owned()).or_default().add(starts, event),
    }
}

/// Real-time aggregates and the most recent events, in memory.
#[derive(Debug)]
pub struct MemoryUsageSink {
    currency: Currency,
    keys: Aggregates,
    users: Aggregates,
    models: Aggregates,
    recent: Mutex<VecDeque<UsageEvent>>,
    keep_recent: usize,
}

impl MemoryUsageSink {
    /// A sink keeping the last `keep_recent` events.
    pub fn new(keep_recent: usize) -> Self {
        Self {
            currency: Currency::USD,
            keys: Aggregates::default(),
            users: Aggregates::default(),
            models: Aggregates::default(),
            recent: Mutex::new(VecDeque::new()),
            keep_recent,
        }
    }

    /// Totals of one aggregate.
    pub fn totals(&self, scope: &Scope, granularity: Granularity, at: DateTime<Utc>) -> Totals {
        let (map, name) = match scope {
            Scope::Key(name) => (&self.keys, name),
            Scope::User(name) => (&self.users, name),
            Scope::Model(name) => (&self.models, name),
        };
        map.get(name.as_str())
            .and_then(|b| b.get(granularity, granularity.bucket(at)).cloned())
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
        let starts = Granularity::ALL.map(|g| g.bucket(event.at));
        add_to(&self.keys, event.key_id.as_str(), &starts, &event);
        add_to(&self.users, event.user_id.as_str(), &starts, &event);
        add_to(&self.models, &event.model, &starts, &event);
        let mut recent = self.recent.lock();
        recent.push_back(event);
        while recent.len() > self.keep_recent {
            recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Timelike;
    use relay_core::{ApiKeyId, RequestId, Service, UserId};
    use rust_decimal_macros::dec;

    use super::super::MeterOutcome;
    use super::*;

    fn event(key: &ApiKeyId, user: &UserId, model: &str, at: DateTime<Utc>) -> UsageEvent {
        UsageEvent {
            request_id: RequestId::new(),
            user_id: user.clone(),
            key_id: key.clone(),
            service: Service::Openai,
            model: model.to_owned(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                requests: 1,
                ..Usage::default()
            },
            cost: Money::new(dec!(0.0015), Currency::USD),
            outcome: MeterOutcome::Complete,
            status: 200,
            at,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn buckets_are_calendar_starts() {
        for s in [
            "2026-11-30T21:59:59.999Z",
            "2026-01-01T00:00:00Z",
            "2024-02-29T23:30:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            let t = at(s);
            let (y, m, d, h) = (t.year(), t.month(), t.day(), t.hour());
            let ymd = |y, m, d, h| Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().unwrap();
            assert_eq!(Granularity::Hourly.bucket(t), ymd(y, m, d, h), "{s}");
            assert_eq!(Granularity::Daily.bucket(t), ymd(y, m, d, 0), "{s}");
            assert_eq!(Granularity::Monthly.bucket(t), ymd(y, m, 1, 0), "{s}");
        }
    }

    #[tokio::test]
    async fn totals_per_scope_and_bucket_in_any_order() {
        let sink = MemoryUsageSink::new(2);
        let (k1, k2) = (ApiKeyId::new(), ApiKeyId::new());
        let user = UserId::new();
        // Out of order: a later hour, then an earlier one, then the later one again.
        for t in [
            "2026-11-30T21:10:00Z",
            "2026-11-30T20:10:00Z",
            "2026-11-30T21:20:00Z",
        ] {
            sink.record(event(&k1, &user, "gpt-4o", at(t))).await;
        }
        sink.record(event(&k2, &user, "gpt-4o-mini", at("2026-10-01T00:00:00Z")))
            .await;

        let hour = |scope: &Scope, t: &str| sink.totals(scope, Granularity::Hourly, at(t));
        let k1s = Scope::Key(k1.to_string());
        assert_eq!(hour(&k1s, "2026-11-30T21:59:00Z").usage.requests, 2);
        assert_eq!(hour(&k1s, "2026-11-30T21:59:00Z").cost, dec!(0.0030));
        assert_eq!(hour(&k1s, "2026-11-30T20:00:00Z").usage.requests, 1);
        assert_eq!(hour(&k1s, "2026-11-30T19:00:00Z"), Totals::default());

        let user_s = Scope::User(user.to_string());
        let month = sink.totals(&user_s, Granularity::Monthly, at("2026-11-02T00:00:00Z"));
        assert_eq!(month.usage.input_tokens, 30);
        assert_eq!(month.cost, dec!(0.0045));
        let october = sink.cost(&user_s, Granularity::Monthly, at("2026-10-31T23:00:00Z"));
        assert_eq!(october, Money::new(dec!(0.0015), Currency::USD));

        let mini = Scope::Model("gpt-4o-mini".into());
        assert_eq!(
            sink.totals(&mini, Granularity::Daily, at("2026-10-01T12:00:00Z"))
                .usage
                .output_tokens,
            5
        );
        // A name of one kind is not found as another kind, nor an unknown one.
        assert_eq!(
            sink.totals(
                &Scope::Model(k1.to_string()),
                Granularity::Daily,
                at("2026-11-30T00:00:00Z")
            ),
            Totals::default()
        );
        assert_eq!(
            sink.totals(
                &Scope::Key(String::new()),
                Granularity::Daily,
                at("2026-11-30T00:00:00Z")
            ),
            Totals::default()
        );
        // Only the last `keep_recent` events are kept, oldest first.
        let recent = sink.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[1].model, "gpt-4o-mini");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_all_count() {
        let sink = std::sync::Arc::new(MemoryUsageSink::new(16));
        let user = UserId::new();
        let keys: Vec<ApiKeyId> = (0..4).map(|_| ApiKeyId::new()).collect();
        let t = at("2026-11-30T21:10:00Z");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (sink, user, key) = (sink.clone(), user.clone(), keys[i % 4].clone());
                tokio::spawn(async move {
                    for _ in 0..25 {
                        sink.record(event(&key, &user, "m", t)).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let user_s = Scope::User(user.to_string());
        assert_eq!(
            sink.totals(&user_s, Granularity::Daily, t).usage.requests,
            800
        );
        assert_eq!(sink.totals(&user_s, Granularity::Daily, t).cost, dec!(1.2));
        for key in &keys {
            let k = Scope::Key(key.to_string());
            assert_eq!(sink.totals(&k, Granularity::Hourly, t).usage.requests, 200);
        }
        let m = Scope::Model("m".into());
        assert_eq!(sink.totals(&m, Granularity::Monthly, t).usage.requests, 800);
    }
}
