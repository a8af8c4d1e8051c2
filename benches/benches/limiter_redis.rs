//! Redis admit + settle with a full policy at 1, 16 and 64 concurrent tasks, beside a raw
//! one-`INCR` `EVALSHA` in the same run. Prints Redis server time per call from
//! `INFO commandstats`: the server runs commands on one thread, so its time per cycle (the
//! admission's `EVALSHA` plus the settlement's `APPEND`) is the ceiling of every gateway
//! instance together.
//!
//! Each task works on its own key (one request in flight per key, the common case); the
//! concurrency tests show many tasks on one key.
//!
//! Needs Redis on `RELAY_BENCH_REDIS` (default `redis://127.0.0.1:6379`); resets its stats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redis::aio::ConnectionManager;
use redis::Script;
use relay_core::{
    ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, RequestId, Service,
    SystemClock,
};
use relay_usage::limiter::redis::RedisLimiter;
use relay_usage::limiter::Limiter;
use relay_usage::AdmissionRequest;
use rust_decimal::Decimal;

fn policy() -> Arc<KeyPolicy> {
    let usd = |n: i64| Money::new(Decimal::from(n), Currency::USD);
    Arc::new(KeyPolicy {
        concurrency: Some(1000),
        rate_windows: vec![
            RateWindow {
                window_secs: 60,
                max_requests: Some(1 << 40),
                max_tokens: Some(1 << 50),
                max_cost: None,
            },
            RateWindow {
                window_secs: 3600,
                max_requests: None,
                max_tokens: None,
                max_cost: Some(usd(1_000_000)),
            },
        ],
        budgets: vec![
            Budget {
                period: BudgetPeriod::Daily,
                cap: usd(1_000_000),
            },
            Budget {
                period: BudgetPeriod::Monthly,
                cap: usd(1_000_000),
            },
        ],
        allowed_models: vec!["claude-*".into()],
        ..KeyPolicy::default()
    })
}

/// (calls, total µs) of `command` since the last reset.
async fn stat(conn: &mut ConnectionManager, command: &str) -> (f64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap_or_default();
    let prefix = format!("cmdstat_{command}:");
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (field("calls"), field("usec"))
}

async fn reset_stats(conn: &mut ConnectionManager) {
    let _: Result<(), _> = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await;
}

fn bench(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let url =
        std::env::var("RELAY_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let conn = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).ok()?;
        ConnectionManager::new(client).await.ok()
    });
    let Some(mut conn) = conn else {
        eprintln!("limiter_redis: Redis at {url} unreachable; skipping");
        return;
    };
    let limiter = Arc::new(
        RedisLimiter::new(conn.clone(), Arc::new(SystemClock))
            .with_prefix("relaybench")
            .with_timeout(Duration::from_secs(5)),
    );
    let raw = Arc::new(Script::new("return redis.call('INCR', KEYS[1])"));
    let policy = policy();
    let mut group = c.benchmark_group("limiter_redis");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    // One element = one raw script call, or one whole admit + settle cycle: criterion
    // prints client throughput beside the time.
    group.throughput(Throughput::Elements(1));
    for tasks in [1usize, 16, 64] {
        let keys: Arc<Vec<ApiKeyId>> = Arc::new((0..tasks).map(|_| ApiKeyId::new()).collect());
        rt.block_on(reset_stats(&mut conn));
        group.bench_with_input(
            BenchmarkId::new("raw_incr_evalsha", tasks),
            &tasks,
            |b, _| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (conn, raw, keys) = (conn.clone(), raw.clone(), keys.clone());
                    async move {
                        let per = iters / tasks as u64 + 1;
                        let start = Instant::now();
                        let mut handles = Vec::new();
                        for t in 0..tasks {
                            let (mut conn, raw, keys) = (conn.clone(), raw.clone(), keys.clone());
                            handles.push(tokio::spawn(async move {
                                let key = format!("relaybench:raw:{{{}}}", keys[t]);
                                for _ in 0..per {
                                    let _: Result<i64, _> =
                                        raw.key(&key).invoke_async(&mut conn).await;
                                }
                            }));
                        }
                        for h in handles {
                            let _ = h.await;
                        }
                        start.elapsed()
                    }
                })
            },
        );
        let (raw_calls, raw_total) = rt.block_on(stat(&mut conn, "evalsha"));
        let raw_usec = raw_total / raw_calls;
        rt.block_on(reset_stats(&mut conn));
        group.bench_with_input(
            BenchmarkId::new("relay_admit_settle", tasks),
            &tasks,
            |b, _| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (limiter, policy, keys) = (limiter.clone(), policy.clone(), keys.clone());
                    async move {
                        let per = iters / tasks as u64 + 1;
                        let start = Instant::now();
                        let mut handles = Vec::new();
                        for t in 0..tasks {
                            let (limiter, policy, keys) =
                                (limiter.clone(), policy.clone(), keys.clone());
                            handles.push(tokio::spawn(async move {
                                let rid = RequestId::new();
                                for _ in 0..per {
                                    let req = AdmissionRequest {
                                        key: &keys[t],
                                        policy: &policy,
                                        service: Service::Anthropic,
                                        model: "claude-sonnet-4-5",
                                        user_agent: None,
                                        ip: None,
                                        estimated_tokens: 4096,
                                        estimated_cost: Decimal::new(5, 2),
                                        min_cost: Decimal::new(1, 3),
                                        request_id: &rid,
                                    };
                                    if let Ok(Ok(ticket)) = limiter.admit(&req).await {
                                        let _ = limiter.settle(&ticket, 1500, 12_000_000).await;
                                    }
                                }
                            }));
                        }
                        for h in handles {
                            let _ = h.await;
                        }
                        start.elapsed()
                    }
                })
            },
        );
        // One admission script call per cycle; the settlement is one APPEND.
        let (cycles, admit_total) = rt.block_on(stat(&mut conn, "evalsha"));
        let (_, settle_total) = rt.block_on(stat(&mut conn, "append"));
        let (admit_usec, settle_usec) = (admit_total / cycles, settle_total / cycles);
        let cycle_usec = admit_usec + settle_usec;
        eprintln!(
            "limiter_redis tasks={tasks}: raw INCR script {raw_usec:.2} us/call; relay admit+settle {cycle_usec:.2} us per cycle (admit {admit_usec:.2}, settle {settle_usec:.2}); ratio {:.2}x",
            cycle_usec / raw_usec
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
