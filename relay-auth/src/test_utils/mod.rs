//! The store conformance suite: every backend of [`AuthStore`] must pass these.
//!
//! Each function takes a fresh, empty store and panics on a failed expectation. Stamp them
//! out once per backend (see this crate's `tests/store_*.rs`); use [`run_all`] for all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use relay_core::{AccountStatus, ApiKeyId, KeyPolicy, UserId};

use crate::email::Email;
use crate::error::TokenError;
use crate::model::{
    ApiKeyRecord, KeyUse, OneTimeToken, SessionRecord, StatusChange, TokenPurpose, TotpRecord,
    User, UserSource,
};
use crate::role::Role;
use crate::store::{AuthStore, StoreError};

mod profile;
pub use profile::*;

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// A local user with a unique email.
pub fn sample_user(tag: &str) -> User {
    let id = UserId::new();
    User {
        email: Email::parse(&format!("{tag}.{}@example.com", &id.as_str()[4..12])).unwrap(),
        id,
        password_hash: Some("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        role: Role::User,
        status: AccountStatus::Active,
        source: UserSource::Local,
        email_verified_at: None,
        created_at: t0(),
        display_name: None,
    }
}

/// A key record of `user` with a random hash.
pub fn sample_key(user: &UserId, created_at: DateTime<Utc>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: ApiKeyId::new(),
        user_id: user.clone(),
        name: "ci key ✓".into(),
        tags: vec!["ci".into(), "team:a".into()],
        policy: KeyPolicy {
            allowed_models: vec!["claude-*".into()],
            concurrency: Some(3),
            ..KeyPolicy::default()
        },
        hash: crate::secret::random_bytes::<32>(),
        hint: "rk_live_AbCd".into(),
        created_at,
        first_used_at: None,
        last_used_at: None,
        expires_at: None,
        revoked_at: None,
        suspended_at: None,
        own_limits: None,
    }
}

/// Users round-trip; a taken email is a conflict that changes nothing; updates apply.
pub async fn users_round_trip_and_unique_email(store: Arc<dyn AuthStore>) {
    let u = sample_user("round");
    store.insert_user(&u).await.unwrap();
    assert_eq!(store.user_by_id(&u.id).await.unwrap().as_ref(), Some(&u));
    assert_eq!(
        store.user_by_email(&u.email).await.unwrap().as_ref(),
        Some(&u)
    );
    let mut dup = sample_user("other");
    dup.email = u.email.clone();
    assert!(matches!(
        store.insert_user(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store.user_by_id(&dup.id).await.unwrap().is_none(),
        "conflict changed nothing"
    );
    assert!(store.user_by_id(&UserId::new()).await.unwrap().is_none());

    assert!(store
        .set_password_hash(&u.id, "$argon2id$new")
        .await
        .unwrap());
    assert!(!store.set_password_hash(&UserId::new(), "x").await.unwrap());
    assert!(store.set_email_verified(&u.id, t0()).await.unwrap());
    assert!(store
        .set_email_verified(&u.id, t0() + Duration::hours(1))
        .await
        .unwrap());
    assert!(store.set_role(&u.id, Role::Operator).await.unwrap());
    let got = store.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(got.password_hash.as_deref(), Some("$argon2id$new"));
    assert_eq!(got.email_verified_at, Some(t0()), "first verification kept");
    assert_eq!(got.role, Role::Operator);
}

/// Sixteen concurrent inserts of one email: exactly one succeeds.
pub async fn concurrent_registrations_one_wins(store: Arc<dyn AuthStore>) {
    let email = sample_user("race").email;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let mut u = sample_user("race");
        u.email = email.clone();
        tasks.push(tokio::spawn(async move { store.insert_user(&u).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won, 1);
    assert!(store.user_by_email(&email).await.unwrap().is_some());
}

/// Status changes are compare-and-set and each one is in the history.
pub async fn status_transitions_are_compare_and_set_with_history(store: Arc<dyn AuthStore>) {
    let u = sample_user("status");
    store.insert_user(&u).await.unwrap();
    let change = |from, to, at| StatusChange {
        user_id: u.id.clone(),
        from,
        to,
        actor: None,
        reason: "test".into(),
        at,
    };
    let c1 = change(AccountStatus::Active, AccountStatus::Suspended, t0());
    assert!(store.transition_status(&c1).await.unwrap());
    // Stale `from`: refused, nothing recorded.
    assert!(!store
        .transition_status(&change(AccountStatus::Active, AccountStatus::Frozen, t0()))
        .await
        .unwrap());
    let mut c2 = change(
        AccountStatus::Suspended,
        AccountStatus::Active,
        t0() + Duration::minutes(1),
    );
    c2.actor = Some(UserId::new());
    assert!(store.transition_status(&c2).await.unwrap());
    assert_eq!(store.status_history(&u.id).await.unwrap(), vec![c1, c2]);
    assert_eq!(
        store.user_by_id(&u.id).await.unwrap().unwrap().status,
        AccountStatus::Active
    );
    assert!(store
        .status_history(&UserId::new())
        .await
        .unwrap()
        .is_empty());
}

/// Single-use tokens: purpose-bound, used once (also under a race), expire.
pub async fn tokens_are_single_use_and_expire(store: Arc<dyn AuthStore>) {
    let u = sample_user("token");
    store.insert_user(&u).await.unwrap();
    let token = OneTimeToken {
        hash: [1; 32],
        user_id: u.id.clone(),
        purpose: TokenPurpose::ResetPassword,
        created_at: t0(),
        expires_at: t0() + Duration::hours(1),
    };
    store.insert_token(&token).await.unwrap();
    // Wrong purpose: unknown.
    assert_eq!(
        store
            .consume_token(&[1; 32], TokenPurpose::VerifyEmail, t0())
            .await
            .unwrap(),
        Err(TokenError::Unknown)
    );
    assert_eq!(
        store
            .consume_token(&[1; 32], TokenPurpose::ResetPassword, t0())
            .await
            .unwrap(),
        Ok(u.id.clone())
    );
    assert_eq!(
        store
            .consume_token(&[1; 32], TokenPurpose::ResetPassword, t0())
            .await
            .unwrap(),
        Err(TokenError::AlreadyUsed)
    );
    let expiring = OneTimeToken {
        hash: [2; 32],
        ..token.clone()
    };
    store.insert_token(&expiring).await.unwrap();
    assert_eq!(
        store
            .consume_token(
                &[2; 32],
                TokenPurpose::ResetPassword,
                t0() + Duration::hours(1)
            )
            .await
            .unwrap(),
        Err(TokenError::Expired)
    );
    assert_eq!(
        store
            .consume_token(&[9; 32], TokenPurpose::ResetPassword, t0())
            .await
            .unwrap(),
        Err(TokenError::Unknown)
    );
    // Racing consumers: exactly one wins.
    let racing = OneTimeToken {
        hash: [3; 32],
        ..token
    };
    store.insert_token(&racing).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .consume_token(&[3; 32], TokenPurpose::ResetPassword, t0())
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

/// TOTP steps only move forward (one winner per step); recovery codes work once.
pub async fn totp_steps_and_recovery_codes(store: Arc<dyn AuthStore>) {
    let u = sample_user("totp");
    store.insert_user(&u).await.unwrap();
    assert!(store.totp(&u.id).await.unwrap().is_none());
    assert!(
        !store.use_totp_step(&u.id, 5).await.unwrap(),
        "no TOTP: nothing to use"
    );
    let rec = TotpRecord {
        sealed_secret: vec![1, 2, 3],
        enabled_at: None,
        last_step: None,
    };
    store
        .set_totp(&u.id, Some(&rec), &[[7; 32], [8; 32]])
        .await
        .unwrap();
    assert_eq!(store.totp(&u.id).await.unwrap(), Some(rec.clone()));
    assert!(store.enable_totp(&u.id, t0()).await.unwrap());
    assert!(store.use_totp_step(&u.id, 100).await.unwrap());
    assert!(
        !store.use_totp_step(&u.id, 100).await.unwrap(),
        "same step twice"
    );
    assert!(!store.use_totp_step(&u.id, 99).await.unwrap(), "older step");
    assert!(store.use_totp_step(&u.id, 101).await.unwrap());
    let got = store.totp(&u.id).await.unwrap().unwrap();
    assert_eq!(got.enabled_at, Some(t0()));
    assert_eq!(got.last_step, Some(101));
    // Racing the same step: one winner.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let id = u.id.clone();
        tasks.push(tokio::spawn(async move {
            store.use_totp_step(&id, 200).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);

    assert!(store.use_recovery_code(&u.id, &[7; 32]).await.unwrap());
    assert!(
        !store.use_recovery_code(&u.id, &[7; 32]).await.unwrap(),
        "single use"
    );
    assert!(!store.use_recovery_code(&u.id, &[9; 32]).await.unwrap());
    let other = sample_user("totp2");
    store.insert_user(&other).await.unwrap();
    assert!(
        !store.use_recovery_code(&other.id, &[8; 32]).await.unwrap(),
        "not theirs"
    );
    store.set_totp(&u.id, None, &[]).await.unwrap();
    assert!(store.totp(&u.id).await.unwrap().is_none());
    assert!(
        !store.use_recovery_code(&u.id, &[8; 32]).await.unwrap(),
        "codes removed"
    );
}

/// Sessions end one at a time or all but one.
pub async fn sessions_revoke(store: Arc<dyn AuthStore>) {
    let u = sample_user("sess");
    store.insert_user(&u).await.unwrap();
    let s = |n: u8| SessionRecord {
        hash: [n; 32],
        csrf_hash: [n + 100; 32],
        user_id: u.id.clone(),
        created_at: t0(),
        expires_at: t0() + Duration::days(1),
        revoked_at: None,
    };
    for n in 1..=3 {
        store.insert_session(&s(n)).await.unwrap();
    }
    assert_eq!(store.session(&[1; 32]).await.unwrap(), Some(s(1)));
    assert!(store.session(&[9; 32]).await.unwrap().is_none());
    assert!(store.revoke_session(&[1; 32], t0()).await.unwrap());
    assert!(!store.revoke_session(&[1; 32], t0()).await.unwrap());
    assert_eq!(
        store.session(&[1; 32]).await.unwrap().unwrap().revoked_at,
        Some(t0())
    );
    assert_eq!(
        store
            .revoke_user_sessions(&u.id, Some(&[2; 32]), t0())
            .await
            .unwrap(),
        1
    );
    assert!(store
        .session(&[2; 32])
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    assert!(store
        .session(&[3; 32])
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert_eq!(
        store.revoke_user_sessions(&u.id, None, t0()).await.unwrap(),
        1
    );
}

/// Key limit, rotation with grace, revocation, batched uses, policy and suspension.
pub async fn keys_limit_rotate_revoke_and_uses(store: Arc<dyn AuthStore>) {
    let u = sample_user("keys");
    store.insert_user(&u).await.unwrap();
    let k1 = sample_key(&u.id, t0());
    let k2 = sample_key(&u.id, t0() + Duration::seconds(1));
    store.insert_key(&k1, 2, t0()).await.unwrap();
    store.insert_key(&k2, 2, t0()).await.unwrap();
    assert_eq!(
        store.key_by_hash(&k1.hash).await.unwrap().as_ref(),
        Some(&k1)
    );
    assert_eq!(store.key_by_id(&k2.id).await.unwrap().as_ref(), Some(&k2));
    let k3 = sample_key(&u.id, t0() + Duration::seconds(2));
    assert!(matches!(
        store.insert_key(&k3, 2, t0()).await,
        Err(StoreError::KeyLimit { limit: 2 })
    ));
    assert!(store.key_by_id(&k3.id).await.unwrap().is_none());
    // Revoking frees a slot.
    assert!(store.revoke_key(&k1.id, t0()).await.unwrap());
    assert!(!store.revoke_key(&k1.id, t0()).await.unwrap());
    store.insert_key(&k3, 2, t0()).await.unwrap();
    assert_eq!(
        store
            .keys_of_user(&u.id)
            .await
            .unwrap()
            .iter()
            .map(|k| k.id.clone())
            .collect::<Vec<_>>(),
        vec![k1.id.clone(), k2.id.clone(), k3.id.clone()]
    );

    // Rotation: old key gets the grace expiry, new key is inserted.
    let k4 = sample_key(&u.id, t0() + Duration::seconds(3));
    let grace = t0() + Duration::hours(1);
    assert!(store.rotate_key(&k2.id, grace, &k4).await.unwrap());
    assert_eq!(
        store.key_by_id(&k2.id).await.unwrap().unwrap().expires_at,
        Some(grace)
    );
    assert!(store.key_by_id(&k4.id).await.unwrap().is_some());
    let k5 = sample_key(&u.id, t0());
    assert!(
        !store.rotate_key(&k1.id, grace, &k5).await.unwrap(),
        "revoked key: no rotation"
    );
    assert!(store.key_by_id(&k5.id).await.unwrap().is_none());
    // Once the grace ends, the old key no longer counts against the limit.
    let k6 = sample_key(&u.id, t0());
    assert!(matches!(
        store.insert_key(&k6, 3, t0()).await,
        Err(StoreError::KeyLimit { .. })
    ));
    store
        .insert_key(&k6, 3, grace + Duration::seconds(1))
        .await
        .unwrap();

    // Batched uses: first use kept, last use the latest.
    let a = t0() + Duration::minutes(5);
    let b = t0() + Duration::minutes(9);
    store
        .record_key_uses(&[KeyUse {
            key_id: k3.id.clone(),
            first: a,
            last: b,
        }])
        .await
        .unwrap();
    store
        .record_key_uses(&[KeyUse {
            key_id: k3.id.clone(),
            first: a + Duration::minutes(1),
            last: a,
        }])
        .await
        .unwrap();
    store.record_key_uses(&[]).await.unwrap();
    let got = store.key_by_id(&k3.id).await.unwrap().unwrap();
    assert_eq!((got.first_used_at, got.last_used_at), (Some(a), Some(b)));

    // Policy and suspension apply to every non-revoked key.
    let policy = KeyPolicy {
        concurrency: Some(9),
        ..KeyPolicy::default()
    };
    let live = store.suspend_user_keys(&u.id, t0()).await.unwrap();
    assert!(live >= 3);
    assert!(store
        .key_by_id(&k3.id)
        .await
        .unwrap()
        .unwrap()
        .suspended_at
        .is_some());
    assert_eq!(store.apply_user_policy(&u.id, &policy).await.unwrap(), live);
    let got = store.key_by_id(&k3.id).await.unwrap().unwrap();
    assert_eq!((got.policy, got.suspended_at), (policy, None));
    assert_eq!(
        store.key_by_id(&k1.id).await.unwrap().unwrap().policy,
        k1.policy,
        "revoked untouched"
    );
}

/// Twenty concurrent key inserts against a limit of five: exactly five succeed.
pub async fn concurrent_key_inserts_respect_the_limit(store: Arc<dyn AuthStore>) {
    let u = sample_user("keyrace");
    store.insert_user(&u).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = Arc::clone(&store);
        let k = sample_key(&u.id, t0());
        tasks.push(tokio::spawn(
            async move { store.insert_key(&k, 5, t0()).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::KeyLimit { limit: 5 }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(store.keys_of_user(&u.id).await.unwrap().len(), 5);
}

/// Per-user key limits round-trip and replace.
pub async fn key_limits(store: Arc<dyn AuthStore>) {
    let u = UserId::new();
    assert_eq!(store.key_limit(&u).await.unwrap(), None);
    store.set_key_limit(&u, 4).await.unwrap();
    assert_eq!(store.key_limit(&u).await.unwrap(), Some(4));
    store.set_key_limit(&u, 1).await.unwrap();
    assert_eq!(store.key_limit(&u).await.unwrap(), Some(1));
    assert_eq!(store.key_limit(&UserId::new()).await.unwrap(), None);
}

/// Every conformance test, in sequence, on one store.
pub async fn run_all(store: Arc<dyn AuthStore>) {
    users_round_trip_and_unique_email(Arc::clone(&store)).await;
    concurrent_registrations_one_wins(Arc::clone(&store)).await;
    status_transitions_are_compare_and_set_with_history(Arc::clone(&store)).await;
    tokens_are_single_use_and_expire(Arc::clone(&store)).await;
    totp_steps_and_recovery_codes(Arc::clone(&store)).await;
    sessions_revoke(Arc::clone(&store)).await;
    keys_limit_rotate_revoke_and_uses(Arc::clone(&store)).await;
    concurrent_key_inserts_respect_the_limit(Arc::clone(&store)).await;
    key_limits(Arc::clone(&store)).await;
    erase_removes_personal_data(Arc::clone(&store)).await;
    email_change_is_confirmed_once(Arc::clone(&store)).await;
    purge_removes_only_what_ended_before(Arc::clone(&store)).await;
    list_users_filters_and_pages(Arc::clone(&store)).await;
    risk_flags_set_and_clear(Arc::clone(&store)).await;
    key_limits_survive_policy_application(store).await;
}
