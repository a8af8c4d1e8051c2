//! Shared test support: reaching the real Redis server.
#![allow(dead_code)]

use redis::aio::ConnectionManager;
use relay_core::ApiKeyId;

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, or `None` (with a notice) when it is not reachable
/// outside CI. In CI (`CI=true`) an unreachable server fails the test.
pub async fn redis_conn() -> Option<ConnectionManager> {
    let url = redis_url();
    let result = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = ConnectionManager::new(client).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    }
    .await;
    match result {
        Ok(c) => Some(c),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but Redis at {url} is unreachable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: Redis at {url} unreachable ({e})");
            None
        }
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!(
        "relaytest:{}",
        ApiKeyId::new().as_str().trim_start_matches("key_")
    )
}
