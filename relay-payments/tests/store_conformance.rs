//! The webhook event store conformance suite, once per backend.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

mod common;

use std::sync::Arc;

use relay_payments::store::memory::MemoryWebhookEventStore;
use relay_payments::store::postgres::{self, PostgresWebhookEventStore};
use relay_payments::store::sqlite::{self, SqliteWebhookEventStore};
use relay_payments::test_utils;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    test_utils::run_all(Arc::new(MemoryWebhookEventStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let (pool, _dir) = common::sqlite_pool().await;
    sqlite::migrate(&pool).await.unwrap();
    // Migrating twice is harmless.
    sqlite::migrate(&pool).await.unwrap();
    test_utils::run_all(Arc::new(SqliteWebhookEventStore::new(pool))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let Some(pool) = common::postgres_pool().await else {
        return;
    };
    postgres::migrate(&pool).await.unwrap();
    postgres::migrate(&pool).await.unwrap();
    test_utils::run_all(Arc::new(PostgresWebhookEventStore::new(pool.clone()))).await;
    common::drop_schema(&pool).await;
}
