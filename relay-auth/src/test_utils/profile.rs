//! Conformance tests of erasure, email changes, purging, listing, risk flags and key
//! limits (re-exported from the suite's root).

use std::sync::Arc;

use chrono::Duration;
use relay_core::{AccountStatus, KeyPolicy, UserId};

use super::{sample_key, sample_user, t0};
use crate::email::Email;
use crate::error::TokenError;
use crate::keys::limits::KeyLimits;
use crate::model::{OneTimeToken, RiskFlag, SessionRecord, TokenPurpose, TotpRecord, UserFilter};
use crate::profile::erased_email;
use crate::role::Role;
use crate::store::{AuthStore, StoreError};

fn token(user: &UserId, n: u8, purpose: TokenPurpose) -> OneTimeToken {
    OneTimeToken {
        hash: [n; 32],
        user_id: user.clone(),
        purpose,
        created_at: t0(),
        expires_at: t0() + Duration::hours(1),
    }
}

fn session(user: &UserId, n: u8) -> SessionRecord {
    SessionRecord {
        hash: [n; 32],
        csrf_hash: [n.wrapping_add(100); 32],
        user_id: user.clone(),
        created_at: t0(),
        expires_at: t0() + Duration::days(1),
        revoked_at: None,
    }
}

fn flag(name: &str) -> RiskFlag {
    RiskFlag {
        flag: name.into(),
        reason: "chargeback on order 17".into(),
        actor: None,
        set_at: t0(),
    }
}

/// Erasure removes every piece of personal data in one step, keeps the id and a history
/// entry without the email, frees the address, and leaves other users alone.
pub async fn erase_removes_personal_data(store: Arc<dyn AuthStore>) {
    let mut u = sample_user("erase");
    u.display_name = Some("Ann Example".into());
    let other = sample_user("bystander");
    store.insert_user(&u).await.unwrap();
    store.insert_user(&other).await.unwrap();
    let totp = TotpRecord {
        sealed_secret: vec![1, 2, 3],
        enabled_at: Some(t0()),
        last_step: None,
    };
    store
        .set_totp(&u.id, Some(&totp), &[[7; 32]])
        .await
        .unwrap();
    store
        .insert_token(&token(&u.id, 41, TokenPurpose::ResetPassword))
        .await
        .unwrap();
    let new = Email::parse(&format!("new.{}", u.email)).unwrap();
    store
        .insert_email_change(&token(&u.id, 42, TokenPurpose::ChangeEmail), &new)
        .await
        .unwrap();
    store.insert_session(&session(&u.id, 43)).await.unwrap();
    store.insert_session(&session(&other.id, 44)).await.unwrap();
    store.set_risk_flag(&u.id, &flag("fraud")).await.unwrap();
    let key = sample_key(&u.id, t0());
    store.insert_key(&key, 5, t0()).await.unwrap();
    let placeholder = erased_email(&u.id);
    let at = t0() + Duration::hours(2);
    let change = store
        .erase_user(
            &u.id,
            &placeholder,
            Some(&u.id),
            "erased at the user's request",
            at,
        )
        .await
        .unwrap()
        .expect("user exists");
    assert_eq!(
        (change.from, change.to),
        (AccountStatus::Active, AccountStatus::Closed)
    );
    let after = store.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(after.email, placeholder);
    assert_eq!(after.password_hash, None);
    assert_eq!(after.display_name, None);
    assert_eq!(after.status, AccountStatus::Closed);
    assert!(store.user_by_email(&u.email).await.unwrap().is_none());
    assert!(store.totp(&u.id).await.unwrap().is_none());
    assert!(!store.use_recovery_code(&u.id, &[7; 32]).await.unwrap());
    assert_eq!(
        store
            .consume_token(&[41; 32], TokenPurpose::ResetPassword, t0())
            .await
            .unwrap(),
        Err(TokenError::Unknown)
    );
    assert_eq!(
        store.confirm_email_change(&[42; 32], t0()).await.unwrap(),
        Err(TokenError::Unknown)
    );
    assert!(store.session(&[43; 32]).await.unwrap().is_none());
    assert!(
        store.session(&[44; 32]).await.unwrap().is_some(),
        "others keep theirs"
    );
    assert!(store.risk_flags(&u.id).await.unwrap().is_empty());
    let k = store.key_by_id(&key.id).await.unwrap().unwrap();
    assert_eq!(k.revoked_at, Some(at));
    assert!(k.tags.is_empty());
    assert_ne!(k.name, key.name);
    let history = store.status_history(&u.id).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.to, AccountStatus::Closed);
    assert!(!last.reason.contains(u.email.as_str()));
    // The address can register again, as a new user.
    let mut again = sample_user("again");
    again.email = u.email.clone();
    store.insert_user(&again).await.unwrap();
    assert_eq!(
        store.user_by_email(&u.email).await.unwrap().unwrap().id,
        again.id
    );
    assert_eq!(store.user_by_id(&other.id).await.unwrap().unwrap(), other);
    assert!(store
        .erase_user(&UserId::new(), &erased_email(&UserId::new()), None, "x", at)
        .await
        .unwrap()
        .is_none());
}

/// An email change moves the account only when its token is used, once, before it
/// expires, and not onto an address someone else took meanwhile.
pub async fn email_change_is_confirmed_once(store: Arc<dyn AuthStore>) {
    let u = sample_user("mover");
    store.insert_user(&u).await.unwrap();
    let new = Email::parse(&format!("moved.{}", u.email)).unwrap();
    store
        .insert_email_change(&token(&u.id, 51, TokenPurpose::ChangeEmail), &new)
        .await
        .unwrap();
    assert_eq!(
        store.user_by_id(&u.id).await.unwrap().unwrap().email,
        u.email,
        "not yet"
    );
    // Not a registration token.
    assert_eq!(
        store
            .consume_token(&[51; 32], TokenPurpose::VerifyEmail, t0())
            .await
            .unwrap(),
        Err(TokenError::Unknown)
    );
    let later = t0() + Duration::minutes(5);
    assert_eq!(
        store.confirm_email_change(&[51; 32], later).await.unwrap(),
        Ok((u.id.clone(), new.clone()))
    );
    let moved = store.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(
        (moved.email.clone(), moved.email_verified_at),
        (new.clone(), Some(later))
    );
    assert!(store.user_by_email(&u.email).await.unwrap().is_none());
    assert_eq!(store.user_by_email(&new).await.unwrap().unwrap().id, u.id);
    assert_eq!(
        store.confirm_email_change(&[51; 32], later).await.unwrap(),
        Err(TokenError::AlreadyUsed)
    );
    // Expired.
    let third = Email::parse(&format!("third.{}", u.email)).unwrap();
    store
        .insert_email_change(&token(&u.id, 52, TokenPurpose::ChangeEmail), &third)
        .await
        .unwrap();
    assert_eq!(
        store
            .confirm_email_change(&[52; 32], t0() + Duration::hours(1))
            .await
            .unwrap(),
        Err(TokenError::Expired)
    );
    // Taken meanwhile: conflict, nothing changes.
    let mut squatter = sample_user("squat");
    squatter.email = third.clone();
    store
        .insert_email_change(&token(&u.id, 53, TokenPurpose::ChangeEmail), &third)
        .await
        .unwrap();
    store.insert_user(&squatter).await.unwrap();
    assert!(matches!(
        store.confirm_email_change(&[53; 32], t0()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.user_by_id(&u.id).await.unwrap().unwrap().email, new);
    assert_eq!(
        store.user_by_email(&third).await.unwrap().unwrap().id,
        squatter.id
    );
    assert_eq!(
        store.confirm_email_change(&[99; 32], t0()).await.unwrap(),
        Err(TokenError::Unknown)
    );
    assert!(store.set_display_name(&u.id, Some("Mo")).await.unwrap());
    assert_eq!(
        store
            .user_by_id(&u.id)
            .await
            .unwrap()
            .unwrap()
            .display_name
            .as_deref(),
        Some("Mo")
    );
    assert!(store.set_display_name(&u.id, None).await.unwrap());
    assert!(!store
        .set_display_name(&UserId::new(), Some("x"))
        .await
        .unwrap());
}

/// The purge deletes tokens and sessions that ended before the cut-off, and nothing else.
pub async fn purge_removes_only_what_ended_before(store: Arc<dyn AuthStore>) {
    let u = sample_user("purge");
    store.insert_user(&u).await.unwrap();
    // Token 61 expires at t0+1h; 62 is used at t0; 63 lives for 30 days.
    store
        .insert_token(&token(&u.id, 61, TokenPurpose::VerifyEmail))
        .await
        .unwrap();
    store
        .insert_token(&token(&u.id, 62, TokenPurpose::ResetPassword))
        .await
        .unwrap();
    assert!(store
        .consume_token(&[62; 32], TokenPurpose::ResetPassword, t0())
        .await
        .unwrap()
        .is_ok());
    let mut long = token(&u.id, 63, TokenPurpose::VerifyEmail);
    long.expires_at = t0() + Duration::days(30);
    store.insert_token(&long).await.unwrap();
    // Session 64 expires at t0+1d; 65 revoked at t0; 66 lives.
    store.insert_session(&session(&u.id, 64)).await.unwrap();
    store.insert_session(&session(&u.id, 65)).await.unwrap();
    store.revoke_session(&[65; 32], t0()).await.unwrap();
    let mut live = session(&u.id, 66);
    live.expires_at = t0() + Duration::days(30);
    store.insert_session(&live).await.unwrap();
    // Nothing ended before t0.
    assert_eq!(store.purge_tokens(t0()).await.unwrap(), 0);
    assert_eq!(store.purge_sessions(t0()).await.unwrap(), 0);
    let cut = t0() + Duration::days(2);
    assert_eq!(store.purge_tokens(cut).await.unwrap(), 2);
    assert_eq!(store.purge_sessions(cut).await.unwrap(), 2);
    assert_eq!(
        store
            .consume_token(&[61; 32], TokenPurpose::VerifyEmail, t0())
            .await
            .unwrap(),
        Err(TokenError::Unknown)
    );
    assert!(store.session(&[64; 32]).await.unwrap().is_none());
    assert!(store.session(&[65; 32]).await.unwrap().is_none());
    assert!(store.session(&[66; 32]).await.unwrap().is_some());
    assert_eq!(
        store
            .consume_token(&[63; 32], TokenPurpose::VerifyEmail, cut)
            .await
            .unwrap(),
        Ok(u.id.clone())
    );
    assert_eq!(
        store.purge_tokens(cut).await.unwrap(),
        0,
        "used after the cut-off"
    );
}

/// Listing: filters combine, newest first, pages by cursor without gaps or repeats.
pub async fn list_users_filters_and_pages(store: Arc<dyn AuthStore>) {
    let tag = format!("lst{}", &UserId::new().as_str()[4..10]);
    let mut made = Vec::new();
    for i in 0..7i64 {
        let mut u = sample_user(&tag);
        u.created_at = t0() + Duration::minutes(i / 2); // ties on created_at too
        if i == 3 {
            u.role = Role::Operator;
        }
        if i == 4 {
            u.status = AccountStatus::Suspended;
        }
        store.insert_user(&u).await.unwrap();
        made.push(u);
    }
    store
        .set_risk_flag(&made[5].id, &flag("chargeback"))
        .await
        .unwrap();
    let base = UserFilter {
        email_contains: Some(tag.to_uppercase()),
        limit: 3,
        ..UserFilter::default()
    };
    let mut seen = Vec::new();
    let mut filter = base.clone();
    loop {
        let page = store.list_users(&filter).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        filter.before = Some((last.created_at, last.id.clone()));
        seen.extend(page);
    }
    let mut expected = made.clone();
    expected.sort_by(|a, b| (b.created_at, b.id.as_str()).cmp(&(a.created_at, a.id.as_str())));
    assert_eq!(seen, expected);
    let one = |f: UserFilter| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_users(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.id)
                .collect::<Vec<_>>()
        }
    };
    let all = UserFilter {
        limit: 100,
        ..base.clone()
    };
    assert_eq!(
        one(UserFilter {
            role: Some(Role::Operator),
            ..all.clone()
        })
        .await,
        vec![made[3].id.clone()]
    );
    assert_eq!(
        one(UserFilter {
            status: Some(AccountStatus::Suspended),
            ..all.clone()
        })
        .await,
        vec![made[4].id.clone()]
    );
    assert_eq!(
        one(UserFilter {
            flag: Some("chargeback".into()),
            ..all.clone()
        })
        .await,
        vec![made[5].id.clone()]
    );
    assert_eq!(
        one(UserFilter {
            flagged: Some(true),
            ..all.clone()
        })
        .await,
        vec![made[5].id.clone()]
    );
    assert_eq!(
        one(UserFilter {
            flagged: Some(false),
            ..all.clone()
        })
        .await
        .len(),
        6
    );
    assert!(one(UserFilter {
        flag: Some("other".into()),
        ..all.clone()
    })
    .await
    .is_empty());
    // LIKE wildcards in the needle are literal.
    assert!(one(UserFilter {
        email_contains: Some(format!("{tag}%")),
        ..all.clone()
    })
    .await
    .is_empty());
    assert!(one(UserFilter {
        email_contains: Some("_".repeat(40)),
        ..all
    })
    .await
    .is_empty());
}

/// Risk flags: set (replacing), list, clear; none on a missing user.
pub async fn risk_flags_set_and_clear(store: Arc<dyn AuthStore>) {
    let u = sample_user("flags");
    store.insert_user(&u).await.unwrap();
    assert!(store.set_risk_flag(&u.id, &flag("fraud")).await.unwrap());
    let mut newer = flag("fraud");
    newer.reason = "second report".into();
    assert!(store.set_risk_flag(&u.id, &newer).await.unwrap());
    assert!(store
        .set_risk_flag(&u.id, &flag("block_new_keys"))
        .await
        .unwrap());
    let flags = store.risk_flags(&u.id).await.unwrap();
    assert_eq!(flags, vec![flag("block_new_keys"), newer]);
    assert!(store.clear_risk_flag(&u.id, "fraud").await.unwrap());
    assert!(!store.clear_risk_flag(&u.id, "fraud").await.unwrap());
    assert_eq!(store.risk_flags(&u.id).await.unwrap().len(), 1);
    assert!(!store
        .set_risk_flag(&UserId::new(), &flag("fraud"))
        .await
        .unwrap());
}

/// A key's own limits survive the plan's policy being applied again, and narrow it.
pub async fn key_limits_survive_policy_application(store: Arc<dyn AuthStore>) {
    let u = sample_user("narrow");
    store.insert_user(&u).await.unwrap();
    let narrowed = sample_key(&u.id, t0());
    let plain = sample_key(&u.id, t0() + Duration::seconds(1));
    store.insert_key(&narrowed, 5, t0()).await.unwrap();
    store.insert_key(&plain, 5, t0()).await.unwrap();
    let limits = KeyLimits {
        concurrency: Some(2),
        allowed_models: vec!["claude-haiku-*".into()],
        ..KeyLimits::default()
    };
    let plan = KeyPolicy {
        concurrency: Some(8),
        allowed_models: vec!["claude-*".into()],
        ..KeyPolicy::default()
    };
    assert!(store
        .set_key_limits(&narrowed.id, Some(&limits), &limits.apply(&plan))
        .await
        .unwrap());
    let smaller = KeyPolicy {
        concurrency: Some(1),
        ..plan.clone()
    };
    assert_eq!(store.apply_user_policy(&u.id, &smaller).await.unwrap(), 2);
    let n = store.key_by_id(&narrowed.id).await.unwrap().unwrap();
    assert_eq!(n.own_limits.as_ref(), Some(&limits));
    assert_eq!(n.policy.concurrency, Some(1), "clamped by the smaller plan");
    assert_eq!(n.policy.allowed_models, vec!["claude-haiku-*".to_owned()]);
    let p = store.key_by_id(&plain.id).await.unwrap().unwrap();
    assert_eq!((p.policy, p.own_limits), (smaller.clone(), None));
    assert_eq!(store.apply_user_policy(&u.id, &plan).await.unwrap(), 2);
    assert_eq!(
        store
            .key_by_id(&narrowed.id)
            .await
            .unwrap()
            .unwrap()
            .policy
            .concurrency,
        Some(2)
    );
    // Clearing the limits restores the plan's policy; a revoked key cannot be changed.
    assert!(store
        .set_key_limits(&narrowed.id, None, &plan)
        .await
        .unwrap());
    assert_eq!(
        store
            .key_by_id(&narrowed.id)
            .await
            .unwrap()
            .unwrap()
            .own_limits,
        None
    );
    store.revoke_key(&plain.id, t0()).await.unwrap();
    assert!(!store
        .set_key_limits(&plain.id, Some(&limits), &plan)
        .await
        .unwrap());
}
