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
            SettleOutcome::Queued
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
        // Queued, and the duplicate ignored when the next admission applies them.
        for _ in 0..2 {
            assert_eq!(
                limiter.settle(&held, 10, 0).await.expect("answers"),
                SettleOutcome::Queued
            );
        }
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

mod settlement {
    //! Settlement notes (one `APPEND` each), as the next admission, heartbeats and the
    //! in-flight count read them.

    use std::sync::Arc;
    use std::time::Duration;

    use chrono::TimeZone;
    use redis::AsyncCommands;
    use relay_core::{
        ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, ManualClock, Money, RequestId, Service,
    };
    use relay_usage::limiter::redis::RedisLimiter;
    use relay_usage::limiter::{cost_units, Limiter};
    use relay_usage::{AdmissionRequest, Denial, SettleOutcome, Ticket};
    use rust_decimal::Decimal;

    use super::support;

    const TTL: Duration = Duration::from_secs(10);

    struct Case {
        clock: ManualClock,
        limiter: RedisLimiter,
        conn: redis::aio::ConnectionManager,
        key: ApiKeyId,
        policy: Arc<KeyPolicy>,
    }

    /// A key with a total budget of 10 USD and at most 3 requests in flight.
    async fn case() -> Option<Case> {
        let conn = support::redis_conn().await?;
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 5, 10, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let clock = ManualClock::new(start);
        let limiter = RedisLimiter::new(conn.clone(), Arc::new(clock.clone()))
            .with_prefix(support::unique_prefix())
            .with_lease_ttl(TTL);
        let policy = Arc::new(KeyPolicy {
            concurrency: Some(3),
            budgets: vec![Budget {
                period: BudgetPeriod::Total,
                cap: Money::new(Decimal::TEN, Currency::USD),
            }],
            ..KeyPolicy::default()
        });
        Some(Case {
            clock,
            limiter,
            conn,
            key: ApiKeyId::new(),
            policy,
        })
    }

    fn usd(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("amount")
    }

    impl Case {
        async fn try_admit(&self, cost: &str) -> Result<Ticket, Denial> {
            let rid = RequestId::new();
            let req = AdmissionRequest {
                key: &self.key,
                policy: &self.policy,
                service: Service::Openai,
                model: "gpt-4o",
                user_agent: None,
                ip: None,
                estimated_tokens: 0,
                estimated_cost: usd(cost),
                min_cost: Decimal::ZERO,
                request_id: &rid,
            };
            self.limiter.admit(&req).await.expect("answers")
        }

        async fn admit(&self, cost: &str) -> Ticket {
            self.try_admit(cost).await.expect("admitted")
        }

        async fn settle(&self, t: &Ticket, cost: &str) {
            let outcome = self
                .limiter
                .settle(t, 0, cost_units(usd(cost)))
                .await
                .expect("answers");
            assert_eq!(outcome, SettleOutcome::Queued);
        }

        /// Exactly `room` USD of the budget is left.
        async fn assert_room(&self, room: &str) {
            let over = usd(room) + Decimal::new(1, 9);
            assert!(
                matches!(
                    self.try_admit(&over.to_string()).await,
                    Err(Denial::Budget { .. })
                ),
                "more than {room} left"
            );
            self.admit(room).await;
        }

        async fn raw(&self) -> Option<Vec<u8>> {
            let mut conn = self.conn.clone();
            conn.get(self.limiter.redis_key(&self.key))
                .await
                .expect("get")
        }
    }

    #[tokio::test]
    async fn settling_twice_counts_the_first_settlement_once() {
        let Some(c) = case().await else {
            return;
        };
        let t = c.admit("4").await;
        c.settle(&t, "1").await;
        c.settle(&t, "3").await;
        let (leases, notes) = support::records(&c.raw().await.expect("state"));
        assert_eq!((leases.len(), notes.len()), (1, 2));
        // Spent 1: the first settlement, once.
        c.assert_room("9").await;
        let (leases, notes) = support::records(&c.raw().await.expect("state"));
        assert_eq!(
            (leases.len(), notes.len()),
            (1, 0),
            "notes are folded, not kept"
        );
    }

    #[tokio::test]
    async fn a_settlement_after_the_lease_expired_is_ignored() {
        let Some(c) = case().await else {
            return;
        };
        let t = c.admit("4").await;
        c.clock.advance(chrono::Duration::milliseconds(
            i64::try_from(TTL.as_millis()).expect("ms") + 1,
        ));
        c.settle(&t, "1").await;
        assert_eq!(c.limiter.in_flight(&c.key).await.expect("answers"), 0);
        // The estimate stays counted.
        c.assert_room("6").await;
    }

    #[tokio::test]
    async fn a_settlement_on_a_deleted_state_leaves_no_orphan() {
        let Some(c) = case().await else {
            return;
        };
        let t = c.admit("4").await;
        let mut conn = c.conn.clone();
        let _: () = conn.del(c.limiter.redis_key(&c.key)).await.expect("del");
        c.settle(&t, "1").await;
        assert_eq!(c.raw().await, None, "the orphan note was deleted");
        // The next admission starts afresh.
        c.assert_room("10").await;
    }

    #[tokio::test]
    async fn a_notes_only_string_counts_as_no_state() {
        let Some(c) = case().await else {
            return;
        };
        let t = c.admit("4").await;
        let mut conn = c.conn.clone();
        let state = c.limiter.redis_key(&c.key);
        let raw = c.raw().await.expect("state");
        // What APPENDs leave when the orphan could not be deleted: notes only (here the
        // lease's record turned into a note: a negative second value), twice.
        let mut orphan = raw[raw.len() - 32..].to_vec();
        orphan[8..16].copy_from_slice(&(-1.0e12f64).to_le_bytes());
        let _: () = conn.set(&state, &orphan).await.expect("set");
        let _: u64 = conn.append(&state, &orphan).await.expect("append");
        assert_eq!(c.limiter.in_flight(&c.key).await.expect("answers"), 0);
        assert!(!c.limiter.heartbeat(&t).await.expect("answers"));
        let ttl: i64 = conn.pttl(&state).await.expect("pttl");
        assert_eq!(ttl, -1, "an orphan has no TTL");
        c.assert_room("10").await;
        let (leases, notes) = support::records(&c.raw().await.expect("state"));
        assert_eq!((leases.len(), notes.len()), (1, 0));
    }

    #[tokio::test]
    async fn a_settled_lease_is_not_extended_nor_in_flight_before_the_next_admission() {
        let Some(c) = case().await else {
            return;
        };
        let ttl = i64::try_from(TTL.as_millis()).expect("ms");
        let a = c.admit("1").await;
        let b = c.admit("1").await;
        c.settle(&a, "0.5").await;
        // Not yet folded: both leases are still in the state, one with its note.
        let (leases, notes) = support::records(&c.raw().await.expect("state"));
        assert_eq!((leases.len(), notes.len()), (2, 1));
        assert_eq!(c.limiter.in_flight(&c.key).await.expect("answers"), 1);
        c.clock.advance(chrono::Duration::milliseconds(ttl / 2));
        assert!(!c.limiter.heartbeat(&a).await.expect("answers"));
        assert!(c.limiter.heartbeat(&b).await.expect("answers"));
        // Only b's expiry moved.
        let (leases, _) = support::records(&c.raw().await.expect("state"));
        let mut expiries: Vec<i64> = leases.iter().map(|&(_, e)| e).collect();
        expiries.sort_unstable();
        let t0 = a.admitted_at_ms;
        assert_eq!(expiries, vec![t0 + ttl, t0 + ttl / 2 + ttl]);
        assert_eq!(c.limiter.in_flight(&c.key).await.expect("answers"), 1);
        c.assert_room("8.5").await;
    }

    #[tokio::test]
    async fn a_record_settled_in_place_by_the_previous_version_is_folded() {
        let Some(c) = case().await else {
            return;
        };
        let t = c.admit("4").await;
        let mut conn = c.conn.clone();
        let state = c.limiter.redis_key(&c.key);
        let raw = c.raw().await.expect("state");
        let first = f64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as isize - 1;
        // The previous settle.lua overwrote the lease's record: settle time,
        // -1 - admitted at, token delta, cost delta (actual 1 of the estimated 4).
        let mut record = Vec::new();
        for v in [
            (t.admitted_at_ms + 5) as f64,
            (-1 - t.admitted_at_ms) as f64,
            0.0,
            -3.0e9,
        ] {
            record.extend_from_slice(&v.to_le_bytes());
        }
        let _: () = conn
            .setrange(&state, first, record)
            .await
            .expect("setrange");
        assert_eq!(c.limiter.in_flight(&c.key).await.expect("answers"), 0);
        c.assert_room("9").await;
    }
}

mod per_thread {
    //! `with_connection_per_thread`: each thread (each with a runtime of its own) talks to
    //! Redis on its own connection, all of them counting into one state.

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use redis::AsyncCommands;
    use relay_core::{ApiKeyId, KeyPolicy, RateWindow, RequestId, Service, SystemClock};
    use relay_usage::limiter::redis::RedisLimiter;
    use relay_usage::limiter::Limiter;
    use relay_usage::AdmissionRequest;
    use rust_decimal::Decimal;

    use super::support;

    /// Admit `n` requests for `key` on `threads` threads, each with its own
    /// single-threaded runtime; the number admitted.
    fn admit_on_threads(limiter: &RedisLimiter, key: &ApiKeyId, threads: usize, n: usize) -> u32 {
        let policy = Arc::new(KeyPolicy {
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(90),
                max_tokens: None,
                max_cost: None,
            }],
            ..KeyPolicy::default()
        });
        let admitted = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (limiter, policy, admitted) =
                    (limiter.clone(), policy.clone(), admitted.clone());
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        for _ in 0..n {
                            let rid = RequestId::new();
                            let req = AdmissionRequest {
                                key,
                                policy: &policy,
                                service: Service::Openai,
                                model: "gpt-4o",
                                user_agent: None,
                                ip: None,
                                estimated_tokens: 10,
                                estimated_cost: Decimal::ZERO,
                                min_cost: Decimal::ZERO,
                                request_id: &rid,
                            };
                            if limiter.admit(&req).await.expect("answers").is_ok() {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                });
            }
        });
        admitted.load(Ordering::Relaxed)
    }

    async fn exists(url: &str, key: &str) -> bool {
        let client = redis::Client::open(url).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        conn.exists(key).await.expect("EXISTS")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threads_count_into_one_state_on_their_own_connections() {
        let Some(shared) = support::redis_conn().await else {
            return;
        };
        // The threads' connections use database 1, the shared one database 0: where the
        // state lands shows which connection carried the commands.
        let db1 = format!("{}/1", support::redis_url().trim_end_matches('/'));
        let limiter = RedisLimiter::new(shared, Arc::new(SystemClock))
            .with_prefix(support::unique_prefix())
            .with_connection_per_thread(redis::Client::open(db1.as_str()).expect("url"));
        let key = ApiKeyId::new();
        let l = limiter.clone();
        let k = key.clone();
        let admitted = tokio::task::spawn_blocking(move || admit_on_threads(&l, &k, 3, 50))
            .await
            .expect("threads");
        assert_eq!(admitted, 90, "150 asked, 90 allowed across three threads");
        let redis_key = limiter.redis_key(&key);
        assert!(
            exists(&db1, &redis_key).await,
            "state written by the threads' connections"
        );
        assert!(!exists(&support::redis_url(), &redis_key).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_that_cannot_connect_uses_the_shared_connection() {
        let Some(shared) = support::redis_conn().await else {
            return;
        };
        let limiter = RedisLimiter::new(shared, Arc::new(SystemClock))
            .with_prefix(support::unique_prefix())
            .with_timeout(std::time::Duration::from_millis(500))
            .with_connection_per_thread(redis::Client::open("redis://127.0.0.1:1").expect("url"));
        let key = ApiKeyId::new();
        let l = limiter.clone();
        let k = key.clone();
        let admitted = tokio::task::spawn_blocking(move || admit_on_threads(&l, &k, 2, 10))
            .await
            .expect("threads");
        assert_eq!(admitted, 20);
        assert!(exists(&support::redis_url(), &limiter.redis_key(&key)).await);
    }
}
