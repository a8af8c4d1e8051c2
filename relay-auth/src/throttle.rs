//! Attempt throttling for login, registration, reset and TOTP, per account and per IP.
//!
//! Counting is delegated to a [`relay_core::Throttle`] (relay-usage's memory or Redis
//! limiter), so there is one rate limiter in the system. A throttle that cannot decide
//! fails closed: a login flood during a Redis outage is refused rather than let through.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_core::{Throttle, ThrottleDecision};

use crate::error::AuthError;

/// At most `max` attempts per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Attempts allowed per window.
    pub max: u32,
    /// Window length.
    pub window: Duration,
}

impl Limit {
    /// `max` attempts per `window`.
    pub const fn new(max: u32, window: Duration) -> Self {
        Self { max, window }
    }
}

/// The limits of every throttled operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// Failed-or-not logins per account (a success resets it).
    pub login_per_account: Limit,
    /// Logins per client IP.
    pub login_per_ip: Limit,
    /// Registrations per client IP.
    pub register_per_ip: Limit,
    /// Registrations per email address.
    pub register_per_email: Limit,
    /// Reset requests per email address.
    pub reset_per_account: Limit,
    /// Reset requests per client IP.
    pub reset_per_ip: Limit,
    /// TOTP / recovery code attempts per account.
    pub totp_per_account: Limit,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        const MIN: u64 = 60;
        Self {
            login_per_account: Limit::new(5, Duration::from_secs(15 * MIN)),
            login_per_ip: Limit::new(50, Duration::from_secs(15 * MIN)),
            register_per_ip: Limit::new(10, Duration::from_secs(60 * MIN)),
            register_per_email: Limit::new(3, Duration::from_secs(60 * MIN)),
            reset_per_account: Limit::new(3, Duration::from_secs(60 * MIN)),
            reset_per_ip: Limit::new(20, Duration::from_secs(60 * MIN)),
            totp_per_account: Limit::new(5, Duration::from_secs(5 * MIN)),
        }
    }
}

/// A throttle with the limits it applies.
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    throttle: Arc<dyn Throttle>,
    pub(crate) limits: AttemptLimits,
}

impl Attempts {
    pub(crate) fn new(throttle: Arc<dyn Throttle>, limits: AttemptLimits) -> Self {
        Self { throttle, limits }
    }

    /// Count one attempt of `action` by `subject`; `Throttled` when over `limit`.
    pub(crate) async fn check(
        &self,
        action: &str,
        subject: &str,
        limit: Limit,
    ) -> Result<(), AuthError> {
        let key = format!("auth:{action}:{subject}");
        match self.throttle.attempt(&key, limit.max, limit.window).await {
            Ok(ThrottleDecision::Allowed { .. }) => Ok(()),
            Ok(ThrottleDecision::Limited { retry_after }) => {
                tracing::info!(action, "attempt throttled");
                Err(AuthError::Throttled { retry_after })
            }
            Err(e) => Err(AuthError::Unavailable(e.to_string())),
        }
    }

    /// Check the per-IP limit when the IP is known.
    pub(crate) async fn check_ip(
        &self,
        action: &str,
        ip: Option<IpAddr>,
        limit: Limit,
    ) -> Result<(), AuthError> {
        match ip {
            Some(ip) => self.check(action, &format!("ip:{ip}"), limit).await,
            None => Ok(()),
        }
    }

    /// Forget the attempts of `action` by `subject` (after a success).
    pub(crate) async fn reset(&self, action: &str, subject: &str) {
        let key = format!("auth:{action}:{subject}");
        if let Err(e) = self.throttle.reset(&key).await {
            tracing::warn!(action, error = %e, "could not reset attempt counter");
        }
    }
}
