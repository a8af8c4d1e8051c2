//! One round trip per admission and per settlement, and at most four Redis commands per
//! admit + settle cycle, read from Redis `INFO commandstats`. (Alone in its test binary
//! because it resets the server's statistics.)

mod support;

use std::sync::Arc;

use relay_core::{
    ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, RequestId, Service,
    SystemClock,
};
use relay_usage::limiter::redis::RedisLimiter;
use relay_usage::limiter::Limiter;
use relay_usage::AdmissionRequest;
use rust_decimal_macros::dec;

/// Calls per command since the last `CONFIG RESETSTAT`, by command name.
fn all_calls(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(":calls=")?;
            let n = rest.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), n))
        })
        .collect()
}

fn calls(info: &str, command: &str) -> u64 {
    all_calls(info)
        .into_iter()
        .find_map(|(name, n)| (name == command).then_some(n))
        .unwrap_or(0)
}

#[tokio::test]
async fn one_evalsha_per_admission_and_one_append_per_settlement() {
    let Some(mut conn) = support::redis_conn().await else {
        return;
    };
    let limiter = RedisLimiter::new(conn.clone(), Arc::new(SystemClock))
        .with_prefix(support::unique_prefix());
    let key = ApiKeyId::new();
    let usd = |s: &str| Money::parse(s, Currency::USD).expect("amount");
    let policy = Arc::new(KeyPolicy {
        concurrency: Some(10),
        rate_windows: vec![
            RateWindow {
                window_secs: 60,
                max_requests: Some(1_000_000),
                max_tokens: Some(1_000_000_000),
                max_cost: None,
            },
            RateWindow {
                window_secs: 3600,
                max_requests: None,
                max_tokens: None,
                max_cost: Some(usd("1000")),
            },
        ],
        budgets: vec![
            Budget {
                period: BudgetPeriod::Daily,
                cap: usd("1000"),
            },
            Budget {
                period: BudgetPeriod::Monthly,
                cap: usd("10000"),
            },
        ],
        allowed_models: vec!["gpt-*".into()],
        ..KeyPolicy::default()
    });
    let cycle = || async {
        let rid = RequestId::new();
        let req = AdmissionRequest {
            key: &key,
            policy: &policy,
            service: Service::Openai,
            model: "gpt-4o",
            user_agent: None,
            ip: None,
            estimated_tokens: 2000,
            estimated_cost: dec!(0.02),
            min_cost: dec!(0.001),
            request_id: &rid,
        };
        let ticket = limiter
            .admit(&req)
            .await
            .expect("answers")
            .expect("admitted");
        limiter
            .settle(&ticket, 1500, 12_000_000)
            .await
            .expect("answers");
    };
    // Load the scripts first so NOSCRIPT retries do not count.
    cycle().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("resetstat");
    let n = 50;
    for _ in 0..n {
        cycle().await;
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info");
    // One script call per admission, which reads the state once and writes it once (the
    // counters and the lease in place, or the whole state when settlement notes are
    // folded in, as here); one plain APPEND per settlement. No TTL is read, and no
    // per-counter command is run.
    assert_eq!(calls(&info, "evalsha"), n, "{info}");
    assert_eq!(calls(&info, "get"), n, "{info}");
    assert_eq!(calls(&info, "set") + calls(&info, "setrange"), n, "{info}");
    assert_eq!(calls(&info, "append"), n, "{info}");
    // Nothing else (but the statistics commands themselves): four commands per cycle.
    let cycle_commands = ["evalsha", "get", "set", "setrange", "append"];
    let mut total = 0;
    for (name, count) in all_calls(&info) {
        if name == "info" || name.starts_with("config") {
            continue;
        }
        assert!(cycle_commands.contains(&name.as_str()), "{name}: {info}");
        total += count;
    }
    assert_eq!(total, 4 * n, "{info}");
}
