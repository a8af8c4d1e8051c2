//! The hot path of relay: one-step key-policy admission, streaming metering and the
//! memory and Redis limiter backends.
#![warn(missing_docs)]

pub mod facts;
pub mod layer;
pub mod limiter;
pub mod meter;
pub mod sink;
pub mod throttle;

pub use facts::{ApiFlavor, Framing, RequestFacts};
pub use limiter::memory::MemoryLimiter;
pub use limiter::{
    admit, AdmissionRequest, Denial, Limiter, LimiterError, Permit, SettleOutcome, Ticket,
    WindowCap,
};
pub use throttle::MemoryThrottle;
#[cfg(feature = "redis")]
pub use throttle::RedisThrottle;
