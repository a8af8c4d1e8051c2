//! Demo data: an admin, a user, a plan-like key policy and the user's key.
//!
//! relay-auth's `ApiKeyService` only issues random keys; to honour `RELAY_DEMO_KEY` the key
//! record is written through the store with the same keyed hash the service verifies
//! (`KeyHasher` with the same pepper), which is what issuing does internally.

use std::sync::Arc;

use relay_auth::store::{AuthStore, StoreError};
use relay_auth::{
    AccountService, ApiKeyRecord, ApiKeyService, AuthError, Email, KeyHasher, NewKey, Role,
    KEY_PREFIX,
};
use relay_core::{ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, UserId};
use rust_decimal::Decimal;

/// Email of the demo admin.
pub const ADMIN_EMAIL: &str = "admin@relay.demo";
/// Email of the demo user.
pub const USER_EMAIL: &str = "demo@relay.demo";
/// Password of both demo accounts (demo only).
pub const DEMO_PASSWORD: &str = "relay demo password";

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// relay-auth refused.
    #[error("seeding demo data: {0}")]
    Auth(#[from] AuthError),
    /// The store refused.
    #[error("seeding demo data: {0}")]
    Store(#[from] StoreError),
    /// `RELAY_DEMO_KEY` is not shaped like a key.
    #[error("RELAY_DEMO_KEY must be `{KEY_PREFIX}` followed by 43 base64url characters (A-Z a-z 0-9 - _)")]
    BadKey,
}

/// What was seeded.
#[derive(Debug, Clone)]
pub struct DemoSeed {
    /// The demo user.
    pub user_id: UserId,
    /// The demo key (plaintext: demo only).
    pub key: String,
    /// The key's record id.
    pub key_id: ApiKeyId,
}

/// The demo plan: 8 requests in flight, 600 requests and 2M tokens a minute, 50 USD a day.
pub fn demo_policy() -> KeyPolicy {
    KeyPolicy {
        concurrency: Some(8),
        rate_windows: vec![RateWindow {
            window_secs: 60,
            max_requests: Some(600),
            max_tokens: Some(2_000_000),
            max_cost: None,
        }],
        budgets: vec![Budget {
            period: BudgetPeriod::Daily,
            cap: Money::new(Decimal::from(50), Currency::USD),
        }],
        ..KeyPolicy::default()
    }
}

/// Is `key` shaped like one of relay-auth's keys?
pub fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    })
}

async fn user(accounts: &AccountService, email: &str, role: Role) -> Result<UserId, SeedError> {
    if let Some(u) = accounts
        .store()
        .user_by_email(&Email::parse(email).map_err(AuthError::from)?)
        .await?
    {
        return Ok(u.id);
    }
    Ok(accounts.create_user(email, DEMO_PASSWORD, role).await?.id)
}

/// Seed (idempotently: a second run reuses the accounts and, for a fixed key, the key).
pub async fn seed(
    accounts: &AccountService,
    keys: &ApiKeyService,
    store: &Arc<dyn AuthStore>,
    pepper: &[u8],
    fixed_key: Option<&str>,
    policy: KeyPolicy,
) -> Result<DemoSeed, SeedError> {
    user(accounts, ADMIN_EMAIL, Role::Admin).await?;
    let user_id = user(accounts, USER_EMAIL, Role::User).await?;
    let Some(key) = fixed_key else {
        let issued = keys
            .issue(
                &user_id,
                NewKey {
                    name: "demo".into(),
                    tags: vec!["demo".into()],
                    policy,
                },
            )
            .await?;
        return Ok(DemoSeed {
            user_id,
            key: issued.key,
            key_id: issued.record.id,
        });
    };
    let key = key.trim();
    if !well_formed(key) {
        return Err(SeedError::BadKey);
    }
    let hash = KeyHasher::new(pepper)?.hash(key);
    if let Some(existing) = store.key_by_hash(&hash).await? {
        // Keep the stored key, but give it the current demo policy.
        store.apply_user_policy(&existing.user_id, &policy).await?;
        keys.invalidate_user(&existing.user_id);
        return Ok(DemoSeed {
            user_id: existing.user_id,
            key: key.to_owned(),
            key_id: existing.id,
        });
    }
    policy.validate().map_err(AuthError::from)?;
    let now = chrono::Utc::now();
    let record = ApiKeyRecord {
        id: ApiKeyId::new(),
        user_id: user_id.clone(),
        name: "demo".into(),
        tags: vec!["demo".into()],
        policy,
        hash,
        hint: key.chars().take(KEY_PREFIX.len() + 4).collect(),
        created_at: now,
        first_used_at: None,
        last_used_at: None,
        expires_at: None,
        revoked_at: None,
        suspended_at: None,
        own_limits: None,
    };
    store.insert_key(&record, 100, now).await?;
    Ok(DemoSeed {
        user_id,
        key: key.to_owned(),
        key_id: record.id,
    })
}
