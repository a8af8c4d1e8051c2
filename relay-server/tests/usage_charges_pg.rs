//! Usage records into the wallet on real PostgreSQL: each record charged once (also with
//! two charging runs at the same time), free records never offered again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use relay_auth::ApiKeyService;
use relay_billing::jobs::{usage_to_ledger, UsageSource};
use relay_billing::{Billing, BillingConfig};
use relay_core::{
    ApiKeyId, Currency, ManualClock, Money, RequestId, Service, SharedClock, Usage, UserId,
};
use relay_server::config::DatabaseUrl;
use relay_server::db::Database;
use relay_server::usage_charges::RecordUsageSource;
use relay_usage::sink::{MeterOutcome, UsageEvent};
use rust_decimal::Decimal;

fn event(user: &UserId, cost: &str) -> UsageEvent {
    UsageEvent {
        request_id: RequestId::new(),
        user_id: user.clone(),
        key_id: ApiKeyId::new(),
        service: Service::Anthropic,
        model: "claude-sonnet-4-5".into(),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 50,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: 0,
            requests: 1,
        },
        cost: Money::new(cost.parse().unwrap(), Currency::USD),
        outcome: MeterOutcome::Complete,
        status: 200,
        at: Utc::now(),
    }
}

async fn postgres_url() -> Option<String> {
    let url = std::env::var("RELAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    match sqlx::PgPool::connect(&url).await {
        Ok(pool) => {
            pool.close().await;
            Some(url)
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "RELAY_TEST_POSTGRES unreachable in CI: {e}"
            );
            eprintln!("skipping PostgreSQL test: {e}");
            None
        }
    }
}

#[tokio::test]
async fn usage_records_are_charged_once_on_postgres() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let schema = format!("relay_charges_{}", &UserId::new().as_str()[4..20]);
    // Billing creates the schema; the server's tables live in it too.
    let billing_store = relay_billing::store::postgres::connect(&url, Some(&schema), 8)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let db = Database::connect(&DatabaseUrl::Postgres(scoped))
        .await
        .unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
    let keys = Arc::new(ApiKeyService::new(db.auth_store(), &[3u8; 32], clock.clone()).unwrap());
    let billing = Billing::new(
        Arc::new(billing_store),
        clock.clone(),
        keys,
        BillingConfig::default(),
    );
    let user = UserId::new();
    let store = db.usage_store();
    store
        .insert_batch(&[
            event(&user, "0.10"),
            event(&user, "0.25"),
            event(&user, "0"),
        ])
        .await
        .unwrap();

    let source = RecordUsageSource::new(db.clone());
    let pending = source.pending().await.unwrap();
    assert_eq!(pending.len(), 2, "the free record is not offered");
    let total: Decimal = pending.iter().map(|b| b.cost.amount()).sum();
    assert_eq!(total, "0.35".parse::<Decimal>().unwrap());

    // Two charging runs at once (two instances): every record is charged exactly once.
    let other = RecordUsageSource::new(db.clone());
    let (a, b) = tokio::join!(
        usage_to_ledger(&billing, &source),
        usage_to_ledger(&billing, &other)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.errors.is_empty() && b.errors.is_empty(), "{a:?} {b:?}");
    // Whatever ran (or skipped), run once more to finish what a skipped run left.
    usage_to_ledger(&billing, &source).await.unwrap();
    assert!(source.pending().await.unwrap().is_empty());
    let wallet = billing.store().wallet(&user, Currency::USD).await.unwrap();
    assert_eq!(wallet.balance.amount(), "-0.35".parse::<Decimal>().unwrap());

    // New records later: only they are charged.
    store.insert_batch(&[event(&user, "0.05")]).await.unwrap();
    let report = usage_to_ledger(&billing, &source).await.unwrap();
    assert_eq!(report.changed, 1, "{report:?}");
    usage_to_ledger(&billing, &source).await.unwrap();
    let wallet = billing.store().wallet(&user, Currency::USD).await.unwrap();
    assert_eq!(wallet.balance.amount(), "-0.40".parse::<Decimal>().unwrap());

    // Bad input: a batch id that is not ours is refused.
    assert!(source.confirm("order:123").await.is_err());

    db.close().await;
    relay_billing::store::postgres::drop_schema(&url, &schema)
        .await
        .unwrap();
}
