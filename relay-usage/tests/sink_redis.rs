//! Real-time usage aggregates in a real Redis (RELAY_TEST_REDIS; with CI=true an
//! unreachable server fails), each test under its own key prefix.
#![allow(clippy::unwrap_used)]

mod support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use relay_core::{ApiKeyId, Currency, Money, RequestId, Service, Usage, UserId};
use relay_usage::sink::{
    AggregatesConfig, Granularity, MemoryUsageSink, MeterOutcome, RedisSinkError,
    RedisUsageAggregates, Scope, UsageEvent, UsageSink,
};
use rust_decimal::Decimal;

const GRANULARITIES: [Granularity; 3] = [
    Granularity::Hourly,
    Granularity::Daily,
    Granularity::Monthly,
];

fn event(
    user: &UserId,
    key: &ApiKeyId,
    model: &str,
    cost: &str,
    n: u64,
    at: DateTime<Utc>,
) -> UsageEvent {
    UsageEvent {
        request_id: RequestId::new(),
        user_id: user.clone(),
        key_id: key.clone(),
        service: Service::Openai,
        model: model.to_owned(),
        usage: Usage {
            input_tokens: n,
            output_tokens: 2 * n,
            cache_write_5m_tokens: n % 7,
            cache_write_1h_tokens: n % 5,
            cache_read_tokens: 3 * n,
            requests: 1,
        },
        cost: Money::new(Decimal::from_str(cost).unwrap(), Currency::USD),
        outcome: MeterOutcome::Complete,
        status: 200,
        at,
    }
}

/// Defaults, with retentions short enough that test keys soon leave the shared Redis.
fn config() -> AggregatesConfig {
    AggregatesConfig::default()
        .with_retention(Granularity::Hourly, Duration::from_secs(3600))
        .with_retention(Granularity::Daily, Duration::from_secs(7200))
        .with_retention(Granularity::Monthly, Duration::from_secs(10_800))
}

async fn aggregates(config: AggregatesConfig) -> Option<(RedisUsageAggregates, String)> {
    let conn = support::redis_conn().await?;
    let prefix = support::unique_prefix();
    Some((
        RedisUsageAggregates::start(conn, config.with_prefix(prefix.clone())),
        prefix,
    ))
}

/// 40 tasks record 2 000 events through two instances sharing one Redis, at instants on
/// both sides of hour, day and month boundaries: every aggregate equals the in-memory
/// reference, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn totals_are_exact_across_instances_and_bucket_edges() {
    let config = config()
        .with_flush_interval(Duration::from_millis(5))
        .with_flush_events(50);
    let Some((a, prefix)) = aggregates(config.clone()).await else {
        return;
    };
    let conn = support::redis_conn().await.unwrap();
    let b = RedisUsageAggregates::start(conn, config.with_prefix(prefix));
    let reference = Arc::new(MemoryUsageSink::new(0));

    let users: Vec<UserId> = (0..3).map(|_| UserId::new()).collect();
    let keys: Vec<ApiKeyId> = (0..4).map(|_| ApiKeyId::new()).collect();
    let models = ["gpt-4o", "gpt-4o-mini", "o3:high/?"];
    let ms = chrono::Duration::milliseconds(1);
    let instants = [
        Utc.with_ymd_and_hms(2025, 1, 31, 23, 0, 0).unwrap() - ms,
        Utc.with_ymd_and_hms(2025, 1, 31, 23, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2025, 2, 1, 0, 0, 0).unwrap() - ms,
        Utc.with_ymd_and_hms(2025, 2, 1, 0, 0, 0).unwrap(),
    ];
    let costs = ["0.000003", "0.012345678", "1.5", "0", "0.000000001"];

    let mut tasks = Vec::new();
    for t in 0..40usize {
        let sink = if t % 2 == 0 { a.clone() } else { b.clone() };
        let reference = reference.clone();
        let (users, keys) = (users.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50usize {
                let j = t * 50 + i;
                let e = event(
                    &users[j % 3],
                    &keys[j % 4],
                    models[j % 3],
                    costs[j % 5],
                    u64::try_from(j).unwrap(),
                    instants[(j / 7) % 4],
                );
                reference.record(e.clone()).await;
                sink.record(e).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (sa, sb) = (a.shutdown().await.unwrap(), b.shutdown().await.unwrap());
    assert_eq!(sa.events + sb.events, 2000);
    assert_eq!(sa.flushed_events + sb.flushed_events, 2000);

    let mut scopes: Vec<Scope> = users.iter().map(|u| Scope::User(u.to_string())).collect();
    scopes.extend(keys.iter().map(|k| Scope::Key(k.to_string())));
    scopes.extend(models.iter().map(|m| Scope::Model((*m).to_owned())));
    let mut nonzero = 0;
    for scope in &scopes {
        for g in GRANULARITIES {
            for at in instants {
                let expected = reference.totals(scope, g, at);
                let got = a.totals(scope, g, at).await.unwrap();
                assert_eq!(got, expected, "{scope:?} {g:?} {at}");
                if expected.usage.requests > 0 {
                    nonzero += 1;
                }
            }
        }
    }
    assert_eq!(nonzero, scopes.len() * 3 * 4);
    // The monthly bucket of February holds only the last instant's events.
    let feb = a
        .totals(
            &Scope::Model("gpt-4o".into()),
            Granularity::Monthly,
            instants[3],
        )
        .await
        .unwrap();
    let jan = a
        .totals(
            &Scope::Model("gpt-4o".into()),
            Granularity::Monthly,
            instants[0],
        )
        .await
        .unwrap();
    assert!(feb.usage.requests > 0 && jan.usage.requests > feb.usage.requests);
}

/// 500 events of one key, user, model and hour are one script call; 200 keys (606
/// distinct hashes) are two.
#[tokio::test]
async fn one_round_trip_per_flush() {
    let config = config()
        .with_flush_interval(Duration::from_secs(3600))
        .with_flush_events(1_000_000);
    let Some((agg, _)) = aggregates(config).await else {
        return;
    };
    let (user, key) = (UserId::new(), ApiKeyId::new());
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 30, 0).unwrap();
    for n in 0..500 {
        agg.record(event(&user, &key, "m", "0.000001", n, at)).await;
    }
    let stats = agg.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (stats.round_trips, stats.flushes, stats.flushed_events),
        (1, 1, 500)
    );
    let totals = agg
        .totals(&Scope::Key(key.to_string()), Granularity::Hourly, at)
        .await
        .unwrap();
    assert_eq!(totals.usage.requests, 500);
    assert_eq!(totals.usage.input_tokens, (0..500).sum::<u64>());
    assert_eq!(totals.cost, Decimal::from_str("0.0005").unwrap());

    let user2 = UserId::new();
    for _ in 0..200 {
        agg.record(event(&user2, &ApiKeyId::new(), "m", "1", 1, at))
            .await;
    }
    let stats = agg.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (stats.round_trips, stats.flushes, stats.flushed_events),
        (3, 3, 700)
    );
    let totals = agg
        .totals(&Scope::User(user2.to_string()), Granularity::Daily, at)
        .await
        .unwrap();
    assert_eq!(totals.usage.requests, 200);
    assert_eq!(totals.cost, Decimal::from(200));
    agg.shutdown().await.unwrap();
}

/// Costs are counted in nano-units, each event's rounded up.
#[tokio::test]
async fn sub_nano_costs_round_up_per_event() {
    let Some((agg, _)) = aggregates(config()).await else {
        return;
    };
    let (user, key) = (UserId::new(), ApiKeyId::new());
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    for _ in 0..3 {
        agg.record(event(&user, &key, "m", "0.0000000001", 1, at))
            .await;
    }
    agg.record(event(&user, &key, "m", "0.0000000020", 1, at))
        .await;
    agg.shutdown().await.unwrap();
    let totals = agg
        .totals(&Scope::Key(key.to_string()), Granularity::Monthly, at)
        .await
        .unwrap();
    assert_eq!(totals.cost, Decimal::from_str("0.000000005").unwrap());
}

/// Buckets expire after their retention; a cost in another currency is kept apart.
#[tokio::test]
async fn buckets_expire_and_currencies_stay_apart() {
    let config = config();
    let Some((agg, _)) = aggregates(config).await else {
        return;
    };
    let (user, key) = (UserId::new(), ApiKeyId::new());
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    agg.record(event(&user, &key, "m", "2", 1, at)).await;
    let mut eur = event(&user, &key, "m", "5", 1, at);
    eur.cost = Money::new(Decimal::from(5), Currency::EUR);
    agg.record(eur).await;
    agg.shutdown().await.unwrap();

    let scope = Scope::Key(key.to_string());
    let mut conn = support::redis_conn().await.unwrap();
    let ttl = |g| {
        let key = agg.redis_key(&scope, g, at);
        let mut conn = conn.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let hourly = ttl(Granularity::Hourly).await;
    let daily = ttl(Granularity::Daily).await;
    let monthly = ttl(Granularity::Monthly).await;
    assert!(hourly > 0 && hourly <= 3600, "{hourly}");
    assert!(daily > 3600 && daily <= 7200, "{daily}");
    assert!(monthly > 7200 && monthly <= 10_800, "{monthly}");

    let totals = agg.totals(&scope, Granularity::Daily, at).await.unwrap();
    assert_eq!(totals.usage.requests, 2);
    assert_eq!(totals.cost, Decimal::from(2), "USD only");
    let fields: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(agg.redis_key(&scope, Granularity::Daily, at))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fields.get("cost:EUR"), Some(&5_000_000_000));
}

/// Bad input and corrupt data get clear errors; a second shutdown is refused.
#[tokio::test]
async fn bad_input_and_corrupt_data() {
    let Some((agg, _)) = aggregates(config()).await else {
        return;
    };
    let at = Utc::now();
    let empty = agg
        .totals(&Scope::Model(String::new()), Granularity::Hourly, at)
        .await;
    assert!(matches!(empty, Err(RedisSinkError::InvalidInput(_))));
    // Nothing recorded: zero totals, not an error.
    let none = agg
        .totals(&Scope::Model("nothing".into()), Granularity::Hourly, at)
        .await
        .unwrap();
    assert_eq!(none.usage, Usage::default());

    let scope = Scope::User(UserId::new().to_string());
    let mut conn = support::redis_conn().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(agg.redis_key(&scope, Granularity::Daily, at))
        .arg("in")
        .arg("not a number")
        .query_async(&mut conn)
        .await
        .unwrap();
    let corrupt = agg.totals(&scope, Granularity::Daily, at).await;
    assert!(matches!(corrupt, Err(RedisSinkError::Corrupt { .. })));

    agg.shutdown().await.unwrap();
    assert!(matches!(agg.shutdown().await, Err(RedisSinkError::Closed)));
}

/// With room for only one event's hashes in process, 30 concurrent recorders wait for
/// flushes (back-pressure) and every event is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn back_pressure_waits_and_counts_everything() {
    let config = config()
        .with_max_pending_hashes(9)
        .with_flush_interval(Duration::from_millis(2));
    let Some((agg, _)) = aggregates(config).await else {
        return;
    };
    let user = UserId::new();
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (agg, user) = (agg.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                agg.record(event(&user, &ApiKeyId::new(), "m", "0.001", 1, at))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = agg.shutdown().await.unwrap();
    assert_eq!(stats.flushed_events, 300);
    assert!(stats.flushes > 1);
    let totals = agg
        .totals(&Scope::User(user.to_string()), Granularity::Hourly, at)
        .await
        .unwrap();
    assert_eq!(totals.usage.requests, 300);
    assert_eq!(totals.cost, Decimal::from_str("0.3").unwrap());
}

/// A TCP proxy to the test Redis that can be killed (listener and connections).
async fn killable_proxy() -> (
    String,
    Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) {
    let target = support::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tasks = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let registry = tasks.clone();
    let accept = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            registry.lock().push(tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }));
        }
    });
    tasks.lock().push(accept);
    (format!("redis://{addr}"), tasks)
}

/// Redis goes away: shutdown retries until its deadline, then reports how many events
/// it could not add instead of pretending they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_reports_unflushed_events() {
    if support::redis_conn().await.is_none() {
        return;
    }
    let (url, proxy) = killable_proxy().await;
    let agg = RedisUsageAggregates::connect(
        &url,
        config()
            .with_prefix(support::unique_prefix())
            .with_flush_interval(Duration::from_secs(3600))
            .with_timeout(Duration::from_millis(100))
            .with_retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
            .with_shutdown_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    for task in proxy.lock().drain(..) {
        task.abort();
    }
    let (user, key) = (UserId::new(), ApiKeyId::new());
    for _ in 0..10 {
        agg.record(event(&user, &key, "m", "1", 1, Utc::now()))
            .await;
    }
    let flushed = agg.flush(Duration::from_millis(100)).await;
    assert!(
        matches!(flushed, Err(RedisSinkError::Unflushed { events: 10 })),
        "{flushed:?}"
    );
    let result = agg.shutdown().await;
    assert!(
        matches!(result, Err(RedisSinkError::Unflushed { events: 10 })),
        "{result:?}"
    );
    let stats = agg.stats();
    assert_eq!(
        (stats.events, stats.flushed_events, stats.flushes),
        (10, 0, 0)
    );
    assert!(stats.retries >= 1);
}

/// Throughput figures (not a pass/fail test): `cargo test --release --features redis
/// --test sink_redis figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints throughput figures"]
async fn figures() {
    const N: u64 = 200_000;
    let Some((agg, _)) = aggregates(config()).await else {
        return;
    };
    let users: Vec<UserId> = (0..100).map(|_| UserId::new()).collect();
    let keys: Vec<ApiKeyId> = (0..200).map(|_| ApiKeyId::new()).collect();
    let at = Utc::now();
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (agg, users, keys) = (agg.clone(), users.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..N / 16 {
                let j = usize::try_from(t * N + i).unwrap();
                agg.record(event(
                    &users[j % 100],
                    &keys[j % 200],
                    ["a", "b", "c"][j % 3],
                    "0.000123",
                    10,
                    at,
                ))
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let recorded = start.elapsed();
    let stats = agg.shutdown().await.unwrap();
    let took = start.elapsed();
    println!(
        "redis aggregates: {N} events recorded in {recorded:.2?} ({:.0}/s), all in Redis after {took:.2?}; {} round trips ({:.0} events per round trip)",
        N as f64 / recorded.as_secs_f64(),
        stats.round_trips,
        N as f64 / stats.round_trips as f64
    );
}
