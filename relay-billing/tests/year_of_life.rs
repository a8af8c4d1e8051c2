//! A year of subscription life on the manual clock: trial, renewals, a failed renewal,
//! grace, suspension, payment, upgrade (with proration), downgrade, cancellation; and a
//! second customer who never pays (suspension, expiry, bad debt). Ledger, invoices, key
//! provisioning and standing are checked at each step. Runs on memory and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use relay_billing::conformance::{plan_spec, usd};
use relay_billing::{
    jobs, Billing, BillingConfig, BillingError, BillingStore, InvoiceStatus, OrderPurpose, Period,
    SubscriptionStatus, TaxRule,
};
use relay_core::{
    AccountStanding, AccountStatus, Currency, Entitlement, KeyProvisioner, ManualClock, PlanId,
    ProvisionError, UserId,
};
use rust_decimal::Decimal;

/// A test double of the key provisioner that records every call.
#[derive(Debug, Default)]
struct RecordingKeys {
    calls: Mutex<Vec<Call>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Apply {
        user: UserId,
        plan: PlanId,
        until: Option<DateTime<Utc>>,
    },
    Suspend {
        user: UserId,
    },
}

#[async_trait]
impl KeyProvisioner for RecordingKeys {
    async fn apply_entitlement(
        &self,
        user: &UserId,
        e: &Entitlement,
    ) -> Result<Option<String>, ProvisionError> {
        self.calls.lock().push(Call::Apply {
            user: user.clone(),
            plan: e.plan_id.clone(),
            until: e.valid_until,
        });
        Ok(None)
    }
    async fn suspend_keys(&self, user: &UserId) -> Result<(), ProvisionError> {
        self.calls.lock().push(Call::Suspend { user: user.clone() });
        Ok(())
    }
}

impl RecordingKeys {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock())
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn pay(billing: &Billing, user: &UserId, amount: &str) {
    let order = billing
        .create_order(user, OrderPurpose::TopUp, usd(amount))
        .await
        .unwrap();
    let event = format!("evt-{}", order.id);
    billing
        .apply_payment(&order.id, "manual", &event, usd(amount), "bank transfer")
        .await
        .unwrap();
}

async fn balance(billing: &Billing, user: &UserId) -> relay_core::Money {
    billing
        .store()
        .wallet(user, Currency::USD)
        .await
        .unwrap()
        .balance
}

async fn consistent(billing: &Billing) {
    let drift = jobs::find_drift(billing.store().as_ref(), None)
        .await
        .unwrap();
    assert!(drift.is_empty(), "ledger drift: {drift:?}");
}

async fn year_of_life(store: Arc<dyn BillingStore>) {
    let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
    let keys = Arc::new(RecordingKeys::default());
    let config = BillingConfig {
        operator: format!("op{}", &UserId::new().as_str()[4..12]),
        tax: TaxRule {
            rate: Decimal::from_str("0.10").unwrap(),
            inclusive: false,
        },
        ..BillingConfig::default()
    };
    let billing = Billing::new(
        Arc::clone(&store),
        Arc::new(clock.clone()),
        keys.clone(),
        config,
    );
    let basic = store
        .create_plan(
            &plan_spec("Basic", "10", Period::Monthly, 7),
            clock.now_utc(),
        )
        .await
        .unwrap();
    let pro = store
        .create_plan(&plan_spec("Pro", "30", Period::Monthly, 0), clock.now_utc())
        .await
        .unwrap();
    let alice = UserId::new();
    let bob = UserId::new();

    // Jan 1: Alice tops up 50 and starts Basic's 7-day trial (nothing charged).
    pay(&billing, &alice, "50").await;
    assert_eq!(balance(&billing, &alice).await, usd("50"));
    let sub = billing
        .subscribe(&alice, &basic.id)
        .await
        .unwrap()
        .subscription;
    assert_eq!(sub.status, SubscriptionStatus::Trialing);
    assert_eq!(
        keys.take(),
        [Call::Apply {
            user: alice.clone(),
            plan: basic.id.clone(),
            until: Some(at("2026-01-08T00:00:00Z"))
        }]
    );
    let st = billing.standing(&alice).await.unwrap();
    assert_eq!(
        (st.status, st.entitled_until),
        (AccountStatus::Active, Some(at("2026-01-08T00:00:00Z")))
    );
    // Bob subscribes to Pro with exactly one month of money.
    pay(&billing, &bob, "33").await;
    let bob_sub = billing.subscribe(&bob, &pro.id).await.unwrap().subscription;
    assert_eq!(bob_sub.status, SubscriptionStatus::Active);
    assert_eq!(balance(&billing, &bob).await, usd("0"));
    keys.take();

    // Jan 8: the trial converts. 10.00 + 10 % tax = 11.00.
    clock.set(at("2026-01-08T00:00:00Z"));
    let r = jobs::renewals(&billing).await.unwrap();
    assert_eq!((r.changed, r.errors.len()), (1, 0));
    assert_eq!(balance(&billing, &alice).await, usd("39"));
    assert_eq!(
        keys.take(),
        [Call::Apply {
            user: alice.clone(),
            plan: basic.id.clone(),
            until: Some(at("2026-02-08T00:00:00Z"))
        }]
    );
    // Running the job again changes nothing.
    assert_eq!(jobs::renewals(&billing).await.unwrap().changed, 0);

    // Feb 1: Bob's renewal fails (no money): past due, open invoice booked as owed.
    clock.set(at("2026-02-01T00:00:00Z"));
    jobs::renewals(&billing).await.unwrap();
    let b = store.subscription(&bob_sub.id).await.unwrap().unwrap();
    assert_eq!(b.status, SubscriptionStatus::PastDue);
    assert_eq!(b.grace_until, Some(at("2026-02-04T00:00:00Z")));
    assert_eq!(
        billing.standing(&bob).await.unwrap().status,
        AccountStatus::Active,
        "grace"
    );

    // Feb 8, Mar 8, Apr 8: Alice renews three times: 39 - 33 = 6.
    for month in ["02", "03", "04"] {
        clock.set(at(&format!("2026-{month}-08T00:00:00Z")));
        jobs::renewals(&billing).await.unwrap();
        jobs::dunning(&billing).await.unwrap();
    }
    assert_eq!(balance(&billing, &alice).await, usd("6"));
    // Bob went through grace (Feb 4) into suspension and, 30 days later, expiry: his
    // invoice was written off as uncollectible (bad debt).
    let b = store.subscription(&bob_sub.id).await.unwrap().unwrap();
    assert_eq!(b.status, SubscriptionStatus::Expired);
    let bob_calls = keys.take();
    assert!(bob_calls.contains(&Call::Suspend { user: bob.clone() }));
    let overdue = store.overdue(clock.now_utc()).await.unwrap();
    let bad = overdue.iter().find(|o| o.user_id == bob).unwrap();
    assert_eq!(
        (bad.status, bad.total),
        (InvoiceStatus::Uncollectible, usd("33"))
    );
    let recv = store
        .derived_balance(
            &relay_billing::Account::Receivable(bob.clone()),
            Currency::USD,
        )
        .await
        .unwrap();
    assert!(recv.is_zero(), "written off");
    consistent(&billing).await;

    // May 8: Alice's renewal fails (6 < 11). Past due; keys keep working in grace.
    clock.set(at("2026-05-08T00:00:00Z"));
    jobs::renewals(&billing).await.unwrap();
    let s = store.subscription(&sub.id).await.unwrap().unwrap();
    assert_eq!(s.status, SubscriptionStatus::PastDue);
    let open = s.open_invoice_id.clone().unwrap();
    let inv = store.invoice(&open).await.unwrap().unwrap();
    assert_eq!((inv.status, inv.total), (InvoiceStatus::Open, usd("11")));
    assert!(keys.take().is_empty());
    let st = billing.standing(&alice).await.unwrap();
    assert_eq!(
        (st.status, st.entitled_until),
        (AccountStatus::Active, Some(at("2026-05-11T00:00:00Z")))
    );

    // May 9: a retry fails.
    clock.set(at("2026-05-09T00:00:00Z"));
    assert_eq!(jobs::dunning(&billing).await.unwrap().changed, 1);
    assert_eq!(
        store.subscription(&sub.id).await.unwrap().unwrap().status,
        SubscriptionStatus::PastDue
    );

    // May 11: grace is over. Standing says past due at once, before any job runs.
    clock.set(at("2026-05-11T00:00:00Z"));
    assert_eq!(
        billing.standing(&alice).await.unwrap().status,
        AccountStatus::PastDue
    );
    jobs::dunning(&billing).await.unwrap();
    assert_eq!(
        store.subscription(&sub.id).await.unwrap().unwrap().status,
        SubscriptionStatus::Suspended
    );
    assert_eq!(
        keys.take(),
        [Call::Suspend {
            user: alice.clone()
        }]
    );
    assert_eq!(
        billing.standing(&alice).await.unwrap().status,
        AccountStatus::Suspended
    );

    // May 15: Alice pays 20; the open invoice is settled at once: active again.
    clock.set(at("2026-05-15T00:00:00Z"));
    pay(&billing, &alice, "20").await;
    let s = store.subscription(&sub.id).await.unwrap().unwrap();
    assert_eq!(s.status, SubscriptionStatus::Active);
    assert_eq!(
        (s.period_start, s.period_end),
        (at("2026-05-08T00:00:00Z"), Some(at("2026-06-08T00:00:00Z")))
    );
    assert_eq!(
        store.invoice(&open).await.unwrap().unwrap().status,
        InvoiceStatus::Paid
    );
    assert_eq!(balance(&billing, &alice).await, usd("15"));
    assert_eq!(
        keys.take(),
        [Call::Apply {
            user: alice.clone(),
            plan: basic.id.clone(),
            until: Some(at("2026-06-08T00:00:00Z"))
        }]
    );
    assert_eq!(
        billing.standing(&alice).await.unwrap().status,
        AccountStatus::Active
    );

    // May 23: upgrade to Pro. The period May 8 - Jun 8 has 31 days, 16 unused:
    // credit 10.00 × 16 / 31 = 5.1612903… -> 5.16; 30.00 - 5.16 = 24.84;
    // tax 10 % = 2.484 -> 2.48; total 27.32. 15 does not afford it: nothing changes.
    clock.set(at("2026-05-23T00:00:00Z"));
    let err = billing.upgrade(&sub.id, &pro.id).await.unwrap_err();
    assert!(
        matches!(err, BillingError::InsufficientFunds { .. }),
        "{err}"
    );
    assert_eq!(
        store.subscription(&sub.id).await.unwrap().unwrap().plan_id,
        basic.id
    );
    assert_eq!(balance(&billing, &alice).await, usd("15"));
    pay(&billing, &alice, "40").await;
    let up = billing.upgrade(&sub.id, &pro.id).await.unwrap();
    let inv = up.invoice.unwrap();
    assert_eq!(
        inv.lines.iter().map(|l| l.amount).collect::<Vec<_>>(),
        [usd("30.00"), usd("-5.16")]
    );
    assert_eq!(
        (inv.subtotal, inv.tax, inv.total),
        (usd("24.84"), usd("2.48"), usd("27.32"))
    );
    assert_eq!(balance(&billing, &alice).await, usd("27.68"));
    assert_eq!(up.subscription.period_end, Some(at("2026-06-23T00:00:00Z")));
    assert_eq!(
        keys.take(),
        [Call::Apply {
            user: alice.clone(),
            plan: pro.id.clone(),
            until: Some(at("2026-06-23T00:00:00Z"))
        }]
    );

    // May 30: downgrade back to Basic at period end; nothing changes now.
    clock.set(at("2026-05-30T00:00:00Z"));
    billing
        .schedule_downgrade(&sub.id, &basic.id)
        .await
        .unwrap();
    assert!(keys.take().is_empty());
    clock.set(at("2026-06-23T00:00:00Z"));
    jobs::renewals(&billing).await.unwrap();
    let s = store.subscription(&sub.id).await.unwrap().unwrap();
    assert_eq!(
        (s.plan_id.clone(), s.status),
        (basic.id.clone(), SubscriptionStatus::Active)
    );
    assert_eq!(balance(&billing, &alice).await, usd("16.68"));
    assert_eq!(
        keys.take(),
        [Call::Apply {
            user: alice.clone(),
            plan: basic.id.clone(),
            until: Some(at("2026-07-23T00:00:00Z"))
        }]
    );

    // Jun 30: cancel at period end; Jul 23 the subscription ends and keys are suspended.
    clock.set(at("2026-06-30T00:00:00Z"));
    billing.cancel(&sub.id, true, "user:alice").await.unwrap();
    clock.set(at("2026-07-23T00:00:00Z"));
    jobs::renewals(&billing).await.unwrap();
    assert_eq!(
        store.subscription(&sub.id).await.unwrap().unwrap().status,
        SubscriptionStatus::Canceled
    );
    assert_eq!(
        keys.take(),
        [Call::Suspend {
            user: alice.clone()
        }]
    );
    let st = billing.standing(&alice).await.unwrap();
    assert_eq!(
        (st.status, st.entitled_until),
        (AccountStatus::Active, Some(at("2026-07-23T00:00:00Z")))
    );

    // The rest of the year: the jobs find nothing to do.
    clock.set(at("2026-12-31T00:00:00Z"));
    assert_eq!(jobs::renewals(&billing).await.unwrap().changed, 0);
    assert_eq!(jobs::dunning(&billing).await.unwrap().changed, 0);
    assert!(keys.take().is_empty());

    // Invoices: gapless numbers in order of issue; Alice's statuses.
    let alice_invoices = store.invoices(&alice).await.unwrap();
    let totals: Vec<_> = alice_invoices.iter().map(|i| (i.total, i.status)).collect();
    assert_eq!(
        totals,
        [
            (usd("11"), InvoiceStatus::Paid),    // Jan 8
            (usd("11"), InvoiceStatus::Paid),    // Feb 8
            (usd("11"), InvoiceStatus::Paid),    // Mar 8
            (usd("11"), InvoiceStatus::Paid),    // Apr 8
            (usd("11"), InvoiceStatus::Paid),    // May 8, paid late
            (usd("27.32"), InvoiceStatus::Paid), // upgrade
            (usd("11"), InvoiceStatus::Paid),    // Jun 23, Basic again
        ]
    );
    let mut numbers: Vec<String> = alice_invoices
        .iter()
        .chain(store.invoices(&bob).await.unwrap().iter())
        .filter_map(|i| i.number.clone())
        .collect();
    numbers.sort();
    let expected: Vec<String> = (1..=9).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers, expected, "gapless");

    // Revenue of the year. Alice: 6 × 10 Basic + 30 Pro = 90 (net of tax), proration
    // refund 5.16, tax 6 × 1 + 2.48 = 8.48. Bob: Pro Jan 30 + tax 3 kept, Feb 30 + tax 3
    // written off (net 0).
    let rev = store
        .revenue(at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        .await
        .unwrap();
    let usd_line = rev.iter().find(|l| l.currency == Currency::USD).unwrap();
    assert_eq!(usd_line.revenue, usd("120"));
    assert_eq!(usd_line.refunds, usd("5.16"));
    assert_eq!(usd_line.net, usd("114.84"));
    assert_eq!(usd_line.tax, usd("11.48"));
    // Wallet: 110 paid in, 93.32 charged.
    assert_eq!(balance(&billing, &alice).await, usd("16.68"));
    consistent(&billing).await;
    assert!(store
        .active_subscriptions_by_plan()
        .await
        .unwrap()
        .iter()
        .all(|c| c.plan_id != basic.id && c.plan_id != pro.id));
    let events = store.events(Some(sub.id.as_str())).await.unwrap();
    assert!(events.len() >= 12, "every transition is an event");
    assert_eq!(
        store.audit(sub.id.as_str()).await.unwrap().len(),
        events.len()
    );
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        relay_core::Clock::now(self)
    }
}

#[tokio::test]
async fn a_year_on_the_memory_store() {
    let store = relay_billing::store::memory::open().await.unwrap();
    year_of_life(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_on_postgres() {
    let Some((store, guard)) = common::postgres(4).await else {
        return;
    };
    year_of_life(store).await;
    guard.drop_schema().await;
}

#[tokio::test]
async fn durations_used_above_are_the_defaults() {
    let c = BillingConfig::default();
    assert_eq!(
        (c.grace, c.retry_interval, c.suspended_until_expiry),
        (Duration::days(3), Duration::days(1), Duration::days(30))
    );
}
