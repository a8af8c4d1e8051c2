//! The conformance suite of [`UsageRecordStore`] backends and of [`SqlUsageWriter`] on
//! them: generic async functions, each taking an empty, migrated store, stamped out once
//! per backend in the crate's tests (and usable for your own backend).
//!
//! Every function panics on a failed expectation, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_pass_by_value
)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use relay_core::{ApiKeyId, Currency, Money, RequestId, Service, Usage, UserId};
use rust_decimal::Decimal;

use super::{
    DailyModelUsage, KeyTotals, SinkError, SqlUsageWriter, UsageRecordStore, WriterConfig,
};
use crate::sink::{MeterOutcome, UsageEvent, UsageSink};

fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).unwrap()
}

/// A complete event of `user` / `key` with `model`, `cost` (USD) and tokens at `at`
/// (truncated to the millisecond, the precision records are stored with).
pub fn event(
    user: &UserId,
    key: &ApiKeyId,
    model: &str,
    cost: &str,
    tokens: [u64; 5],
    at: DateTime<Utc>,
) -> UsageEvent {
    UsageEvent {
        request_id: RequestId::new(),
        user_id: user.clone(),
        key_id: key.clone(),
        service: Service::Anthropic,
        model: model.to_owned(),
        usage: Usage {
            input_tokens: tokens[0],
            output_tokens: tokens[1],
            cache_write_5m_tokens: tokens[2],
            cache_write_1h_tokens: tokens[3],
            cache_read_tokens: tokens[4],
            requests: 1,
        },
        cost: Money::new(dec(cost), Currency::USD),
        outcome: MeterOutcome::Complete,
        status: 200,
        at: DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap(),
    }
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap() + chrono::Duration::milliseconds(ms)
}

/// Every field comes back as written, costs exactly (down to 28 decimal places).
pub async fn round_trip_every_field(store: Arc<dyn UsageRecordStore>) {
    let user = UserId::new();
    let key = ApiKeyId::new();
    let outcomes = [
        MeterOutcome::Complete,
        MeterOutcome::UsageMissing,
        MeterOutcome::Malformed,
        MeterOutcome::Truncated,
        MeterOutcome::ClientDisconnected,
        MeterOutcome::UpstreamError,
        MeterOutcome::UpstreamStatus,
    ];
    let costs = [
        "0.000000001234567891",
        "0.0000000000000000000000000001",
        "0",
        "12345678901234.5678901234",
        "3.10",
        "-0.5",
        "0.000003",
    ];
    let services = [Service::Anthropic, Service::Openai, Service::Gemini];
    let currencies = [Currency::USD, Currency::EUR, Currency::CNY];
    let mut events = Vec::new();
    for (i, (outcome, cost)) in outcomes.iter().zip(costs).enumerate() {
        let i64i = i64::try_from(i).unwrap();
        let mut e = event(
            &user,
            &key,
            &format!("claude-sonnet-4-5 ünïcode/{i} 'quote\""),
            cost,
            [
                1 + i as u64,
                20 + i as u64,
                300,
                4_000,
                (i64::MAX as u64) - i as u64,
            ],
            at(2025, 1, 31, 23, 59, 59, 999 - i64i),
        );
        e.usage.requests = 1 + i as u64;
        e.outcome = *outcome;
        e.service = services[i % 3];
        e.cost = Money::new(dec(cost), currencies[i % 3]);
        e.status = [200, 429, 500, 0, 599, 201, 65535][i];
        events.push(e);
    }
    assert_eq!(store.insert_batch(&events).await.unwrap(), 7);
    for e in &events {
        let back = store.record(&e.request_id).await.unwrap().unwrap();
        assert_eq!(&back, e);
        assert_eq!(back.cost.amount().to_string(), e.cost.amount().to_string());
    }
    assert_eq!(store.record(&RequestId::new()).await.unwrap(), None);
    assert_eq!(store.record_count().await.unwrap(), 7);

    // Counts beyond i64::MAX are stored saturated, and NUL in a model does not poison
    // the batch.
    let mut big = event(&user, &key, "a\0b", "1", [u64::MAX, 0, 0, 0, 0], Utc::now());
    big.usage.requests = u64::MAX;
    assert_eq!(store.insert_batch(&[big.clone()]).await.unwrap(), 1);
    let back = store.record(&big.request_id).await.unwrap().unwrap();
    assert_eq!(back.usage.input_tokens, i64::MAX as u64);
    assert_eq!(back.usage.requests, i64::MAX as u64);
    assert_eq!(back.model, "a\u{FFFD}b");
    assert_eq!(store.insert_batch(&[]).await.unwrap(), 0);
}

/// Inserting a request id again changes nothing.
pub async fn insert_is_idempotent(store: Arc<dyn UsageRecordStore>) {
    let user = UserId::new();
    let key = ApiKeyId::new();
    let first: Vec<_> = (0..10)
        .map(|_| event(&user, &key, "m", "0.01", [1, 1, 0, 0, 0], Utc::now()))
        .collect();
    assert_eq!(store.insert_batch(&first).await.unwrap(), 10);
    assert_eq!(store.insert_batch(&first).await.unwrap(), 0);
    let mut overlapping: Vec<_> = first[5..].to_vec();
    overlapping
        .extend((0..5).map(|_| event(&user, &key, "m", "0.02", [2, 2, 0, 0, 0], Utc::now())));
    // A retried event keeps its first version even if the retry differs.
    overlapping[0].cost = Money::new(dec("99"), Currency::USD);
    assert_eq!(store.insert_batch(&overlapping).await.unwrap(), 5);
    assert_eq!(store.record_count().await.unwrap(), 15);
    let kept = store.record(&first[5].request_id).await.unwrap().unwrap();
    assert_eq!(kept.cost.amount(), dec("0.01"));
}

/// Hundreds of events from many tasks through a small queue: every one is stored once,
/// batches are full-size, and shutdown drains the rest.
pub async fn writer_stores_everything_once(store: Arc<dyn UsageRecordStore>) {
    let writer = SqlUsageWriter::spawn(
        store.clone(),
        WriterConfig::default()
            .with_queue_capacity(64)
            .with_max_batch(25)
            .with_flush_interval(Duration::from_secs(3600)),
    );
    let user = UserId::new();
    let key = ApiKeyId::new();
    let mut all = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let events: Vec<_> = (0..25)
            .map(|_| {
                event(
                    &user,
                    &key,
                    "m",
                    "0.000000001234567891",
                    [1, 2, 3, 4, 5],
                    Utc::now(),
                )
            })
            .collect();
        all.extend(events.clone());
        let w = writer.clone();
        tasks.push(tokio::spawn(async move {
            for e in events {
                w.record(e).await;
            }
        }));
    }
    // The same events again, from other tasks: duplicates, not new rows.
    for chunk in all.chunks(100).take(2) {
        let w = writer.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for e in chunk {
                w.record(e).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = writer.shutdown().await.unwrap();
    assert_eq!(report.written, 1000);
    assert_eq!(report.duplicates, 200);
    assert_eq!(report.rejected, 0);
    // 1200 events in batches of 25, flushed only by size (the interval is an hour).
    assert_eq!(report.batches, 48);
    assert_eq!(store.record_count().await.unwrap(), 1000);
    for e in all.iter().step_by(97) {
        assert_eq!(store.record(&e.request_id).await.unwrap().as_ref(), Some(e));
    }

    // After shutdown: refused, counted, nothing stored; a second shutdown is refused.
    writer
        .record(event(&user, &key, "m", "1", [1, 0, 0, 0, 0], Utc::now()))
        .await;
    assert_eq!(writer.report().refused, 1);
    assert_eq!(store.record_count().await.unwrap(), 1000);
    assert!(matches!(writer.shutdown().await, Err(SinkError::Closed)));
    assert!(matches!(writer.flush().await, Err(SinkError::Closed)));
}

/// A partial batch is written once the flush interval passes, without being asked.
pub async fn writer_flushes_by_interval(store: Arc<dyn UsageRecordStore>) {
    let writer = SqlUsageWriter::spawn(
        store.clone(),
        WriterConfig::default().with_flush_interval(Duration::from_millis(20)),
    );
    let user = UserId::new();
    let key = ApiKeyId::new();
    for _ in 0..3 {
        writer
            .record(event(&user, &key, "m", "1", [1, 0, 0, 0, 0], Utc::now()))
            .await;
    }
    // Wait for the condition (the bound only stops a broken writer from hanging the test).
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while store.record_count().await.unwrap() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the interval flush never happened");
    assert_eq!(writer.shutdown().await.unwrap().written, 3);
}

/// `flush` returns once everything recorded before it is stored.
pub async fn writer_flush_writes_what_came_before(store: Arc<dyn UsageRecordStore>) {
    let writer = SqlUsageWriter::spawn(
        store.clone(),
        WriterConfig::default().with_flush_interval(Duration::from_secs(3600)),
    );
    let user = UserId::new();
    let key = ApiKeyId::new();
    for _ in 0..7 {
        writer
            .record(event(&user, &key, "m", "1", [1, 0, 0, 0, 0], Utc::now()))
            .await;
    }
    let report = writer.flush().await.unwrap();
    assert_eq!(report.written, 7);
    assert_eq!(store.record_count().await.unwrap(), 7);
    let report = writer.flush().await.unwrap();
    assert_eq!(report.batches, 1, "an empty flush writes nothing");
    writer.shutdown().await.unwrap();
}

/// Rollups sum exactly per (day, user, key, model, currency), are idempotent, pick up
/// late records when run again, and the query helpers sum them as hand-computed.
pub async fn rollups_sum_exactly(store: Arc<dyn UsageRecordStore>) {
    let alice = UserId::new();
    let bob = UserId::new();
    let (k1, k2, kb) = (ApiKeyId::new(), ApiKeyId::new(), ApiKeyId::new());
    let d1 = day(2025, 3, 9);
    let d2 = day(2025, 3, 10);
    let events = vec![
        // d1, alice, k1, opus: three events, the last in the day's final millisecond.
        event(
            &alice,
            &k1,
            "opus",
            "0.000000001234567891",
            [10, 20, 30, 40, 50],
            at(2025, 3, 9, 0, 0, 0, 0),
        ),
        event(
            &alice,
            &k1,
            "opus",
            "0.1",
            [1, 2, 3, 4, 5],
            at(2025, 3, 9, 12, 0, 0, 0),
        ),
        event(
            &alice,
            &k1,
            "opus",
            "2.000000000000000009",
            [100, 200, 0, 0, 7],
            at(2025, 3, 9, 23, 59, 59, 999),
        ),
        // d1, alice, k2, opus.
        event(
            &alice,
            &k2,
            "opus",
            "0.25",
            [5, 5, 5, 5, 5],
            at(2025, 3, 9, 8, 0, 0, 0),
        ),
        // d1, alice, k1, haiku.
        event(
            &alice,
            &k1,
            "haiku",
            "0.000001",
            [1000, 0, 0, 0, 0],
            at(2025, 3, 9, 9, 0, 0, 0),
        ),
        // d2 (first millisecond), alice, k1, opus.
        event(
            &alice,
            &k1,
            "opus",
            "0.3",
            [7, 7, 7, 7, 7],
            at(2025, 3, 10, 0, 0, 0, 0),
        ),
        // d1, bob: never in alice's answers.
        event(
            &bob,
            &kb,
            "opus",
            "1000",
            [9, 9, 9, 9, 9],
            at(2025, 3, 9, 10, 0, 0, 0),
        ),
        // The day before d1: outside every range below.
        event(
            &alice,
            &k1,
            "opus",
            "5",
            [1, 1, 1, 1, 1],
            at(2025, 3, 8, 23, 59, 59, 999),
        ),
    ];
    store.insert_batch(&events).await.unwrap();
    // d1 rows: alice/k1/opus, alice/k2/opus, alice/k1/haiku, bob/kb/opus.
    assert_eq!(store.rollup_day(d1).await.unwrap(), 4);
    assert_eq!(store.rollup_day(d2).await.unwrap(), 1);

    let usage = |t: [u64; 5], requests: u64| Usage {
        input_tokens: t[0],
        output_tokens: t[1],
        cache_write_5m_tokens: t[2],
        cache_write_1h_tokens: t[3],
        cache_read_tokens: t[4],
        requests,
    };
    let expected_days = vec![
        DailyModelUsage {
            day: d1,
            model: "haiku".into(),
            currency: Currency::USD,
            usage: usage([1000, 0, 0, 0, 0], 1),
            events: 1,
            cost: dec("0.000001"),
        },
        DailyModelUsage {
            day: d1,
            model: "opus".into(),
            currency: Currency::USD,
            // k1: 10+1+100, 20+2+200, 30+3+0, 40+4+0, 50+5+7; k2: 5 each.
            usage: usage([116, 227, 38, 49, 67], 4),
            events: 4,
            // 0.000000001234567891 + 0.1 + 2.000000000000000009 + 0.25
            cost: dec("2.350000001234567900"),
        },
        DailyModelUsage {
            day: d2,
            model: "opus".into(),
            currency: Currency::USD,
            usage: usage([7, 7, 7, 7, 7], 1),
            events: 1,
            cost: dec("0.3"),
        },
    ];
    let by_day = store.usage_by_day_and_model(&alice, d1, d2).await.unwrap();
    assert_eq!(by_day, expected_days);
    assert_eq!(by_day[1].cost.to_string(), "2.350000001234567900");

    let mut keys = vec![
        KeyTotals {
            key_id: k1.clone(),
            currency: Currency::USD,
            // opus d1 + haiku d1 + opus d2
            usage: usage([111 + 1000 + 7, 222 + 7, 33 + 7, 44 + 7, 62 + 7], 5),
            events: 5,
            cost: dec("2.400000001234567900") + dec("0.000001"),
        },
        KeyTotals {
            key_id: k2.clone(),
            currency: Currency::USD,
            usage: usage([5, 5, 5, 5, 5], 1),
            events: 1,
            cost: dec("0.25"),
        },
    ];
    keys.sort_by(|a, b| a.key_id.as_str().cmp(b.key_id.as_str()));
    assert_eq!(store.totals_by_key(&alice, d1, d2).await.unwrap(), keys);
    assert_eq!(
        keys.iter()
            .find(|k| k.key_id == k1)
            .unwrap()
            .cost
            .to_string(),
        "2.400001001234567900"
    );

    // Idempotent: again, same answers.
    assert_eq!(store.rollup_day(d1).await.unwrap(), 4);
    assert_eq!(
        store.usage_by_day_and_model(&alice, d1, d2).await.unwrap(),
        expected_days
    );

    // A late record of d1 shows up after the next rollup of d1, and only then.
    let late = event(
        &alice,
        &k2,
        "opus",
        "0.000000000000000001",
        [1, 0, 0, 0, 0],
        at(2025, 3, 9, 13, 0, 0, 0),
    );
    store.insert_batch(&[late]).await.unwrap();
    assert_eq!(
        store.usage_by_day_and_model(&alice, d1, d1).await.unwrap(),
        expected_days[..2]
    );
    assert_eq!(store.rollup_day(d1).await.unwrap(), 4);
    let after = store.usage_by_day_and_model(&alice, d1, d1).await.unwrap();
    assert_eq!(after[1].cost.to_string(), "2.350000001234567901");
    assert_eq!(after[1].events, 5);
    assert_eq!(after[1].usage.input_tokens, 117);

    // Bob sees only his own; a user with no usage sees nothing; an empty day rolls up to
    // nothing and leaves other days alone.
    let bobs = store.usage_by_day_and_model(&bob, d1, d2).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].cost, dec("1000"));
    assert!(store
        .usage_by_day_and_model(&UserId::new(), d1, d2)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.rollup_day(day(2025, 3, 11)).await.unwrap(), 0);
    assert_eq!(
        store.totals_by_key(&bob, d1, d1).await.unwrap()[0].events,
        1
    );
}

/// Bad ranges and days get a clear error and change nothing.
pub async fn bad_input_is_refused(store: Arc<dyn UsageRecordStore>) {
    let user = UserId::new();
    let key = ApiKeyId::new();
    store
        .insert_batch(&[event(
            &user,
            &key,
            "m",
            "1",
            [1, 0, 0, 0, 0],
            at(2025, 5, 1, 0, 0, 0, 0),
        )])
        .await
        .unwrap();
    store.rollup_day(day(2025, 5, 1)).await.unwrap();
    let before = store
        .usage_by_day_and_model(&user, day(2025, 5, 1), day(2025, 5, 1))
        .await
        .unwrap();

    let reversed = store
        .usage_by_day_and_model(&user, day(2025, 5, 2), day(2025, 5, 1))
        .await;
    assert!(matches!(reversed, Err(SinkError::InvalidInput(m)) if m.contains("after it ends")));
    let too_long = store
        .usage_by_day_and_model(&user, day(2024, 1, 1), day(2025, 1, 1))
        .await;
    assert!(matches!(too_long, Err(SinkError::InvalidInput(m)) if m.contains("367 days")));
    // 366 days is fine.
    assert!(store
        .usage_by_day_and_model(&user, day(2024, 5, 2), day(2025, 5, 2))
        .await
        .is_ok());
    let reversed = store
        .totals_by_key(&user, day(2025, 5, 2), day(2025, 5, 1))
        .await;
    assert!(matches!(reversed, Err(SinkError::InvalidInput(_))));
    // Long ranges are fine for totals.
    assert_eq!(
        store
            .totals_by_key(&user, day(2000, 1, 1), day(2099, 1, 1))
            .await
            .unwrap()
            .len(),
        1
    );
    let out_of_range = store.rollup_day(NaiveDate::MAX).await;
    assert!(matches!(out_of_range, Err(SinkError::InvalidInput(_))));

    assert_eq!(store.record_count().await.unwrap(), 1);
    assert_eq!(
        store
            .usage_by_day_and_model(&user, day(2025, 5, 1), day(2025, 5, 1))
            .await
            .unwrap(),
        before
    );
}
