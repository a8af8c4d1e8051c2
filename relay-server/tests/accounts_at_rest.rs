//! Upstream credentials are sealed in the database, open only with the right key, and a
//! fixed demo key is seeded so it verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use relay_core::{Service, SystemClock};
use relay_server::config::{AccountConfig, DatabaseUrl};
use relay_server::db::Database;
use relay_server::upstream::{store, CredentialCipher};

#[tokio::test]
async fn credentials_are_sealed_and_demo_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("r.db").display()));
    let db = Database::connect(&url).await.unwrap();
    let cipher = CredentialCipher::new(&[9u8; 32]).unwrap();
    let account = AccountConfig {
        service: Service::Anthropic,
        name: "primary".into(),
        key: "sk-ant-very-secret".into(),
        base_url: None,
        weight: 2,
    };
    store::upsert(&db, &cipher, &account).await.unwrap();
    let sealed = store::sealed_bytes(&db, "primary").await.unwrap().unwrap();
    assert!(!sealed.windows(6).any(|w| w == b"secret"));
    let (loaded, unreadable) = store::load(&db, &cipher).await.unwrap();
    assert!(unreadable.is_empty());
    assert_eq!(loaded[0].credential.expose(), "sk-ant-very-secret");
    assert_eq!(
        (loaded[0].weight, loaded[0].base_url.as_str()),
        (2, "https://api.anthropic.com")
    );
    // Upsert replaces, never duplicates.
    store::upsert(
        &db,
        &cipher,
        &AccountConfig {
            weight: 5,
            ..account.clone()
        },
    )
    .await
    .unwrap();
    let (loaded, _) = store::load(&db, &cipher).await.unwrap();
    assert_eq!((loaded.len(), loaded[0].weight), (1, 5));
    // Another key opens nothing, and says which account it skipped.
    let other = CredentialCipher::new(&[1u8; 32]).unwrap();
    let (loaded, unreadable) = store::load(&db, &other).await.unwrap();
    assert!(loaded.is_empty());
    assert_eq!(unreadable[0].name, "primary");

    // A fixed demo key: seeded through the store, verified by the key service; seeding
    // twice reuses it; a malformed one is refused.
    let auth = db.auth_store();
    let pepper = [4u8; 32];
    let keys =
        relay_auth::ApiKeyService::new(auth.clone(), &pepper, Arc::new(SystemClock)).unwrap();
    let accounts = relay_auth::AccountService::new(
        auth.clone(),
        Arc::new(relay_auth::MemoryOutbox::new()),
        Arc::new(SystemClock),
    );
    let fixed = format!("rk_live_{}", "b".repeat(43));
    let policy = relay_server::demo::demo_policy();
    let s1 = relay_server::demo::seed(
        &accounts,
        &keys,
        &auth,
        &pepper,
        Some(&fixed),
        policy.clone(),
    )
    .await
    .unwrap();
    let s2 = relay_server::demo::seed(
        &accounts,
        &keys,
        &auth,
        &pepper,
        Some(&fixed),
        policy.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        (s1.key_id.clone(), s1.user_id.clone()),
        (s2.key_id, s2.user_id)
    );
    let principal = keys.authenticate(&fixed).await.unwrap();
    assert_eq!(principal.user_id, s1.user_id);
    assert_eq!(principal.policy.concurrency, Some(8));
    let err = relay_server::demo::seed(
        &accounts,
        &keys,
        &auth,
        &pepper,
        Some("rk_live_short"),
        policy,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("RELAY_DEMO_KEY"));
    db.close().await;
}
