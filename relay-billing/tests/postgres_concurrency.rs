//! Real concurrency against PostgreSQL (RELAY_TEST_POSTGRES; with CI=true an unreachable
//! server fails): many tokio tasks, a pool of many connections, one database.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::sync::Arc;

use chrono::Duration;
use relay_billing::conformance::{charge, t0, top_up, usd};
use relay_billing::{
    Account, BillingConfig, BillingError, BillingStore, OrderPurpose, PaymentNotice,
    PaymentOutcome, SubscriptionStatus,
};
use relay_core::{Currency, UserId};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_charges_against_a_balance_for_one_hundred() {
    let Some((store, guard)) = common::postgres(32).await else {
        return;
    };
    let user = UserId::new();
    // 100 charges of 0.37 afford exactly 37.00 (credit limit 5.00 adds 13 more: 113).
    store
        .post(&top_up(&user, usd("32"), "seed"), t0())
        .await
        .unwrap();
    store
        .set_credit_limit(&user, usd("5"), "admin:test", t0())
        .await
        .unwrap();
    // Watch the balance while the charges run: it must never go below -5.
    let watcher = {
        let store = Arc::clone(&store);
        let user = user.clone();
        tokio::spawn(async move {
            let mut lowest = usd("1000");
            for _ in 0..200 {
                let b = store.wallet(&user, Currency::USD).await.unwrap().balance;
                if b.amount() < lowest.amount() {
                    lowest = b;
                }
                tokio::task::yield_now().await;
            }
            lowest
        })
    };
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            let user = user.clone();
            tokio::spawn(async move {
                store
                    .post(&charge(&user, usd("0.37"), &format!("charge-{i}")), t0())
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(p) => {
                assert!(p.is_new());
                ok += 1;
            }
            Err(BillingError::InsufficientFunds { .. }) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // (32 + 5) / 0.37 = 100 exactly.
    assert_eq!(ok, 100, "exactly 100 charges fit");
    assert_eq!(refused, 100);
    let lowest = watcher.await.unwrap();
    assert!(
        lowest.amount() >= usd("-5").amount(),
        "balance went to {lowest}"
    );
    let w = store.wallet(&user, Currency::USD).await.unwrap();
    assert_eq!(w.balance, usd("-5"));
    let derived = store
        .derived_balance(&Account::Wallet(user.clone()), Currency::USD)
        .await
        .unwrap();
    assert_eq!(derived, w.balance);
    assert_eq!(store.transactions(Some(&user)).await.unwrap().len(), 101);
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_concurrent_redemptions_of_one_code_one_wins() {
    let Some((store, guard)) = common::postgres(32).await else {
        return;
    };
    let codes = relay_billing::redemption::generate(1).unwrap();
    store
        .create_codes("batch-1", &codes, usd("25"), None, t0())
        .await
        .unwrap();
    let users: Vec<UserId> = (0..100).map(|_| UserId::new()).collect();
    let tasks: Vec<_> = users
        .iter()
        .cloned()
        .map(|u| {
            let store = Arc::clone(&store);
            let code = codes[0].clone();
            tokio::spawn(async move { store.redeem_code(&code, &u, t0()).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(BillingError::Code(relay_billing::CodeRejection::AlreadyRedeemed)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
    let mut credited = 0;
    for u in &users {
        let b = store.wallet(u, Currency::USD).await.unwrap().balance;
        if !b.is_zero() {
            assert_eq!(b, usd("25"));
            credited += 1;
        }
    }
    assert_eq!(credited, 1);
    assert_eq!(
        store
            .derived_balance(&Account::Promotions, Currency::USD)
            .await
            .unwrap(),
        usd("25")
    );
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_payment_event_delivered_fifty_times_at_once_credits_once() {
    let Some((store, guard)) = common::postgres(16).await else {
        return;
    };
    let cfg = BillingConfig::default();
    let user = UserId::new();
    let order = store
        .create_order(
            &user,
            OrderPurpose::TopUp,
            usd("12.34"),
            t0() + Duration::hours(1),
            t0(),
        )
        .await
        .unwrap();
    let notice = PaymentNotice {
        order_id: order.id.clone(),
        provider: "alipay".into(),
        provider_event_id: "evt-1".into(),
        amount: usd("12.34"),
        provider_ref: "2026010122001".into(),
    };
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            let notice = notice.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move { store.apply_payment(&notice, &cfg, t0()).await })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        let (applied, _) = t.await.unwrap().unwrap();
        assert!(matches!(applied.outcome, PaymentOutcome::Credited { .. }));
        if !applied.replayed {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("12.34")
    );
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renewals_of_one_subscription_renew_it_once() {
    let Some((store, guard)) = common::postgres(16).await else {
        return;
    };
    let cfg = BillingConfig::default();
    let plan = store
        .create_plan(
            &relay_billing::conformance::plan_spec("P", "10", relay_billing::Period::Monthly, 0),
            t0(),
        )
        .await
        .unwrap();
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("100"), "seed"), t0())
        .await
        .unwrap();
    let sub = store
        .subscribe(&user, &plan.id, &cfg, t0())
        .await
        .unwrap()
        .subscription;
    let due = sub.period_end.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            let id = sub.id.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move { store.renew(&id, &cfg, due).await })
        })
        .collect();
    let mut renewed = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().is_some() {
            renewed += 1;
        }
    }
    assert_eq!(renewed, 1);
    let s = store.subscription(&sub.id).await.unwrap().unwrap();
    assert_eq!(s.status, SubscriptionStatus::Active);
    assert_eq!(s.period_start, due);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("80")
    );
    assert_eq!(store.invoices(&user).await.unwrap().len(), 2);
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_leader_lock_is_exclusive_across_store_instances() {
    let Some((store, guard)) = common::postgres(4).await else {
        return;
    };
    // A second "instance": its own pool on the same database.
    let other = relay_billing::store::postgres::connect(guard.url(), Some(guard.schema()), 2)
        .await
        .unwrap();
    let job = format!("renewals-{}", UserId::new());
    let held = store
        .try_job_lock(&job)
        .await
        .unwrap()
        .expect("first instance leads");
    assert!(
        other.try_job_lock(&job).await.unwrap().is_none(),
        "second instance waits"
    );
    assert!(
        store.try_job_lock(&job).await.unwrap().is_none(),
        "not re-entrant through the pool"
    );
    held.release().await.unwrap();
    let again = other
        .try_job_lock(&job)
        .await
        .unwrap()
        .expect("free after release");
    // Dropping without release frees it too (the connection is closed, not pooled).
    drop(again);
    let mut freed = None;
    // The server notices the closed session asynchronously: poll (bounded) until it has.
    for _ in 0..500 {
        freed = store.try_job_lock(&job).await.unwrap();
        if freed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        freed.is_some(),
        "a dropped lock is freed by its closed session"
    );
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_payment_events_for_one_order_at_once_credit_it_once() {
    let Some((store, guard)) = common::postgres(16).await else {
        return;
    };
    let cfg = BillingConfig::default();
    let user = UserId::new();
    let order = store
        .create_order(
            &user,
            OrderPurpose::TopUp,
            usd("10"),
            t0() + Duration::hours(1),
            t0(),
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            let cfg = cfg.clone();
            let notice = PaymentNotice {
                order_id: order.id.clone(),
                provider: "wechat".into(),
                provider_event_id: format!("evt-{i}"),
                amount: usd("10"),
                provider_ref: format!("ref-{i}"),
            };
            tokio::spawn(async move { store.apply_payment(&notice, &cfg, t0()).await })
        })
        .collect();
    let mut credited = 0;
    for t in tasks {
        let (applied, _) = t.await.unwrap().unwrap();
        match applied.outcome {
            PaymentOutcome::Credited { .. } => credited += 1,
            PaymentOutcome::HeldForReview { reason } => {
                assert!(reason.contains("already paid"), "{reason}")
            }
            PaymentOutcome::Refunded { .. } => panic!("not a refund"),
        }
    }
    assert_eq!(credited, 1);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("10")
    );
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finalisation_numbers_without_gaps_or_duplicates() {
    let Some((store, guard)) = common::postgres(16).await else {
        return;
    };
    let cfg = BillingConfig::default();
    let user = UserId::new();
    let line = relay_billing::LineItem {
        kind: relay_billing::LineKind::Adjustment,
        description: "x".into(),
        amount: usd("1"),
    };
    let mut drafts = Vec::new();
    for _ in 0..20 {
        drafts.push(
            store
                .create_draft_invoice(&user, Currency::USD, vec![line.clone()], &cfg, t0())
                .await
                .unwrap()
                .id,
        );
    }
    // Each draft finalised by three tasks at once: one wins per draft.
    let tasks: Vec<_> = drafts
        .iter()
        .flat_map(|d| std::iter::repeat_n(d.clone(), 3))
        .map(|d| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.finalize_invoice(&d, t0()).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(BillingError::IllegalTransition { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(wins, 20);
    let mut numbers: Vec<String> = store
        .invoices(&user)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|i| i.number)
        .collect();
    numbers.sort();
    let expected: Vec<String> = (1..=20).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers, expected);
    guard.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_credit_notes_never_exceed_the_invoice() {
    let Some((store, guard)) = common::postgres(16).await else {
        return;
    };
    let cfg = BillingConfig::default();
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("10"), "seed"), t0())
        .await
        .unwrap();
    let line = |a: &str| relay_billing::LineItem {
        kind: relay_billing::LineKind::Adjustment,
        description: "x".into(),
        amount: usd(a),
    };
    let d = store
        .create_draft_invoice(&user, Currency::USD, vec![line("10")], &cfg, t0())
        .await
        .unwrap();
    store.finalize_invoice(&d.id, t0()).await.unwrap();
    store.pay_invoice(&d.id, t0()).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = Arc::clone(&store);
            let id = d.id.clone();
            let l = line("3");
            tokio::spawn(async move { store.credit_note(&id, vec![l], "refund", t0()).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(BillingError::InvalidInput(m)) => assert!(m.contains("more than"), "{m}"),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(ok, 3, "3 × 3.00 fit in 10.00, a fourth does not");
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("9")
    );
    let mut cn: Vec<String> = store
        .invoices(&user)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == relay_billing::invoice::DocumentKind::CreditNote)
        .filter_map(|i| i.number)
        .collect();
    cn.sort();
    assert_eq!(
        cn,
        ["CN-000001", "CN-000002", "CN-000003"],
        "refused notes leave no gap"
    );
    guard.drop_schema().await;
}
