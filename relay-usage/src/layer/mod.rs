//! Tower layers: [`policy::PolicyLayer`] admits requests, [`metering::MeteringLayer`]
//! meters their responses. Use them together, policy outside metering:
//!
//! ```text
//! ApiKeyAuthLayer -> PolicyLayer -> MeteringLayer -> upstream relay
//! ```

pub mod error;
pub mod metering;
pub mod policy;
