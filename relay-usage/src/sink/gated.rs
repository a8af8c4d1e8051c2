//! A sink that holds every event until its gate opens, for tests of what waits on
//! settlement (`MeteringLayer::settled`, a server's shutdown).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{MemoryUsageSink, UsageEvent, UsageSink};

/// Records into `inner` once a permit is added to `gate` (one per event).
#[derive(Debug, Clone)]
pub struct GatedSink {
    /// Add one permit per event to let through.
    pub gate: Arc<Semaphore>,
    /// Where events land once let through.
    pub inner: Arc<MemoryUsageSink>,
}

impl GatedSink {
    /// A closed gate in front of `inner`.
    pub fn closed(inner: Arc<MemoryUsageSink>) -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            inner,
        }
    }
}

#[async_trait]
impl UsageSink for GatedSink {
    async fn record(&self, event: UsageEvent) {
        let _open = self.gate.acquire().await;
        self.inner.record(event).await;
    }
}
