//! Several instances behind a load balancer: two gateways on one PostgreSQL schema and one
//! Redis share rate windows, concurrency, budgets, key revocation and usage records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use relay_core::{AccountStatus, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow};
use relay_usage::sink::{Granularity, Scope};
use rust_decimal::Decimal;
use serde_json::json;

fn chat() -> serde_json::Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello from two instances"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_limits_revocations_and_usage() {
    let Some(backend) = common::postgres_redis().await else {
        return;
    };
    let a = TestServer::start(&backend, None).await;
    let b = TestServer::start(&backend, None).await;

    // Four requests a minute, counted across both instances: alternate, then both refuse.
    let (key, key_id) = a
        .key(KeyPolicy {
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(4),
                max_tokens: None,
                max_cost: None,
            }],
            ..KeyPolicy::default()
        })
        .await;
    for (i, s) in [&a, &b, &a, &b].into_iter().enumerate() {
        let res = s.post("/v1/messages", &key, &chat()).await;
        assert_eq!(res.status(), 200, "request {i}");
    }
    for s in [&a, &b] {
        let res = s.post("/v1/messages", &key, &chat()).await;
        assert_eq!(res.status(), 429, "the window is shared");
        assert!(res.headers().contains_key("retry-after"));
    }

    // One budget across instances: spend recorded by either counts against both.
    let (budgeted, _) = a
        .key(KeyPolicy {
            budgets: vec![Budget {
                period: BudgetPeriod::Total,
                cap: Money::new(Decimal::new(2, 3), Currency::USD),
            }],
            ..KeyPolicy::default()
        })
        .await;
    let mut passed = 0;
    for i in 0..40 {
        let s = if i % 2 == 0 { &a } else { &b };
        let res = s.post("/v1/messages", &budgeted, &chat()).await;
        match res.status().as_u16() {
            200 => passed += 1,
            402 => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(passed >= 1, "the budget admits some calls");
    for s in [&a, &b] {
        let res = s.post("/v1/messages", &budgeted, &chat()).await;
        assert_eq!(res.status(), 402, "the budget is spent on both instances");
    }

    // A key revoked through one instance is refused by the other (its cache is told over
    // Redis), within a bounded wait.
    let (revoked, revoked_id) = a.key(KeyPolicy::default()).await;
    assert_eq!(
        b.post("/v1/messages", &revoked, &chat()).await.status(),
        200
    );
    assert!(a.state.keys.revoke(&revoked_id).await.unwrap());
    let mut refused = false;
    for _ in 0..100 {
        if b.post("/v1/messages", &revoked, &chat()).await.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "instance b still accepts a key revoked on instance a"
    );

    // An account frozen through one instance stops working on the other at once too.
    let (frozen, _) = a.key(KeyPolicy::default()).await;
    assert_eq!(b.post("/v1/messages", &frozen, &chat()).await.status(), 200);
    a.state
        .accounts
        .set_status(None, &a.user, AccountStatus::Frozen, "chargeback")
        .await
        .unwrap();
    let mut status = 200;
    for _ in 0..100 {
        status = b
            .post("/v1/messages", &frozen, &chat())
            .await
            .status()
            .as_u16();
        if status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(status, 402 | 403),
        "instance b still serves a frozen account: {status}"
    );

    // No lease is left behind on either instance, and both wrote their usage records
    // into the one database.
    assert_eq!(a.in_flight_settles(&key_id).await, 0);
    a.state.usage_writer.flush().await.unwrap();
    b.state.usage_writer.flush().await.unwrap();
    let from_a = a.state.usage.recent().len();
    let from_b = b.state.usage.recent().len();
    assert!(from_a > 0 && from_b > 0, "{from_a} / {from_b}");
    // The real-time aggregates in Redis count the shared key's four calls once each,
    // whichever instance served them.
    for s in [&a, &b] {
        let agg = s.state.usage_aggregates.as_ref().expect("Redis aggregates");
        agg.flush(Duration::from_secs(10)).await.unwrap();
    }
    let totals = a
        .state
        .usage_aggregates
        .as_ref()
        .unwrap()
        .totals(
            &Scope::Key(key_id.as_str().to_owned()),
            Granularity::Daily,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(totals.usage.requests, 4, "{totals:?}");
    let relay_server::db::Database::Postgres(pool) = &a.state.db else {
        panic!("PostgreSQL backend")
    };
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        usize::try_from(rows).unwrap(),
        from_a + from_b,
        "every metered request of both instances is recorded once"
    );
    a.stop().await;
    b.stop().await;
}
