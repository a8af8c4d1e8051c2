//! Identity for relay: accounts, sessions, TOTP, LDAP and API keys, and the
//! [`ApiKeyAuthLayer`] that authenticates gateway requests.
//!
//! - [`AccountService`]: registration, email verification, password reset, login (local
//!   argon2id passwords or an LDAP directory), sessions, TOTP, roles and account status.
//! - [`ApiKeyService`]: API keys (issue, verify, rotate, revoke), a
//!   [`relay_core::KeyProvisioner`] for billing.
//! - [`ApiKeyAuthLayer`]: the tower layer in front of the LLM endpoints.
//! - [`store`]: the storage traits and their memory, SQLite and PostgreSQL backends.
//!
//! ```
//! use std::sync::Arc;
//! use relay_auth::{AccountService, LoginRequest, MemoryOutbox, SessionCredential};
//! use relay_auth::store::memory::MemoryStore;
//! use relay_core::SystemClock;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let outbox = Arc::new(MemoryOutbox::new());
//! let accounts = AccountService::new(Arc::new(MemoryStore::new()), outbox.clone(), Arc::new(SystemClock));
//! accounts.register("ann@example.com", "correct horse battery", None).await?;
//! let session = accounts
//!     .login(LoginRequest { email: "ann@example.com", password: "correct horse battery", second_factor: None, ip: None })
//!     .await?;
//! let me = accounts.authenticate_session(SessionCredential::Bearer(&session.token)).await?;
//! assert_eq!(me.user.email.as_str(), "ann@example.com");
//! # Ok::<(), relay_auth::AuthError>(())
//! # }).unwrap();
//! ```
#![warn(missing_docs)]

pub mod accounts;
pub mod email;
pub mod error;
pub mod keys;
pub mod layer;
#[cfg(feature = "ldap")]
pub mod ldap;
pub mod model;
pub mod notify;
pub mod password;
pub mod profile;
pub mod role;
pub mod secret;
pub mod session;
pub mod store;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod throttle;
pub mod totp;

pub use accounts::{AccountConfig, AccountService, LoginRequest, Registered, ResetRequested};
pub use email::{Email, EmailError};
pub use error::{AuthError, TokenError};
pub use keys::limits::{KeyLimits, LimitsError};
pub use keys::{
    ApiKeyService, Invalidation, InvalidationBus, IssuedKey, KeyCache, KeyConfig, KeyRejection,
    NewKey, KEY_PREFIX,
};
pub use layer::{ApiFlavor, ApiKeyAuth, ApiKeyAuthLayer};
pub use model::{ApiKeyRecord, Purged, RiskFlag, StatusChange, User, UserFilter, UserSource};
pub use notify::{MemoryOutbox, Notice, Notifier};
pub use password::{Password, PasswordError, PasswordHasher, PasswordParams};
pub use role::{Permission, Role};
pub use secret::{KeyHasher, SecretBox};
pub use session::{IssuedSession, SessionCredential, SessionUser};
pub use store::{AuthStore, KeyStore, SessionStore, StoreError, UserStore};
pub use throttle::{AttemptLimits, Limit};
pub use totp::TotpEnrolment;
