//! Counting attempts (logins, registrations, resets, TOTP codes) against a limit.
//!
//! relay-auth throttles with this trait instead of a rate limiter of its own; relay-usage's
//! limiter backends (memory and Redis) implement it, and the server hands one to auth.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

/// The outcome of one counted attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleDecision {
    /// The attempt is within the limit.
    Allowed {
        /// Attempts left in the current window after this one.
        remaining: u32,
    },
    /// Too many attempts: locked out until `retry_after` has passed.
    Limited {
        /// How long until an attempt would be allowed again.
        retry_after: Duration,
    },
}

impl ThrottleDecision {
    /// True when the attempt may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, ThrottleDecision::Allowed { .. })
    }
}

/// Why the throttle could not decide.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    /// The backing store (for example Redis) is unreachable.
    #[error("throttle backend unavailable: {0}")]
    Unavailable(String),
}

/// Counts attempts per key over a sliding window.
#[async_trait]
pub trait Throttle: Send + Sync + Debug + 'static {
    /// Count one attempt against `key` and decide: at most `max` attempts per `window`.
    /// A limited attempt is not counted, so a locked-out caller cannot extend the lockout.
    async fn attempt(
        &self,
        key: &str,
        max: u32,
        window: Duration,
    ) -> Result<ThrottleDecision, ThrottleError>;

    /// Forget the attempts counted against `key` (for example after a successful login).
    async fn reset(&self, key: &str) -> Result<(), ThrottleError>;
}
