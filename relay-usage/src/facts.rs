//! What a gateway request is: which API, which model, whether it streams, and what it may
//! cost at most, derived from its path and JSON body.

use relay_core::{KeyPolicy, PriceBook, PriceError, Service, Usage};
use rust_decimal::Decimal;
use serde::Deserialize;

/// Which upstream API shape a request speaks (decides error shapes and usage parsing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiFlavor {
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenaiChat,
    /// OpenAI Responses (`/v1/responses`).
    OpenaiResponses,
    /// Gemini `generateContent` / `streamGenerateContent`.
    GeminiGenerate,
}

impl ApiFlavor {
    /// The flavor of a request path, if it is an LLM route.
    pub fn from_path(path: &str) -> Option<ApiFlavor> {
        if path.starts_with("/v1/messages") {
            Some(ApiFlavor::AnthropicMessages)
        } else if path.starts_with("/v1/chat/completions") {
            Some(ApiFlavor::OpenaiChat)
        } else if path.starts_with("/v1/responses") {
            Some(ApiFlavor::OpenaiResponses)
        } else if path.starts_with("/v1beta/")
            || path.starts_with("/v1/models/") && path.contains(':')
        {
            Some(ApiFlavor::GeminiGenerate)
        } else {
            None
        }
    }

    /// The service this flavor belongs to.
    pub fn service(self) -> Service {
        match self {
            ApiFlavor::AnthropicMessages => Service::Anthropic,
            ApiFlavor::OpenaiChat | ApiFlavor::OpenaiResponses => Service::Openai,
            ApiFlavor::GeminiGenerate => Service::Gemini,
        }
    }
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document.
    Json,
    /// Server-sent events.
    Sse,
    /// Gemini's streamed JSON array (`streamGenerateContent` without `alt=sse`).
    JsonArray,
}

/// The facts of one LLM request, as the policy and metering layers see them. Inserted into
/// request extensions by [`PolicyLayer`](crate::layer::policy::PolicyLayer).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts {
    /// API shape.
    pub flavor: ApiFlavor,
    /// Model requested.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// How the response will be framed.
    pub framing: Framing,
    /// Estimated prompt tokens (request bytes / 3, an over-estimate for most text).
    pub estimated_prompt_tokens: u64,
    /// Most output tokens the request can produce.
    pub max_output_tokens: u64,
    /// Cost of the estimated prompt and the maximum output, multiplier included.
    pub estimated_cost: Decimal,
    /// Cost of the estimated prompt alone: charged at least if the client goes away.
    pub min_cost: Decimal,
}

/// Why facts could not be derived from a request.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The path is not an LLM route.
    #[error("not an LLM API route")]
    UnknownRoute,
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    /// The body names no model.
    #[error("request body has no `model`")]
    NoModel,
    /// The model has no price.
    #[error(transparent)]
    Price(#[from] PriceError),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BodyFields {
    model: Option<String>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GenerationConfig {
    #[serde(rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

/// Derive the facts of a request and price its estimate ([`describe`], then [`price`]).
pub fn inspect(
    path: &str,
    query: Option<&str>,
    body: &[u8],
    policy: &KeyPolicy,
    prices: &PriceBook,
    default_max_output: u64,
) -> Result<RequestFacts, FactsError> {
    let mut facts = describe(path, query, body, default_max_output)?;
    price(&mut facts, policy, prices)?;
    Ok(facts)
}

/// Derive the facts of a request, costs left at zero.
///
/// `default_max_output` applies when the body sets no output limit (OpenAI and Gemini allow
/// that). `query` is the URI query (Gemini's `alt=sse`).
pub fn describe(
    path: &str,
    query: Option<&str>,
    body: &[u8],
    default_max_output: u64,
) -> Result<RequestFacts, FactsError> {
    let flavor = ApiFlavor::from_path(path).ok_or(FactsError::UnknownRoute)?;
    let fields: BodyFields = if body.is_empty() {
        BodyFields::default()
    } else {
        serde_json::from_slice(body).map_err(|e| FactsError::Json(e.to_string()))?
    };
    let (model, stream, framing) = match flavor {
        ApiFlavor::GeminiGenerate => {
            // /v1beta/models/{model}:{method}
            let tail = path.rsplit('/').next().unwrap_or("");
            let (model, method) = tail.split_once(':').ok_or(FactsError::NoModel)?;
            let stream = method.starts_with("streamGenerateContent");
            let sse = query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            let framing = match (stream, sse) {
                (false, _) => Framing::Json,
                (true, true) => Framing::Sse,
                (true, false) => Framing::JsonArray,
            };
            (model.to_owned(), stream, framing)
        }
        _ => {
            let model = fields.model.clone().ok_or(FactsError::NoModel)?;
            let stream = fields.stream.unwrap_or(false);
            (
                model,
                stream,
                if stream { Framing::Sse } else { Framing::Json },
            )
        }
    };
    if model.is_empty() {
        return Err(FactsError::NoModel);
    }
    let max_output_tokens = fields
        .max_tokens
        .or(fields.max_completion_tokens)
        .or(fields.max_output_tokens)
        .or(fields.generation_config.and_then(|g| g.max_output_tokens))
        .unwrap_or(default_max_output);
    Ok(RequestFacts {
        flavor,
        model,
        stream,
        framing,
        estimated_prompt_tokens: (body.len() as u64).div_ceil(3),
        max_output_tokens,
        estimated_cost: Decimal::ZERO,
        min_cost: Decimal::ZERO,
    })
}

/// Price a request's estimate: the estimated prompt alone (`min_cost`) and with the maximum
/// output (`estimated_cost`), the key's service multiplier included.
pub fn price(
    facts: &mut RequestFacts,
    policy: &KeyPolicy,
    prices: &PriceBook,
) -> Result<(), PriceError> {
    let multiplier = policy.multiplier(facts.flavor.service());
    let input_only = Usage {
        input_tokens: facts.estimated_prompt_tokens,
        requests: 1,
        ..Usage::default()
    };
    let full = Usage {
        output_tokens: facts.max_output_tokens,
        ..input_only
    };
    facts.min_cost = prices.cost(&facts.model, &input_only)?.amount() * multiplier;
    facts.estimated_cost = prices.cost(&facts.model, &full)?.amount() * multiplier;
    Ok(())
}
