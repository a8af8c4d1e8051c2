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
//! # Wiring it into a server
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), relay_billing::BillingError> {
//! use std::sync::Arc;
//!
//! use relay_billing::{jobs, store, Billing, BillingConfig, BillingStore, OrderPurpose, Period, PlanSpec};
//! use relay_core::{AccountStanding, AccountStatus, Currency, Money, SystemClock, UserId};
//! # #[derive(Debug)]
//! # struct Keys;
//! # #[async_trait::async_trait]
//! # impl relay_core::KeyProvisioner for Keys {
//! #     async fn apply_entitlement(&self, _: &UserId, _: &relay_core::Entitlement)
//! #         -> Result<Option<String>, relay_core::ProvisionError> { Ok(None) }
//! #     async fn suspend_keys(&self, _: &UserId) -> Result<(), relay_core::ProvisionError> { Ok(()) }
//! # }
//! # let keys = Arc::new(Keys); // relay-auth's key store in the real server
//!
//! // `store::sqlite::open("sqlite://relay.db")` or `store::postgres::connect(url, None, 16)`.
//! let store: Arc<dyn BillingStore> = Arc::new(store::memory::open().await?);
//! let billing = Billing::new(store.clone(), Arc::new(SystemClock), keys, BillingConfig::default());
//!
//! let plan = store.create_plan(&PlanSpec {
//!     name: "Pro".into(),
//!     price: Money::parse("20", Currency::USD)?,
//!     period: Period::Monthly,
//!     trial_days: 0,
//!     included_models: vec!["claude-*".into()],
//!     policy: Default::default(),
//!     included_credit: Money::parse("5", Currency::USD)?,
//!     overage: relay_billing::Overage { allowed: true, multiplier: rust_decimal::Decimal::ONE },
//!     max_keys: 2,
//! }, billing.now()).await?;
//!
//! // A user buys the plan; the payment provider's verified webhook becomes one call.
//! let user = UserId::new();
//! let order = billing.create_order(&user, OrderPurpose::PlanPurchase(plan.id.clone()), plan.spec.price).await?;
//! let applied = billing.apply_payment(&order.id, "stripe", "evt_1", plan.spec.price, "pi_1").await?;
//! assert!(!applied.replayed);
//!
//! // Authentication asks for the standing on each request.
//! assert_eq!(billing.standing(&user).await.map(|s| s.status).ok(), Some(AccountStatus::Active));
//!
//! // Background jobs: call them every minute or so on every instance.
//! jobs::renewals(&billing).await?;
//! jobs::dunning(&billing).await?;
//! jobs::expiry(&billing).await?;
//! # Ok(()) }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
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
