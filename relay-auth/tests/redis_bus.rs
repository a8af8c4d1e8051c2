//! Cross-instance key-cache invalidation through Redis pub/sub, against the real server
//! (RELAY_TEST_REDIS; with CI=true an unreachable server fails).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::sync::Arc;
use std::time::Duration;

use relay_auth::keys::redis_bus::RedisKeyBus;
use relay_auth::store::memory::MemoryStore;
use relay_auth::{ApiKeyService, AuthStore, KeyRejection, NewKey};
use relay_core::{ManualClock, UserId};

const PEPPER: &[u8] = b"a pepper of at least thirty-two bytes!";

async fn redis_url() -> Option<String> {
    let url = std::env::var("RELAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable = match redis::Client::open(url.as_str()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if reachable {
        return Some(url);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Redis unreachable at {url} in CI"
    );
    eprintln!("notice: Redis at {url} unreachable; skipping");
    None
}

async fn instance(store: Arc<dyn AuthStore>, url: &str, channel: &str) -> Arc<ApiKeyService> {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let svc = ApiKeyService::new(store, PEPPER, clock).unwrap();
    let (bus, _task) = RedisKeyBus::start(url, channel, svc.cache().clone())
        .await
        .unwrap();
    Arc::new(svc.with_bus(bus))
}

/// Wait (bounded) until `check` holds; the assertion is on the outcome, not the time.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_instance_reaches_the_others() {
    let Some(url) = redis_url().await else { return };
    let channel = format!("relay-auth-test:{}", UserId::new());
    let store: Arc<dyn AuthStore> = Arc::new(MemoryStore::new());
    let user = relay_auth::test_utils::sample_user("bus");
    store.insert_user(&user).await.unwrap();
    let a = instance(store.clone(), &url, &channel).await;
    let b = instance(store.clone(), &url, &channel).await;
    let k = a
        .issue(
            &user.id,
            NewKey {
                name: "shared".into(),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    a.authenticate(&k.key).await.unwrap();
    b.authenticate(&k.key).await.unwrap();
    assert!(
        matches!(b.authenticate_cached(&k.key), Some(Ok(_))),
        "cached on b"
    );

    a.revoke(&k.record.id).await.unwrap();
    assert!(
        eventually(async || b.authenticate_cached(&k.key).is_none()).await,
        "b's cache entry was dropped by a's message"
    );
    assert_eq!(
        b.authenticate(&k.key).await.unwrap_err(),
        KeyRejection::Revoked
    );

    // User-wide invalidation travels too.
    let k2 = a
        .issue(
            &user.id,
            NewKey {
                name: "second".into(),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    b.authenticate(&k2.key).await.unwrap();
    a.invalidate_user(&user.id);
    assert!(eventually(async || b.authenticate_cached(&k2.key).is_none()).await);
}
