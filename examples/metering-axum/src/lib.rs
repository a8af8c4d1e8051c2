//! Key policy and exact metering in a plain axum service.
//!
//! [`app`] builds a router whose `/v1/messages` handler answers like Anthropic's Messages
//! API (a stand-in for your own LLM service or proxy). Three layers do the rest:
//!
//! 1. a tiny authentication step maps the `x-api-key` header to a [`Principal`] (in
//!    production, relay-auth's `ApiKeyAuthLayer` does this against stored keys);
//! 2. [`PolicyLayer`] admits each request against the key's [`KeyPolicy`] in one step;
//! 3. [`MeteringLayer`] reads the real usage from the response as it streams, prices it
//!    exactly and sends a usage event to the sink.

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use relay_core::{
    AccountStatus, ApiKeyId, KeyPolicy, PriceBook, Principal, RateWindow, SystemClock, UserId,
};
use relay_usage::layer::metering::MeteringLayer;
use relay_usage::layer::policy::PolicyLayer;
use relay_usage::sink::MemoryUsageSink;
use relay_usage::MemoryLimiter;
use serde_json::{json, Value};

/// The demo key the example accepts.
pub const DEMO_KEY: &str = "sk-demo";

/// A policy of 5 requests per minute on Claude models.
pub fn demo_policy() -> KeyPolicy {
    KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: 60,
            max_requests: Some(5),
            max_tokens: None,
            max_cost: None,
        }],
        allowed_models: vec!["claude-*".into()],
        ..KeyPolicy::default()
    }
}

/// The router, metering into `sink` with prices from `prices`.
pub fn app(prices: Arc<PriceBook>, sink: Arc<MemoryUsageSink>) -> Router {
    let principal = Principal {
        user_id: UserId::new(),
        key_id: ApiKeyId::new(),
        status: AccountStatus::Active,
        policy: Arc::new(demo_policy()),
    };
    let limiter = Arc::new(MemoryLimiter::new(Arc::new(SystemClock)));
    Router::new()
        .route("/v1/messages", post(messages))
        .layer(MeteringLayer::new(prices.clone(), sink))
        .layer(PolicyLayer::new(limiter, prices))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            let principal = principal.clone();
            async move {
                if req
                    .headers()
                    .get("x-api-key")
                    .is_some_and(|k| k == DEMO_KEY)
                {
                    req.extensions_mut().insert(principal);
                }
                next.run(req).await
            }
        }))
}

/// A stand-in for an LLM: answers in Anthropic's shape with realistic usage.
async fn messages(Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    Json(json!({
        "id": "msg_example",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello from the example."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 6, "cache_read_input_tokens": 100}
    }))
    .into_response()
}
