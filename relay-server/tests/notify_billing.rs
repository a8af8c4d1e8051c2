//! Billing mails through the outbox: payment received, low balance, plan expiring and
//! past due, each queued once per event however often the job runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use api_support::{session_completed, Harness};
use relay_auth::Role;
use relay_server::notify::{
    BillingNotifier, Notifications, NotifySettings, Outbox, OutboxItem, Status,
};
use serde_json::json;

async fn pending(outbox: &Outbox) -> Vec<OutboxItem> {
    outbox.list(Status::Pending, 500).await.unwrap()
}

fn kinds(items: &[OutboxItem]) -> Vec<String> {
    items.iter().map(|i| i.kind.clone()).collect()
}

#[tokio::test]
async fn billing_mails_are_queued_once_per_event() {
    let h = Harness::memory().await;
    let pool = h.state.billing_sql.pool().clone();
    let outbox = Outbox::open(pool, h.state.clock.clone()).await.unwrap();
    let notifications = Notifications::new(outbox.clone(), "Relay", "https://relay.test");
    let notifier = BillingNotifier::open(
        h.billing.clone(),
        h.state.billing_sql.clone(),
        h.state.accounts.clone(),
        notifications,
        h.state.clock.clone(),
        NotifySettings::default(),
    )
    .await
    .unwrap();
    let (user, user_id) = h.user("ann@example.com").await;
    let (admin, _) = h.staff("root@example.com", Role::Admin).await;
    let plan = h.plan(&admin, "Pro", "20", 3).await;

    // Nothing happened yet: nothing to say.
    notifier.run_once().await.unwrap();
    assert!(pending(&outbox).await.is_empty());

    // Payment received.
    let co = h
        .ok(
            "POST",
            "/api/user/checkout",
            Some(&user),
            Some(json!({"provider": "stripe", "plan_id": plan})),
        )
        .await;
    let order = co["order"]["id"].as_str().unwrap().to_owned();
    let status = h
        .stripe_event(
            "evt_paid",
            "checkout.session.completed",
            session_completed(&order, "cs_1", 2000, "pi_1"),
        )
        .await;
    assert!(status.is_success());
    for _ in 0..3 {
        notifier.run_once().await.unwrap();
    }
    let items = pending(&outbox).await;
    assert_eq!(kinds(&items), ["payment_received"]);
    assert_eq!(items[0].recipient, "ann@example.com");
    assert!(
        items[0].mail.text.contains(&order),
        "{}",
        items[0].mail.text
    );
    assert!(
        items[0].mail.subject.contains("20"),
        "{}",
        items[0].mail.subject
    );

    // Low balance: once per fall under the threshold (1 USD by default). The wallet,
    // never funded so far, is not news; funded and then spent down, it is.
    let adjust = |amount: String, key: &'static str| {
        let (h, admin, user_id) = (&h, admin.clone(), user_id.clone());
        async move {
            h.ok(
                "POST",
                &format!("/api/admin/users/{user_id}/adjust"),
                Some(&admin),
                Some(json!({"amount": amount, "currency": "USD", "reason": "test", "idempotency_key": key})),
            )
            .await;
        }
    };
    let balance = h
        .state
        .billing
        .store()
        .wallet(&user_id, relay_core::Currency::USD)
        .await
        .unwrap()
        .balance
        .amount();
    assert!(balance < rust_decimal::Decimal::ONE, "{balance}");
    adjust((rust_decimal::Decimal::TEN - balance).to_string(), "fund").await;
    notifier.run_once().await.unwrap();
    assert_eq!(pending(&outbox).await.len(), 1);
    // Spend down to 0.50.
    adjust("-9.50".into(), "down-1").await;
    notifier.run_once().await.unwrap();
    notifier.run_once().await.unwrap();
    let items = pending(&outbox).await;
    assert_eq!(kinds(&items), ["payment_received", "low_balance"]);
    assert!(
        items[1].mail.text.contains("0.5 USD"),
        "{}",
        items[1].mail.text
    );
    // Back above, then under again: a new event, a second mail.
    adjust("10".into(), "up-1").await;
    notifier.run_once().await.unwrap();
    assert_eq!(pending(&outbox).await.len(), 2);
    adjust("-10".into(), "down-2").await;
    notifier.run_once().await.unwrap();
    notifier.run_once().await.unwrap();
    assert_eq!(
        kinds(&pending(&outbox).await),
        ["payment_received", "low_balance", "low_balance"]
    );

    // Plan expiring: the wallet (0.50) cannot pay the next 20 USD period, so a reminder
    // goes out within three days of the end, once.
    let sub = h
        .billing
        .store()
        .latest_subscription(&user_id)
        .await
        .unwrap()
        .unwrap();
    let end = sub.period_end.unwrap();
    h.clock.set(end - chrono::Duration::days(5));
    notifier.run_once().await.unwrap();
    assert_eq!(pending(&outbox).await.len(), 3);
    h.clock.set(end - chrono::Duration::days(2));
    notifier.run_once().await.unwrap();
    notifier.run_once().await.unwrap();
    let items = pending(&outbox).await;
    assert_eq!(items.len(), 4);
    assert_eq!(items[3].kind, "plan_expiring");
    assert!(
        items[3].mail.subject.contains("Pro"),
        "{}",
        items[3].mail.subject
    );

    // Past due: the renewal fails for lack of funds.
    h.clock.set(end + chrono::Duration::minutes(1));
    let report = relay_billing::jobs::renewals(&h.billing).await.unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    notifier.run_once().await.unwrap();
    notifier.run_once().await.unwrap();
    let items = pending(&outbox).await;
    assert_eq!(
        kinds(&items),
        [
            "payment_received",
            "low_balance",
            "low_balance",
            "plan_expiring",
            "past_due"
        ]
    );
    assert!(items[4].mail.text.contains("20"), "{}", items[4].mail.text);
    assert!(items.iter().all(|i| i.recipient == "ann@example.com"));
}
