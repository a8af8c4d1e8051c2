//! Shared test setup: stores on each backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use relay_billing::store::{self, SqlBillingStore};

/// A file-backed SQLite store in a temporary directory.
pub async fn sqlite() -> (SqlBillingStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("billing.db").display());
    let store = store::sqlite::open(&url).await.expect("sqlite");
    // Migrating twice is harmless.
    store::sqlite::migrate(store.pool())
        .await
        .expect("re-migrate");
    (store, dir)
}

/// A PostgreSQL store in a schema of its own, dropped by [`PgGuard`]. `None` (with a
/// notice) when the server is unreachable outside CI; in CI that fails the test.
pub async fn postgres(max_connections: u32) -> Option<(Arc<SqlBillingStore>, PgGuard)> {
    let url = std::env::var("RELAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let schema = format!(
        "relay_billing_{}",
        &relay_core::UserId::new().as_str()[4..16]
    );
    match store::postgres::connect(&url, Some(&schema), max_connections).await {
        Ok(s) => {
            store::postgres::migrate(s.pool())
                .await
                .expect("re-migrate");
            Some((Arc::new(s), PgGuard { url, schema }))
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL unreachable in CI: {e}"
            );
            eprintln!("notice: PostgreSQL at {url} unreachable ({e}); skipping");
            None
        }
    }
}

/// Drops the test schema at the end of a test.
pub struct PgGuard {
    url: String,
    schema: String,
}

impl PgGuard {
    /// The server's url.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test's schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drop the schema (call at the end of the test).
    pub async fn drop_schema(self) {
        store::postgres::drop_schema(&self.url, &self.schema)
            .await
            .expect("drop schema");
    }
}
