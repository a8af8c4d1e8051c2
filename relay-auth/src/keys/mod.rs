//! API keys: issue, verify, rotate, revoke; the [`KeyProvisioner`] billing drives.
//!
//! A key is `rk_live_` followed by base64url of 32 random bytes (256 bits). It is shown
//! once, at issue; the store keeps only HMAC-SHA256(pepper, key), so a database leak
//! without the pepper yields nothing usable, and lookups stay a single indexed read.
//! Verification on the gateway goes through [`KeyCache`]: the hot path is one keyed
//! SipHash and a map lookup (the HMAC is computed only on a miss, to query the store),
//! with last-use times buffered and written in batches.
//!
//! Known limits, by design: an unknown but well-formed key is looked up in the store each
//! time (no negative cache, which an attacker could fill); throttle such callers per IP in
//! front of the layer. With several instances, a key's first use (which starts an
//! after-first-use expiry) reaches the store at the next flush, so another instance that
//! loads the key before then may start the clock up to one flush interval later.

mod cache;
pub mod limits;
#[cfg(feature = "redis")]
pub mod redis_bus;
mod uses;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use relay_core::{
    AccountStanding, AccountStatus, ApiKeyId, Entitlement, KeyPolicy, KeyProvisioner, Principal,
    ProvisionError, SharedClock, UserId,
};

use cache::CachedKey;
pub use cache::{Invalidation, KeyCache};
use uses::UseBuffer;

use crate::error::AuthError;
use crate::keys::limits::KeyLimits;
use crate::model::ApiKeyRecord;
use crate::secret::{b64, random_bytes, KeyHasher};
use crate::store::{AuthStore, StoreError};

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "rk_live_";
/// Length of the random part (base64url of 32 bytes).
const KEY_BODY_LEN: usize = 43;

/// Settings of the key service.
///
/// `max_keys_per_user` applies to users without a plan limit (set by
/// [`KeyProvisioner::apply_entitlement`] from `Entitlement::max_keys`).
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Most live keys per user.
    pub max_keys_per_user: u32,
    /// How long a verified key stays cached.
    pub cache_ttl: Duration,
    /// How long a rotated key keeps working by default.
    pub rotation_grace: Duration,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            max_keys_per_user: 10,
            cache_ttl: Duration::seconds(30),
            rotation_grace: Duration::hours(24),
        }
    }
}

/// What a new key should carry.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Human name (1 to 64 characters, no control characters).
    pub name: String,
    /// Tags (at most 16, each 1 to 32 of `a-z 0-9 - _ . :`).
    pub tags: Vec<String>,
    /// Limits (validated).
    pub policy: KeyPolicy,
}

/// A newly issued key: the plaintext is shown once and never again.
#[derive(Clone)]
pub struct IssuedKey {
    /// The key to give the user.
    pub key: String,
    /// Its record.
    pub record: ApiKeyRecord,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key", &"***")
            .field("record", &self.record)
            .finish()
    }
}

/// Why a presented key was refused; the layer maps each to a status and error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    /// No key in the request.
    #[error("no API key: send it in the x-api-key header or as Authorization: Bearer")]
    Missing,
    /// Not shaped like one of our keys.
    #[error("invalid API key")]
    Malformed,
    /// No such key.
    #[error("invalid API key")]
    Unknown,
    /// The key was revoked.
    #[error("this API key has been revoked")]
    Revoked,
    /// The key expired (its own expiry, a rotation grace end, or its policy's).
    #[error("this API key has expired")]
    Expired,
    /// The owner's entitlement ended (keys suspended by billing).
    #[error("this API key has no active plan: renew your subscription")]
    Suspended,
    /// The owner's account may not make requests.
    #[error("the account is {0}")]
    AccountInactive(AccountStatus),
    /// A dependency (store, standing) failed; try again.
    #[error("authentication temporarily unavailable")]
    Unavailable(String),
}

impl KeyRejection {
    /// HTTP status: 401 for key problems, 402 for payment problems, 403 for accounts that
    /// may not make requests, 503 when the check could not be made.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            KeyRejection::Missing
            | KeyRejection::Malformed
            | KeyRejection::Unknown
            | KeyRejection::Revoked
            | KeyRejection::Expired => S::UNAUTHORIZED,
            KeyRejection::Suspended | KeyRejection::AccountInactive(AccountStatus::PastDue) => {
                S::PAYMENT_REQUIRED
            }
            KeyRejection::AccountInactive(_) => S::FORBIDDEN,
            KeyRejection::Unavailable(_) => S::SERVICE_UNAVAILABLE,
        }
    }
}

/// A future-proof seam for cross-instance invalidation (the Redis bus implements it).
pub trait InvalidationBus: Send + Sync + std::fmt::Debug + 'static {
    /// Tell other instances to drop `what` (fire and forget).
    fn publish(&self, what: &Invalidation);
}

/// Issues, verifies, rotates and revokes API keys.
#[derive(Debug)]
pub struct ApiKeyService {
    store: Arc<dyn AuthStore>,
    hasher: KeyHasher,
    clock: SharedClock,
    standing: Option<Arc<dyn AccountStanding>>,
    cache: KeyCache,
    uses: UseBuffer,
    bus: Option<Arc<dyn InvalidationBus>>,
    config: KeyConfig,
}

/// Is `key` shaped like one of ours? Checked before any hashing or lookup.
fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|body| {
        body.len() == KEY_BODY_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn validate_meta(new: &NewKey) -> Result<(), AuthError> {
    let bad = |field, reason: &str| AuthError::InvalidKeyMetadata {
        field,
        reason: reason.to_owned(),
    };
    let n = new.name.trim().chars().count();
    if n == 0 || n > 64 {
        return Err(bad("name", "must be 1 to 64 characters"));
    }
    if new.name.chars().any(char::is_control) {
        return Err(bad("name", "may not contain control characters"));
    }
    if new.tags.len() > 16 {
        return Err(bad("tags", "at most 16 tags"));
    }
    for t in &new.tags {
        let ok = !t.is_empty()
            && t.len() <= 32
            && t.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b'.' | b':')
            });
        if !ok {
            return Err(bad(
                "tags",
                "each tag must be 1 to 32 characters of a-z, 0-9, -, _, . or :",
            ));
        }
    }
    new.policy.validate()?;
    Ok(())
}

impl ApiKeyService {
    /// Keys on `store`, hashed with `pepper` (at least 32 bytes, from configuration, not
    /// the database).
    pub fn new(
        store: Arc<dyn AuthStore>,
        pepper: &[u8],
        clock: SharedClock,
    ) -> Result<Self, AuthError> {
        let config = KeyConfig::default();
        Ok(Self {
            store,
            hasher: KeyHasher::new(pepper)?,
            clock,
            standing: None,
            cache: KeyCache::new(config.cache_ttl),
            uses: UseBuffer::default(),
            bus: None,
            config,
        })
    }

    /// Check owners' billing standing on each cache load.
    pub fn with_standing(mut self, standing: Arc<dyn AccountStanding>) -> Self {
        self.standing = Some(standing);
        self
    }

    /// Replace the settings (resets the cache to the new TTL).
    pub fn with_config(mut self, config: KeyConfig) -> Self {
        self.cache = KeyCache::new(config.cache_ttl);
        self.config = config;
        self
    }

    /// Publish invalidations to other instances through `bus`.
    pub fn with_bus(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The cache (to connect a bus subscriber to it).
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// Issue a key to `owner`, within the owner's key limit (their plan's, else the
    /// configured default). The plaintext is in the result and nowhere else.
    pub async fn issue(&self, owner: &UserId, new: NewKey) -> Result<IssuedKey, AuthError> {
        validate_meta(&new)?;
        let limit = self
            .store
            .key_limit(owner)
            .await?
            .unwrap_or(self.config.max_keys_per_user);
        let (key, record) = self.new_record(owner, new);
        match self
            .store
            .insert_key(&record, limit, record.created_at)
            .await
        {
            Ok(()) => Ok(IssuedKey { key, record }),
            Err(StoreError::KeyLimit { limit }) => Err(AuthError::KeyLimit { limit }),
            Err(e) => Err(e.into()),
        }
    }

    fn new_record(&self, owner: &UserId, new: NewKey) -> (String, ApiKeyRecord) {
        let key = format!("{KEY_PREFIX}{}", b64(&random_bytes::<32>()));
        let record = ApiKeyRecord {
            id: ApiKeyId::new(),
            user_id: owner.clone(),
            name: new.name.trim().to_owned(),
            tags: new.tags,
            policy: new.policy,
            hash: self.hasher.hash(&key),
            hint: key.chars().take(KEY_PREFIX.len() + 4).collect(),
            created_at: self.clock.now(),
            first_used_at: None,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            suspended_at: None,
            own_limits: None,
        };
        (key, record)
    }

    /// Replace key `id` with a new one carrying the same name, tags and policy; the old key
    /// keeps working for `grace` (default: the configured rotation grace). Rotation does not
    /// count against the per-user limit: it replaces a key rather than adding one.
    pub async fn rotate(
        &self,
        id: &ApiKeyId,
        grace: Option<Duration>,
    ) -> Result<IssuedKey, AuthError> {
        let old = self
            .store
            .key_by_id(id)
            .await?
            .ok_or(AuthError::NotFound("API key"))?;
        if old.revoked_at.is_some() {
            return Err(AuthError::NotFound("API key"));
        }
        let (key, mut record) = self.new_record(
            &old.user_id,
            NewKey {
                name: old.name.clone(),
                tags: old.tags.clone(),
                policy: old.policy.clone(),
            },
        );
        // The replacement keeps the owner's narrowing, so the next plan change re-applies it.
        record.own_limits = old.own_limits.clone();
        let grace_end = record.created_at
            + grace
                .unwrap_or(self.config.rotation_grace)
                .max(Duration::zero());
        if !self.store.rotate_key(id, grace_end, &record).await? {
            return Err(AuthError::NotFound("API key"));
        }
        self.invalidate(&Invalidation::Key(old.hash));
        Ok(IssuedKey { key, record })
    }

    /// Set key `id`'s own limits within `plan` (the owner's plan policy; `None` or empty
    /// limits: the plan's policy as it is). The effective policy becomes `plan` narrowed
    /// by the limits, and later plan changes keep the narrowing (see [`KeyLimits`]).
    pub async fn set_limits(
        &self,
        id: &ApiKeyId,
        limits: Option<KeyLimits>,
        plan: &KeyPolicy,
    ) -> Result<ApiKeyRecord, AuthError> {
        let limits = limits.filter(|l| !l.is_empty());
        if let Some(l) = &limits {
            l.check_within(plan).map_err(|e| AuthError::InvalidInput {
                field: "limits",
                reason: e.to_string(),
            })?;
        }
        let policy = limits
            .as_ref()
            .map_or_else(|| plan.clone(), |l| l.apply(plan));
        policy.validate()?;
        if !self
            .store
            .set_key_limits(id, limits.as_ref(), &policy)
            .await?
        {
            return Err(AuthError::NotFound("API key"));
        }
        let key = self
            .store
            .key_by_id(id)
            .await?
            .ok_or(AuthError::NotFound("API key"))?;
        self.invalidate(&Invalidation::Key(key.hash));
        Ok(key)
    }

    /// Revoke key `id` (immediately, on every instance). False when already revoked.
    pub async fn revoke(&self, id: &ApiKeyId) -> Result<bool, AuthError> {
        let key = self
            .store
            .key_by_id(id)
            .await?
            .ok_or(AuthError::NotFound("API key"))?;
        let changed = self.store.revoke_key(id, self.clock.now()).await?;
        self.invalidate(&Invalidation::Key(key.hash));
        Ok(changed)
    }

    /// Keys of `owner`, oldest first.
    pub async fn list(&self, owner: &UserId) -> Result<Vec<ApiKeyRecord>, AuthError> {
        Ok(self.store.keys_of_user(owner).await?)
    }

    /// Drop `user`'s keys from caches (after a status or policy change).
    pub fn invalidate_user(&self, user: &UserId) {
        self.invalidate(&Invalidation::User(user.clone()));
    }

    fn invalidate(&self, what: &Invalidation) {
        self.cache.invalidate(what);
        if let Some(bus) = &self.bus {
            bus.publish(what);
        }
    }

    /// Verify a presented key from the cache alone: `None` when it is not cached (call
    /// [`authenticate`](Self::authenticate)). This is the gateway's hot path: no store,
    /// no await.
    pub fn authenticate_cached(&self, presented: &str) -> Option<Result<Principal, KeyRejection>> {
        if !well_formed(presented) {
            return Some(Err(KeyRejection::Malformed));
        }
        let now = self.clock.now();
        let entry = self.cache.get(presented, now)?;
        Some(self.admit(&entry.record.hash, &entry, now))
    }

    /// Verify a presented key: from the cache, or from the store (then cached).
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, KeyRejection> {
        if let Some(done) = self.authenticate_cached(presented) {
            return done;
        }
        let hash = self.hasher.hash(presented);
        let generation = self.cache.generation();
        let record = self
            .store
            .key_by_hash(&hash)
            .await
            .map_err(|e| KeyRejection::Unavailable(e.to_string()))?
            .ok_or(KeyRejection::Unknown)?;
        let owner_status = self.owner_status(&record.user_id).await?;
        let now = self.clock.now();
        let entry = Arc::new(CachedKey {
            policy: Arc::new(record.policy.clone()),
            first_used_ms: std::sync::atomic::AtomicI64::new(
                record
                    .first_used_at
                    .map_or(i64::MIN, |t| t.timestamp_millis()),
            ),
            record,
            owner_status,
            loaded_at: now,
        });
        self.cache
            .insert_if_current(presented, Arc::clone(&entry), generation);
        self.admit(&hash, &entry, now)
    }

    async fn owner_status(&self, user: &UserId) -> Result<AccountStatus, KeyRejection> {
        let local = self
            .store
            .user_by_id(user)
            .await
            .map_err(|e| KeyRejection::Unavailable(e.to_string()))?
            // A key whose owner record is gone belongs to nobody: treat as closed.
            .map_or(AccountStatus::Closed, |u| u.status);
        if local != AccountStatus::Active {
            return Ok(local);
        }
        match &self.standing {
            Some(s) => s
                .standing(user)
                .await
                .map(|st| st.status)
                .map_err(|e| KeyRejection::Unavailable(e.to_string())),
            None => Ok(local),
        }
    }

    fn admit(
        &self,
        hash: &[u8; 32],
        entry: &CachedKey,
        now: DateTime<Utc>,
    ) -> Result<Principal, KeyRejection> {
        let r = &entry.record;
        if r.revoked_at.is_some() {
            return Err(KeyRejection::Revoked);
        }
        if r.expires_at.is_some_and(|t| t <= now) {
            return Err(KeyRejection::Expired);
        }
        let first_ms = entry.first_used_ms.load(Ordering::Relaxed);
        let first = (first_ms != i64::MIN)
            .then(|| Utc.timestamp_millis_opt(first_ms).single())
            .flatten();
        if entry.policy.expires_at(first).is_some_and(|t| t <= now) {
            return Err(KeyRejection::Expired);
        }
        if r.suspended_at.is_some() {
            return Err(KeyRejection::Suspended);
        }
        if !entry.owner_status.allows_requests() {
            return Err(KeyRejection::AccountInactive(entry.owner_status));
        }
        let now_ms = now.timestamp_millis();
        if first.is_none() {
            // First use starts an after-first-use expiry; the store learns it at the next
            // flush (first_used_at is only ever set once there).
            let _ = entry.first_used_ms.compare_exchange(
                i64::MIN,
                now_ms,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        self.uses.record(hash, &r.id, now_ms);
        Ok(Principal {
            user_id: r.user_id.clone(),
            key_id: r.id.clone(),
            status: entry.owner_status,
            policy: Arc::clone(&entry.policy),
        })
    }

    /// Write buffered last-use times to the store. Returns how many keys were written.
    /// On failure the uses are kept for the next flush.
    pub async fn flush_uses(&self) -> Result<usize, AuthError> {
        let batch = self.uses.drain();
        let n = batch.len();
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = self.store.record_key_uses(&batch).await {
            self.uses.restore(batch);
            return Err(e.into());
        }
        Ok(n)
    }

    /// Keys with uses waiting for a flush.
    pub fn pending_uses(&self) -> usize {
        self.uses.len()
    }

    /// Flush last-use times every `every` until the returned task is aborted or the service
    /// is dropped.
    pub fn spawn_use_flusher(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { break };
                if let Err(e) = svc.flush_uses().await {
                    tracing::warn!(error = %e, "flushing API key uses failed; will retry");
                }
            }
        })
    }
}

#[async_trait]
impl KeyProvisioner for ApiKeyService {
    async fn apply_entitlement(
        &self,
        user: &UserId,
        entitlement: &Entitlement,
    ) -> Result<Option<String>, ProvisionError> {
        let store_err = |e: StoreError| ProvisionError::Store(e.to_string());
        entitlement
            .policy
            .validate()
            .map_err(|e| ProvisionError::Store(format!("invalid entitlement policy: {e}")))?;
        self.store
            .set_key_limit(user, entitlement.max_keys)
            .await
            .map_err(store_err)?;
        let changed = self
            .store
            .apply_user_policy(user, &entitlement.policy)
            .await
            .map_err(store_err)?;
        self.invalidate_user(user);
        if changed > 0 {
            return Ok(None);
        }
        let live = self
            .store
            .keys_of_user(user)
            .await
            .map_err(store_err)?
            .iter()
            .any(|k| k.revoked_at.is_none());
        if live || entitlement.max_keys == 0 {
            return Ok(None);
        }
        let issued = self
            .issue(
                user,
                NewKey {
                    name: "default".into(),
                    tags: vec!["plan".into()],
                    policy: entitlement.policy.clone(),
                },
            )
            .await
            .map_err(|e| ProvisionError::Store(e.to_string()))?;
        Ok(Some(issued.key))
    }

    async fn suspend_keys(&self, user: &UserId) -> Result<(), ProvisionError> {
        self.store
            .suspend_user_keys(user, self.clock.now())
            .await
            .map_err(|e| ProvisionError::Store(e.to_string()))?;
        self.invalidate_user(user);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape() {
        let good = format!("{KEY_PREFIX}{}", b64(&[0xAB; 32]));
        assert!(well_formed(&good));
        assert!(!well_formed(""));
        assert!(!well_formed(&good[..good.len() - 1]));
        assert!(!well_formed(&format!("{good}x")));
        assert!(!well_formed(&good.replace(KEY_PREFIX, "sk_live_")));
        assert!(!well_formed(&format!("{KEY_PREFIX}{}", "=".repeat(43))));
    }
}
