//! Settlements spawned by ended bodies and not yet finished, so a server can wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

/// One settlement in progress; dropped when it finishes or its task is dropped.
#[derive(Debug)]
pub(crate) struct PendingSettlement(Arc<Pending>);

impl Pending {
    pub(crate) fn start(self: &Arc<Self>) -> PendingSettlement {
        self.count.fetch_add(1, Ordering::AcqRel);
        PendingSettlement(Arc::clone(self))
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            // Registered before the count is read, so a settlement finishing in between
            // still wakes this waiter.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for PendingSettlement {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
