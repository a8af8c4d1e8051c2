//! The memory backend: SQLite's in-memory database.
//!
//! Honest note: this is not a separate hand-written data structure. A billing store must
//! keep multi-record operations atomic (ledger entries, the cached balance, invoice
//! numbers and subscription state change together or not at all); SQLite's in-memory
//! database gives exactly the transactions the durable backends have, and running the
//! very same SQL means the memory backend can never disagree with SQLite or PostgreSQL
//! on a rule. Nothing touches the disk and the data is gone when the store is dropped.

use super::sql::SqlBillingStore;
use crate::error::Result;

/// A fresh, empty in-memory store.
pub async fn open() -> Result<SqlBillingStore> {
    super::sqlite::open("sqlite::memory:").await
}
