//! Many concurrent tasks against one SQLite file: the guard and idempotency hold.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::sync::Arc;

use relay_billing::conformance::{charge, t0, top_up, usd};
use relay_billing::{Account, BillingError, BillingStore};
use relay_core::{Currency, UserId};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_charges_on_sqlite_never_overdraw() {
    let (store, _dir) = common::sqlite().await;
    let store = Arc::new(store);
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("5"), "seed"), t0())
        .await
        .unwrap();
    // 100 charges of 0.10 against 5.00, each key posted twice: 50 charges succeed.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            let user = user.clone();
            tokio::spawn(async move {
                store
                    .post(&charge(&user, usd("0.10"), &format!("c{}", i / 2)), t0())
                    .await
            })
        })
        .collect();
    let (mut new, mut replayed, mut refused) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(p) if p.is_new() => new += 1,
            Ok(_) => replayed += 1,
            Err(BillingError::InsufficientFunds { .. }) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(new, 50);
    assert_eq!(new + replayed + refused, 200);
    let w = store.wallet(&user, Currency::USD).await.unwrap();
    assert_eq!(w.balance, usd("0"));
    let derived = store
        .derived_balance(&Account::Wallet(user.clone()), Currency::USD)
        .await
        .unwrap();
    assert_eq!(derived, w.balance);
}
