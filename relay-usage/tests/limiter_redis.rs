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
