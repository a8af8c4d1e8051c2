//! What accounts tell users by email, through a [`Notifier`] the server provides.
//!
//! Registration and reset answer every caller the same way; whether the address was known
//! only changes which notice is sent to that address, which only its owner can read.

use std::fmt;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::email::Email;

/// A message for the owner of an address.
#[derive(Clone, PartialEq, Eq)]
pub enum Notice {
    /// Confirm the address with this single-use token.
    VerifyEmail {
        /// The token (put it in a link).
        token: String,
    },
    /// Someone tried to register this address again.
    AlreadyRegistered,
    /// Set a new password with this single-use token.
    PasswordReset {
        /// The token (put it in a link).
        token: String,
    },
}

impl fmt::Debug for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are secrets: never in a log line.
        match self {
            Notice::VerifyEmail { .. } => f.write_str("VerifyEmail(***)"),
            Notice::AlreadyRegistered => f.write_str("AlreadyRegistered"),
            Notice::PasswordReset { .. } => f.write_str("PasswordReset(***)"),
        }
    }
}

/// Delivers notices (by email, in the server). Delivery failures are the notifier's to log
/// and retry: the caller's answer must not depend on them.
#[async_trait]
pub trait Notifier: Send + Sync + fmt::Debug + 'static {
    /// Send `notice` to `to`.
    async fn notify(&self, to: &Email, notice: Notice);
}

/// A notifier that keeps notices in memory (tests, examples).
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    sent: Mutex<Vec<(Email, Notice)>>,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far.
    pub fn sent(&self) -> Vec<(Email, Notice)> {
        self.sent.lock().clone()
    }

    /// The newest token sent to `to` of the given kind (`verify` or `reset`).
    pub fn last_token(&self, to: &Email, reset: bool) -> Option<String> {
        self.sent.lock().iter().rev().find_map(|(e, n)| match n {
            Notice::VerifyEmail { token } if e == to && !reset => Some(token.clone()),
            Notice::PasswordReset { token } if e == to && reset => Some(token.clone()),
            _ => None,
        })
    }
}

#[async_trait]
impl Notifier for MemoryOutbox {
    async fn notify(&self, to: &Email, notice: Notice) {
        self.sent.lock().push((to.clone(), notice));
    }
}
