//! A Redis connection per thread, opened on first use.
//!
//! A multiplexed connection is driven by a task on the runtime that opened it. A server
//! that runs one single-threaded runtime per thread (as `relay-server` does) and shares
//! one connection sends every command through another thread and gets every reply back
//! the same way: two cross-thread wake-ups per command. Each thread's own connection keeps
//! a command on the thread that sends it.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// How long a thread that could not open its connection uses the shared one before trying
/// again (so an unreachable address costs one connect timeout per thread per period, not
/// one per call).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A thread's connection for one limiter, or when to try opening it again.
enum Slot {
    Open(ConnectionManager),
    FailedUntil(Instant),
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<(Weak<()>, Slot)>> = const { RefCell::new(Vec::new()) };
}

/// Opens and keeps one connection per thread; clones share them.
#[derive(Clone)]
pub(super) struct PerThreadConnections {
    client: redis::Client,
    /// Names this limiter's connections in each thread's list; an entry whose limiter is
    /// gone is dropped when the thread next opens one.
    owner: Arc<()>,
}

impl PerThreadConnections {
    pub(super) fn new(client: redis::Client) -> Self {
        Self {
            client,
            owner: Arc::new(()),
        }
    }

    /// This thread's slot: `Some(Some(conn))` open, `Some(None)` failed recently, `None`
    /// to be opened.
    fn find(&self) -> Option<Option<ConnectionManager>> {
        // A live `Weak` keeps its allocation, so an address is never reused while listed.
        let mine = Arc::as_ptr(&self.owner);
        CONNECTIONS.with_borrow(|list| {
            list.iter()
                .find(|(owner, _)| std::ptr::eq(owner.as_ptr(), mine))
                .and_then(|(_, slot)| match slot {
                    Slot::Open(conn) => Some(Some(conn.clone())),
                    Slot::FailedUntil(t) if Instant::now() < *t => Some(None),
                    Slot::FailedUntil(_) => None,
                })
        })
    }

    fn store(&self, slot: Slot) {
        let mine = Arc::as_ptr(&self.owner);
        CONNECTIONS.with_borrow_mut(|list| {
            list.retain(|(owner, _)| {
                owner.strong_count() > 0 && !std::ptr::eq(owner.as_ptr(), mine)
            });
            list.push((Arc::downgrade(&self.owner), slot));
        });
    }

    /// This thread's connection, opened (within `timeout`) if it has none; `None` when it
    /// cannot be opened (then for [`RETRY_AFTER`]), and the caller uses the shared one.
    pub(super) async fn get(&self, timeout: Duration) -> Option<ConnectionManager> {
        if let Some(found) = self.find() {
            return found;
        }
        let opened = tokio::time::timeout(timeout, ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY_AFTER, "opening this thread's Redis connection failed; using the shared one");
                self.store(Slot::FailedUntil(Instant::now() + RETRY_AFTER));
                return None;
            }
        };
        // Another task of this thread may have opened one meanwhile: keep the first.
        if let Some(Some(first)) = self.find() {
            return Some(first);
        }
        self.store(Slot::Open(conn.clone()));
        Some(conn)
    }
}
