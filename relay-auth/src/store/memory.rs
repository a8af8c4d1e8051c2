//! In-memory backend of every auth store: one mutex over plain maps, so each operation is
//! trivially atomic. For tests, examples and the embedded quick start; the gateway's hot
//! path reads keys from the key cache, not from here.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use relay_core::{AccountStatus, ApiKeyId, KeyPolicy, UserId};

use super::{KeyStore, SessionStore, StoreError, UserStore, MAX_USER_PAGE};
use crate::email::Email;
use crate::error::TokenError;
use crate::keys::limits::KeyLimits;
use crate::model::{
    ApiKeyRecord, KeyUse, OneTimeToken, RiskFlag, SessionRecord, StatusChange, TokenPurpose,
    TotpRecord, User, UserFilter,
};
use crate::role::Role;

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserId, User>,
    by_email: HashMap<Email, UserId>,
    history: Vec<StatusChange>,
    tokens: HashMap<[u8; 32], (OneTimeToken, Option<DateTime<Utc>>)>,
    totp: HashMap<UserId, TotpRecord>,
    recovery: HashMap<UserId, HashSet<[u8; 32]>>,
    sessions: HashMap<[u8; 32], SessionRecord>,
    keys: HashMap<ApiKeyId, ApiKeyRecord>,
    key_by_hash: HashMap<[u8; 32], ApiKeyId>,
    key_limits: HashMap<UserId, u32>,
    email_changes: HashMap<[u8; 32], Email>,
    risk_flags: HashMap<UserId, BTreeMap<String, RiskFlag>>,
}

/// Every auth store in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        if s.by_email.contains_key(&user.email) {
            return Err(StoreError::Conflict("email"));
        }
        if s.users.contains_key(&user.id) {
            return Err(StoreError::Conflict("user id"));
        }
        s.by_email.insert(user.email.clone(), user.id.clone());
        s.users.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        Ok(self.state.lock().users.get(id).cloned())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let s = self.state.lock();
        Ok(s.by_email
            .get(email)
            .and_then(|id| s.users.get(id))
            .cloned())
    }

    async fn set_password_hash(&self, id: &UserId, hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .users
            .get_mut(id)
            .map(|u| {
                u.password_hash = Some(hash.to_owned());
            })
            .is_some())
    }

    async fn set_email_verified(&self, id: &UserId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .users
            .get_mut(id)
            .map(|u| {
                u.email_verified_at.get_or_insert(at);
            })
            .is_some())
    }

    async fn set_role(&self, id: &UserId, role: Role) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .users
            .get_mut(id)
            .map(|u| u.role = role)
            .is_some())
    }

    async fn transition_status(&self, change: &StatusChange) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        match s.users.get_mut(&change.user_id) {
            Some(u) if u.status == change.from => {
                u.status = change.to;
                s.history.push(change.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn status_history(&self, id: &UserId) -> Result<Vec<StatusChange>, StoreError> {
        Ok(self
            .state
            .lock()
            .history
            .iter()
            .filter(|c| &c.user_id == id)
            .cloned()
            .collect())
    }

    async fn insert_token(&self, token: &OneTimeToken) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        if s.tokens.contains_key(&token.hash) {
            return Err(StoreError::Conflict("token"));
        }
        s.tokens.insert(token.hash, (token.clone(), None));
        Ok(())
    }

    async fn consume_token(
        &self,
        hash: &[u8; 32],
        purpose: TokenPurpose,
        now: DateTime<Utc>,
    ) -> Result<Result<UserId, TokenError>, StoreError> {
        let mut s = self.state.lock();
        let Some((token, used)) = s.tokens.get_mut(hash).filter(|(t, _)| t.purpose == purpose)
        else {
            return Ok(Err(TokenError::Unknown));
        };
        if used.is_some() {
            return Ok(Err(TokenError::AlreadyUsed));
        }
        if token.expires_at <= now {
            return Ok(Err(TokenError::Expired));
        }
        *used = Some(now);
        Ok(Ok(token.user_id.clone()))
    }

    async fn totp(&self, id: &UserId) -> Result<Option<TotpRecord>, StoreError> {
        Ok(self.state.lock().totp.get(id).cloned())
    }

    async fn set_totp(
        &self,
        id: &UserId,
        record: Option<&TotpRecord>,
        recovery_hashes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        match record {
            Some(r) => {
                s.totp.insert(id.clone(), r.clone());
                s.recovery
                    .insert(id.clone(), recovery_hashes.iter().copied().collect());
            }
            None => {
                s.totp.remove(id);
                s.recovery.remove(id);
            }
        }
        Ok(())
    }

    async fn enable_totp(&self, id: &UserId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .totp
            .get_mut(id)
            .map(|t| {
                t.enabled_at.get_or_insert(at);
            })
            .is_some())
    }

    async fn use_totp_step(&self, id: &UserId, step: i64) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        match s.totp.get_mut(id) {
            Some(t) if t.last_step.is_none_or(|last| last < step) => {
                t.last_step = Some(step);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn use_recovery_code(&self, id: &UserId, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .recovery
            .get_mut(id)
            .is_some_and(|codes| codes.remove(hash)))
    }

    async fn set_display_name(&self, id: &UserId, name: Option<&str>) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .users
            .get_mut(id)
            .map(|u| u.display_name = name.map(str::to_owned))
            .is_some())
    }

    async fn insert_email_change(
        &self,
        token: &OneTimeToken,
        new_email: &Email,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        if s.tokens.contains_key(&token.hash) {
            return Err(StoreError::Conflict("token"));
        }
        s.tokens.insert(token.hash, (token.clone(), None));
        s.email_changes.insert(token.hash, new_email.clone());
        Ok(())
    }

    async fn confirm_email_change(
        &self,
        hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Result<(UserId, Email), TokenError>, StoreError> {
        let mut s = self.state.lock();
        let Some((token, used)) = s
            .tokens
            .get(hash)
            .filter(|(t, _)| t.purpose == TokenPurpose::ChangeEmail)
        else {
            return Ok(Err(TokenError::Unknown));
        };
        if used.is_some() {
            return Ok(Err(TokenError::AlreadyUsed));
        }
        if token.expires_at <= now {
            return Ok(Err(TokenError::Expired));
        }
        let user = token.user_id.clone();
        let email = s
            .email_changes
            .get(hash)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt("email change without an address".into()))?;
        if s.by_email.get(&email).is_some_and(|owner| owner != &user) {
            return Err(StoreError::Conflict("email"));
        }
        let Some(u) = s.users.get_mut(&user) else {
            return Ok(Err(TokenError::Unknown));
        };
        let old = std::mem::replace(&mut u.email, email.clone());
        u.email_verified_at = Some(now);
        s.by_email.remove(&old);
        s.by_email.insert(email.clone(), user.clone());
        s.email_changes.remove(hash);
        if let Some((_, used)) = s.tokens.get_mut(hash) {
            *used = Some(now);
        }
        Ok(Ok((user, email)))
    }

    async fn erase_user(
        &self,
        id: &UserId,
        placeholder: &Email,
        actor: Option<&UserId>,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<StatusChange>, StoreError> {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Some(u) = s.users.get_mut(id) else {
            return Ok(None);
        };
        let change = StatusChange {
            user_id: id.clone(),
            from: u.status,
            to: AccountStatus::Closed,
            actor: actor.cloned(),
            reason: reason.to_owned(),
            at,
        };
        let old = std::mem::replace(&mut u.email, placeholder.clone());
        u.password_hash = None;
        u.display_name = None;
        u.status = AccountStatus::Closed;
        s.by_email.remove(&old);
        s.by_email.insert(placeholder.clone(), id.clone());
        s.totp.remove(id);
        s.recovery.remove(id);
        let gone: Vec<[u8; 32]> = s
            .tokens
            .iter()
            .filter(|(_, (t, _))| &t.user_id == id)
            .map(|(h, _)| *h)
            .collect();
        for h in gone {
            s.tokens.remove(&h);
            s.email_changes.remove(&h);
        }
        s.sessions.retain(|_, sess| &sess.user_id != id);
        s.risk_flags.remove(id);
        s.key_limits.remove(id);
        for k in s.keys.values_mut().filter(|k| &k.user_id == id) {
            k.revoked_at.get_or_insert(at);
            k.name = "erased".into();
            k.tags.clear();
        }
        s.history.push(change.clone());
        Ok(Some(change))
    }

    async fn purge_tokens(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let gone: Vec<[u8; 32]> = s
            .tokens
            .iter()
            .filter(|(_, (t, used))| used.is_some_and(|u| u < before) || t.expires_at < before)
            .map(|(h, _)| *h)
            .collect();
        for h in &gone {
            s.tokens.remove(h);
            s.email_changes.remove(h);
        }
        Ok(gone.len() as u64)
    }

    async fn list_users(&self, f: &UserFilter) -> Result<Vec<User>, StoreError> {
        let s = self.state.lock();
        let needle = f.email_contains.as_ref().map(|e| e.to_lowercase());
        let mut users: Vec<User> = s
            .users
            .values()
            .filter(|u| {
                needle
                    .as_ref()
                    .is_none_or(|n| u.email.as_str().contains(n.as_str()))
            })
            .filter(|u| f.status.is_none_or(|st| u.status == st))
            .filter(|u| f.role.is_none_or(|r| u.role == r))
            .filter(|u| {
                let flags = s.risk_flags.get(&u.id).filter(|m| !m.is_empty());
                f.flag
                    .as_ref()
                    .is_none_or(|name| flags.is_some_and(|m| m.contains_key(name)))
                    && f.flagged.is_none_or(|want| flags.is_some() == want)
            })
            .filter(|u| {
                f.before.as_ref().is_none_or(|(at, id)| {
                    u.created_at < *at || (u.created_at == *at && u.id.as_str() < id.as_str())
                })
            })
            .cloned()
            .collect();
        users.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.id.as_str().cmp(a.id.as_str()))
        });
        users.truncate(usize::try_from(f.limit.clamp(1, MAX_USER_PAGE)).unwrap_or(1));
        Ok(users)
    }

    async fn set_risk_flag(&self, id: &UserId, flag: &RiskFlag) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        if !s.users.contains_key(id) {
            return Ok(false);
        }
        s.risk_flags
            .entry(id.clone())
            .or_default()
            .insert(flag.flag.clone(), flag.clone());
        Ok(true)
    }

    async fn clear_risk_flag(&self, id: &UserId, flag: &str) -> Result<bool, StoreError> {
        Ok(self
            .state
            .lock()
            .risk_flags
            .get_mut(id)
            .is_some_and(|m| m.remove(flag).is_some()))
    }

    async fn risk_flags(&self, id: &UserId) -> Result<Vec<RiskFlag>, StoreError> {
        Ok(self
            .state
            .lock()
            .risk_flags
            .get(id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        if s.sessions.contains_key(&session.hash) {
            return Err(StoreError::Conflict("session"));
        }
        s.sessions.insert(session.hash, session.clone());
        Ok(())
    }

    async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.state.lock().sessions.get(hash).cloned())
    }

    async fn revoke_session(&self, hash: &[u8; 32], at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        match s.sessions.get_mut(hash) {
            Some(sess) if sess.revoked_at.is_none() => {
                sess.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        keep: Option<&[u8; 32]>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut s = self.state.lock();
        let mut n = 0;
        for sess in s.sessions.values_mut() {
            if &sess.user_id == user && sess.revoked_at.is_none() && Some(&sess.hash) != keep {
                sess.revoked_at = Some(at);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut s = self.state.lock();
        let n = s.sessions.len();
        s.sessions.retain(|_, sess| {
            !(sess.revoked_at.is_some_and(|r| r < before) || sess.expires_at < before)
        });
        Ok((n - s.sessions.len()) as u64)
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_key(
        &self,
        key: &ApiKeyRecord,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        let live = s
            .keys
            .values()
            .filter(|k| {
                k.user_id == key.user_id
                    && k.revoked_at.is_none()
                    && k.expires_at.is_none_or(|t| t > now)
            })
            .count();
        if live >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(StoreError::KeyLimit { limit });
        }
        if s.key_by_hash.contains_key(&key.hash) || s.keys.contains_key(&key.id) {
            return Err(StoreError::Conflict("api key"));
        }
        s.key_by_hash.insert(key.hash, key.id.clone());
        s.keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn rotate_key(
        &self,
        old: &ApiKeyId,
        old_expires_at: DateTime<Utc>,
        new: &ApiKeyRecord,
    ) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        if s.keys.get(old).is_none_or(|k| k.revoked_at.is_some()) {
            return Ok(false);
        }
        if s.key_by_hash.contains_key(&new.hash) || s.keys.contains_key(&new.id) {
            return Err(StoreError::Conflict("api key"));
        }
        if let Some(k) = s.keys.get_mut(old) {
            k.expires_at = Some(
                k.expires_at
                    .map_or(old_expires_at, |t| t.min(old_expires_at)),
            );
        }
        s.key_by_hash.insert(new.hash, new.id.clone());
        s.keys.insert(new.id.clone(), new.clone());
        Ok(true)
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let s = self.state.lock();
        Ok(s.key_by_hash
            .get(hash)
            .and_then(|id| s.keys.get(id))
            .cloned())
    }

    async fn key_by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.state.lock().keys.get(id).cloned())
    }

    async fn keys_of_user(&self, user: &UserId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys: Vec<_> = self
            .state
            .lock()
            .keys
            .values()
            .filter(|k| &k.user_id == user)
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &ApiKeyId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        match s.keys.get_mut(id) {
            Some(k) if k.revoked_at.is_none() => {
                k.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn apply_user_policy(
        &self,
        user: &UserId,
        policy: &KeyPolicy,
    ) -> Result<u64, StoreError> {
        let mut s = self.state.lock();
        let mut n = 0;
        for k in s.keys.values_mut() {
            if &k.user_id == user && k.revoked_at.is_none() {
                k.policy = k
                    .own_limits
                    .as_ref()
                    .map_or_else(|| policy.clone(), |l| l.apply(policy));
                k.suspended_at = None;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn suspend_user_keys(&self, user: &UserId, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut s = self.state.lock();
        let mut n = 0;
        for k in s.keys.values_mut() {
            if &k.user_id == user && k.revoked_at.is_none() {
                k.suspended_at.get_or_insert(at);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn set_key_limit(&self, user: &UserId, max_keys: u32) -> Result<(), StoreError> {
        self.state.lock().key_limits.insert(user.clone(), max_keys);
        Ok(())
    }

    async fn key_limit(&self, user: &UserId) -> Result<Option<u32>, StoreError> {
        Ok(self.state.lock().key_limits.get(user).copied())
    }

    async fn set_key_limits(
        &self,
        id: &ApiKeyId,
        limits: Option<&KeyLimits>,
        policy: &KeyPolicy,
    ) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        match s.keys.get_mut(id) {
            Some(k) if k.revoked_at.is_none() => {
                k.own_limits = limits.cloned();
                k.policy = policy.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_key_uses(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        for u in uses {
            if let Some(k) = s.keys.get_mut(&u.key_id) {
                k.first_used_at.get_or_insert(u.first);
                k.last_used_at = Some(k.last_used_at.map_or(u.last, |t| t.max(u.last)));
            }
        }
        Ok(())
    }
}
