//! The verified-key cache: what makes the gateway's hot path a hash and a map lookup.
//!
//! Entries are keyed by a SipHash-1-3 (128-bit) of the presented key under a random key
//! drawn for this cache, not by the key's HMAC: a hit costs a few hundred instructions
//! instead of two SHA-256 blocks, and without that random key nobody can aim a presented
//! key at another key's entry (SipHash is a PRF; a collision is a 2^-128 event). Entries
//! hold the record (with its HMAC, for the store and for invalidation), the owner's
//! effective status and when they were loaded; they live for a short TTL and are dropped
//! explicitly when a key or its owner changes (on this instance directly, on others
//! through the optional Redis bus). A load that started before an invalidation is not
//! inserted after it (a generation counter), so a revoked key cannot be resurrected by a
//! slow concurrent miss.

use std::hash::Hasher as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashMap;
use relay_core::{AccountStatus, KeyPolicy, UserId};
use siphasher::sip128::{Hasher128 as _, SipHasher13};

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
    /// Keyed by [`Inner::tag`] of the presented key; looked up on every request, so the
    /// map itself hashes with foldhash.
    entries: DashMap<u128, Arc<CachedKey>, foldhash::fast::RandomState>,
    /// This cache's secret SipHash key.
    sip_key: [u8; 16],
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
        let sip_key = crate::secret::random_bytes::<16>();
        Self {
            inner: Arc::new(Inner {
                sip_key,
                entries: DashMap::default(),
                generation: AtomicU64::new(0),
                ttl,
            }),
        }
    }

    /// The cached entry for a presented key, if it is still fresh.
    pub(crate) fn get(&self, presented: &str, now: DateTime<Utc>) -> Option<Arc<CachedKey>> {
        let entry = self.inner.entries.get(&self.inner.tag(presented))?;
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
    pub(crate) fn insert_if_current(
        &self,
        presented: &str,
        entry: Arc<CachedKey>,
        generation: u64,
    ) {
        let tag = self.inner.tag(presented);
        self.inner.entries.insert(tag, entry);
        // Re-check after inserting: an invalidation that raced the insert may have missed
        // the new entry, so drop it ourselves.
        if self.generation() != generation {
            self.inner.entries.remove(&tag);
        }
    }

    /// Drop what `what` names.
    pub fn invalidate(&self, what: &Invalidation) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        match what {
            // Entries are found by tag, so a key named by its HMAC is looked for among
            // them: revocations are rare, requests are not.
            Invalidation::Key(hash) => self.inner.entries.retain(|_, e| &e.record.hash != hash),
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

impl Inner {
    /// SipHash-1-3, 128 bits, of `presented` under this cache's secret key.
    fn tag(&self, presented: &str) -> u128 {
        let mut h = SipHasher13::new_with_key(&self.sip_key);
        h.write(presented.as_bytes());
        h.finish128().as_u128()
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

    fn entry(user: &UserId, hash: [u8; 32]) -> Arc<CachedKey> {
        let now = Utc::now();
        let record = ApiKeyRecord {
            hash,
            ..crate::test_utils::sample_key(user, now)
        };
        Arc::new(CachedKey {
            policy: Arc::new(record.policy.clone()),
            record,
            owner_status: AccountStatus::Active,
            loaded_at: now,
            first_used_ms: AtomicI64::new(i64::MIN),
        })
    }

    #[test]
    fn tags_are_keyed_per_cache_and_tell_keys_apart() {
        let (a, b) = (
            KeyCache::new(Duration::minutes(1)),
            KeyCache::new(Duration::minutes(1)),
        );
        assert_eq!(a.inner.tag("rk_live_one"), a.inner.tag("rk_live_one"));
        assert_ne!(a.inner.tag("rk_live_one"), a.inner.tag("rk_live_two"));
        assert_ne!(a.inner.tag("rk_live_one"), a.inner.tag("rk_live_one "));
        // Another cache draws another secret: its tags say nothing about this one's.
        assert_ne!(a.inner.tag("rk_live_one"), b.inner.tag("rk_live_one"));
        assert_ne!(a.inner.sip_key, [0u8; 16]);
    }

    #[test]
    fn entries_are_found_by_the_presented_key_and_dropped_by_its_hmac() {
        let cache = KeyCache::new(Duration::minutes(1));
        let user = UserId::new();
        cache.insert_if_current("rk_live_one", entry(&user, [1; 32]), cache.generation());
        cache.insert_if_current("rk_live_two", entry(&user, [2; 32]), cache.generation());
        let now = Utc::now();
        assert_eq!(
            cache.get("rk_live_one", now).map(|e| e.record.hash),
            Some([1; 32])
        );
        assert_eq!(
            cache.get("rk_live_two", now).map(|e| e.record.hash),
            Some([2; 32])
        );
        assert!(cache.get("rk_live_three", now).is_none());
        assert!(
            cache
                .get("rk_live_one", now + Duration::minutes(2))
                .is_none(),
            "expired"
        );

        cache.invalidate(&Invalidation::Key([1; 32]));
        assert!(cache.get("rk_live_one", now).is_none());
        assert!(
            cache.get("rk_live_two", now).is_some(),
            "only the named key goes"
        );
        cache.invalidate(&Invalidation::Key([9; 32]));
        assert_eq!(cache.len(), 1, "an unknown hash drops nothing");

        // A load that started before an invalidation is not kept.
        let stale = cache.generation();
        cache.invalidate(&Invalidation::User(UserId::new()));
        cache.insert_if_current("rk_live_one", entry(&user, [1; 32]), stale);
        assert!(cache.get("rk_live_one", now).is_none());
        cache.invalidate(&Invalidation::User(user));
        assert!(cache.is_empty());
    }

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
