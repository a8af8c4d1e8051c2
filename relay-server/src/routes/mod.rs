//! The HTTP routes.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The gateway's router.
pub fn router() -> Router {
    Router::new().route("/healthz", get(healthz))
}

/// Liveness: the process answers.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
