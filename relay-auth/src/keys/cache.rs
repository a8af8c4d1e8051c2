//! The verified-key cache: what makes the gateway's hot path a hash and a map lookup.
//!
//! Entries are keyed by the key's HMAC and hold the record, the owner's effective status
//! and when they were loaded; they live for a short TTL and are dropped explicitly when a
//! key or its owner changes (on this instance directly, on others through the optional
//! Redis bus). A load that started before an invalidation is not inserted after it (a
//! generation counter), so a revoked key cannot be resurrected by a slow concurrent miss.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashMap;
use relay_core::{AccountStatus, KeyPolicy, UserId};

use crate::model::ApiKeyRecord;

/// One cached key.
#[derive(Debug)]
pub(crate) struct CachedKey {
    pub(crate) record: ApiKeyRecord,
    pub(crate) policy: Arc<KeyPolicy>,
    /// The owner's status: the local account status, or billing's standing when local is
    /// active.
    pub(crate) owner_status: AccountStatus,
    pub(crate) loaded_at: DateTime<Utc>,
    /// First use in milliseconds (`i64::MIN`: never), updated in memory on first use.
    pub(crate) first_used_ms: AtomicI64,
}

/// Shared cache of verified keys (clones share the entries).
#[derive(Debug, Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Keyed by the HMAC tag; looked up on every request, so hashed with foldhash.
    entries: DashMap<[u8; 32], Arc<CachedKey>, foldhash::fast::RandomState>,
    generation: AtomicU64,
    ttl: Duration,
}

/// What to drop from key caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One key, by its keyed hash.
    Key([u8; 32]),
    /// Every key of a user.
    User(UserId),
    /// Everything.
    All,
}

impl KeyCache {
    /// An empty cache whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: DashMap::default(),
                generation: AtomicU64::new(0),
                ttl,
            }),
        }
    }

    pub(crate) fn get(&self, hash: &[u8; 32], now: DateTime<Utc>) -> Option<Arc<CachedKey>> {
        let entry = self.inner.entries.get(hash)?;
        if now - entry.loaded_at < self.inner.ttl && entry.loaded_at <= now {
            Some(Arc::clone(&entry))
        } else {
            None
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Insert unless an invalidation happened since `generation` was read.
    pub(crate) fn insert_if_current(&self, hash: [u8; 32], entry: Arc<CachedKey>, generation: u64) {
        self.inner.entries.insert(hash, entry);
        // Re-check after inserting: an invalidation that raced the insert may have missed
        // the new entry, so drop it ourselves.
        if self.generation() != generation {
            self.inner.entries.remove(&hash);
        }
    }

    /// Drop what `what` names.
    pub fn invalidate(&self, what: &Invalidation) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        match what {
            Invalidation::Key(hash) => {
                self.inner.entries.remove(hash);
            }
            Invalidation::User(user) => self.inner.entries.retain(|_, e| &e.record.user_id != user),
            Invalidation::All => self.inner.entries.clear(),
        }
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }
}

impl Invalidation {
    /// Wire form for the Redis bus: `k:<hex>`, `u:<user id>` or `a`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Key(h) => format!("k:{}", hex::encode(h)),
            Invalidation::User(u) => format!("u:{u}"),
            Invalidation::All => "a".into(),
        }
    }

    /// Parse the wire form; `None` for anything else.
    pub fn decode(s: &str) -> Option<Invalidation> {
        if s == "a" {
            return Some(Invalidation::All);
        }
        if let Some(h) = s.strip_prefix("k:") {
            let bytes = hex::decode(h).ok()?;
            return Some(Invalidation::Key(bytes.try_into().ok()?));
        }
        s.strip_prefix("u:")?.parse().ok().map(Invalidation::User)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_and_rejects_garbage() {
        for inv in [
            Invalidation::Key([7; 32]),
            Invalidation::User(UserId::new()),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::decode(&inv.encode()), Some(inv));
        }
        for bad in ["", "k:zz", "k:0102", "u:nope", "x:1"] {
            assert_eq!(Invalidation::decode(bad), None, "{bad}");
        }
    }
}
