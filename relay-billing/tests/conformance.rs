//! The store conformance suite on every backend: memory, SQLite (a file), and PostgreSQL
//! against the real server (RELAY_TEST_POSTGRES; with CI=true an unreachable server
//! fails).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use relay_billing::conformance as suite;
use relay_billing::store;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                let store = store::memory::open().await.expect("memory store");
                suite::$name(&store).await;
            })*
        }
        mod sqlite {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                let (store, _dir) = common::sqlite().await;
                suite::$name(&store).await;
            })*
        }
        mod postgres {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, guard)) = common::postgres(4).await else { return };
                suite::$name(store.as_ref()).await;
                guard.drop_schema().await;
            })*
        }
    };
}

conformance!(
    ledger_posts_balanced_idempotent_transactions,
    ledger_refuses_bad_transactions,
    ledger_guard_respects_credit_limit,
    ledger_refunds_charges_up_to_what_they_took,
    orders_apply_payments_and_refunds,
    plan_purchase_order_activates_subscription,
    plans_are_versioned,
    subscriptions_follow_the_state_machine,
    invoices_are_numbered_and_immutable,
    redemption_codes_are_single_use,
    usage_charges_use_included_credit_then_overage,
);

/// The whole suite against one shared store: checks do not interfere.
#[tokio::test]
async fn whole_suite_shares_one_memory_store() {
    let store = store::memory::open().await.expect("memory store");
    suite::all(&store).await;
    suite::all(&store).await;
}
