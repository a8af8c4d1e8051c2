//! Notifications: mails (and an optional signed webhook) through a durable outbox.
//!
//! * [`template`]: the mails (verification, reset, payment received, low balance, plan
//!   expiring, past due), plain text and HTML.
//! * [`outbox`]: the `server_outbox` table, with leases, retries and backoff.
//! * [`smtp`]: [`SmtpMailer`], lettre over SMTP.
//! * [`webhook`]: [`WebhookChannel`], JSON signed with HMAC-SHA256.
//! * [`worker`]: [`DeliveryWorker`], draining the outbox.
//! * [`billing`]: [`BillingNotifier`], the job queueing billing's mails.
//!
//! [`Notifications`] is what the rest of the server talks to; it implements relay-auth's
//! [`Notifier`], so account mails go through the outbox too.

pub mod billing;
pub mod outbox;
pub mod smtp;
pub mod template;
pub mod webhook;
pub mod worker;

use async_trait::async_trait;
use relay_auth::{Email, Notice, Notifier};

pub use billing::{BillingNotifier, NotifySettings};
pub use outbox::{migrate, Channel, Outbox, OutboxItem, RetryPolicy, Status};
pub use smtp::{MailTransport, SendError, SmtpConfig, SmtpMailer, SmtpTls};
pub use template::{Rendered, Template};
pub use webhook::WebhookChannel;
pub use worker::{DeliveryReport, DeliveryWorker};

/// Why a notification operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Bad configuration or argument; nothing was queued.
    #[error("invalid notification input: {0}")]
    Invalid(String),
    /// A stored row could not be read back.
    #[error("corrupt outbox row: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("outbox store error: {0}")]
    Backend(#[from] sqlx::Error),
}

/// Queues notifications: renders the mail into the outbox and, when webhooks are on, a
/// JSON copy without secrets.
#[derive(Debug, Clone)]
pub struct Notifications {
    outbox: Outbox,
    product: String,
    base_url: String,
    webhook: bool,
}

impl Notifications {
    /// Queue into `outbox`; links point under `base_url`, mails are signed `product`.
    pub fn new(outbox: Outbox, product: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            outbox,
            product: product.into(),
            base_url: base_url.into(),
            webhook: false,
        }
    }

    /// Also queue a webhook row per notification (deliver with
    /// [`DeliveryWorker::with_webhook`]).
    pub fn with_webhook(mut self, on: bool) -> Self {
        self.webhook = on;
        self
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Queue `template` for `to`. With `dedupe_key` (like `payment:<order id>`), a repeat
    /// queues nothing and returns `None`; otherwise the mail row's id.
    pub async fn send(
        &self,
        to: &Email,
        template: &Template,
        dedupe_key: Option<&str>,
    ) -> Result<Option<i64>, NotifyError> {
        let mail = template.render(&self.product, &self.base_url);
        let id = self
            .outbox
            .enqueue(
                Channel::Email,
                to.as_str(),
                template.kind(),
                &mail,
                "{}",
                dedupe_key,
            )
            .await?;
        if self.webhook && id.is_some() {
            let mut data = serde_json::to_value(template)
                .map_err(|e| NotifyError::Invalid(format!("template: {e}")))?;
            if let Some(map) = data.as_object_mut() {
                // Tokens only ever go to the address's owner.
                map.remove("token");
                map.remove("kind");
            }
            let body = serde_json::json!({
                "type": template.kind(),
                "recipient": to.as_str(),
                "data": data,
            })
            .to_string();
            let empty = Rendered {
                subject: String::new(),
                text: String::new(),
                html: String::new(),
            };
            let key = dedupe_key.map(|k| format!("webhook:{k}"));
            self.outbox
                .enqueue(
                    Channel::Webhook,
                    to.as_str(),
                    template.kind(),
                    &empty,
                    &body,
                    key.as_deref(),
                )
                .await?;
        }
        Ok(id)
    }
}

#[async_trait]
impl Notifier for Notifications {
    async fn notify(&self, to: &Email, notice: Notice) {
        let template = match notice {
            Notice::VerifyEmail { token } => Template::Verification { token },
            Notice::AlreadyRegistered => Template::AlreadyRegistered,
            Notice::PasswordReset { token } => Template::PasswordReset { token },
        };
        // The caller's answer must not depend on delivery; failures are logged here.
        if let Err(e) = self.send(to, &template, None).await {
            tracing::error!(kind = template.kind(), error = %e, "could not queue a notification");
        }
    }
}
