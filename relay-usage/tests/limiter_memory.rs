//! The limiter conformance suite on the memory backend.

use std::sync::Arc;

use relay_usage::limiter::conformance::{Factory, LEASE_TTL};
use relay_usage::MemoryLimiter;

async fn factory() -> Option<Factory> {
    Some(Arc::new(|clock| {
        Arc::new(MemoryLimiter::new(clock).with_lease_ttl(LEASE_TTL))
    }))
}

relay_usage::limiter_conformance_tests!(factory());
