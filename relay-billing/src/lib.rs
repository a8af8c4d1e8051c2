//! The money side of relay: plans, subscriptions, the append-only double-entry ledger,
//! invoices, redemption codes and the entitlements that drive keys.
//!
//! * [`ledger`]: accounts, balanced transactions with idempotency keys, wallets with a
//!   guarded cached balance.
//! * [`order`]: orders and [`Billing::apply_payment`] / [`Billing::apply_refund`], what
//!   the server calls with verified provider events.
//! * [`plan`], [`subscription`]: versioned plans and the subscription state machine.
//! * [`invoice`]: numbered, immutable invoices and credit notes; the one place money is
//!   rounded.
//! * [`redemption`]: single-use codes.
//! * [`service::Billing`]: the service; it implements [`relay_core::AccountStanding`] and
//!   drives keys through [`relay_core::KeyProvisioner`].
//! * [`jobs`]: renewals, dunning, expiry, usage to ledger, reconciliation.
//! * [`store`]: the [`BillingStore`] trait and its SQLite / PostgreSQL / memory backends.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # async fn demo() -> Result<(), relay_billing::BillingError> {
//! use std::sync::Arc;
//! use relay_billing::{store, BillingStore};
//! use relay_core::{Currency, Money, UserId};
//!
//! let store = store::memory::open().await?;
//! let user = UserId::new();
//! let wallet = store.wallet(&user, Currency::USD).await?;
//! assert_eq!(wallet.balance, Money::zero(Currency::USD));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod events;
pub mod invoice;
pub mod jobs;
pub mod ledger;
pub mod lock;
pub mod order;
pub mod plan;
pub mod redemption;
pub mod reports;
pub mod service;
pub mod store;
pub mod subscription;
pub mod usage;

#[cfg(feature = "test-utils")]
pub mod conformance;

pub use config::BillingConfig;
pub use error::{BillingError, CodeRejection, Result};
pub use invoice::{Invoice, InvoiceStatus, LineItem, LineKind, TaxRule};
pub use ledger::{Account, Entry, NewTransaction, Posted, Transaction, TxKind, Wallet};
pub use lock::JobLock;
pub use order::{Applied, Order, OrderPurpose, OrderStatus, PaymentNotice, PaymentOutcome};
pub use plan::{Overage, Period, Plan, PlanSpec, PlanStatus};
pub use service::Billing;
pub use store::BillingStore;
pub use subscription::{KeyAction, Subscription, SubscriptionChange, SubscriptionStatus};
pub use usage::{UsageBatch, UsageCharge, UsageTotal};
