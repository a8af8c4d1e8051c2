//! API keys and the `ApiKeyAuthLayer`: issue, verify, rotate, revoke, expiry, standing,
//! provisioning, batching of last-use writes and the error shapes of each API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{Duration, TimeZone, Utc};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use relay_auth::store::memory::MemoryStore;
use relay_auth::{
    AccountService, ApiKeyAuthLayer, ApiKeyService, AuthError, KeyConfig, KeyRejection, KeyStore,
    MemoryOutbox, NewKey, PasswordHasher, PasswordParams, Role, KEY_PREFIX,
};
use relay_core::{
    AccountStanding, AccountStatus, Entitlement, Expiry, KeyPolicy, KeyProvisioner, ManualClock,
    PlanId, Principal, Standing, StandingError, UserId,
};
use serde_json::Value;
use tower::{Layer, Service, ServiceExt};

const PEPPER: &[u8] = b"a pepper of at least thirty-two bytes!";

#[derive(Debug, Default)]
struct FakeStanding {
    status: Mutex<Option<AccountStatus>>,
}

#[async_trait]
impl AccountStanding for FakeStanding {
    async fn standing(&self, _user: &UserId) -> Result<Standing, StandingError> {
        match *self.status.lock() {
            Some(status) => Ok(Standing {
                status,
                entitled_until: None,
            }),
            None => Err(StandingError::Unavailable("billing down".into())),
        }
    }
}

struct Fixture {
    keys: Arc<ApiKeyService>,
    accounts: AccountService,
    store: Arc<MemoryStore>,
    clock: ManualClock,
    standing: Arc<FakeStanding>,
    owner: UserId,
}

async fn fixture() -> Fixture {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap());
    let store = Arc::new(MemoryStore::new());
    let standing = Arc::new(FakeStanding {
        status: Mutex::new(Some(AccountStatus::Active)),
    });
    let keys = Arc::new(
        ApiKeyService::new(store.clone(), PEPPER, Arc::new(clock.clone()))
            .unwrap()
            .with_config(KeyConfig {
                max_keys_per_user: 3,
                ..KeyConfig::default()
            })
            .with_standing(standing.clone()),
    );
    let accounts = AccountService::new(
        store.clone(),
        Arc::new(MemoryOutbox::new()),
        Arc::new(clock.clone()),
    )
    .with_hasher(PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS, 2).unwrap())
    .with_key_service(keys.clone());
    let owner = accounts
        .create_user("owner@example.com", "owner password", Role::User)
        .await
        .unwrap()
        .id;
    Fixture {
        keys,
        accounts,
        store,
        clock,
        standing,
        owner,
    }
}

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        tags: vec!["ci".into()],
        policy: KeyPolicy::default(),
    }
}

#[tokio::test]
async fn issued_keys_verify_and_are_stored_only_as_keyed_hashes() {
    let f = fixture().await;
    let issued = f.keys.issue(&f.owner, new_key("laptop")).await.unwrap();
    assert!(issued.key.starts_with(KEY_PREFIX));
    assert_eq!(issued.key.len(), KEY_PREFIX.len() + 43);
    assert!(!format!("{issued:?}").contains(&issued.key));
    let stored = f.store.key_by_id(&issued.record.id).await.unwrap().unwrap();
    assert_ne!(&stored.hash[..], issued.key.as_bytes());
    assert_eq!(stored.hint, &issued.key[..KEY_PREFIX.len() + 4]);

    // First verification loads the store; after that the sync, store-free path answers.
    assert!(f.keys.authenticate_cached(&issued.key).is_none());
    let p = f.keys.authenticate(&issued.key).await.unwrap();
    assert_eq!(
        (p.user_id.clone(), p.key_id.clone()),
        (f.owner.clone(), issued.record.id.clone())
    );
    assert!(matches!(
        f.keys.authenticate_cached(&issued.key),
        Some(Ok(_))
    ));

    // Bad keys never reach the store.
    for bad in [
        "",
        "rk_live_short",
        "sk-ant-xyz",
        &issued.key[..issued.key.len() - 1],
    ] {
        assert_eq!(
            f.keys.authenticate(bad).await.unwrap_err(),
            KeyRejection::Malformed,
            "{bad}"
        );
    }
    let mut other = issued.key.clone();
    other.replace_range(
        KEY_PREFIX.len()..KEY_PREFIX.len() + 1,
        if other.as_bytes()[8] == b'A' {
            "B"
        } else {
            "A"
        },
    );
    assert_eq!(
        f.keys.authenticate(&other).await.unwrap_err(),
        KeyRejection::Unknown
    );
}

#[tokio::test]
async fn metadata_policy_and_limit_are_validated() {
    let f = fixture().await;
    for (new, field) in [
        (
            NewKey {
                name: "".into(),
                ..new_key("")
            },
            "name",
        ),
        (
            NewKey {
                name: "x".repeat(65),
                ..new_key("")
            },
            "name",
        ),
        (
            NewKey {
                name: "bad\nname".into(),
                ..new_key("")
            },
            "name",
        ),
        (
            NewKey {
                tags: vec!["UPPER".into()],
                ..new_key("k")
            },
            "tags",
        ),
        (
            NewKey {
                tags: vec![String::new()],
                ..new_key("k")
            },
            "tags",
        ),
    ] {
        match f.keys.issue(&f.owner, new).await {
            Err(AuthError::InvalidKeyMetadata { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{other:?}"),
        }
    }
    let bad_policy = NewKey {
        policy: KeyPolicy {
            concurrency: Some(0),
            ..KeyPolicy::default()
        },
        ..new_key("k")
    };
    assert!(matches!(
        f.keys.issue(&f.owner, bad_policy).await,
        Err(AuthError::InvalidPolicy(_))
    ));
    assert!(
        f.keys.list(&f.owner).await.unwrap().is_empty(),
        "nothing stored"
    );
    for i in 0..3 {
        f.keys
            .issue(&f.owner, new_key(&format!("k{i}")))
            .await
            .unwrap();
    }
    assert!(matches!(
        f.keys.issue(&f.owner, new_key("k4")).await,
        Err(AuthError::KeyLimit { limit: 3 })
    ));
}

#[tokio::test]
async fn revoked_key_is_refused_at_once() {
    let f = fixture().await;
    let k = f.keys.issue(&f.owner, new_key("k")).await.unwrap();
    f.keys.authenticate(&k.key).await.unwrap();
    assert!(f.keys.revoke(&k.record.id).await.unwrap());
    assert!(!f.keys.revoke(&k.record.id).await.unwrap());
    assert_eq!(
        f.keys.authenticate(&k.key).await.unwrap_err(),
        KeyRejection::Revoked
    );
    assert!(matches!(
        f.keys.revoke(&relay_core::ApiKeyId::new()).await,
        Err(AuthError::NotFound(_))
    ));
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_grace_period() {
    let f = fixture().await;
    let old = f.keys.issue(&f.owner, new_key("rotating")).await.unwrap();
    f.keys.authenticate(&old.key).await.unwrap();
    let new = f
        .keys
        .rotate(&old.record.id, Some(Duration::hours(1)))
        .await
        .unwrap();
    assert_ne!(new.key, old.key);
    assert_eq!(new.record.name, "rotating");
    f.keys
        .authenticate(&old.key)
        .await
        .expect("old key in grace");
    f.keys.authenticate(&new.key).await.unwrap();
    f.clock.advance(Duration::hours(1));
    assert_eq!(
        f.keys.authenticate(&old.key).await.unwrap_err(),
        KeyRejection::Expired
    );
    f.keys.authenticate(&new.key).await.unwrap();
    f.keys.revoke(&old.record.id).await.unwrap();
    assert!(matches!(
        f.keys.rotate(&old.record.id, None).await,
        Err(AuthError::NotFound(_))
    ));
}

#[tokio::test]
async fn expiry_after_first_use_starts_at_first_use_and_survives_reload() {
    let f = fixture().await;
    let policy = KeyPolicy {
        expiry: Some(Expiry::AfterFirstUse { seconds: 3600 }),
        ..KeyPolicy::default()
    };
    let k = f
        .keys
        .issue(
            &f.owner,
            NewKey {
                policy,
                ..new_key("trial")
            },
        )
        .await
        .unwrap();
    f.clock.advance(Duration::days(30));
    f.keys
        .authenticate(&k.key)
        .await
        .expect("unused keys do not expire");
    assert_eq!(f.keys.flush_uses().await.unwrap(), 1);
    f.clock.advance(Duration::minutes(59));
    f.keys.authenticate(&k.key).await.unwrap();
    f.clock.advance(Duration::minutes(2));
    assert_eq!(
        f.keys.authenticate(&k.key).await.unwrap_err(),
        KeyRejection::Expired
    );
    // A fresh cache (another instance) reads the first use from the store.
    f.keys.cache().invalidate(&relay_auth::Invalidation::All);
    assert_eq!(
        f.keys.authenticate(&k.key).await.unwrap_err(),
        KeyRejection::Expired
    );
    let fixed = KeyPolicy {
        expiry: Some(Expiry::At(
            Utc.with_ymd_and_hms(2026, 6, 2, 0, 0, 0).unwrap(),
        )),
        ..KeyPolicy::default()
    };
    let k2 = f
        .keys
        .issue(
            &f.owner,
            NewKey {
                policy: fixed,
                ..new_key("fixed")
            },
        )
        .await
        .unwrap();
    assert_eq!(
        f.keys.authenticate(&k2.key).await.unwrap_err(),
        KeyRejection::Expired
    );
}

#[tokio::test]
async fn last_use_writes_are_batched() {
    let f = fixture().await;
    let k = f.keys.issue(&f.owner, new_key("busy")).await.unwrap();
    for _ in 0..100 {
        f.keys.authenticate(&k.key).await.unwrap();
        f.clock.advance(Duration::seconds(1));
    }
    assert_eq!(
        f.store
            .key_by_id(&k.record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        None,
        "no write per request"
    );
    assert_eq!(f.keys.pending_uses(), 1);
    assert_eq!(f.keys.flush_uses().await.unwrap(), 1);
    assert_eq!(f.keys.flush_uses().await.unwrap(), 0);
    let r = f.store.key_by_id(&k.record.id).await.unwrap().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    assert_eq!(r.first_used_at, Some(start));
    assert_eq!(r.last_used_at, Some(start + Duration::seconds(99)));
}

#[tokio::test]
async fn owner_status_and_standing_are_enforced() {
    let f = fixture().await;
    let k = f.keys.issue(&f.owner, new_key("k")).await.unwrap();
    f.keys.authenticate(&k.key).await.unwrap();
    // Billing says past due: 402 once the cache is refreshed for the user.
    *f.standing.status.lock() = Some(AccountStatus::PastDue);
    f.keys.invalidate_user(&f.owner);
    let r = f.keys.authenticate(&k.key).await.unwrap_err();
    assert_eq!(
        (r.clone(), r.status()),
        (
            KeyRejection::AccountInactive(AccountStatus::PastDue),
            StatusCode::PAYMENT_REQUIRED
        )
    );
    // Billing unreachable: fail closed with 503, not cached.
    *f.standing.status.lock() = None;
    f.keys.invalidate_user(&f.owner);
    assert_eq!(
        f.keys.authenticate(&k.key).await.unwrap_err().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    *f.standing.status.lock() = Some(AccountStatus::Active);
    f.keys.authenticate(&k.key).await.unwrap();
    // A local suspension invalidates the cache through the account service.
    f.accounts
        .set_status(None, &f.owner, AccountStatus::Suspended, "tos")
        .await
        .unwrap();
    let r = f.keys.authenticate(&k.key).await.unwrap_err();
    assert_eq!(
        (r.clone(), r.status()),
        (
            KeyRejection::AccountInactive(AccountStatus::Suspended),
            StatusCode::FORBIDDEN
        )
    );
}

#[tokio::test]
async fn provisioner_applies_entitlements_and_suspends() {
    let f = fixture().await;
    let plan = |c| Entitlement {
        plan_id: PlanId::new(),
        policy: KeyPolicy {
            concurrency: Some(c),
            ..KeyPolicy::default()
        },
        max_keys: 3,
        valid_until: None,
    };
    let first = f
        .keys
        .apply_entitlement(&f.owner, &plan(2))
        .await
        .unwrap()
        .expect("issues a key");
    assert_eq!(
        f.keys
            .authenticate(&first)
            .await
            .unwrap()
            .policy
            .concurrency,
        Some(2)
    );
    assert_eq!(
        f.keys.apply_entitlement(&f.owner, &plan(5)).await.unwrap(),
        None,
        "no second key"
    );
    assert_eq!(
        f.keys
            .authenticate(&first)
            .await
            .unwrap()
            .policy
            .concurrency,
        Some(5)
    );
    f.keys.suspend_keys(&f.owner).await.unwrap();
    let r = f.keys.authenticate(&first).await.unwrap_err();
    assert_eq!(
        (r.clone(), r.status()),
        (KeyRejection::Suspended, StatusCode::PAYMENT_REQUIRED)
    );
    assert_eq!(
        f.keys.apply_entitlement(&f.owner, &plan(5)).await.unwrap(),
        None
    );
    f.keys.authenticate(&first).await.expect("re-activated");
    assert_eq!(f.keys.list(&f.owner).await.unwrap().len(), 1);
    // The plan's key limit replaces the default (3): two keys in all.
    let two = Entitlement {
        max_keys: 2,
        ..plan(5)
    };
    assert_eq!(
        f.keys.apply_entitlement(&f.owner, &two).await.unwrap(),
        None
    );
    f.keys.issue(&f.owner, new_key("second")).await.unwrap();
    assert!(matches!(
        f.keys.issue(&f.owner, new_key("third")).await,
        Err(AuthError::KeyLimit { limit: 2 })
    ));
    let bad = Entitlement {
        policy: KeyPolicy {
            concurrency: Some(0),
            ..KeyPolicy::default()
        },
        ..plan(1)
    };
    assert!(f.keys.apply_entitlement(&f.owner, &bad).await.is_err());
}

/// An inner service that answers with the authenticated user id.
fn echo() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let who = req
            .extensions()
            .get::<Principal>()
            .map(|p| p.user_id.to_string())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
    })
}

async fn call(keys: &Arc<ApiKeyService>, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let svc = ApiKeyAuthLayer::new(keys.clone()).layer(echo());
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn req(uri: &str, header: Option<(&str, String)>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(uri);
    if let Some((name, value)) = header {
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn layer_reads_every_key_location_and_sets_the_principal() {
    let f = fixture().await;
    let k = f.keys.issue(&f.owner, new_key("k")).await.unwrap().key;
    for (uri, header) in [
        ("/v1/messages", Some(("x-api-key", k.clone()))),
        (
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {k}"))),
        ),
        (
            "/v1beta/models/gemini-2.5-pro:generateContent",
            Some(("x-goog-api-key", k.clone())),
        ),
        (
            &format!("/v1beta/models/g:generateContent?alt=sse&key={k}") as &str,
            None,
        ),
    ] {
        let (status, body) = call(&f.keys, req(uri, header)).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, f.owner.to_string()),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn layer_rejects_in_each_apis_error_shape() {
    let f = fixture().await;
    let (s, body) = call(&f.keys, req("/v1/messages", None)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-api-key"));

    let bogus = format!("{KEY_PREFIX}{}", "A".repeat(43));
    let (s, body) = call(
        &f.keys,
        req(
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {bogus}"))),
        ),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (v["error"]["type"].as_str(), v["error"]["code"].as_str()),
        (Some("invalid_request_error"), Some("invalid_api_key"))
    );

    let (s, body) = call(
        &f.keys,
        req("/v1beta/models/x:generateContent?key=nope", None),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (v["error"]["code"].as_u64(), v["error"]["status"].as_str()),
        (Some(401), Some("UNAUTHENTICATED"))
    );

    let k = f.keys.issue(&f.owner, new_key("k")).await.unwrap();
    f.keys.revoke(&k.record.id).await.unwrap();
    let (s, body) = call(
        &f.keys,
        req("/v1/messages", Some(("x-api-key", k.key.clone()))),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("revoked"), "{body}");

    let k = f.keys.issue(&f.owner, new_key("k2")).await.unwrap().key;
    *f.standing.status.lock() = Some(AccountStatus::PastDue);
    let (s, body) = call(&f.keys, req("/v1/messages", Some(("x-api-key", k.clone())))).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("billing_error"))
    );
    *f.standing.status.lock() = Some(AccountStatus::Frozen);
    f.keys.invalidate_user(&f.owner);
    let (s, body) = call(&f.keys, req("/v1/responses", Some(("x-api-key", k)))).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("permission_error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_through_one_layer() {
    let f = fixture().await;
    let k = f.keys.issue(&f.owner, new_key("k")).await.unwrap().key;
    let svc = ApiKeyAuthLayer::new(f.keys.clone()).layer(echo());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let svc = svc.clone();
        let key = if i % 10 == 0 {
            "rk_live_bad".to_owned()
        } else {
            k.clone()
        };
        tasks.push(tokio::spawn(async move {
            svc.oneshot(req("/v1/messages", Some(("x-api-key", key))))
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 180);
    assert_eq!(f.keys.pending_uses(), 1);
}
