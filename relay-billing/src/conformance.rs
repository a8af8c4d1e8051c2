//! The store conformance suite: generic async checks every [`BillingStore`] backend must
//! pass (feature `test-utils`). Each function uses fresh users and plans, so the checks
//! can share one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a panic is a failure

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use relay_core::{Currency, KeyPolicy, Money, OrderId, UserId};
use rust_decimal::Decimal;

use crate::config::BillingConfig;
use crate::error::{BillingError, CodeRejection};
use crate::invoice::{InvoiceStatus, LineItem, LineKind};
use crate::ledger::{Account, Entry, NewTransaction, TxKind};
use crate::order::{OrderPurpose, OrderStatus, PaymentNotice, PaymentOutcome};
use crate::plan::{Overage, Period, PlanSpec, PlanStatus};
use crate::store::BillingStore;
use crate::subscription::{KeyAction, SubscriptionStatus};
use crate::usage::UsageBatch;

/// 2026-01-01T00:00:00Z, the suite's starting instant.
pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// `s` USD, exactly.
pub fn usd(s: &str) -> Money {
    Money::parse(s, Currency::USD).unwrap()
}

/// A monthly USD plan at `price` with no trial.
pub fn plan_spec(name: &str, price: &str, period: Period, trial_days: u32) -> PlanSpec {
    PlanSpec {
        name: name.into(),
        price: usd(price),
        period,
        trial_days,
        included_models: vec!["claude-*".into()],
        policy: KeyPolicy {
            concurrency: Some(2),
            ..KeyPolicy::default()
        },
        included_credit: usd("5"),
        overage: Overage {
            allowed: true,
            multiplier: Decimal::from_str("1.5").unwrap(),
        },
        max_keys: 3,
    }
}

/// A top-up transaction of `amount` for `user` under `key`.
pub fn top_up(user: &UserId, amount: Money, key: &str) -> NewTransaction {
    NewTransaction {
        idempotency_key: key.into(),
        kind: TxKind::TopUp,
        user_id: Some(user.clone()),
        memo: "test top-up".into(),
        entries: vec![
            Entry::debit(Account::ProviderClearing, amount),
            Entry::credit(Account::Wallet(user.clone()), amount),
        ],
        guarded: true,
    }
}

/// A guarded charge of `amount` from `user`'s wallet under `key`.
pub fn charge(user: &UserId, amount: Money, key: &str) -> NewTransaction {
    NewTransaction {
        idempotency_key: key.into(),
        kind: TxKind::PlanCharge,
        user_id: Some(user.clone()),
        memo: "test charge".into(),
        entries: vec![
            Entry::debit(Account::Wallet(user.clone()), amount),
            Entry::credit(Account::Revenue, amount),
        ],
        guarded: true,
    }
}

fn key(prefix: &str) -> String {
    format!("{prefix}:{}", UserId::new())
}

/// The cached wallet balance equals the balance derived from entries.
pub async fn assert_wallet_consistent(store: &dyn BillingStore, user: &UserId) {
    let w = store.wallet(user, Currency::USD).await.unwrap();
    let derived = store
        .derived_balance(&Account::Wallet(user.clone()), Currency::USD)
        .await
        .unwrap();
    assert_eq!(w.balance, derived, "cached and derived balance of {user}");
}

/// Posting, idempotency, replays and conflicts.
pub async fn ledger_posts_balanced_idempotent_transactions(store: &dyn BillingStore) {
    let user = UserId::new();
    let k = key("topup");
    let first = store
        .post(&top_up(&user, usd("10.005"), &k), t0())
        .await
        .unwrap();
    assert!(first.is_new());
    let again = store
        .post(&top_up(&user, usd("10.005"), &k), t0())
        .await
        .unwrap();
    assert!(!again.is_new());
    assert_eq!(again.transaction().id, first.transaction().id);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("10.005")
    );
    // Same key, different content: refused, nothing changes.
    let err = store
        .post(&top_up(&user, usd("11"), &k), t0())
        .await
        .unwrap_err();
    assert!(matches!(err, BillingError::IdempotencyConflict(_)), "{err}");
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("10.005")
    );
    let stored = store.transaction_by_key(&k).await.unwrap().unwrap();
    assert_eq!(stored.entries.len(), 2);
    assert!(stored.sums().values().all(|s| s.is_zero()));
    assert_eq!(stored.kind, TxKind::TopUp);
    // Exact decimals survive the round trip.
    assert_eq!(stored.entries[1].amount, usd("-10.005"));
    let txs = store.transactions(Some(&user)).await.unwrap();
    assert_eq!(txs.len(), 1);
    assert_wallet_consistent(store, &user).await;
    assert_eq!(
        store
            .derived_balance(&Account::ProviderClearing, Currency::USD)
            .await
            .unwrap()
            .currency(),
        Currency::USD
    );
}

/// Charges are refunded in parts, never beyond what they took.
pub async fn ledger_refunds_charges_up_to_what_they_took(store: &dyn BillingStore) {
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("10"), &key("t")), t0())
        .await
        .unwrap();
    let ck = key("charge");
    store
        .post(&charge(&user, usd("6"), &ck), t0())
        .await
        .unwrap();
    let r1 = store
        .refund_charge(&ck, usd("2.5"), "partial", "r1", t0())
        .await
        .unwrap();
    assert!(r1.is_new());
    assert_eq!(r1.transaction().kind, TxKind::ChargeRefund);
    assert!(!store
        .refund_charge(&ck, usd("2.5"), "partial", "r1", t0())
        .await
        .unwrap()
        .is_new());
    assert!(matches!(
        store
            .refund_charge(&ck, usd("2"), "other", "r1", t0())
            .await,
        Err(BillingError::IdempotencyConflict(_))
    ));
    assert!(store
        .refund_charge(&ck, usd("3.51"), "too much", "r2", t0())
        .await
        .is_err());
    assert!(store
        .refund_charge(&ck, usd("0"), "zero", "r2", t0())
        .await
        .is_err());
    assert!(store
        .refund_charge(&ck, usd("1"), " ", "r2", t0())
        .await
        .is_err());
    assert!(matches!(
        store.refund_charge("nope", usd("1"), "x", "r2", t0()).await,
        Err(BillingError::NotFound { .. })
    ));
    let topup_key = store.transactions(Some(&user)).await.unwrap()[0]
        .idempotency_key
        .clone();
    assert!(store
        .refund_charge(&topup_key, usd("1"), "not a charge", "r2", t0())
        .await
        .is_err());
    store
        .refund_charge(&ck, usd("3.5"), "the rest", "r3", t0())
        .await
        .unwrap();
    assert!(store
        .refund_charge(&ck, usd("0.01"), "more", "r4", t0())
        .await
        .is_err());
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("10")
    );
    assert_eq!(
        store
            .derived_balance(&Account::Refunds, Currency::USD)
            .await
            .unwrap()
            .currency(),
        Currency::USD
    );
    assert_wallet_consistent(store, &user).await;
}

/// Malformed transactions are refused and change nothing.
pub async fn ledger_refuses_bad_transactions(store: &dyn BillingStore) {
    let user = UserId::new();
    let mut unbalanced = top_up(&user, usd("5"), &key("bad"));
    unbalanced.entries[1].amount = usd("-4");
    assert!(matches!(
        store.post(&unbalanced, t0()).await,
        Err(BillingError::Unbalanced { .. })
    ));
    let mut empty_key = top_up(&user, usd("5"), "");
    empty_key.idempotency_key = String::new();
    assert!(matches!(
        store.post(&empty_key, t0()).await,
        Err(BillingError::InvalidInput(_))
    ));
    let mut mixed = top_up(&user, usd("5"), &key("mixed"));
    mixed.entries[1].amount = Money::from_minor(-500, Currency::EUR);
    assert!(store.post(&mixed, t0()).await.is_err());
    assert!(store.transactions(Some(&user)).await.unwrap().is_empty());
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("0")
    );
}

/// Guarded debits respect the credit limit; unguarded facts do not.
pub async fn ledger_guard_respects_credit_limit(store: &dyn BillingStore) {
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("3"), &key("t")), t0())
        .await
        .unwrap();
    let err = store
        .post(&charge(&user, usd("3.01"), &key("c")), t0())
        .await
        .unwrap_err();
    match err {
        BillingError::InsufficientFunds {
            balance,
            credit_limit,
            requested,
        } => {
            assert_eq!(balance, usd("3"));
            assert_eq!(credit_limit, usd("0"));
            assert_eq!(requested, usd("3.01"));
        }
        other => panic!("expected insufficient funds, got {other}"),
    }
    assert_eq!(
        store.transactions(Some(&user)).await.unwrap().len(),
        1,
        "refused charge left no trace"
    );
    assert!(store
        .set_credit_limit(&user, usd("-1"), "admin:test", t0())
        .await
        .is_err());
    store
        .set_credit_limit(&user, usd("2"), "admin:test", t0())
        .await
        .unwrap();
    store
        .post(&charge(&user, usd("5"), &key("c")), t0())
        .await
        .unwrap();
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("-2")
    );
    assert!(matches!(
        store
            .post(&charge(&user, usd("0.01"), &key("c")), t0())
            .await,
        Err(BillingError::InsufficientFunds { .. })
    ));
    let mut fact = charge(&user, usd("1"), &key("fact"));
    fact.guarded = false;
    store.post(&fact, t0()).await.unwrap();
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("-3")
    );
    assert_wallet_consistent(store, &user).await;
    assert_eq!(
        store.audit(&format!("wallet:{user}")).await.unwrap().len(),
        1
    );
}

fn notice(order: &OrderId, event: &str, amount: Money) -> PaymentNotice {
    PaymentNotice {
        order_id: order.clone(),
        provider: "stripe".into(),
        provider_event_id: event.into(),
        amount,
        provider_ref: "pi_123".into(),
    }
}

/// Payments credit exactly what was ordered, once; mismatches are held; refunds never
/// exceed what was paid.
pub async fn orders_apply_payments_and_refunds(store: &dyn BillingStore) {
    let cfg = BillingConfig::default();
    let user = UserId::new();
    let exp = t0() + Duration::hours(1);
    assert!(store
        .create_order(&user, OrderPurpose::TopUp, usd("0"), exp, t0())
        .await
        .is_err());
    assert!(store
        .create_order(&user, OrderPurpose::TopUp, usd("5"), t0(), t0())
        .await
        .is_err());
    let order = store
        .create_order(&user, OrderPurpose::TopUp, usd("20"), exp, t0())
        .await
        .unwrap();
    assert_eq!(order.status, OrderStatus::Pending);

    // Refund before payment: held, nothing moves.
    let ev = key("evt");
    let r = store
        .apply_refund(&notice(&order.id, &ev, usd("20")), t0())
        .await
        .unwrap();
    assert!(matches!(r.outcome, PaymentOutcome::HeldForReview { .. }));
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("0")
    );

    // Unknown order: error, nothing recorded.
    let missing = store
        .apply_payment(&notice(&OrderId::new(), &key("evt"), usd("20")), &cfg, t0())
        .await;
    assert!(matches!(missing, Err(BillingError::NotFound { .. })));
    // Bad notice.
    let mut bad = notice(&order.id, "", usd("20"));
    assert!(matches!(
        store.apply_payment(&bad, &cfg, t0()).await,
        Err(BillingError::InvalidInput(_))
    ));
    bad = notice(&order.id, "e", usd("-1"));
    assert!(matches!(
        store.apply_payment(&bad, &cfg, t0()).await,
        Err(BillingError::InvalidInput(_))
    ));

    let ev = key("evt");
    let (paid, change) = store
        .apply_payment(&notice(&order.id, &ev, usd("20")), &cfg, t0())
        .await
        .unwrap();
    assert!(change.is_none());
    assert!(!paid.replayed);
    assert!(matches!(paid.outcome, PaymentOutcome::Credited { .. }));
    assert_eq!(paid.order.status, OrderStatus::Paid);
    assert_eq!(paid.order.provider.as_deref(), Some("stripe"));
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("20")
    );
    // Replay: same outcome, nothing changes.
    let (replay, _) = store
        .apply_payment(&notice(&order.id, &ev, usd("20")), &cfg, t0())
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.outcome, paid.outcome);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("20")
    );
    // Same event id with different content: conflict.
    assert!(matches!(
        store
            .apply_payment(&notice(&order.id, &ev, usd("21")), &cfg, t0())
            .await,
        Err(BillingError::IdempotencyConflict(_))
    ));
    // A second, different payment event for a paid order: held, not credited.
    let (dup, _) = store
        .apply_payment(&notice(&order.id, &key("evt"), usd("20")), &cfg, t0())
        .await
        .unwrap();
    assert!(matches!(dup.outcome, PaymentOutcome::HeldForReview { .. }));
    assert_eq!(dup.order.status, OrderStatus::Paid);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("20")
    );

    // Partial refund, then more than is left: held.
    let r1 = store
        .apply_refund(&notice(&order.id, &key("rf"), usd("5")), t0())
        .await
        .unwrap();
    assert!(matches!(r1.outcome, PaymentOutcome::Refunded { .. }));
    assert_eq!(r1.order.refunded, usd("5"));
    assert_eq!(r1.order.status, OrderStatus::Paid);
    let r2 = store
        .apply_refund(&notice(&order.id, &key("rf"), usd("15.01")), t0())
        .await
        .unwrap();
    assert!(matches!(r2.outcome, PaymentOutcome::HeldForReview { .. }));
    let r3 = store
        .apply_refund(&notice(&order.id, &key("rf"), usd("15")), t0())
        .await
        .unwrap();
    assert_eq!(r3.order.status, OrderStatus::Refunded);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("0")
    );
    assert_wallet_consistent(store, &user).await;

    // Amount mismatch and currency mismatch: held for review, nothing credited.
    let o2 = store
        .create_order(&user, OrderPurpose::TopUp, usd("10"), exp, t0())
        .await
        .unwrap();
    let (held, _) = store
        .apply_payment(&notice(&o2.id, &key("evt"), usd("9.99")), &cfg, t0())
        .await
        .unwrap();
    assert!(matches!(held.outcome, PaymentOutcome::HeldForReview { .. }));
    assert_eq!(held.order.status, OrderStatus::HeldForReview);
    assert!(held
        .order
        .review_reason
        .as_deref()
        .unwrap_or("")
        .contains("9.99"));
    let o3 = store
        .create_order(&user, OrderPurpose::TopUp, usd("10"), exp, t0())
        .await
        .unwrap();
    let eur = Money::from_minor(1000, Currency::EUR);
    let (held, _) = store
        .apply_payment(&notice(&o3.id, &key("evt"), eur), &cfg, t0())
        .await
        .unwrap();
    assert_eq!(held.order.status, OrderStatus::HeldForReview);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("0")
    );
    assert_eq!(store.events(Some(o3.id.as_str())).await.unwrap().len(), 1);

    // Expiry, then a late payment: held.
    let o4 = store
        .create_order(&user, OrderPurpose::TopUp, usd("10"), exp, t0())
        .await
        .unwrap();
    assert!(store.expire_orders(exp).await.unwrap() >= 1);
    assert_eq!(
        store.order(&o4.id).await.unwrap().unwrap().status,
        OrderStatus::Expired
    );
    let (late, _) = store
        .apply_payment(&notice(&o4.id, &key("evt"), usd("10")), &cfg, exp)
        .await
        .unwrap();
    assert_eq!(late.order.status, OrderStatus::HeldForReview);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("0")
    );
}

/// A plan purchase order activates the subscription and books the plan fee.
pub async fn plan_purchase_order_activates_subscription(store: &dyn BillingStore) {
    let cfg = BillingConfig::default();
    let plan = store
        .create_plan(&plan_spec("Pro", "30", Period::Monthly, 7), t0())
        .await
        .unwrap();
    let user = UserId::new();
    let exp = t0() + Duration::hours(1);
    assert!(store
        .create_order(
            &user,
            OrderPurpose::PlanPurchase(plan.id.clone()),
            usd("29"),
            exp,
            t0()
        )
        .await
        .is_err());
    let order = store
        .create_order(
            &user,
            OrderPurpose::PlanPurchase(plan.id.clone()),
            usd("30"),
            exp,
            t0(),
        )
        .await
        .unwrap();
    let (applied, change) = store
        .apply_payment(&notice(&order.id, &key("evt"), usd("30")), &cfg, t0())
        .await
        .unwrap();
    let change = change.expect("subscription activated");
    // A purchase skips the trial: the money pays the first period.
    assert_eq!(change.subscription.status, SubscriptionStatus::Active);
    assert_eq!(
        change.subscription.period_end,
        Some(t0() + Duration::days(31))
    );
    assert!(
        matches!(change.keys, KeyAction::Apply(ref e) if e.plan_id == plan.id && e.max_keys == 3)
    );
    let inv = change.invoice.expect("invoice");
    assert_eq!(inv.status, InvoiceStatus::Paid);
    assert_eq!(inv.total, usd("30"));
    assert_eq!(
        applied.order.subscription_id,
        Some(change.subscription.id.clone())
    );
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("0")
    );
    assert_wallet_consistent(store, &user).await;
}

/// Plans are versioned; archived versions cannot be bought.
pub async fn plans_are_versioned(store: &dyn BillingStore) {
    let mut bad = plan_spec("", "1", Period::Monthly, 0);
    assert!(store.create_plan(&bad, t0()).await.is_err());
    bad = plan_spec("x", "-1", Period::Monthly, 0);
    assert!(store.create_plan(&bad, t0()).await.is_err());
    bad = plan_spec("x", "1", Period::Days(0), 0);
    assert!(store.create_plan(&bad, t0()).await.is_err());
    bad = plan_spec("x", "1", Period::Monthly, 0);
    bad.max_keys = 0;
    assert!(store.create_plan(&bad, t0()).await.is_err());

    let v1 = store
        .create_plan(&plan_spec("Basic", "10", Period::Monthly, 0), t0())
        .await
        .unwrap();
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("100"), &key("t")), t0())
        .await
        .unwrap();
    let sub = store
        .subscribe(&user, &v1.id, &BillingConfig::default(), t0())
        .await
        .unwrap();
    let v2 = store
        .revise_plan(&v1.id, &plan_spec("Basic", "12", Period::Monthly, 0), t0())
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.family, v1.family);
    assert_ne!(v2.id, v1.id);
    assert_eq!(
        store.plan(&v1.id).await.unwrap().unwrap().status,
        PlanStatus::Archived
    );
    // Revising an old version is refused.
    assert!(store
        .revise_plan(&v1.id, &plan_spec("Basic", "13", Period::Monthly, 0), t0())
        .await
        .is_err());
    // The subscriber keeps version 1.
    let s = store
        .subscription(&sub.subscription.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.plan_id, v1.id);
    let other = UserId::new();
    store
        .post(&top_up(&other, usd("100"), &key("t")), t0())
        .await
        .unwrap();
    assert!(store
        .subscribe(&other, &v1.id, &BillingConfig::default(), t0())
        .await
        .is_err());
    let active = store.plans(false).await.unwrap();
    assert!(active.iter().any(|p| p.id == v2.id));
    assert!(!active.iter().any(|p| p.id == v1.id));
    assert!(store
        .plans(true)
        .await
        .unwrap()
        .iter()
        .any(|p| p.id == v1.id));
}

/// Subscribing, trials, cancellation, illegal transitions; nothing changes on errors.
pub async fn subscriptions_follow_the_state_machine(store: &dyn BillingStore) {
    let cfg = BillingConfig::default();
    let plan = store
        .create_plan(&plan_spec("Team", "25", Period::Days(30), 0), t0())
        .await
        .unwrap();
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("24.99"), &key("t")), t0())
        .await
        .unwrap();
    let err = store
        .subscribe(&user, &plan.id, &cfg, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BillingError::InsufficientFunds { .. }),
        "{err}"
    );
    assert!(store.latest_subscription(&user).await.unwrap().is_none());
    assert!(
        store.invoices(&user).await.unwrap().is_empty(),
        "no invoice left behind"
    );
    store
        .post(&top_up(&user, usd("0.01"), &key("t")), t0())
        .await
        .unwrap();
    let ch = store.subscribe(&user, &plan.id, &cfg, t0()).await.unwrap();
    assert_eq!(ch.subscription.status, SubscriptionStatus::Active);
    assert!(
        store.subscribe(&user, &plan.id, &cfg, t0()).await.is_err(),
        "one live subscription"
    );
    // Not due: renew does nothing.
    assert!(store
        .renew(&ch.subscription.id, &cfg, t0())
        .await
        .unwrap()
        .is_none());
    let id = ch.subscription.id.clone();
    let c = store.cancel(&id, true, "user:x", t0()).await.unwrap();
    assert!(c.subscription.cancel_at_period_end);
    assert_eq!(c.keys, KeyAction::None);
    let due = t0() + Duration::days(30);
    assert!(store.due_for_renewal(due).await.unwrap().contains(&id));
    let ended = store.renew(&id, &cfg, due).await.unwrap().unwrap();
    assert_eq!(ended.subscription.status, SubscriptionStatus::Canceled);
    assert_eq!(ended.keys, KeyAction::Suspend);
    // Ended: every action is illegal and changes nothing.
    let before = store.subscription(&id).await.unwrap().unwrap();
    assert!(matches!(
        store.cancel(&id, false, "user:x", due).await,
        Err(BillingError::IllegalTransition { .. })
    ));
    assert!(matches!(
        store.upgrade(&id, &plan.id, &cfg, due).await,
        Err(BillingError::IllegalTransition { .. })
    ));
    assert_eq!(store.subscription(&id).await.unwrap().unwrap(), before);
    let events = store.events(Some(id.as_str())).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "subscription.activated",
            "subscription.cancel_scheduled",
            "subscription.canceled"
        ]
    );
    assert_eq!(store.audit(id.as_str()).await.unwrap().len(), 3);

    // A trial charges nothing and converts at its end.
    let trial_plan = store
        .create_plan(&plan_spec("Trial", "10", Period::Monthly, 14), t0())
        .await
        .unwrap();
    let u2 = UserId::new();
    let tr = store
        .subscribe(&u2, &trial_plan.id, &cfg, t0())
        .await
        .unwrap();
    assert_eq!(tr.subscription.status, SubscriptionStatus::Trialing);
    assert!(tr.invoice.is_none());
    assert!(matches!(tr.keys, KeyAction::Apply(_)));
    store
        .post(&top_up(&u2, usd("10"), &key("t")), t0())
        .await
        .unwrap();
    let conv = store
        .renew(&tr.subscription.id, &cfg, t0() + Duration::days(14))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.subscription.status, SubscriptionStatus::Active);
    assert_eq!(conv.invoice.unwrap().total, usd("10"));
    assert_eq!(
        store.wallet(&u2, Currency::USD).await.unwrap().balance,
        usd("0")
    );
    assert_wallet_consistent(store, &u2).await;
}

/// Gapless numbers, immutability once finalised, credit notes capped by the total.
pub async fn invoices_are_numbered_and_immutable(store: &dyn BillingStore) {
    let cfg = BillingConfig {
        operator: format!("op{}", &UserId::new().as_str()[4..12]),
        ..BillingConfig::default()
    };
    let user = UserId::new();
    let line = |a: &str| LineItem {
        kind: LineKind::Adjustment,
        description: "consulting".into(),
        amount: usd(a),
    };
    let d1 = store
        .create_draft_invoice(&user, Currency::USD, vec![line("10.005")], &cfg, t0())
        .await
        .unwrap();
    assert_eq!(d1.number, None);
    let d1 = store.add_invoice_line(&d1.id, line("1")).await.unwrap();
    assert_eq!(d1.lines.len(), 2);
    let bad = LineItem {
        amount: Money::from_minor(1, Currency::EUR),
        ..line("1")
    };
    assert!(store.add_invoice_line(&d1.id, bad).await.is_err());
    let empty = store
        .create_draft_invoice(&user, Currency::USD, vec![], &cfg, t0())
        .await
        .unwrap();
    assert!(
        store.finalize_invoice(&empty.id, t0()).await.is_err(),
        "empty invoice refused"
    );
    let f1 = store.finalize_invoice(&d1.id, t0()).await.unwrap();
    assert_eq!(f1.number.as_deref(), Some("INV-000001"));
    assert_eq!(f1.status, InvoiceStatus::Open);
    // 10.005 rounds half-even to 10.00; + 1.00.
    assert_eq!(f1.total, usd("11.00"));
    assert!(
        store.add_invoice_line(&f1.id, line("1")).await.is_err(),
        "finalised is immutable"
    );
    assert!(store.finalize_invoice(&f1.id, t0()).await.is_err());
    // Open invoices are owed.
    let recv = store
        .derived_balance(&Account::Receivable(user.clone()), Currency::USD)
        .await
        .unwrap();
    assert_eq!(recv, usd("11.00"));
    let d2 = store
        .create_draft_invoice(&user, Currency::USD, vec![line("3")], &cfg, t0())
        .await
        .unwrap();
    let f2 = store.finalize_invoice(&d2.id, t0()).await.unwrap();
    assert_eq!(f2.number.as_deref(), Some("INV-000002"));
    // Paying needs funds.
    assert!(matches!(
        store.pay_invoice(&f1.id, t0()).await,
        Err(BillingError::InsufficientFunds { .. })
    ));
    store
        .post(&top_up(&user, usd("11"), &key("t")), t0())
        .await
        .unwrap();
    let p1 = store.pay_invoice(&f1.id, t0()).await.unwrap();
    assert_eq!(p1.status, InvoiceStatus::Paid);
    assert!(store.pay_invoice(&f1.id, t0()).await.is_err());
    assert!(
        store.void_invoice(&f1.id, t0()).await.is_err(),
        "paid cannot be voided"
    );
    let v2 = store.void_invoice(&f2.id, t0()).await.unwrap();
    assert_eq!(v2.status, InvoiceStatus::Void);
    let recv = store
        .derived_balance(&Account::Receivable(user.clone()), Currency::USD)
        .await
        .unwrap();
    assert!(recv.is_zero());
    // Credit notes: at most the invoice's total, in their own sequence.
    assert!(store
        .credit_note(&f1.id, vec![line("2")], "", t0())
        .await
        .is_err());
    assert!(
        store
            .credit_note(&f2.id, vec![line("1")], "oops", t0())
            .await
            .is_err(),
        "void invoice"
    );
    let cn = store
        .credit_note(&f1.id, vec![line("4")], "partial outage", t0())
        .await
        .unwrap();
    assert_eq!(cn.number.as_deref(), Some("CN-000001"));
    assert_eq!(cn.corrects, Some(f1.id.clone()));
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("4")
    );
    assert!(store
        .credit_note(&f1.id, vec![line("7.01")], "too much", t0())
        .await
        .is_err());
    store
        .credit_note(&f1.id, vec![line("7")], "rest", t0())
        .await
        .unwrap();
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("11")
    );
    // The refused credit note left no gap: the next number is CN-000003.
    let cn3 = store
        .credit_note(&f1.id, vec![line("0.01")], "none left", t0())
        .await;
    assert!(cn3.is_err());
    let d3 = store
        .create_draft_invoice(&user, Currency::USD, vec![line("1")], &cfg, t0())
        .await
        .unwrap();
    let f3 = store.finalize_invoice(&d3.id, t0()).await.unwrap();
    assert_eq!(f3.number.as_deref(), Some("INV-000003"));
    let w = store.mark_uncollectible(&f3.id, t0()).await.unwrap();
    assert_eq!(w.status, InvoiceStatus::Uncollectible);
    assert!(store
        .overdue(t0())
        .await
        .unwrap()
        .iter()
        .any(|o| o.invoice_id == f3.id));
    assert_wallet_consistent(store, &user).await;
}

/// Codes: single use, expiry, unknown, malformed.
pub async fn redemption_codes_are_single_use(store: &dyn BillingStore) {
    let codes = crate::redemption::generate(3).unwrap();
    let batch = key("batch");
    assert!(store
        .create_codes(&batch, &codes, usd("0"), None, t0())
        .await
        .is_err());
    assert!(store
        .create_codes(&batch, &["nope".into()], usd("1"), None, t0())
        .await
        .is_err());
    store
        .create_codes(&batch, &codes[..2], usd("5"), None, t0())
        .await
        .unwrap();
    assert!(
        store
            .create_codes(&batch, &codes[..1], usd("5"), None, t0())
            .await
            .is_err(),
        "duplicate code"
    );
    store
        .create_codes(
            &key("batch"),
            &codes[2..],
            usd("5"),
            Some(t0() + Duration::days(1)),
            t0(),
        )
        .await
        .unwrap();
    let user = UserId::new();
    let typed = codes[0].to_lowercase().replace('-', "");
    let posted = store.redeem_code(&typed, &user, t0()).await.unwrap();
    assert_eq!(posted.transaction().kind, TxKind::Promotion);
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("5")
    );
    let again = store.redeem_code(&codes[0], &UserId::new(), t0()).await;
    assert!(matches!(
        again,
        Err(BillingError::Code(CodeRejection::AlreadyRedeemed))
    ));
    let late = store
        .redeem_code(&codes[2], &user, t0() + Duration::days(1))
        .await;
    assert!(matches!(
        late,
        Err(BillingError::Code(CodeRejection::Expired))
    ));
    let unknown = crate::redemption::generate(1).unwrap();
    assert!(matches!(
        store.redeem_code(&unknown[0], &user, t0()).await,
        Err(BillingError::Code(CodeRejection::Unknown))
    ));
    assert!(matches!(
        store.redeem_code("0000", &user, t0()).await,
        Err(BillingError::InvalidInput(_))
    ));
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("5")
    );
    let c = store.code(&codes[0]).await.unwrap().unwrap();
    assert_eq!(c.redeemed_by, Some(user.clone()));
    assert_wallet_consistent(store, &user).await;
}

/// Usage: included credit first, overage at the multiplier, idempotent per batch.
pub async fn usage_charges_use_included_credit_then_overage(store: &dyn BillingStore) {
    let cfg = BillingConfig::default();
    let plan = store
        .create_plan(&plan_spec("Usage", "10", Period::Monthly, 0), t0())
        .await
        .unwrap();
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("20"), &key("t")), t0())
        .await
        .unwrap();
    store.subscribe(&user, &plan.id, &cfg, t0()).await.unwrap();
    let batch = |id: &str, cost: &str| UsageBatch {
        batch_id: id.into(),
        user_id: user.clone(),
        cost: usd(cost),
    };
    let b1 = key("b");
    let c1 = store
        .charge_usage(&batch(&b1, "4.000001"), t0())
        .await
        .unwrap();
    assert_eq!(c1.covered, usd("4.000001"));
    assert!(c1.charged.is_zero());
    // 5 included: 0.999999 left covers part of 2; 1.000001 uncovered × 1.5 = 1.5000015.
    let b2 = key("b");
    let c2 = store.charge_usage(&batch(&b2, "2"), t0()).await.unwrap();
    assert_eq!(c2.covered, usd("0.999999"));
    assert_eq!(c2.charged, usd("1.5000015"));
    let replay = store.charge_usage(&batch(&b2, "2"), t0()).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.charged, c2.charged);
    assert_eq!(replay.transaction_id, c2.transaction_id);
    assert!(matches!(
        store.charge_usage(&batch(&b2, "3"), t0()).await,
        Err(BillingError::IdempotencyConflict(_))
    ));
    assert!(store
        .charge_usage(&batch(&key("b"), "-1"), t0())
        .await
        .is_err());
    assert!(store.charge_usage(&batch("", "1"), t0()).await.is_err());
    assert_eq!(
        store.wallet(&user, Currency::USD).await.unwrap().balance,
        usd("8.4999985")
    );
    assert_eq!(
        store.usage_cost(&user, Currency::USD).await.unwrap(),
        usd("6.000001")
    );
    // Pay as you go (no subscription): charged at cost.
    let payg = UserId::new();
    let c = store
        .charge_usage(
            &UsageBatch {
                batch_id: key("b"),
                user_id: payg.clone(),
                cost: usd("0.25"),
            },
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(c.charged, usd("0.25"));
    assert_eq!(
        store.wallet(&payg, Currency::USD).await.unwrap().balance,
        usd("-0.25")
    );
    // Statements: what was charged, rounded once, issued paid, never twice.
    let until = t0() + Duration::days(1);
    let inv = store
        .invoice_usage(&user, Currency::USD, until, &cfg, until)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inv.status, InvoiceStatus::Paid);
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(
        (inv.lines[0].kind, inv.lines[0].amount),
        (LineKind::Overage, usd("1.50"))
    );
    assert_eq!(inv.total, usd("1.50"));
    assert!(store
        .invoice_usage(&user, Currency::USD, until, &cfg, until)
        .await
        .unwrap()
        .is_none());
    // With 10 % tax, it is extracted from what was charged: 0.25 × 0.1 / 1.1 = 0.0227… -> 0.02.
    let taxed = BillingConfig {
        tax: crate::invoice::TaxRule {
            rate: Decimal::from_str("0.1").unwrap(),
            inclusive: false,
        },
        ..BillingConfig::default()
    };
    let inv = store
        .invoice_usage(&payg, Currency::USD, until, &taxed, until)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (inv.lines[0].kind, inv.subtotal, inv.tax, inv.total),
        (LineKind::Usage, usd("0.23"), usd("0.02"), usd("0.25"))
    );
    let margins = store
        .usage_vs_revenue(t0(), t0() + Duration::days(1))
        .await
        .unwrap();
    let m = margins.iter().find(|m| m.user_id == user).unwrap();
    assert_eq!(m.plan_id, Some(plan.id.clone()));
    assert_eq!(m.usage_cost, usd("6.000001"));
    assert_eq!(m.plan_fees, usd("10"));
    // 1.5000015 overage + 10 plan fee - 6.000001 cost = 5.5000005.
    assert_eq!(m.margin, usd("5.5000005"));
    assert_wallet_consistent(store, &user).await;
}

/// Every check above, in order (for backends that want one call).
pub async fn all(store: &dyn BillingStore) {
    ledger_posts_balanced_idempotent_transactions(store).await;
    ledger_refuses_bad_transactions(store).await;
    ledger_guard_respects_credit_limit(store).await;
    ledger_refunds_charges_up_to_what_they_took(store).await;
    orders_apply_payments_and_refunds(store).await;
    plan_purchase_order_activates_subscription(store).await;
    plans_are_versioned(store).await;
    subscriptions_follow_the_state_machine(store).await;
    invoices_are_numbered_and_immutable(store).await;
    redemption_codes_are_single_use(store).await;
    usage_charges_use_included_credit_then_overage(store).await;
}
