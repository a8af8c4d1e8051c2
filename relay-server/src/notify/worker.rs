//! The delivery worker: drains due outbox rows through their channel.

use std::sync::Arc;
use std::time::Duration;

use relay_core::SharedClock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::outbox::{Channel, Outbox, Status};
use super::smtp::{MailTransport, SendError};
use super::webhook::WebhookChannel;
use super::NotifyError;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Rows delivered.
    pub sent: u32,
    /// Rows that failed and will be tried again.
    pub retrying: u32,
    /// Rows given up on.
    pub dead: u32,
}

/// Delivers the outbox. Run [`DeliveryWorker::run_once`] yourself, or
/// [`DeliveryWorker::spawn`] it on an interval and stop it with
/// [`DeliveryWorker::shutdown`]. Several workers (on several instances) may share one
/// outbox: each row is claimed by one of them.
#[derive(Debug)]
pub struct DeliveryWorker {
    outbox: Outbox,
    mailer: Arc<dyn MailTransport>,
    webhook: Option<WebhookChannel>,
    clock: SharedClock,
    stop: watch::Sender<bool>,
}

impl DeliveryWorker {
    /// A worker sending mail through `mailer`.
    pub fn new(outbox: Outbox, mailer: Arc<dyn MailTransport>, clock: SharedClock) -> Self {
        Self {
            outbox,
            mailer,
            webhook: None,
            clock,
            stop: watch::channel(false).0,
        }
    }

    /// Also deliver webhook rows through `channel`.
    pub fn with_webhook(mut self, channel: WebhookChannel) -> Self {
        self.webhook = Some(channel);
        self
    }

    /// Deliver every row due now (each at most once in this pass).
    pub async fn run_once(&self) -> Result<DeliveryReport, NotifyError> {
        let mut report = DeliveryReport::default();
        while let Some(item) = self.outbox.claim().await? {
            let result = match item.channel {
                Channel::Email => self.mailer.send(&item.recipient, &item.mail).await,
                Channel::Webhook => match &self.webhook {
                    Some(w) => w.post(&item.payload, self.clock.now().timestamp()).await,
                    None => Err(SendError {
                        permanent: true,
                        message: "no webhook channel is configured".into(),
                    }),
                },
            };
            match result {
                Ok(()) => {
                    self.outbox.mark_sent(item.id).await?;
                    report.sent += 1;
                }
                Err(e) => {
                    tracing::warn!(id = item.id, kind = %item.kind, attempt = item.attempts, permanent = e.permanent, error = %e, "notification delivery failed");
                    match self
                        .outbox
                        .mark_failed(&item, &e.message, e.permanent)
                        .await?
                    {
                        Status::Dead => report.dead += 1,
                        _ => report.retrying += 1,
                    }
                }
            }
        }
        Ok(report)
    }

    /// Run [`run_once`](Self::run_once) every `every` until [`shutdown`](Self::shutdown).
    pub fn spawn(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let worker = Arc::clone(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopped = tokio::select! {
                    _ = tick.tick() => false,
                    r = stop.wait_for(|s| *s) => { drop(r); true }
                };
                if stopped {
                    break;
                }
                if let Err(e) = worker.run_once().await {
                    tracing::error!(error = %e, "outbox pass failed");
                }
            }
        })
    }

    /// Stop the spawned loop after its current pass.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}
