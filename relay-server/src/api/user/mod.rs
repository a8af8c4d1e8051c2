//! `/api/user/...`: what a logged-in customer (or a visitor, for sign-up) can do.

pub mod account;
pub mod billing;
pub mod erase;
pub mod keys;
pub mod usage;
