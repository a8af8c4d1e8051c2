//! A Redis connection per thread, opened on first use (see [`relay_core::PerThread`] for
//! why: a command on a connection driven by another thread's runtime goes there and back).

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use relay_core::PerThread;

/// How long a thread that could not open its connection uses the shared one before trying
/// again (so an unreachable address costs one connect timeout per thread per period, not
/// one per call).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A thread's connection, or when to try opening it again.
#[derive(Clone)]
enum Slot {
    Open(ConnectionManager),
    FailedUntil(Instant),
}

/// Opens and keeps one connection per thread; clones share them.
#[derive(Clone)]
pub(super) struct PerThreadConnections {
    client: redis::Client,
    slots: PerThread<Slot>,
}

impl PerThreadConnections {
    pub(super) fn new(client: redis::Client) -> Self {
        Self {
            client,
            slots: PerThread::new(),
        }
    }

    /// This thread's connection, opened (within `timeout`) if it has none; `None` when it
    /// cannot be opened (then for [`RETRY_AFTER`]), and the caller uses the shared one.
    pub(super) async fn get(&self, timeout: Duration) -> Option<ConnectionManager> {
        match self.slots.with(Slot::clone) {
            Some(Slot::Open(conn)) => return Some(conn),
            Some(Slot::FailedUntil(t)) if Instant::now() < t => return None,
            _ => {}
        }
        let opened = tokio::time::timeout(timeout, ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match opened {
            Ok(conn) => {
                // Another task of this thread may have opened one meanwhile: keep the first.
                if let Some(Slot::Open(first)) = self.slots.with(Slot::clone) {
                    return Some(first);
                }
                self.slots.set(Slot::Open(conn.clone()));
                Some(conn)
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY_AFTER, "opening this thread's Redis connection failed; using the shared one");
                self.slots
                    .set(Slot::FailedUntil(Instant::now() + RETRY_AFTER));
                None
            }
        }
    }
}
