//! The usage sink the gateway meters into: real-time aggregates in memory, with every
//! event also counted in Prometheus metrics.

use std::sync::Arc;

use async_trait::async_trait;
use relay_usage::sink::{MemoryUsageSink, UsageEvent, UsageSink};

/// Counts events in metrics, then hands them to `inner`.
#[derive(Debug, Clone)]
pub struct ObservedSink {
    inner: Arc<dyn UsageSink>,
}

impl ObservedSink {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn UsageSink>) -> Self {
        Self { inner }
    }

    /// An observed in-memory sink keeping the last `keep` events, and the memory sink.
    pub fn memory(keep: usize) -> (Self, Arc<MemoryUsageSink>) {
        let memory = Arc::new(MemoryUsageSink::new(keep));
        (Self::new(memory.clone()), memory)
    }
}

#[async_trait]
impl UsageSink for ObservedSink {
    async fn record(&self, event: UsageEvent) {
        let nano = relay_usage::limiter::cost_units(event.cost.amount());
        crate::metrics::usage(event.service.as_str(), &event.model, &event.usage, nano);
        metrics::counter!("relay_metered_total", "outcome" => event.outcome.as_str()).increment(1);
        self.inner.record(event).await;
    }
}
