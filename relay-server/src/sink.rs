//! The usage sink the gateway meters into: real-time aggregates in memory and durable
//! records in the database ([`FanOutSink`]), with every event also counted in Prometheus
//! metrics.

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
        crate::metrics::usage(event.service, &event.model, &event.usage, nano);
        crate::metrics::metered(event.outcome.as_str());
        self.inner.record(event).await;
    }
}

/// Hands every event to each of its sinks, in order (the gateway puts the durable writer,
/// whose `record` may wait for room in its queue, before the in-memory aggregates).
#[derive(Debug, Clone)]
pub struct FanOutSink {
    sinks: Vec<Arc<dyn UsageSink>>,
}

impl FanOutSink {
    /// Every event goes to each of `sinks`.
    pub fn new(sinks: Vec<Arc<dyn UsageSink>>) -> Self {
        Self { sinks }
    }
}

#[async_trait]
impl UsageSink for FanOutSink {
    async fn record(&self, event: UsageEvent) {
        if let Some((last, first)) = self.sinks.split_last() {
            for sink in first {
                sink.record(event.clone()).await;
            }
            last.record(event).await;
        }
    }
}
