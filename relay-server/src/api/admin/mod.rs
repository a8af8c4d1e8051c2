//! `/api/admin/...`: admin and operator routes. Every handler takes the [`Admin`]
//! extractor (admin or operator) and checks the permission it needs with
//! [`Admin::require`].
//!
//! [`Admin`]: crate::api::extract::Admin
//! [`Admin::require`]: crate::api::extract::Admin::require

pub mod audit;
pub mod codes;
pub mod money;
pub mod orders;
pub mod plans;
pub mod prices;
pub mod reports;
pub mod subscriptions;
pub mod trail;
pub mod upstreams;
pub mod users;
