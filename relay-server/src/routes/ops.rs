//! Operations: liveness, readiness, metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde_json::{json, Value};

use crate::app::AppState;

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database and (when configured) Redis answer.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let database = app.db.ping().await;
    let redis = match &app.redis {
        None => None,
        Some(conn) => {
            let mut conn = conn.clone();
            let ping = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            Some(matches!(ping, Ok(Ok(_))))
        }
    };
    let ready = database && redis.unwrap_or(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": if database { "ok" } else { "unreachable" },
        "redis": match redis { None => "not configured", Some(true) => "ok", Some(false) => "unreachable" },
    });
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    crate::metrics::pool_health(app.relay.pools());
    match &app.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}
