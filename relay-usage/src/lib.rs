//! The hot path of relay: one-step key-policy admission, streaming metering and the
//! memory and Redis limiter backends.
#![warn(missing_docs)]

pub mod throttle;

pub use throttle::MemoryThrottle;
