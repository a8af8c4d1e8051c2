//! The limiter conformance suite on the Redis backend (a real server on 127.0.0.1).

mod support;

use std::sync::Arc;

use relay_usage::limiter::conformance::{Factory, LEASE_TTL};
use relay_usage::limiter::redis::RedisLimiter;

async fn factory() -> Option<Factory> {
    let conn = support::redis_conn().await?;
    let prefix = support::unique_prefix();
    Some(Arc::new(move |clock| {
        Arc::new(
            RedisLimiter::new(conn.clone(), clock)
                .with_prefix(prefix.clone())
                .with_lease_ttl(LEASE_TTL),
        )
    }))
}

relay_usage::limiter_conformance_tests!(factory());

mod layout {
    //! Redis-specific edges of the state layout: policy sizes, policy changes with leases
    //! in flight, and states the scripts do not recognise.

    use std::sync::Arc;

    use redis::AsyncCommands;
    use relay_core::{
        ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, RequestId, Service,
        SystemClock,
    };
    use relay_usage::limiter::redis::RedisLimiter;
    use relay_usage::limiter::Limiter;
    use relay_usage::{AdmissionRequest, Denial, LimiterError, SettleOutcome, WindowCap};
    use rust_decimal::Decimal;

    use super::support;

    fn usd(n: i64) -> Money {
        Money::new(Decimal::from(n), Currency::USD)
    }

    fn request<'a>(
        key: &'a ApiKeyId,
        policy: &'a Arc<KeyPolicy>,
        rid: &'a RequestId,
        tokens: u64,
    ) -> AdmissionRequest<'a> {
        AdmissionRequest {
            key,
            policy,
            service: Service::Openai,
            model: "gpt-4o",
            user_agent: None,
            ip: None,
            estimated_tokens: tokens,
            estimated_cost: Decimal::new(1, 2),
            min_cost: Decimal::ZERO,
            request_id: rid,
        }
    }

    fn window(secs: u64, requests: Option<u64>, tokens: Option<u64>) -> RateWindow {
        RateWindow {
            window_secs: secs,
            max_requests: requests,
            max_tokens: tokens,
            max_cost: Some(usd(1000)),
        }
    }

    async fn limiter() -> Option<(RedisLimiter, redis::aio::ConnectionManager)> {
        let conn = support::redis_conn().await?;
        let limiter = RedisLimiter::new(conn.clone(), Arc::new(SystemClock))
            .with_prefix(support::unique_prefix());
        Some((limiter, conn))
    }

    #[tokio::test]
    async fn the_largest_policy_counts_every_window_and_budget() {
        let Some((limiter, _)) = limiter().await else {
            return;
        };
        // Eight windows with every cap, the last the tightest on tokens; eight budgets.
        let mut windows: Vec<RateWindow> = (1..=7)
            .map(|i| window(60 * i, Some(1000), Some(1_000_000)))
            .collect();
        windows.push(window(3600, Some(1000), Some(250)));
        let periods = [
            BudgetPeriod::Daily,
            BudgetPeriod::Weekly,
            BudgetPeriod::Monthly,
            BudgetPeriod::Total,
        ];
        let policy = Arc::new(KeyPolicy {
            concurrency: Some(8),
            rate_windows: windows,
            budgets: (0..8)
                .map(|i| Budget {
                    period: periods[i % 4],
                    cap: usd(100),
                })
                .collect(),
            ..KeyPolicy::default()
        });
        let key = ApiKeyId::new();
        let (a, b) = (RequestId::new(), RequestId::new());
        let first = limiter
            .admit(&request(&key, &policy, &a, 200))
            .await
            .expect("answers")
            .expect("admitted");
        // 200 + 100 tokens would pass the 3600 s window's cap of 250 only after settling.
        assert!(matches!(
            limiter
                .admit(&request(&key, &policy, &b, 100))
                .await
                .expect("answers"),
            Err(Denial::RateLimited {
                window_secs: 3600,
                cap: WindowCap::Tokens,
                ..
            })
        ));
        assert_eq!(
            limiter.settle(&first, 120, 0).await.expect("answers"),
            SettleOutcome::Settled
        );
        limiter
            .admit(&request(&key, &policy, &b, 100))
            .await
            .expect("answers")
            .expect("fits once the first request settled at 120 tokens");
        assert_eq!(limiter.in_flight(&key).await.expect("answers"), 1);
    }

    #[tokio::test]
    async fn a_policy_beyond_the_backends_limits_is_refused_and_nothing_is_written() {
        let Some((limiter, mut conn)) = limiter().await else {
            return;
        };
        let policy = Arc::new(KeyPolicy {
            rate_windows: (1..=9).map(|i| window(60 * i, Some(10), None)).collect(),
            ..KeyPolicy::default()
        });
        let key = ApiKeyId::new();
        let rid = RequestId::new();
        let err = limiter
            .admit(&request(&key, &policy, &rid, 1))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, LimiterError::Unavailable(m) if m.contains("at most 8 rate windows")),
            "{err}"
        );
        let exists: bool = conn.exists(limiter.redis_key(&key)).await.expect("exists");
        assert!(!exists);
    }

    #[tokio::test]
    async fn a_policy_change_keeps_the_leases_in_flight() {
        let Some((limiter, _)) = limiter().await else {
            return;
        };
        let key = ApiKeyId::new();
        let before = Arc::new(KeyPolicy {
            concurrency: Some(1),
            budgets: vec![Budget {
                period: BudgetPeriod::Daily,
                cap: usd(1),
            }],
            ..KeyPolicy::default()
        });
        let rid = RequestId::new();
        let held = limiter
            .admit(&request(&key, &before, &rid, 10))
            .await
            .expect("answers")
            .expect("admitted");
        // A new plan: a window added, the budget now monthly. The lease still counts.
        let after = Arc::new(KeyPolicy {
            concurrency: Some(1),
            rate_windows: vec![window(60, Some(5), None)],
            budgets: vec![Budget {
                period: BudgetPeriod::Monthly,
                cap: usd(1),
            }],
            ..KeyPolicy::default()
        });
        let other = RequestId::new();
        assert!(matches!(
            limiter
                .admit(&request(&key, &after, &other, 10))
                .await
                .expect("answers"),
            Err(Denial::Concurrency { limit: 1, .. })
        ));
        assert_eq!(
            limiter.settle(&held, 10, 0).await.expect("answers"),
            SettleOutcome::Settled
        );
        assert_eq!(
            limiter.settle(&held, 10, 0).await.expect("answers"),
            SettleOutcome::NotFound
        );
        limiter
            .admit(&request(&key, &after, &other, 10))
            .await
            .expect("answers")
            .expect("the lease was released");
    }

    #[tokio::test]
    async fn a_state_in_an_unknown_format_fails_closed_and_is_left_alone() {
        let Some((limiter, mut conn)) = limiter().await else {
            return;
        };
        let key = ApiKeyId::new();
        let state = limiter.redis_key(&key);
        let policy = Arc::new(KeyPolicy {
            rate_windows: vec![window(60, Some(5), None)],
            ..KeyPolicy::default()
        });
        // What an older version of the scripts wrote (a msgpack array), and random bytes.
        for garbage in [
            &[0x93u8, 0, 0, 0][..],
            b"not a limiter state at all, 41 bytes....",
        ] {
            let _: () = conn.set(&state, garbage).await.expect("set");
            let rid = RequestId::new();
            let err = limiter
                .admit(&request(&key, &policy, &rid, 1))
                .await
                .expect_err("fails closed");
            assert!(err.to_string().contains("unknown format"), "{err}");
            let after: Vec<u8> = conn.get(&state).await.expect("get");
            assert_eq!(after, garbage);
        }
    }
}
