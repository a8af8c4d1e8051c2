//! One round trip per admission and per settlement, read from Redis `INFO commandstats`.
//! (Alone in its test binary because it resets the server's statistics.)

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

fn calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn one_evalsha_per_admission_and_per_settlement() {
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
    // Exactly one script call per admission and one per settlement, and nothing else.
    assert_eq!(calls(&info, "evalsha"), 2 * n, "{info}");
    assert_eq!(calls(&info, "eval"), 0);
    // Inside the scripts, one read and one write each: an admission reads the state and
    // writes its counters and the lease in place, a settlement overwrites its lease's
    // record. No TTL is read, and no per-counter command is run.
    assert_eq!(calls(&info, "get"), 2 * n, "{info}");
    assert_eq!(
        calls(&info, "set") + calls(&info, "setrange"),
        2 * n,
        "{info}"
    );
    assert_eq!(
        calls(&info, "pttl")
            + calls(&info, "pexpire")
            + calls(&info, "hincrby")
            + calls(&info, "hset")
            + calls(&info, "zadd"),
        0,
        "{info}"
    );
}
