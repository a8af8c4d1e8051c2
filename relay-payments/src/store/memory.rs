//! In-memory [`WebhookEventStore`] for tests, examples and single-process setups.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;

use crate::store::{Claim, ClaimToken, StoreError, WebhookEventRecord, WebhookEventStore};

#[derive(Debug)]
struct Entry {
    processed: bool,
    outcome: Option<String>,
    token: Option<String>,
    claimed_until: DateTime<Utc>,
    attempts: i64,
    processed_at: Option<DateTime<Utc>>,
}

/// Dedupe records in a map behind one short-held lock (never held across `.await`).
#[derive(Debug, Default)]
pub struct MemoryWebhookEventStore {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl MemoryWebhookEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn key(provider: &str, event_id: &str) -> (String, String) {
    (provider.to_owned(), event_id.to_owned())
}

#[async_trait]
impl WebhookEventStore for MemoryWebhookEventStore {
    async fn claim(
        &self,
        provider: &str,
        event_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = ClaimToken::new();
        let mut entries = self.entries.lock();
        let entry = entries.entry(key(provider, event_id)).or_insert(Entry {
            processed: false,
            outcome: None,
            token: None,
            claimed_until: DateTime::<Utc>::MIN_UTC,
            attempts: 0,
            processed_at: None,
        });
        if entry.processed {
            return Ok(Claim::AlreadyProcessed);
        }
        if entry.token.is_some() && entry.claimed_until > now {
            return Ok(Claim::InProgress);
        }
        entry.token = Some(token.0.clone());
        entry.claimed_until = now + lease;
        entry.attempts += 1;
        Ok(Claim::Claimed(token))
    }

    async fn complete(
        &self,
        provider: &str,
        event_id: &str,
        token: &ClaimToken,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut entries = self.entries.lock();
        match entries.get_mut(&key(provider, event_id)) {
            Some(e) if !e.processed && e.token.as_deref() == Some(token.0.as_str()) => {
                e.processed = true;
                e.outcome = Some(outcome.to_owned());
                e.token = None;
                e.processed_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        provider: &str,
        event_id: &str,
        token: &ClaimToken,
    ) -> Result<bool, StoreError> {
        let mut entries = self.entries.lock();
        match entries.get_mut(&key(provider, event_id)) {
            Some(e) if !e.processed && e.token.as_deref() == Some(token.0.as_str()) => {
                e.token = None;
                e.claimed_until = DateTime::<Utc>::MIN_UTC;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn prune_processed_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut entries = self.entries.lock();
        let len = entries.len();
        entries.retain(|_, e| !(e.processed && e.processed_at.is_some_and(|t| t < before)));
        Ok((len - entries.len()) as u64)
    }

    async fn get(
        &self,
        provider: &str,
        event_id: &str,
    ) -> Result<Option<WebhookEventRecord>, StoreError> {
        let entries = self.entries.lock();
        Ok(entries
            .get(&key(provider, event_id))
            .map(|e| WebhookEventRecord {
                provider: provider.to_owned(),
                event_id: event_id.to_owned(),
                processed: e.processed,
                outcome: e.outcome.clone(),
                attempts: e.attempts,
            }))
    }
}
