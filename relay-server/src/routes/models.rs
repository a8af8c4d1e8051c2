//! `GET /v1/models`: the models this key may use, in OpenAI's list shape, or Anthropic's
//! when the client sends `anthropic-version` (as the Anthropic SDK does).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use relay_core::{Principal, Service};
use serde_json::json;

use crate::app::AppState;

/// A model the gateway offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// Its name.
    pub id: String,
    /// The API that serves it.
    pub service: Service,
}

/// Models from a LiteLLM catalog: first-party chat entries of the three services.
pub fn models_from_catalog(json: &str) -> Vec<ModelEntry> {
    let Ok(map) =
        serde_json::from_str::<std::collections::BTreeMap<String, serde_json::Value>>(json)
    else {
        return Vec::new();
    };
    map.into_iter()
        .filter(|(id, v)| {
            !id.contains('/')
                && v.get("mode")
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| m == "chat" || m == "responses")
        })
        .filter_map(|(id, v)| {
            let service = match v.get("litellm_provider")?.as_str()? {
                "anthropic" => Service::Anthropic,
                "openai" => Service::Openai,
                "gemini" => Service::Gemini,
                _ => return None,
            };
            Some(ModelEntry { id, service })
        })
        .collect()
}

/// `GET /v1/models`.
pub async fn list(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let Some(principal) = req.extensions().get::<Principal>() else {
        return super::error::error_response(
            super::error::ApiFlavor::OpenAi,
            http::StatusCode::UNAUTHORIZED,
            "no API key",
        );
    };
    let policy = &principal.policy;
    let allowed: Vec<&ModelEntry> = app
        .models
        .iter()
        .filter(|m| policy.allows_service(m.service) && policy.allows_model(&m.id))
        .collect();
    if req.headers().contains_key("anthropic-version") {
        let data: Vec<_> = allowed
            .iter()
            .map(|m| json!({"type": "model", "id": m.id, "display_name": m.id, "created_at": "2025-01-01T00:00:00Z"}))
            .collect();
        return Json(json!({
            "data": data,
            "has_more": false,
            "first_id": allowed.first().map(|m| m.id.clone()),
            "last_id": allowed.last().map(|m| m.id.clone()),
        }))
        .into_response();
    }
    let data: Vec<_> = allowed
        .iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": 1_735_689_600, "owned_by": m.service.as_str()}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
