//! How money arrives in relay: the `PaymentProvider` trait, normalised payment events,
//! and providers for Stripe, Alipay, WeChat Pay and manual payments.
//!
//! This crate is a skeleton: it is being built under its own issue and exports nothing yet.
#![warn(missing_docs)]
