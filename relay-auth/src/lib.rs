//! Identity for relay: accounts, sessions, TOTP, LDAP and API keys, and the
//! `ApiKeyAuthLayer` that authenticates gateway requests.
//!
//! This crate is a skeleton: it is being built under its own issue and exports nothing yet.
#![warn(missing_docs)]
