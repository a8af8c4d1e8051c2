//! Jobs (usage to ledger, reconciliation, expiry, leader locks), standing, the service's
//! ledger operations and the append-only guarantee of the schema.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Duration;
use parking_lot::Mutex;
use relay_billing::conformance::{plan_spec, t0, top_up, usd};
use relay_billing::jobs::{self, SpendCounters, UsageSource};
use relay_billing::{
    Billing, BillingConfig, BillingError, BillingStore, OrderPurpose, OrderStatus, Period,
    UsageBatch,
};
use relay_core::{
    AccountStanding, AccountStatus, Currency, Entitlement, KeyProvisioner, ManualClock, Money,
    ProvisionError, UserId,
};

#[derive(Debug, Default)]
struct NoKeys;

#[async_trait]
impl KeyProvisioner for NoKeys {
    async fn apply_entitlement(
        &self,
        _: &UserId,
        _: &Entitlement,
    ) -> Result<Option<String>, ProvisionError> {
        Ok(None)
    }
    async fn suspend_keys(&self, _: &UserId) -> Result<(), ProvisionError> {
        Ok(())
    }
}

/// A provisioner whose key store is down.
#[derive(Debug, Default)]
struct BrokenKeys;

#[async_trait]
impl KeyProvisioner for BrokenKeys {
    async fn apply_entitlement(
        &self,
        _: &UserId,
        _: &Entitlement,
    ) -> Result<Option<String>, ProvisionError> {
        Err(ProvisionError::Store("down".into()))
    }
    async fn suspend_keys(&self, _: &UserId) -> Result<(), ProvisionError> {
        Err(ProvisionError::Store("down".into()))
    }
}

async fn usd_balance(billing: &Billing, user: &UserId) -> Money {
    billing
        .store()
        .wallet(user, Currency::USD)
        .await
        .unwrap()
        .balance
}

async fn billing_with(keys: Arc<dyn KeyProvisioner>) -> (Billing, ManualClock) {
    let store = relay_billing::store::memory::open().await.unwrap();
    let clock = ManualClock::new(t0());
    let billing = Billing::new(
        Arc::new(store),
        Arc::new(clock.clone()),
        keys,
        BillingConfig::default(),
    );
    (billing, clock)
}

#[derive(Debug, Default)]
struct Batches {
    pending: Mutex<Vec<UsageBatch>>,
    confirmed: Mutex<Vec<String>>,
}

#[async_trait]
impl UsageSource for Batches {
    async fn pending(&self) -> relay_billing::Result<Vec<UsageBatch>> {
        let confirmed = self.confirmed.lock().clone();
        Ok(self
            .pending
            .lock()
            .iter()
            .filter(|b| !confirmed.contains(&b.batch_id))
            .cloned()
            .collect())
    }
    async fn confirm(&self, batch_id: &str) -> relay_billing::Result<()> {
        self.confirmed.lock().push(batch_id.to_owned());
        Ok(())
    }
}

/// Offers at most two pending batches per call, as a paged source does.
#[derive(Debug, Default)]
struct PagedBatches(Batches);

#[async_trait]
impl UsageSource for PagedBatches {
    async fn pending(&self) -> relay_billing::Result<Vec<UsageBatch>> {
        let mut page = self.0.pending().await?;
        page.truncate(2);
        Ok(page)
    }
    async fn confirm(&self, batch_id: &str) -> relay_billing::Result<()> {
        self.0.confirm(batch_id).await
    }
}

#[tokio::test]
async fn usage_to_ledger_takes_pages_until_none_is_left_and_ends_on_a_batch_offered_again() {
    let (billing, _clock) = billing_with(Arc::new(NoKeys)).await;
    let user = UserId::new();
    let source = PagedBatches::default();
    for i in 0..7 {
        source.0.pending.lock().push(UsageBatch {
            batch_id: format!("p{i}"),
            user_id: user.clone(),
            cost: usd("0.01"),
        });
    }
    // Four pages of two in one run.
    let r = jobs::usage_to_ledger(&billing, &source).await.unwrap();
    assert_eq!((r.changed, r.unchanged, r.errors.len()), (7, 0, 0));
    assert_eq!(source.0.confirmed.lock().len(), 7);
    assert_eq!(usd_balance(&billing, &user).await, usd("-0.07"));
    // A source that keeps offering what it was told is charged: the run ends instead of
    // looping, and nothing is charged twice.
    let stubborn = Batches::default();
    stubborn.pending.lock().push(UsageBatch {
        batch_id: "p0".into(),
        user_id: user.clone(),
        cost: usd("0.01"),
    });
    struct Stubborn<'a>(&'a Batches);
    impl std::fmt::Debug for Stubborn<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Stubborn")
        }
    }
    #[async_trait]
    impl UsageSource for Stubborn<'_> {
        async fn pending(&self) -> relay_billing::Result<Vec<UsageBatch>> {
            Ok(self.0.pending.lock().clone())
        }
        async fn confirm(&self, _batch_id: &str) -> relay_billing::Result<()> {
            Ok(())
        }
    }
    let r = jobs::usage_to_ledger(&billing, &Stubborn(&stubborn))
        .await
        .unwrap();
    assert_eq!((r.changed, r.unchanged, r.errors.len()), (0, 1, 0));
    assert_eq!(usd_balance(&billing, &user).await, usd("-0.07"));
}

#[derive(Debug)]
struct Counters(Vec<(UserId, Money)>);

#[async_trait]
impl SpendCounters for Counters {
    async fn spend(&self) -> relay_billing::Result<Vec<(UserId, Money)>> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn usage_to_ledger_charges_each_batch_once_and_reconciles_with_counters() {
    let (billing, _clock) = billing_with(Arc::new(NoKeys)).await;
    let user = UserId::new();
    let source = Batches::default();
    for (i, cost) in ["0.001", "0.0025", "1.2"].iter().enumerate() {
        source.pending.lock().push(UsageBatch {
            batch_id: format!("b{i}"),
            user_id: user.clone(),
            cost: usd(cost),
        });
    }
    let r = jobs::usage_to_ledger(&billing, &source).await.unwrap();
    assert_eq!((r.changed, r.unchanged, r.errors.len()), (3, 0, 0));
    // A crashed run that charged but never confirmed: offered again, charged nothing.
    source.confirmed.lock().clear();
    let r = jobs::usage_to_ledger(&billing, &source).await.unwrap();
    assert_eq!((r.changed, r.unchanged), (0, 3));
    assert_eq!(usd_balance(&billing, &user).await, usd("-1.2035"));
    // Pay as you go with no credit: the debt shows in the standing.
    assert_eq!(
        billing.standing(&user).await.unwrap().status,
        AccountStatus::PastDue
    );
    billing
        .store()
        .set_credit_limit(&user, usd("2"), "admin:t", t0())
        .await
        .unwrap();
    assert_eq!(
        billing.standing(&user).await.unwrap().status,
        AccountStatus::Active
    );

    // Counters agreeing with usage: no drift; disagreeing: one alert event.
    let agree = Counters(vec![(user.clone(), usd("1.2035"))]);
    let (report, drift) = jobs::reconcile(&billing, Some(&agree)).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
    assert_eq!(report.changed, 0);
    let off = Counters(vec![(user.clone(), usd("1.2"))]);
    let (_, drift) = jobs::reconcile(&billing, Some(&off)).await.unwrap();
    assert_eq!(drift.len(), 1);
    assert_eq!(drift[0].subject, format!("counters:{user}"));
    assert_eq!(
        (drift[0].expected, drift[0].actual),
        (usd("1.2035"), usd("1.2"))
    );
    let alerts = billing
        .store()
        .events(Some(&format!("counters:{user}")))
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "alert.drift");
}

#[tokio::test]
async fn reconciliation_reports_a_cached_balance_that_drifted() {
    let (store, _dir) = common::sqlite().await;
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("10"), "t1"), t0())
        .await
        .unwrap();
    assert!(jobs::find_drift(&store, None).await.unwrap().is_empty());
    // Someone edits the cache behind billing's back.
    sqlx::query("UPDATE billing_wallets SET balance = '12' WHERE user_id = $1")
        .bind(user.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    let drift = jobs::find_drift(&store, None).await.unwrap();
    assert_eq!(drift.len(), 1);
    assert_eq!(drift[0].subject, format!("wallet:{user}"));
    assert_eq!((drift[0].expected, drift[0].actual), (usd("10"), usd("12")));
}

#[tokio::test]
async fn reconciliation_reports_usage_records_that_disagree_with_the_ledger() {
    let (store, _dir) = common::sqlite().await;
    let user = UserId::new();
    let batch = UsageBatch {
        batch_id: "b1".into(),
        user_id: user.clone(),
        cost: usd("0.5"),
    };
    store.charge_usage(&batch, t0()).await.unwrap();
    assert!(jobs::find_drift(&store, None).await.unwrap().is_empty());
    sqlx::query("UPDATE billing_usage_batches SET charged = '0.4' WHERE batch_id = 'b1'")
        .execute(store.pool())
        .await
        .unwrap();
    let drift = jobs::find_drift(&store, None).await.unwrap();
    assert_eq!(drift.len(), 1);
    assert_eq!(drift[0].subject, format!("usage:{user}"));
    assert_eq!(
        (drift[0].expected, drift[0].actual),
        (usd("0.4"), usd("0.5"))
    );
}

#[tokio::test]
async fn the_ledger_tables_are_append_only() {
    let (store, _dir) = common::sqlite().await;
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("10"), "t1"), t0())
        .await
        .unwrap();
    for sql in [
        "UPDATE billing_entries SET amount = '99'",
        "DELETE FROM billing_entries",
        "UPDATE billing_transactions SET memo = 'x'",
        "DELETE FROM billing_transactions",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(store.transactions(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_tables_are_append_only_on_postgres() {
    let Some((store, guard)) = common::postgres(2).await else {
        return;
    };
    let user = UserId::new();
    store
        .post(&top_up(&user, usd("10"), "t1"), t0())
        .await
        .unwrap();
    for sql in [
        "UPDATE billing_entries SET amount = '99'",
        "DELETE FROM billing_transactions",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    guard.drop_schema().await;
}

#[tokio::test]
async fn local_job_locks_exclude_a_second_runner() {
    let (billing, _clock) = billing_with(Arc::new(NoKeys)).await;
    let held = billing
        .store()
        .try_job_lock("renewals")
        .await
        .unwrap()
        .unwrap();
    let skipped = jobs::renewals(&billing).await.unwrap();
    assert!(skipped.skipped);
    assert!(
        billing
            .store()
            .try_job_lock("dunning")
            .await
            .unwrap()
            .is_some(),
        "locks are per job"
    );
    held.release().await.unwrap();
    assert!(!jobs::renewals(&billing).await.unwrap().skipped);
}

#[tokio::test]
async fn expiry_job_expires_unpaid_orders() {
    let (billing, clock) = billing_with(Arc::new(NoKeys)).await;
    let user = UserId::new();
    let order = billing
        .create_order(&user, OrderPurpose::TopUp, usd("5"))
        .await
        .unwrap();
    assert_eq!(jobs::expiry(&billing).await.unwrap().changed, 0);
    clock.advance(Duration::hours(24));
    assert_eq!(jobs::expiry(&billing).await.unwrap().changed, 1);
    assert_eq!(
        billing
            .store()
            .order(&order.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        OrderStatus::Expired
    );
}

#[tokio::test]
async fn service_ledger_operations_validate_and_are_idempotent() {
    let (billing, _clock) = billing_with(Arc::new(NoKeys)).await;
    let user = UserId::new();
    assert!(billing
        .adjust(&user, usd("5"), " ", "admin:a", "a1")
        .await
        .is_err());
    assert!(billing
        .adjust(&user, usd("0"), "why", "admin:a", "a1")
        .await
        .is_err());
    billing
        .adjust(&user, usd("5"), "goodwill", "admin:a", "a1")
        .await
        .unwrap();
    assert!(!billing
        .adjust(&user, usd("5"), "goodwill", "admin:a", "a1")
        .await
        .unwrap()
        .is_new());
    assert!(matches!(
        billing
            .adjust(&user, usd("-6"), "clawback", "admin:a", "a2")
            .await,
        Err(BillingError::InsufficientFunds { .. })
    ));
    billing
        .adjust(&user, usd("-2"), "clawback", "admin:a", "a3")
        .await
        .unwrap();
    assert!(billing
        .pay_by_balance(&user, usd("0"), "p", "x")
        .await
        .is_err());
    assert!(billing
        .pay_by_balance(&user, usd("-1"), "p", "x")
        .await
        .is_err());
    billing
        .pay_by_balance(&user, usd("3"), "p1", "thing")
        .await
        .unwrap();
    billing
        .refund_charge("p1", usd("1"), "goodwill", "rf1")
        .await
        .unwrap();
    assert!(billing
        .refund_charge("p1", usd("2.01"), "more", "rf2")
        .await
        .is_err());
    billing
        .refund_charge("p1", usd("2"), "rest", "rf2")
        .await
        .unwrap();
    billing
        .pay_by_balance(&user, usd("3"), "p1b", "thing")
        .await
        .unwrap();
    assert!(matches!(
        billing
            .pay_by_balance(&user, usd("0.01"), "p2", "thing")
            .await,
        Err(BillingError::InsufficientFunds { .. })
    ));
    assert_eq!(usd_balance(&billing, &user).await, usd("0"));
    let (batch, codes) = billing.generate_codes(2, usd("1.5"), None).await.unwrap();
    assert!(batch.starts_with("batch_"));
    billing.redeem(&codes[1], &user).await.unwrap();
    assert_eq!(usd_balance(&billing, &user).await, usd("1.5"));
    assert!(billing.generate_codes(0, usd("1"), None).await.is_err());
}

#[tokio::test]
async fn a_failing_key_store_does_not_undo_billing_and_raises_an_alert() {
    let (billing, _clock) = billing_with(Arc::new(BrokenKeys)).await;
    let plan = billing
        .store()
        .create_plan(&plan_spec("P", "1", Period::Monthly, 0), t0())
        .await
        .unwrap();
    let user = UserId::new();
    billing
        .store()
        .post(&top_up(&user, usd("1"), "t"), t0())
        .await
        .unwrap();
    let ch = billing.subscribe(&user, &plan.id).await.unwrap();
    assert_eq!(
        ch.subscription.status,
        relay_billing::SubscriptionStatus::Active
    );
    let alerts = billing.store().events(Some(user.as_str())).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "alert.provisioning");
}

#[tokio::test]
async fn reports_count_live_subscriptions_per_plan() {
    let (billing, _clock) = billing_with(Arc::new(NoKeys)).await;
    let store = billing.store();
    let a = store
        .create_plan(&plan_spec("A", "1", Period::Monthly, 0), t0())
        .await
        .unwrap();
    let b = store
        .create_plan(&plan_spec("B", "2", Period::Monthly, 5), t0())
        .await
        .unwrap();
    for i in 0..3 {
        let u = UserId::new();
        store
            .post(&top_up(&u, usd("10"), &format!("t{i}")), t0())
            .await
            .unwrap();
        billing
            .subscribe(&u, if i < 2 { &a.id } else { &b.id })
            .await
            .unwrap();
    }
    let mut counts = store.active_subscriptions_by_plan().await.unwrap();
    counts.sort_by_key(|c| c.name.clone());
    assert_eq!(counts.len(), 2);
    assert_eq!(
        (counts[0].name.as_str(), counts[0].live, counts[0].active),
        ("A", 2, 2)
    );
    assert_eq!(
        (counts[1].name.as_str(), counts[1].live, counts[1].active),
        ("B", 1, 0)
    );
    let rev = store.revenue(t0(), t0() + Duration::days(1)).await.unwrap();
    assert_eq!(rev[0].revenue, usd("2"));
    assert!(store
        .revenue(t0() + Duration::days(1), t0() + Duration::days(2))
        .await
        .unwrap()
        .is_empty());
}
