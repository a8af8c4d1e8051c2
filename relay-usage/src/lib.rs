//! The hot path of relay: one-step key-policy admission, streaming metering and the
//! memory and Redis limiter backends.
//!
//! This crate is a skeleton: it is being built under its own issue and exports nothing yet.
#![warn(missing_docs)]
