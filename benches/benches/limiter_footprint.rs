//! Bytes per tracked key in the in-memory limiter, from the process's resident set size
//! before and after tracking 1M keys with the full benchmark policy (two windows, two
//! budgets, concurrency). Prints the figure; `cargo bench -p relay-benches --bench
//! limiter_footprint`. `LIMITER_FOOTPRINT_KEYS=100000` measures another key count: the
//! hash table grows in powers of two, so how full it is (and the bytes per key) depends on
//! the count, and 1M keys sits just past a growth step.

use std::sync::Arc;

use relay_core::{
    ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, RequestId, Service,
    SystemClock,
};
use relay_usage::{AdmissionRequest, MemoryLimiter};
use rust_decimal::Decimal;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::var("LIMITER_FOOTPRINT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1_000_000);
    let usd = |n: i64| Money::new(Decimal::from(n), Currency::USD);
    let policy = Arc::new(KeyPolicy {
        concurrency: Some(8),
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
        ..KeyPolicy::default()
    });
    // Ids are made before measuring: they belong to the caller, not the limiter.
    let keys: Vec<ApiKeyId> = (0..n).map(|_| ApiKeyId::new()).collect();
    let rid = RequestId::new();
    let limiter = MemoryLimiter::new(Arc::new(SystemClock));
    let before = rss_bytes();
    for key in &keys {
        let req = AdmissionRequest {
            key,
            policy: &policy,
            service: Service::Anthropic,
            model: "claude-sonnet-4-5",
            user_agent: None,
            ip: None,
            estimated_tokens: 1000,
            estimated_cost: Decimal::new(1, 2),
            min_cost: Decimal::ZERO,
            request_id: &rid,
        };
        if let Ok(ticket) = limiter.admit_now(&req) {
            limiter.settle_now(&ticket, 900, 9_000_000);
        }
    }
    let after = rss_bytes();
    println!(
        "limiter_footprint: {} keys tracked, {} bytes per key (RSS {} MiB -> {} MiB)",
        limiter.tracked_keys(),
        (after.saturating_sub(before)) / n as u64,
        before >> 20,
        after >> 20
    );
}
