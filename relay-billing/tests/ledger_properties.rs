//! Property: for any sequence of ledger operations, every transaction balances, the
//! balance derived from entries equals the cached balance, and both equal a simple model
//! in which guarded debits are refused exactly when they would cross the credit limit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeMap;

use proptest::prelude::*;
use relay_billing::conformance::{charge, t0, top_up};
use relay_billing::{Account, BillingError, BillingStore, Entry, NewTransaction, TxKind};
use relay_core::{Currency, Money, UserId};
use rust_decimal::Decimal;

#[derive(Debug, Clone)]
enum Op {
    TopUp { user: usize, cents: i64 },
    Charge { user: usize, micros: i64 },
    UnguardedDebit { user: usize, cents: i64 },
    Promotion { user: usize, cents: i64 },
    CreditLimit { user: usize, cents: i64 },
    Replay { index: usize },
    ConflictingReplay { index: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..5_000i64).prop_map(|(user, cents)| Op::TopUp { user, cents }),
        (0..3usize, 1..30_000_000i64).prop_map(|(user, micros)| Op::Charge { user, micros }),
        (0..3usize, 1..2_000i64).prop_map(|(user, cents)| Op::UnguardedDebit { user, cents }),
        (0..3usize, 1..1_000i64).prop_map(|(user, cents)| Op::Promotion { user, cents }),
        (0..3usize, 0..3_000i64).prop_map(|(user, cents)| Op::CreditLimit { user, cents }),
        (0..40usize).prop_map(|index| Op::Replay { index }),
        (0..40usize).prop_map(|index| Op::ConflictingReplay { index }),
    ]
}

async fn run(ops: Vec<Op>) {
    let store = relay_billing::store::memory::open().await.unwrap();
    let users: Vec<UserId> = (0..3).map(|_| UserId::new()).collect();
    let mut model: BTreeMap<usize, (Decimal, Decimal)> = BTreeMap::new(); // balance, limit
    let mut posted: Vec<NewTransaction> = Vec::new();
    for (n, op) in ops.into_iter().enumerate() {
        let key = format!("k{n}");
        match op {
            Op::TopUp { user, cents } => {
                let m = Money::from_minor(cents, Currency::USD);
                let tx = top_up(&users[user], m, &key);
                store.post(&tx, t0()).await.unwrap();
                model.entry(user).or_default().0 += m.amount();
                posted.push(tx);
            }
            Op::Charge { user, micros } => {
                let m = Money::new(Decimal::new(micros, 6), Currency::USD);
                let tx = charge(&users[user], m, &key);
                let (bal, limit) = model.get(&user).copied().unwrap_or_default();
                let fits = bal - m.amount() >= -limit;
                match store.post(&tx, t0()).await {
                    Ok(_) => {
                        assert!(
                            fits,
                            "charge of {m} accepted with balance {bal}, limit {limit}"
                        );
                        model.entry(user).or_default().0 -= m.amount();
                        posted.push(tx);
                    }
                    Err(BillingError::InsufficientFunds { .. }) => {
                        assert!(
                            !fits,
                            "charge of {m} refused with balance {bal}, limit {limit}"
                        )
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Op::UnguardedDebit { user, cents } => {
                let m = Money::from_minor(cents, Currency::USD);
                let mut tx = charge(&users[user], m, &key);
                tx.kind = TxKind::PaymentRefund;
                tx.entries[1] = Entry::credit(Account::ProviderClearing, m);
                tx.guarded = false;
                store.post(&tx, t0()).await.unwrap();
                model.entry(user).or_default().0 -= m.amount();
                posted.push(tx);
            }
            Op::Promotion { user, cents } => {
                let m = Money::from_minor(cents, Currency::USD);
                let tx = NewTransaction {
                    idempotency_key: key,
                    kind: TxKind::Promotion,
                    user_id: Some(users[user].clone()),
                    memo: String::new(),
                    entries: vec![
                        Entry::debit(Account::Promotions, m),
                        Entry::credit(Account::Wallet(users[user].clone()), m),
                    ],
                    guarded: true,
                };
                store.post(&tx, t0()).await.unwrap();
                model.entry(user).or_default().0 += m.amount();
                posted.push(tx);
            }
            Op::CreditLimit { user, cents } => {
                let m = Money::from_minor(cents, Currency::USD);
                store
                    .set_credit_limit(&users[user], m, "admin:prop", t0())
                    .await
                    .unwrap();
                model.entry(user).or_default().1 = m.amount();
            }
            Op::Replay { index } => {
                if let Some(tx) = posted.get(index) {
                    let p = store.post(tx, t0()).await.unwrap();
                    assert!(!p.is_new(), "a replay posts nothing");
                }
            }
            Op::ConflictingReplay { index } => {
                if let Some(tx) = posted.get(index) {
                    let mut other = tx.clone();
                    other.memo.push_str(" (changed)");
                    let err = store.post(&other, t0()).await.unwrap_err();
                    assert!(matches!(err, BillingError::IdempotencyConflict(_)));
                }
            }
        }
    }
    let all = store.transactions(None).await.unwrap();
    assert_eq!(all.len(), posted.len());
    let mut grand = Decimal::ZERO;
    for t in &all {
        for (_, sum) in t.sums() {
            assert!(
                sum.is_zero(),
                "transaction {} does not balance",
                t.idempotency_key
            );
        }
        grand += t.entries.iter().map(|e| e.amount.amount()).sum::<Decimal>();
    }
    assert!(grand.is_zero());
    for (i, u) in users.iter().enumerate() {
        let cached = store.wallet(u, Currency::USD).await.unwrap();
        let derived = store
            .derived_balance(&Account::Wallet(u.clone()), Currency::USD)
            .await
            .unwrap();
        assert_eq!(cached.balance, derived, "cached == derived for user {i}");
        let (bal, _) = model.get(&i).copied().unwrap_or_default();
        assert_eq!(cached.balance.amount(), bal, "model balance for user {i}");
    }
    assert!(relay_billing::jobs::find_drift(&store, None)
        .await
        .unwrap()
        .is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn every_sequence_keeps_the_ledger_balanced_and_the_cache_true(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
