//! Shared vocabulary of relay.
//!
//! Every other relay crate speaks these types: typed [ids](id), exact [`Money`] on
//! `rust_decimal`, a [`Clock`] that tests can drive by hand, token [`Usage`], the
//! [`PriceBook`] that turns usage into cost, the [`KeyPolicy`] a key carries, and the
//! [`AccountStanding`] / [`KeyProvisioner`] traits through which billing state reaches
//! authentication without the two crates depending on each other.
#![warn(missing_docs)]

pub mod account;
pub mod clock;
pub mod id;
pub mod money;
pub mod per_thread;
pub mod policy;
pub mod price;
pub mod throttle;
pub mod usage;

pub use account::{
    AccountStanding, AccountStatus, Entitlement, KeyProvisioner, Principal, ProvisionError,
    Standing, StandingError,
};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use id::{ApiKeyId, IdError, InvoiceId, OrderId, PlanId, RequestId, SubscriptionId, UserId};
pub use money::{Currency, Money, MoneyError};
pub use per_thread::PerThread;
pub use policy::{
    Budget, BudgetPeriod, BudgetSchedule, ClientFamily, Expiry, KeyPolicy, PolicyError, RateWindow,
    Service,
};
pub use price::{LiveOverrides, ModelPrice, PriceBook, PriceError, SkippedEntry};
pub use throttle::{Throttle, ThrottleDecision, ThrottleError};
pub use usage::Usage;
