//! The HTTP routes.

pub mod error;
pub mod llm;
pub mod models;
pub mod ops;
