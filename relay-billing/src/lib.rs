//! The money side of relay: plans, subscriptions, the append-only double-entry ledger,
//! invoices, redemption codes and the entitlements that drive keys.
//!
//! This crate is a skeleton: it is being built under its own issue and exports nothing yet.
#![warn(missing_docs)]
