//! Several Redis limiter instances sharing one real Redis, under real concurrency.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use relay_core::{
    ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, RequestId, Service,
    SystemClock,
};
use relay_usage::limiter::redis::{FailMode, RedisLimiter};
use relay_usage::limiter::{cost_units, Limiter};
use relay_usage::{admit, AdmissionRequest, Denial, SettleOutcome, WindowCap};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

async fn instances(n: usize, prefix: &str) -> Option<Vec<Arc<dyn Limiter>>> {
    let mut out: Vec<Arc<dyn Limiter>> = Vec::new();
    for _ in 0..n {
        // A connection per instance, as separate gateway processes would have.
        let conn = support::redis_conn().await?;
        out.push(Arc::new(
            RedisLimiter::new(conn, Arc::new(SystemClock))
                .with_prefix(prefix)
                .with_timeout(Duration::from_secs(5)),
        ));
    }
    Some(out)
}

fn request<'a>(
    key: &'a ApiKeyId,
    policy: &'a Arc<KeyPolicy>,
    rid: &'a RequestId,
    cost: Decimal,
) -> AdmissionRequest<'a> {
    AdmissionRequest {
        key,
        policy,
        service: Service::Openai,
        model: "gpt-4o",
        user_agent: None,
        ip: None,
        estimated_tokens: 1000,
        estimated_cost: cost,
        min_cost: cost / Decimal::TEN,
        request_id: rid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spend_never_exceeds_the_cap_by_more_than_the_estimate_error_in_flight() {
    let prefix = support::unique_prefix();
    let Some(limiters) = instances(4, &prefix).await else {
        return;
    };
    let key = ApiKeyId::new();
    let cap = dec!(10);
    let policy = Arc::new(KeyPolicy {
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: Money::new(cap, Currency::USD),
        }],
        ..KeyPolicy::default()
    });
    let estimate = dec!(0.10);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..400u32 {
        let limiter = limiters[i as usize % limiters.len()].clone();
        let (key, policy) = (key.clone(), policy.clone());
        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
        tasks.push(tokio::spawn(async move {
            let rid = RequestId::new();
            let req = request(&key, &policy, &rid, estimate);
            let ticket = match limiter.admit(&req).await.expect("redis answers") {
                Ok(t) => t,
                Err(Denial::Budget { .. }) => return None,
                Err(other) => panic!("unexpected denial {other:?}"),
            };
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            // Actual cost varies from 0.05 to 0.12: up to 0.02 above the estimate.
            let actual = dec!(0.05) + Decimal::new(i64::from(i % 8), 2);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let outcome = limiter
                .settle(&ticket, 900, cost_units(actual))
                .await
                .expect("redis answers");
            // Redis queues settlements for the key's next admission.
            assert_eq!(outcome, SettleOutcome::Queued);
            Some(actual)
        }));
    }
    let mut spent = Decimal::ZERO;
    let mut admitted = 0;
    for t in tasks {
        if let Some(actual) = t.await.expect("task") {
            spent += actual;
            admitted += 1;
        }
    }
    let max_error = dec!(0.02) * Decimal::from(max_in_flight.load(Ordering::SeqCst) as u64);
    assert!(admitted > 50, "only {admitted} admitted");
    assert!(admitted < 400, "the budget never refused anything");
    assert!(
        spent <= cap + max_error,
        "spent {spent} exceeds cap {cap} by more than the in-flight estimate error {max_error}"
    );
    // The budget admits exactly the settled actuals: the remaining room is cap - spent, to
    // the nano-unit (a request for one unit more is refused).
    let room = cap - spent;
    let probe = limiters[0].clone();
    if room > Decimal::ZERO {
        let rid = RequestId::new();
        assert!(probe
            .admit(&request(&key, &policy, &rid, room + dec!(0.000000001)))
            .await
            .expect("answers")
            .is_err());
        let rid = RequestId::new();
        assert!(probe
            .admit(&request(&key, &policy, &rid, room))
            .await
            .expect("answers")
            .is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrency_limit_is_never_exceeded() {
    let prefix = support::unique_prefix();
    let Some(limiters) = instances(3, &prefix).await else {
        return;
    };
    let key = ApiKeyId::new();
    let policy = Arc::new(KeyPolicy {
        concurrency: Some(5),
        ..KeyPolicy::default()
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let limiter = limiters[i % limiters.len()].clone();
        let (key, policy) = (key.clone(), policy.clone());
        let (in_flight, max_seen, admitted) =
            (in_flight.clone(), max_seen.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let rid = RequestId::new();
            let req = request(&key, &policy, &rid, Decimal::ZERO);
            match limiter.admit(&req).await.expect("redis answers") {
                Ok(ticket) => {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    admitted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    limiter.settle(&ticket, 0, 0).await.expect("redis answers");
                }
                Err(Denial::Concurrency { limit: 5, .. }) => {}
                Err(other) => panic!("unexpected denial {other:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert!(max_seen.load(Ordering::SeqCst) <= 5);
    assert!(admitted.load(Ordering::SeqCst) >= 5);
    assert_eq!(limiters[0].in_flight(&key).await.ok(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_half_the_requests_mid_flight_leaves_no_lease() {
    let prefix = support::unique_prefix();
    let Some(limiters) = instances(2, &prefix).await else {
        return;
    };
    let key = ApiKeyId::new();
    let policy = Arc::new(KeyPolicy {
        concurrency: Some(1000),
        ..KeyPolicy::default()
    });
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let limiter = limiters[i % limiters.len()].clone();
        let (key, policy) = (key.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            let rid = RequestId::new();
            let req = request(&key, &policy, &rid, dec!(0.01));
            let permit = admit(&limiter, &req)
                .await
                .expect("redis answers")
                .expect("admitted");
            // A long "stream": the half that gets cancelled never finishes it.
            tokio::time::sleep(Duration::from_millis(if i % 2 == 0 {
                3_600_000
            } else {
                5
            }))
            .await;
            permit
                .settle(500, dec!(0.005))
                .await
                .expect("redis answers");
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, t) in tasks.iter().enumerate() {
        if i % 2 == 0 {
            t.abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut left = u32::MAX;
    for _ in 0..400 {
        left = limiters[0].in_flight(&key).await.expect("answers");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0, "leases left after cancellation");
    // Nothing waits for expiry either: every lease in the state has its settlement note.
    let mut conn = support::redis_conn().await.expect("redis");
    let state_key = RedisLimiter::new(conn.clone(), Arc::new(SystemClock))
        .with_prefix(prefix.as_str())
        .redis_key(&key);
    let raw: Vec<u8> = conn.get(&state_key).await.expect("state");
    let (leases, notes) = support::records(&raw);
    assert!(
        leases.len() <= 200,
        "{} leases for 200 admissions",
        leases.len()
    );
    for (id, _) in &leases {
        assert!(notes.contains(id), "lease {id} has no settlement note");
    }
}

/// Three instances admit on one key, and each permit is settled by another instance than
/// the one that admitted it, some twice: concurrency and token window hold, the budget
/// counts each settlement exactly once, and no lease is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlements_interleaved_across_instances_count_once() {
    let prefix = support::unique_prefix();
    let Some(limiters) = instances(3, &prefix).await else {
        return;
    };
    let key = ApiKeyId::new();
    let usd = |d: Decimal| Money::new(d, Currency::USD);
    let policy = Arc::new(KeyPolicy {
        concurrency: Some(4),
        rate_windows: vec![RateWindow {
            window_secs: 3600,
            max_requests: None,
            max_tokens: Some(1_000_000),
            max_cost: None,
        }],
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: usd(dec!(1000)),
        }],
        ..KeyPolicy::default()
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..240usize {
        let admitter = limiters[i % 3].clone();
        let settler = limiters[(i + 1) % 3].clone();
        let again = limiters[(i + 2) % 3].clone();
        let (key, policy) = (key.clone(), policy.clone());
        let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
        tasks.push(tokio::spawn(async move {
            let rid = RequestId::new();
            // Estimate 0.10 and 1000 tokens; actual 0.01 to 0.08 and 100 tokens.
            let ticket = match admitter
                .admit(&request(&key, &policy, &rid, dec!(0.10)))
                .await
                .expect("redis answers")
            {
                Ok(t) => t,
                Err(Denial::Concurrency { limit: 4, .. }) => return None,
                Err(other) => panic!("unexpected denial {other:?}"),
            };
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let actual = Decimal::new(1 + i64::try_from(i % 8).unwrap_or(0), 2);
            let outcome = settler
                .settle(&ticket, 100, cost_units(actual))
                .await
                .expect("redis answers");
            assert_eq!(outcome, SettleOutcome::Queued);
            if i % 3 == 0 {
                // A retried settlement with other figures: ignored.
                again
                    .settle(&ticket, 5000, cost_units(dec!(0.5)))
                    .await
                    .expect("redis answers");
            }
            Some(actual)
        }));
    }
    let mut spent = Decimal::ZERO;
    let mut admitted = 0u64;
    for t in tasks {
        if let Some(actual) = t.await.expect("task") {
            spent += actual;
            admitted += 1;
        }
    }
    assert!(max_seen.load(Ordering::SeqCst) <= 4);
    assert!(admitted >= 4, "only {admitted} admitted");
    for l in &limiters {
        assert_eq!(l.in_flight(&key).await.ok(), Some(0));
    }
    // Budget room is exactly 1000 - spent (to the nano-unit), and the window holds 100
    // tokens per admitted request (1000 with the probe's).
    let room = dec!(1000) - spent;
    let probe = &limiters[1];
    let rid = RequestId::new();
    assert!(matches!(
        probe
            .admit(&request(&key, &policy, &rid, room + dec!(0.000000001)))
            .await
            .expect("answers"),
        Err(Denial::Budget { .. })
    ));
    let rid = RequestId::new();
    probe
        .admit(&request(&key, &policy, &rid, room))
        .await
        .expect("answers")
        .expect("the room is left");
    let rid = RequestId::new();
    let mut tokens = request(&key, &policy, &rid, Decimal::ZERO);
    tokens.estimated_tokens = 1_000_000 - 100 * admitted - 1000 + 1;
    assert!(matches!(
        probe.admit(&tokens).await.expect("answers"),
        Err(Denial::RateLimited {
            cap: WindowCap::Tokens,
            ..
        })
    ));
    tokens.estimated_tokens -= 1;
    probe
        .admit(&tokens)
        .await
        .expect("answers")
        .expect("fits to the token");
    // Only the probes' leases are left: every note was folded in and dropped.
    let mut conn = support::redis_conn().await.expect("redis");
    let state_key = RedisLimiter::new(conn.clone(), Arc::new(SystemClock))
        .with_prefix(prefix.as_str())
        .redis_key(&key);
    let raw: Vec<u8> = conn.get(&state_key).await.expect("state");
    let (leases, notes) = support::records(&raw);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(leases.len(), 2, "{leases:?}");
}

#[tokio::test]
async fn noscript_after_a_script_flush_is_handled() {
    let prefix = support::unique_prefix();
    let Some(limiters) = instances(1, &prefix).await else {
        return;
    };
    let key = ApiKeyId::new();
    let policy = Arc::new(KeyPolicy::default());
    let mut conn = support::redis_conn().await.expect("redis");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let rid = RequestId::new();
    let ticket = limiters[0]
        .admit(&request(&key, &policy, &rid, Decimal::ZERO))
        .await
        .expect("admission survives NOSCRIPT")
        .expect("admitted");
    // Settlement runs no script; the next admission and the in-flight count do.
    assert_eq!(
        limiters[0].settle(&ticket, 0, 0).await.expect("settles"),
        SettleOutcome::Queued
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    assert_eq!(
        limiters[0]
            .in_flight(&key)
            .await
            .expect("in_flight survives NOSCRIPT"),
        0
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let rid = RequestId::new();
    limiters[0]
        .admit(&request(&key, &policy, &rid, Decimal::ZERO))
        .await
        .expect("admission survives NOSCRIPT")
        .expect("admitted");
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed_or_open_as_configured() {
    let Some(proxy) = support::PausableProxy::start().await else {
        return;
    };
    let client = redis::Client::open(proxy.url()).expect("url");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connect through proxy");
    let closed = RedisLimiter::new(conn.clone(), Arc::new(SystemClock))
        .with_prefix(support::unique_prefix())
        .with_timeout(Duration::from_millis(100));
    let open = closed.clone().with_fail_mode(FailMode::Open);
    let key = ApiKeyId::new();
    let policy = Arc::new(KeyPolicy::default());
    let rid = RequestId::new();
    let req = request(&key, &policy, &rid, Decimal::ZERO);
    assert!(closed.admit(&req).await.expect("answers").is_ok());
    // Redis stops answering (a dead link: bytes go nowhere).
    proxy.pause();
    assert!(matches!(
        closed.admit(&req).await,
        Err(relay_usage::LimiterError::Unavailable(_))
    ));
    assert!(open.admit(&req).await.expect("fails open").is_ok());
}
