//! Upstream accounts: sealed credentials, pools, and the relay client.

pub mod client;
mod connections;
pub mod crypto;
pub mod pool;
pub mod store;

pub use client::{Outbound, Relay, RelayError};
pub use crypto::{CredentialCipher, CryptoError};
pub use pool::{Account, CooldownPolicy, Credential, Failure, Pool, Pools};
