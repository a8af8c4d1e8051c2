//! The Redis throttle: exact limits shared by several instances.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use relay_core::{ManualClock, Throttle, ThrottleDecision};
use relay_usage::RedisThrottle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_one_lockout() {
    let Some(conn) = support::redis_conn().await else {
        return;
    };
    let prefix = support::unique_prefix();
    let clock = ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default(),
    );
    let a = Arc::new(RedisThrottle::new(
        conn.clone(),
        Arc::new(clock.clone()),
        &prefix,
    ));
    let b = Arc::new(RedisThrottle::new(conn, Arc::new(clock.clone()), &prefix));
    let w = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let t = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            t.attempt("login:alice", 5, w)
                .await
                .expect("redis answers")
                .is_allowed()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.expect("task"));
    }
    assert_eq!(allowed, 5);
    clock.advance(chrono::Duration::seconds(30));
    match b.attempt("login:alice", 5, w).await.expect("answers") {
        ThrottleDecision::Limited { retry_after } => {
            assert_eq!(retry_after, Duration::from_secs(30))
        }
        other @ ThrottleDecision::Allowed { .. } => panic!("expected a lockout, got {other:?}"),
    }
    assert!(a
        .attempt("login:bob", 5, w)
        .await
        .expect("answers")
        .is_allowed());
    a.reset("login:alice").await.expect("reset");
    assert_eq!(
        b.attempt("login:alice", 5, w).await.expect("answers"),
        ThrottleDecision::Allowed { remaining: 4 }
    );
    clock.advance(chrono::Duration::seconds(61));
    for _ in 0..5 {
        assert!(a
            .attempt("login:alice", 5, w)
            .await
            .expect("answers")
            .is_allowed());
    }
}
