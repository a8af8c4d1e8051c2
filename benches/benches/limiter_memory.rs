//! In-memory admit + settle with a full policy, beside governor's keyed check, on the same
//! key counts and thread counts.
//!
//! The policy: concurrency 8, a 60 s window (requests and tokens) and a 1 h window (cost),
//! a daily and a monthly budget, and a model allow-list. governor's keyed check only counts
//! one GCRA cell per key; the ratio of the two is the figure the README reports.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use relay_core::{
    ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, RequestId, Service,
    SystemClock,
};
use relay_usage::{AdmissionRequest, MemoryLimiter};
use rust_decimal::Decimal;

const KEY_COUNTS: [usize; 3] = [1_000, 100_000, 1_000_000];

/// The key counts to run: `LIMITER_MEMORY_KEYS=1000,100000` picks some (handy under
/// callgrind, where setting up 1M keys takes minutes), default all.
fn key_counts() -> Vec<usize> {
    std::env::var("LIMITER_MEMORY_KEYS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| KEY_COUNTS.to_vec())
}

fn full_policy() -> Arc<KeyPolicy> {
    let usd = |n: i64| Money::new(Decimal::from(n), Currency::USD);
    Arc::new(KeyPolicy {
        concurrency: Some(8),
        rate_windows: vec![
            RateWindow {
                window_secs: 60,
                max_requests: Some(u64::MAX / 4),
                max_tokens: Some(u64::MAX / 4),
                max_cost: None,
            },
            RateWindow {
                window_secs: 3600,
                max_requests: None,
                max_tokens: None,
                max_cost: Some(usd(1_000_000_000)),
            },
        ],
        budgets: vec![
            Budget {
                period: BudgetPeriod::Daily,
                cap: usd(1_000_000_000),
            },
            Budget {
                period: BudgetPeriod::Monthly,
                cap: usd(1_000_000_000),
            },
        ],
        allowed_models: vec!["claude-*".into(), "gpt-4o".into()],
        ..KeyPolicy::default()
    })
}

/// xorshift: a cheap, repeatable spread over the key set.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

struct Setup {
    limiter: MemoryLimiter,
    keys: Vec<ApiKeyId>,
    rids: Vec<RequestId>,
    policy: Arc<KeyPolicy>,
}

fn setup(n: usize) -> Setup {
    let limiter = MemoryLimiter::new(Arc::new(SystemClock));
    let keys: Vec<ApiKeyId> = (0..n).map(|_| ApiKeyId::new()).collect();
    let rids: Vec<RequestId> = (0..1024).map(|_| RequestId::new()).collect();
    let policy = full_policy();
    let s = Setup {
        limiter,
        keys,
        rids,
        policy,
    };
    // Track every key before measuring, as a warm gateway would.
    for (i, k) in s.keys.iter().enumerate() {
        cycle(&s, k, &s.rids[i % s.rids.len()]);
    }
    s
}

#[inline(never)]
fn cycle(s: &Setup, key: &ApiKeyId, rid: &RequestId) {
    let req = AdmissionRequest {
        key,
        policy: &s.policy,
        service: Service::Anthropic,
        model: "claude-sonnet-4-5",
        user_agent: None,
        ip: None,
        estimated_tokens: 4096,
        estimated_cost: Decimal::new(5, 2),
        min_cost: Decimal::new(1, 3),
        request_id: rid,
    };
    if let Ok(ticket) = s.limiter.admit_now(&req) {
        s.limiter.settle_now(&ticket, 1500, 12_000_000);
    }
}

/// Kept out of line so callgrind can count it (`--toggle-collect=*governor_check*`).
#[inline(never)]
fn governor_check(gov: &DefaultKeyedRateLimiter<ApiKeyId>, key: &ApiKeyId) {
    let _ = black_box(gov.check_key(key));
}

fn run_threads(threads: usize, iters: u64, f: impl Fn(u64, &mut u64) + Sync) -> Duration {
    let per = iters / threads as u64 + 1;
    // Every thread runs `per` operations; the wall time covers `iters` of them in all.
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let f = &f;
            scope.spawn(move || {
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                for i in 0..per {
                    f(i, &mut state);
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter_memory");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for n in key_counts() {
        let s = setup(n);
        let gov = RateLimiter::keyed(Quota::per_second(NonZeroU32::MAX));
        for k in &s.keys {
            let _ = gov.check_key(k);
        }
        for threads in [1usize, 2] {
            group.bench_with_input(
                BenchmarkId::new(format!("relay_admit_settle/{threads}t"), n),
                &n,
                |b, _| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, |i, st| {
                            let k = &s.keys[(next(st) % n as u64) as usize];
                            cycle(&s, k, &s.rids[(i % 1024) as usize]);
                        })
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("governor_keyed_check/{threads}t"), n),
                &n,
                |b, _| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, |_, st| {
                            let k = &s.keys[(next(st) % n as u64) as usize];
                            governor_check(&gov, k);
                        })
                    })
                },
            );
        }
        eprintln!(
            "limiter_memory: {} keys tracked by relay, {} by governor",
            s.limiter.tracked_keys(),
            gov.len()
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
