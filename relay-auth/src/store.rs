//! Storage traits for accounts, sessions and keys, and their backends.
//!
//! Three traits, one per domain ([`UserStore`], [`SessionStore`], [`KeyStore`]), and
//! [`AuthStore`] for a backend that implements all three. Every backend passes the same
//! conformance suite (`relay_auth::test_utils`, feature `test-utils`). Operations that must
//! be atomic say so; the SQL backends do each in one statement or one transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_core::{AccountStatus, ApiKeyId, KeyPolicy, UserId};

use crate::email::Email;
use crate::error::TokenError;
use crate::keys::limits::KeyLimits;
use crate::model::{
    ApiKeyRecord, KeyUse, OneTimeToken, RiskFlag, SessionRecord, StatusChange, TokenPurpose,
    TotpRecord, User, UserFilter,
};
use crate::role::Role;

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_impl;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was violated (for example: the email is taken).
    #[error("already exists: {0}")]
    Conflict(&'static str),
    /// The user already has `limit` live keys.
    #[error("key limit of {limit} reached")]
    KeyLimit {
        /// The limit that applied.
        limit: u32,
    },
    /// A stored row could not be decoded (corrupt or from an incompatible version).
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
    /// The backend failed (connection lost, disk full, ...).
    #[error("store backend error: {0}")]
    Backend(String),
}

/// Users, their single-use tokens, TOTP state and status history.
#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug + 'static {
    /// Insert a new user; [`StoreError::Conflict`] when the email is taken (enforced by a
    /// unique index, so of two concurrent registrations exactly one wins).
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    /// A user by id.
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    /// A user by (normalised) email.
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    /// Replace the password hash. Returns false when the user does not exist.
    async fn set_password_hash(&self, id: &UserId, hash: &str) -> Result<bool, StoreError>;
    /// Mark the email verified (keeps the first verification time).
    async fn set_email_verified(&self, id: &UserId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Change the role.
    async fn set_role(&self, id: &UserId, role: Role) -> Result<bool, StoreError>;
    /// Atomically: if the user's status is `change.from`, set it to `change.to` and append
    /// `change` to the audit trail. Returns false (and changes nothing) otherwise.
    async fn transition_status(&self, change: &StatusChange) -> Result<bool, StoreError>;
    /// The user's status changes, oldest first.
    async fn status_history(&self, id: &UserId) -> Result<Vec<StatusChange>, StoreError>;

    /// Store a single-use token.
    async fn insert_token(&self, token: &OneTimeToken) -> Result<(), StoreError>;
    /// Atomically use the token with `hash` for `purpose` at `now`: at most one caller ever
    /// gets `Ok(Ok(user))`; the rest learn why not.
    async fn consume_token(
        &self,
        hash: &[u8; 32],
        purpose: TokenPurpose,
        now: DateTime<Utc>,
    ) -> Result<Result<UserId, TokenError>, StoreError>;

    /// The user's TOTP state.
    async fn totp(&self, id: &UserId) -> Result<Option<TotpRecord>, StoreError>;
    /// Replace (or with `None`, remove) the TOTP state and recovery codes. The codes are
    /// SHA-256 hashes.
    async fn set_totp(
        &self,
        id: &UserId,
        record: Option<&TotpRecord>,
        recovery_hashes: &[[u8; 32]],
    ) -> Result<(), StoreError>;
    /// Mark a pending enrolment confirmed.
    async fn enable_totp(&self, id: &UserId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Atomically record `step` as used, only if it is later than the last used step.
    /// True when this caller won the step.
    async fn use_totp_step(&self, id: &UserId, step: i64) -> Result<bool, StoreError>;
    /// Atomically use a recovery code. True at most once per code.
    async fn use_recovery_code(&self, id: &UserId, hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Set (`None`: clear) the display name. False when the user does not exist.
    async fn set_display_name(&self, id: &UserId, name: Option<&str>) -> Result<bool, StoreError>;
    /// Store an email-change token (purpose [`TokenPurpose::ChangeEmail`]) together with
    /// the address it confirms.
    async fn insert_email_change(
        &self,
        token: &OneTimeToken,
        new_email: &Email,
    ) -> Result<(), StoreError>;
    /// Atomically use an email-change token and move its user to the new address, verified
    /// at `now`. [`StoreError::Conflict`] when the address was taken in the meantime
    /// (nothing changes, the token stays unused).
    async fn confirm_email_change(
        &self,
        hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Result<(UserId, Email), TokenError>, StoreError>;
    /// Atomically erase a user's personal data: the email becomes `placeholder`, the
    /// password hash, display name, TOTP state, recovery codes, tokens, pending email
    /// changes, sessions, risk flags and key limit are removed, keys are revoked and lose
    /// their names and tags, and the status becomes closed with a history entry (that
    /// names no email). The user id stays, for the records the law makes us keep.
    /// `None` when the user does not exist.
    async fn erase_user(
        &self,
        id: &UserId,
        placeholder: &Email,
        actor: Option<&UserId>,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<StatusChange>, StoreError>;
    /// Delete one-time tokens that were used or expired before `before` (and pending
    /// email changes of deleted tokens). Returns how many tokens went.
    async fn purge_tokens(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Users matching `filter`, newest first (created_at, then id, descending).
    async fn list_users(&self, filter: &UserFilter) -> Result<Vec<User>, StoreError>;
    /// Set (or replace) a risk flag. False when the user does not exist.
    async fn set_risk_flag(&self, id: &UserId, flag: &RiskFlag) -> Result<bool, StoreError>;
    /// Remove a risk flag. True when it was set.
    async fn clear_risk_flag(&self, id: &UserId, flag: &str) -> Result<bool, StoreError>;
    /// The user's risk flags, by name.
    async fn risk_flags(&self, id: &UserId) -> Result<Vec<RiskFlag>, StoreError>;
}

/// The most users one [`UserStore::list_users`] call returns.
pub const MAX_USER_PAGE: u32 = 500;

/// Login sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// Store a new session.
    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// A session by token hash (including ended ones).
    async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError>;
    /// End one session. True when it was live.
    async fn revoke_session(&self, hash: &[u8; 32], at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// End every live session of `user` except `keep`. Returns how many ended.
    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        keep: Option<&[u8; 32]>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Delete sessions that ended (revoked or expired) before `before`. Returns how many.
    async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// API key records.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Atomically insert `key` if its owner has fewer than `limit` live keys at `now`
    /// (not revoked, not past `expires_at`); otherwise [`StoreError::KeyLimit`].
    async fn insert_key(
        &self,
        key: &ApiKeyRecord,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Atomically: set `old`'s expiry to `old_expires_at` (if earlier than its own) and
    /// insert `new`. False (nothing changed) when `old` is missing or revoked.
    async fn rotate_key(
        &self,
        old: &ApiKeyId,
        old_expires_at: DateTime<Utc>,
        new: &ApiKeyRecord,
    ) -> Result<bool, StoreError>;
    /// A key by its keyed hash.
    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// A key by id.
    async fn key_by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// All keys of a user, oldest first.
    async fn keys_of_user(&self, user: &UserId) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revoke a key. True when it was not revoked before.
    async fn revoke_key(&self, id: &ApiKeyId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Set the policy of every non-revoked key of `user` to `policy` narrowed by the key's
    /// own limits ([`KeyLimits::apply`]) and clear their suspension. Returns how many keys
    /// changed.
    async fn apply_user_policy(&self, user: &UserId, policy: &KeyPolicy)
        -> Result<u64, StoreError>;
    /// Suspend every non-revoked key of `user` (keeps an earlier suspension time).
    async fn suspend_user_keys(&self, user: &UserId, at: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Set the most live keys `user` may have (from their plan).
    async fn set_key_limit(&self, user: &UserId, max_keys: u32) -> Result<(), StoreError>;
    /// The limit set for `user`, if any.
    async fn key_limit(&self, user: &UserId) -> Result<Option<u32>, StoreError>;
    /// Set a non-revoked key's own limits (`None`: none) and its effective policy together.
    /// False when the key is missing or revoked.
    async fn set_key_limits(
        &self,
        id: &ApiKeyId,
        limits: Option<&KeyLimits>,
        policy: &KeyPolicy,
    ) -> Result<bool, StoreError>;
    /// Record a batch of uses: `last_used_at` becomes the later of stored and given,
    /// `first_used_at` is set if it was empty.
    async fn record_key_uses(&self, uses: &[KeyUse]) -> Result<(), StoreError>;
}

/// A backend of all three stores.
pub trait AuthStore: UserStore + SessionStore + KeyStore {}
impl<T: UserStore + SessionStore + KeyStore> AuthStore for T {}

/// Account status transitions that are allowed: closed is final; anything else may move
/// to any other status.
pub fn transition_allowed(from: AccountStatus, to: AccountStatus) -> bool {
    from != to && from != AccountStatus::Closed
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql {
    //! Row decoding shared by the SQL backends (timestamps are stored as Unix milliseconds).
    use chrono::{DateTime, TimeZone, Utc};

    use super::StoreError;
    use crate::model::{ApiKeyRecord, SessionRecord, StatusChange, User};

    pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
        t.timestamp_millis()
    }

    pub(crate) fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
        t.map(ms)
    }

    pub(crate) fn time(ms: i64) -> Result<DateTime<Utc>, StoreError> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
    }

    pub(crate) fn opt_time(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
        ms.map(time).transpose()
    }

    pub(crate) fn hash32(v: &[u8]) -> Result<[u8; 32], StoreError> {
        v.try_into()
            .map_err(|_| StoreError::Corrupt(format!("hash of {} bytes", v.len())))
    }

    pub(crate) fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, StoreError> {
        s.parse()
            .map_err(|_| StoreError::Corrupt(format!("bad {what} `{s}`")))
    }

    pub(crate) const USER_COLS: &str =
        "id, email, password_hash, role, status, source, email_verified_at, created_at, display_name";
    pub(crate) type UserRow = (
        String,
        String,
        Option<String>,
        String,
        String,
        String,
        Option<i64>,
        i64,
        Option<String>,
    );

    pub(crate) fn decode_user(r: UserRow) -> Result<User, StoreError> {
        Ok(User {
            id: parse(&r.0, "user id")?,
            email: parse(&r.1, "email")?,
            password_hash: r.2,
            role: parse(&r.3, "role")?,
            status: parse(&r.4, "status")?,
            source: parse(&r.5, "source")?,
            email_verified_at: opt_time(r.6)?,
            created_at: time(r.7)?,
            display_name: r.8,
        })
    }

    pub(crate) const CHANGE_COLS: &str = "user_id, from_status, to_status, actor, reason, at";
    pub(crate) type ChangeRow = (String, String, String, Option<String>, String, i64);

    pub(crate) fn decode_change(r: ChangeRow) -> Result<StatusChange, StoreError> {
        Ok(StatusChange {
            user_id: parse(&r.0, "user id")?,
            from: parse(&r.1, "status")?,
            to: parse(&r.2, "status")?,
            actor: r.3.map(|a| parse(&a, "actor")).transpose()?,
            reason: r.4,
            at: time(r.5)?,
        })
    }

    pub(crate) const SESSION_COLS: &str =
        "hash, csrf_hash, user_id, created_at, expires_at, revoked_at";
    pub(crate) type SessionRow = (Vec<u8>, Vec<u8>, String, i64, i64, Option<i64>);

    #[allow(clippy::needless_pass_by_value)] // shaped for Option::map
    pub(crate) fn decode_session(r: SessionRow) -> Result<SessionRecord, StoreError> {
        Ok(SessionRecord {
            hash: hash32(&r.0)?,
            csrf_hash: hash32(&r.1)?,
            user_id: parse(&r.2, "user id")?,
            created_at: time(r.3)?,
            expires_at: time(r.4)?,
            revoked_at: opt_time(r.5)?,
        })
    }

    pub(crate) const KEY_COLS: &str = "id, user_id, name, tags, policy, hash, hint, created_at, \
        first_used_at, last_used_at, expires_at, revoked_at, suspended_at, own_limits";
    pub(crate) type KeyRow = (
        String,
        String,
        String,
        String,
        String,
        Vec<u8>,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<String>,
    );

    pub(crate) fn decode_key(r: KeyRow) -> Result<ApiKeyRecord, StoreError> {
        Ok(ApiKeyRecord {
            id: parse(&r.0, "key id")?,
            user_id: parse(&r.1, "user id")?,
            name: r.2,
            tags: serde_json::from_str(&r.3)
                .map_err(|e| StoreError::Corrupt(format!("key tags: {e}")))?,
            policy: serde_json::from_str(&r.4)
                .map_err(|e| StoreError::Corrupt(format!("key policy: {e}")))?,
            hash: hash32(&r.5)?,
            hint: r.6,
            created_at: time(r.7)?,
            first_used_at: opt_time(r.8)?,
            last_used_at: opt_time(r.9)?,
            expires_at: opt_time(r.10)?,
            revoked_at: opt_time(r.11)?,
            suspended_at: opt_time(r.12)?,
            own_limits: r
                .13
                .map(|j| serde_json::from_str(&j))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("key limits: {e}")))?,
        })
    }

    /// Tags, policy and own limits as stored (JSON text).
    pub(crate) fn encode_key(
        key: &ApiKeyRecord,
    ) -> Result<(String, String, Option<String>), StoreError> {
        let tags = serde_json::to_string(&key.tags)
            .map_err(|e| StoreError::Corrupt(format!("key tags: {e}")))?;
        let policy = serde_json::to_string(&key.policy)
            .map_err(|e| StoreError::Corrupt(format!("key policy: {e}")))?;
        Ok((tags, policy, encode_limits(key.own_limits.as_ref())?))
    }

    /// Own limits as stored (JSON text, or NULL).
    pub(crate) fn encode_limits(
        limits: Option<&crate::keys::limits::KeyLimits>,
    ) -> Result<Option<String>, StoreError> {
        limits
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("key limits: {e}")))
    }

    pub(crate) const FLAG_COLS: &str = "flag, reason, actor, set_at";
    pub(crate) type FlagRow = (String, String, Option<String>, i64);

    pub(crate) fn decode_flag(r: FlagRow) -> Result<crate::model::RiskFlag, StoreError> {
        Ok(crate::model::RiskFlag {
            flag: r.0,
            reason: r.1,
            actor: r.2.map(|a| parse(&a, "actor")).transpose()?,
            set_at: time(r.3)?,
        })
    }

    #[allow(clippy::needless_pass_by_value)] // shaped for map_err
    pub(crate) fn backend(e: sqlx::Error) -> StoreError {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return StoreError::Conflict("unique constraint");
            }
        }
        StoreError::Backend(e.to_string())
    }
}
