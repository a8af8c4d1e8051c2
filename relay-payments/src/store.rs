//! Durable deduplication of webhook events by (provider, event id).
//!
//! A delivery first [claims](WebhookEventStore::claim) its event. Only one claimant wins;
//! it runs the handler and then [completes](WebhookEventStore::complete) the claim, or
//! [releases](WebhookEventStore::release) it when the handler failed, so the provider's
//! retry can claim again. A claim whose holder crashed expires after its lease and can be
//! taken over. Completed events are never handled again.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_impl;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("webhook event store: {0}")]
    Backend(String),
    /// The migration could not be applied.
    #[error("webhook event store migration: {0}")]
    Migration(String),
}

/// Proof of a won claim; completing or releasing needs it, so a claimant whose lease
/// expired and was taken over cannot complete someone else's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub String);

impl ClaimToken {
    /// A fresh random token.
    pub fn new() -> Self {
        let mut bytes = [0u8; 16];
        // Uniqueness, not secrecy, is what matters; a failed RNG falls back to time.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        }
        Self(hex::encode(bytes))
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the event now and must complete or release it.
    Claimed(ClaimToken),
    /// Handled before: acknowledge and do nothing.
    AlreadyProcessed,
    /// Another delivery holds an unexpired claim: ask the provider to retry later.
    InProgress,
}

/// The stored state of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEventRecord {
    /// Provider name.
    pub provider: String,
    /// The provider's event id.
    pub event_id: String,
    /// True once the handler succeeded.
    pub processed: bool,
    /// The handler's outcome, once processed (`applied`, `held_for_review`, `ignored`).
    pub outcome: Option<String>,
    /// How many claims were won (1 unless handlers failed or crashed).
    pub attempts: i64,
}

/// Where deduplication records live.
#[async_trait]
pub trait WebhookEventStore: Send + Sync + Debug + 'static {
    /// Atomically claim (provider, event_id) until `now + lease`. Exactly one of many
    /// concurrent callers gets [`Claim::Claimed`].
    async fn claim(
        &self,
        provider: &str,
        event_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// Mark a claimed event processed with the handler's `outcome`. Returns false when the
    /// claim was lost (expired and taken over); nothing changes then.
    async fn complete(
        &self,
        provider: &str,
        event_id: &str,
        token: &ClaimToken,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Give a claim back so a later delivery can claim the event again. Returns false when
    /// the claim was lost.
    async fn release(
        &self,
        provider: &str,
        event_id: &str,
        token: &ClaimToken,
    ) -> Result<bool, StoreError>;

    /// Delete records of events processed before `before` (after every provider's retry
    /// window, which is at most a few days). Unprocessed claims are kept. Returns how many
    /// were deleted.
    async fn prune_processed_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The record of one event, if any.
    async fn get(
        &self,
        provider: &str,
        event_id: &str,
    ) -> Result<Option<WebhookEventRecord>, StoreError>;
}
