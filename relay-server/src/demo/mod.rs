//! Demo mode: seeded accounts and an in-process upstream.

pub mod seed;
pub mod upstream;

pub use seed::{demo_policy, seed, DemoSeed, SeedError};
pub use upstream::{DemoState, DemoUpstream};
