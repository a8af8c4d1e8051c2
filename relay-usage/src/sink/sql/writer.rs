//! The batching writer: a bounded queue and one background task per writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{SinkError, UsageRecordStore};
use crate::sink::{UsageEvent, UsageSink};

/// Settings of a [`SqlUsageWriter`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    queue_capacity: usize,
    max_batch: usize,
    flush_interval: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            max_batch: 500,
            flush_interval: Duration::from_secs(1),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl WriterConfig {
    /// Events the queue holds before `record` waits (default 10 000; at least 1).
    pub fn with_queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Events per insert (default 500; at least 1, at most 1 000 to stay under the
    /// databases' limits on bound parameters).
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.clamp(1, 1_000);
        self
    }

    /// Longest time an event waits in a partial batch (default 1 s).
    pub fn with_flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d.max(Duration::from_millis(1));
        self
    }

    /// First and longest pause between retries of a failed write (default 50 ms, 5 s).
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_initial);
        self
    }

    /// How long [`SqlUsageWriter::shutdown`] keeps retrying (default 30 s).
    pub fn with_shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
}

/// What a writer has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushReport {
    /// Records inserted.
    pub written: u64,
    /// Events whose request id was already stored (a retried or repeated event).
    pub duplicates: u64,
    /// Events the database refused on their own (logged at `error` level).
    pub rejected: u64,
    /// Events recorded after shutdown began (logged at `error` level, not stored).
    pub refused: u64,
    /// Successful insert transactions.
    pub batches: u64,
    /// Failed write attempts that were retried.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Stats {
    written: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    batches: AtomicU64,
    retries: AtomicU64,
}

impl Stats {
    fn report(&self) -> FlushReport {
        FlushReport {
            written: self.written.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

type TaskHandle = JoinHandle<Result<FlushReport, SinkError>>;

enum Command {
    Event(Box<UsageEvent>),
    Flush(oneshot::Sender<FlushReport>),
}

/// Durable usage records through a bounded queue and a batching background task; see the
/// [module docs](super) for batching, retries and back-pressure.
///
/// Clones share the queue and the task.
#[derive(Debug, Clone)]
pub struct SqlUsageWriter {
    tx: mpsc::Sender<Command>,
    capacity: usize,
    max_batch: usize,
    /// Wakes the task for a flush or a full batch (see [`Task::fill_and_write`]).
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    shutdown: Arc<watch::Sender<Option<Instant>>>,
    task: Arc<Mutex<Option<TaskHandle>>>,
    shutdown_timeout: Duration,
}

impl SqlUsageWriter {
    /// Start a writer on `store` (spawns its task on the current tokio runtime).
    pub fn spawn(store: Arc<dyn UsageRecordStore>, config: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (shutdown, shutdown_rx) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let shutdown_timeout = config.shutdown_timeout;
        let capacity = config.queue_capacity;
        let max_batch = config.max_batch;
        let wake = Arc::new(Notify::new());
        let task = Task {
            store,
            config,
            rx,
            wake: Arc::clone(&wake),
            stats: stats.clone(),
            shutdown: shutdown_rx,
            batch: Vec::new(),
            waiting: Vec::new(),
        };
        let handle = tokio::spawn(task.run());
        Self {
            tx,
            capacity,
            max_batch,
            wake,
            stats,
            shutdown: Arc::new(shutdown),
            task: Arc::new(Mutex::new(Some(handle))),
            shutdown_timeout,
        }
    }

    /// Events waiting in the queue (not counting the batch being written).
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.tx.capacity())
    }

    /// What the writer has done so far.
    pub fn report(&self) -> FlushReport {
        self.stats.report()
    }

    /// Write every event recorded before this call, retrying as long as it takes.
    pub async fn flush(&self) -> Result<FlushReport, SinkError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Flush(done))
            .await
            .map_err(|_| SinkError::Closed)?;
        self.wake.notify_one();
        wait.await.map_err(|_| SinkError::Closed)
    }

    /// Stop accepting events, write everything accepted and stop the task. Retries until
    /// the shutdown timeout; events still unwritten then come back in
    /// [`SinkError::Unflushed`]. A second call answers [`SinkError::Closed`].
    pub async fn shutdown(&self) -> Result<FlushReport, SinkError> {
        let handle = self.task.lock().take().ok_or(SinkError::Closed)?;
        self.shutdown
            .send_replace(Some(Instant::now() + self.shutdown_timeout));
        match handle.await {
            Ok(result) => result,
            Err(e) => Err(SinkError::Corrupt(format!("usage writer task failed: {e}"))),
        }
    }
}

#[async_trait]
impl UsageSink for SqlUsageWriter {
    /// Queue the event, waiting for room when the queue is full.
    async fn record(&self, event: UsageEvent) {
        let sent = self.tx.send(Command::Event(Box::new(event))).await;
        if sent.is_ok() && self.queued() >= self.max_batch {
            // A batch is ready: no need to wait for the flush interval.
            self.wake.notify_one();
        }
        if let Err(mpsc::error::SendError(cmd)) = sent {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Command::Event(event) = cmd {
                tracing::error!(?event, "usage writer is shut down; usage event not stored");
            }
        }
    }
}

struct Task {
    store: Arc<dyn UsageRecordStore>,
    config: WriterConfig,
    rx: mpsc::Receiver<Command>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<Option<Instant>>,
    batch: Vec<UsageEvent>,
    /// Flush requests answered once the current batch is written.
    waiting: Vec<oneshot::Sender<FlushReport>>,
}

/// The writer gave up at the shutdown deadline.
struct GaveUp;

impl Task {
    async fn run(mut self) -> Result<FlushReport, SinkError> {
        if self.fill_and_write().await.is_err() {
            return Err(self.give_up());
        }
        // Shutdown: refuse new events, drain what was accepted.
        self.rx.close();
        while let Some(cmd) = self.rx.recv().await {
            self.take(cmd);
            if self.batch.len() >= self.config.max_batch && self.write().await.is_err() {
                return Err(self.give_up());
            }
        }
        if self.write().await.is_err() {
            return Err(self.give_up());
        }
        Ok(self.stats.report())
    }

    /// Batch and write until shutdown is asked or every sender is gone.
    ///
    /// While a batch is filling, the task does not wait on the queue, so queueing an event
    /// wakes nobody: a wake-up per event cost a cross-thread signal on every relayed
    /// request. It waits on the queue only when it holds nothing; otherwise for the flush
    /// timer (one, re-armed per batch), a flush request, or a full batch (both signalled
    /// through `wake`), and then takes everything queued at once.
    async fn fill_and_write(&mut self) -> Result<(), GaveUp> {
        let flush_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(flush_timer);
        let mut armed = false;
        let mut cmds = Vec::new();
        loop {
            if self.shutdown.borrow().is_some() {
                return Ok(());
            }
            if self.take_queued() {
                return Ok(());
            }
            if self.batch.len() >= self.config.max_batch || !self.waiting.is_empty() {
                self.write().await?;
                armed = false;
                continue;
            }
            if !armed && !self.batch.is_empty() {
                flush_timer
                    .as_mut()
                    .reset(Instant::now() + self.config.flush_interval);
                armed = true;
            }
            let idle = self.batch.is_empty();
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    if changed.is_err() || self.shutdown.borrow().is_some() {
                        return Ok(());
                    }
                }
                () = self.wake.notified() => {}
                n = self.rx.recv_many(&mut cmds, self.config.max_batch), if idle => {
                    if n == 0 {
                        return Ok(());
                    }
                    for cmd in cmds.drain(..) {
                        self.take(cmd);
                    }
                }
                () = &mut flush_timer, if armed => {
                    self.write().await?;
                    armed = false;
                }
            }
        }
    }

    /// Take what is queued, up to a full batch, without waiting. `true` once every sender
    /// is gone and the queue is empty.
    fn take_queued(&mut self) -> bool {
        while self.batch.len() < self.config.max_batch {
            match self.rx.try_recv() {
                Ok(cmd) => self.take(cmd),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    fn take(&mut self, cmd: Command) {
        match cmd {
            Command::Event(e) => self.batch.push(*e),
            Command::Flush(done) => self.waiting.push(done),
        }
    }

    /// Write the current batch (retrying transient failures, splitting on permanent
    /// ones), then answer waiting flushes.
    async fn write(&mut self) -> Result<(), GaveUp> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            match self.insert_retrying(&batch).await {
                Ok(()) => {}
                Err(Failure::Permanent(e)) => {
                    tracing::warn!(error = %e, events = batch.len(), "usage batch refused; writing its events one by one");
                    for (i, event) in batch.iter().enumerate() {
                        match self.insert_retrying(std::slice::from_ref(event)).await {
                            Ok(()) => {}
                            Err(Failure::Permanent(e)) => {
                                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %e, ?event, "usage event refused by the database; not stored");
                            }
                            Err(Failure::GaveUp) => {
                                self.batch = batch[i..].to_vec();
                                return Err(GaveUp);
                            }
                        }
                    }
                }
                Err(Failure::GaveUp) => {
                    self.batch = batch;
                    return Err(GaveUp);
                }
            }
        }
        let report = self.stats.report();
        for done in self.waiting.drain(..) {
            let _ = done.send(report);
        }
        Ok(())
    }

    async fn insert_retrying(&mut self, events: &[UsageEvent]) -> Result<(), Failure> {
        let mut backoff = self.config.retry_initial;
        loop {
            match self.store.insert_batch(events).await {
                Ok(new) => {
                    let total = u64::try_from(events.len()).unwrap_or(u64::MAX);
                    self.stats.written.fetch_add(new, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(total.saturating_sub(new), Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if !e.is_transient() => return Err(Failure::Permanent(e)),
                Err(e) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let deadline = *self.shutdown.borrow();
                    if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                        tracing::error!(error = %e, "usage database still failing at the shutdown deadline");
                        return Err(Failure::GaveUp);
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, events = events.len(), "usage batch write failed; retrying");
                    // Sleep, but wake early when shutdown begins so its deadline applies.
                    let shutdown = &mut self.shutdown;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        Ok(()) = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Everything not written, for [`SinkError::Unflushed`].
    fn give_up(&mut self) -> SinkError {
        self.rx.close();
        let mut events = std::mem::take(&mut self.batch);
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Event(e) => events.push(*e),
                Command::Flush(done) => self.waiting.push(done),
            }
        }
        // Waiting flushes learn of the failure by their channel closing.
        self.waiting.clear();
        SinkError::Unflushed { events }
    }
}

enum Failure {
    Permanent(SinkError),
    GaveUp,
}
