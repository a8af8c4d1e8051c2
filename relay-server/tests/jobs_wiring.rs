//! The jobs the server wires up besides billing's: daily usage rollups and payment
//! reconciliation of pending checkouts, driven by the manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::sync::Arc;

use api_support::Harness;
use axum::routing::get;
use axum::Router;
use chrono::{Duration, TimeZone, Utc};
use relay_auth::Role;
use relay_core::{ApiKeyId, Currency, ManualClock, Money, RequestId, Service, Usage, UserId};
use relay_payments::stripe::{StripeConfig, StripeProvider};
use relay_server::api;
use relay_server::config::DatabaseUrl;
use relay_server::db::Database;
use relay_server::jobs::{CheckoutLog, Job, PaymentReconcileJob, UsageRollupJob};
use relay_usage::sink::{MeterOutcome, UsageEvent};
use serde_json::json;

fn event(user: &UserId, cost: &str, at: chrono::DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        request_id: RequestId::new(),
        user_id: user.clone(),
        key_id: ApiKeyId::new(),
        service: Service::Anthropic,
        model: "claude-sonnet-4-5".into(),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: 0,
            requests: 1,
        },
        cost: Money::new(cost.parse().unwrap(), Currency::USD),
        outcome: MeterOutcome::Complete,
        status: 200,
        at,
    }
}

#[tokio::test]
async fn daily_rollups_cover_today_and_late_records_of_yesterday() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("r.db").display()));
    let db = Database::connect(&url).await.unwrap();
    let store = db.usage_store();
    let day = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(day + Duration::hours(23)));
    let user = UserId::new();
    store
        .insert_batch(&[
            event(&user, "0.10", day + Duration::hours(1)),
            event(&user, "0.20", day + Duration::hours(22)),
        ])
        .await
        .unwrap();
    let job = UsageRollupJob::new(store.clone(), clock.clone());
    assert_eq!(job.name(), "usage_rollup");
    let report = job.run().await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let d = day.date_naive();
    let rows = store.usage_by_day_and_model(&user, d, d).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].events, 2);
    // A record of 23:59 written after midnight: the next day's run still counts it.
    store
        .insert_batch(&[event(&user, "0.30", day + Duration::minutes(23 * 60 + 59))])
        .await
        .unwrap();
    clock.set(day + Duration::hours(24) + Duration::minutes(5));
    job.run().await.unwrap();
    let rows = store.usage_by_day_and_model(&user, d, d).await.unwrap();
    assert_eq!(rows[0].events, 3);
    assert_eq!(
        rows[0].cost,
        "0.60".parse::<rust_decimal::Decimal>().unwrap()
    );
    // Repeated runs change nothing.
    job.run().await.unwrap();
    let again = store.usage_by_day_and_model(&user, d, d).await.unwrap();
    assert_eq!(again, rows);
}

async fn order_status(h: &Harness, user: &str, order: &str) -> serde_json::Value {
    h.ok(
        "GET",
        &format!("/api/user/orders/{order}"),
        Some(user),
        None,
    )
    .await["status"]
        .clone()
}

/// A Stripe that reports every checkout session as paid.
async fn paid_stripe(order: String) -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new().route(
        "/v1/checkout/sessions/{id}",
        get(
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                let order = order.clone();
                async move {
                    axum::Json(
                        json!({"id": id, "object": "checkout.session", "mode": "payment",
                    "client_reference_id": order, "metadata": {"order_id": order},
                    "payment_status": "paid", "status": "complete", "amount_total": 2000,
                    "currency": "usd", "payment_intent": "pi_reconciled"}),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, task)
}

#[tokio::test]
async fn pending_checkouts_are_reconciled_at_their_provider() {
    let mut h = Harness::memory().await;
    let log = CheckoutLog::open(
        h.state.billing_sql.pool().clone(),
        h.billing.clone(),
        h.state.clock.clone(),
    )
    .await
    .unwrap();
    h.state = h.state.clone().with_checkouts(log.clone());
    h.app = api::router(h.state.clone());
    let (user, user_id) = h.user("ann@example.com").await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let plan = h.plan(&admin, "Pro", "20", 3).await;
    let co = h
        .ok(
            "POST",
            "/api/user/checkout",
            Some(&user),
            Some(json!({"provider": "stripe", "plan_id": plan})),
        )
        .await;
    let order = co["order"]["id"].as_str().unwrap().to_owned();

    // The webhook never comes; the provider says it was paid.
    let (base, task) = paid_stripe(order.clone()).await;
    let stripe = StripeProvider::new(
        StripeConfig::new(
            "sk_test_123",
            api_support::STRIPE_SECRET,
            "https://relay.example/paid",
            "https://relay.example/cancel",
        )
        .with_api_base(base),
        h.state.clock.clone(),
    )
    .unwrap();
    let job = PaymentReconcileJob::new(
        vec![Arc::new(stripe)],
        Arc::new(log.clone()),
        Arc::new(h.state.processor.clone()),
        h.state.clock.clone(),
    );
    // Too young: the webhook may still come.
    let report = job.run().await.unwrap();
    assert_eq!(report.changed, 0, "{report:?}");
    assert_eq!(order_status(&h, &user, &order).await, "pending");

    h.clock.advance(Duration::minutes(20));
    let report = job.run().await.unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(order_status(&h, &user, &order).await, "paid");
    let sub = h
        .billing
        .store()
        .latest_subscription(&user_id)
        .await
        .unwrap();
    assert!(sub.is_some());
    // Settled orders are forgotten: a second run asks nothing and changes nothing.
    let report = job.run().await.unwrap();
    assert_eq!((report.changed, report.unchanged), (0, 0), "{report:?}");
    let ledger = h.ok("GET", "/api/user/ledger", Some(&user), None).await;
    let before = ledger.as_array().unwrap().len();
    job.run().await.unwrap();
    let ledger = h.ok("GET", "/api/user/ledger", Some(&user), None).await;
    assert_eq!(ledger.as_array().unwrap().len(), before);
    task.abort();
}
