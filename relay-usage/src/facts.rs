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
    /// False for token-counting calls (`/v1/messages/count_tokens`, Gemini's
    /// `:countTokens`): admitted like any request (model, client, address, request
    /// windows) but with nothing reserved and nothing charged.
    pub billable: bool,
    /// A conversation the body names (`metadata.user_id`, `prompt_cache_key`, `user`, in
    /// that order), so a gateway can route it to the same upstream account without
    /// parsing the body again.
    pub session: Option<String>,
}

impl RequestFacts {
    /// Tokens reserved against rate windows at admission: the estimated prompt and the
    /// most output, or none for a request that is not billable.
    pub fn reserved_tokens(&self) -> u64 {
        if self.billable {
            self.estimated_prompt_tokens
                .saturating_add(self.max_output_tokens)
        } else {
            0
        }
    }
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
    metadata: Option<Lenient<Metadata>>,
    prompt_cache_key: Option<Lenient<String>>,
    user: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    user_id: Option<Lenient<String>>,
}

/// A field read only as a routing hint: a value of another type is ignored rather than
/// refused (the upstream judges the body; admission does not depend on it).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Value(T),
    Other(serde::de::IgnoredAny),
}

impl<T> Lenient<T> {
    fn value(self) -> Option<T> {
        match self {
            Lenient::Value(v) => Some(v),
            Lenient::Other(_) => None,
        }
    }
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
    let mut fields: BodyFields = if body.is_empty() {
        BodyFields::default()
    } else {
        serde_json::from_slice(body).map_err(|e| FactsError::Json(e.to_string()))?
    };
    let (model, stream, framing, billable) = match flavor {
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
            (model.to_owned(), stream, framing, method != "countTokens")
        }
        _ => {
            let model = fields.model.take().ok_or(FactsError::NoModel)?;
            let stream = fields.stream.unwrap_or(false);
            let billable = path != "/v1/messages/count_tokens";
            (
                model,
                stream,
                if stream { Framing::Sse } else { Framing::Json },
                billable,
            )
        }
    };
    if model.is_empty() {
        return Err(FactsError::NoModel);
    }
    let max_output_tokens = if billable {
        fields
            .max_tokens
            .or(fields.max_completion_tokens)
            .or(fields.max_output_tokens)
            .or(fields.generation_config.and_then(|g| g.max_output_tokens))
            .unwrap_or(default_max_output)
    } else {
        0
    };
    let session = fields
        .metadata
        .and_then(Lenient::value)
        .and_then(|m| m.user_id)
        .and_then(Lenient::value)
        .or_else(|| fields.prompt_cache_key.and_then(Lenient::value))
        .or_else(|| fields.user.and_then(Lenient::value));
    Ok(RequestFacts {
        flavor,
        model,
        stream,
        framing,
        estimated_prompt_tokens: (body.len() as u64).div_ceil(3),
        max_output_tokens,
        estimated_cost: Decimal::ZERO,
        min_cost: Decimal::ZERO,
        billable,
        session,
    })
}

/// Price a request's estimate: the estimated prompt alone (`min_cost`) and with the maximum
/// output (`estimated_cost`), the key's service multiplier included. A request that is not
/// [`billable`](RequestFacts::billable) costs nothing and needs no price.
pub fn price(
    facts: &mut RequestFacts,
    policy: &KeyPolicy,
    prices: &PriceBook,
) -> Result<(), PriceError> {
    if !facts.billable {
        facts.min_cost = Decimal::ZERO;
        facts.estimated_cost = Decimal::ZERO;
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counting_calls_are_not_billable() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[]}"#;
        let f = describe("/v1/messages", None, body, 8192).unwrap();
        assert!(f.billable);
        assert_eq!(f.max_output_tokens, 64);
        assert_eq!(f.reserved_tokens(), f.estimated_prompt_tokens + 64);
        let f = describe("/v1/messages/count_tokens", None, body, 8192).unwrap();
        assert!(!f.billable);
        assert_eq!((f.max_output_tokens, f.reserved_tokens()), (0, 0));
        assert_eq!(f.model, "claude-sonnet-4-5");
        let f = describe(
            "/v1beta/models/gemini-2.5-flash:countTokens",
            None,
            b"{}",
            8192,
        )
        .unwrap();
        assert!(!f.billable);
        assert_eq!(f.model, "gemini-2.5-flash");
        let f = describe(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
            b"{}",
            8192,
        )
        .unwrap();
        assert!(f.billable);
        // Still a model to check against the key's allow-list.
        assert!(matches!(
            describe("/v1/messages/count_tokens", None, b"{}", 8192),
            Err(FactsError::NoModel)
        ));
    }

    #[test]
    fn unbillable_requests_price_at_zero_without_a_price() {
        let mut f = describe(
            "/v1/messages/count_tokens",
            None,
            br#"{"model":"no-such-model"}"#,
            8192,
        )
        .unwrap();
        let book = PriceBook::default();
        price(&mut f, &KeyPolicy::default(), &book).unwrap();
        assert_eq!(
            (f.estimated_cost, f.min_cost),
            (Decimal::ZERO, Decimal::ZERO)
        );
        let mut g = describe("/v1/messages", None, br#"{"model":"no-such-model"}"#, 8192).unwrap();
        assert!(price(&mut g, &KeyPolicy::default(), &book).is_err());
    }

    #[test]
    fn session_comes_from_the_body_in_order() {
        let s = |body: &str| {
            describe("/v1/chat/completions", None, body.as_bytes(), 1)
                .unwrap()
                .session
        };
        assert_eq!(
            s(r#"{"model":"m","metadata":{"user_id":"u1"},"prompt_cache_key":"p","user":"u2"}"#)
                .as_deref(),
            Some("u1")
        );
        assert_eq!(
            s(r#"{"model":"m","prompt_cache_key":"p","user":"u2"}"#).as_deref(),
            Some("p")
        );
        assert_eq!(s(r#"{"model":"m","user":"u2"}"#).as_deref(), Some("u2"));
        assert_eq!(s(r#"{"model":"m","metadata":{}}"#), None);
        // Hints of another type are ignored (the upstream judges the body), the next one
        // is used.
        assert_eq!(
            s(r#"{"model":"m","metadata":"x","prompt_cache_key":{"a":1},"user":"u3"}"#).as_deref(),
            Some("u3")
        );
        assert_eq!(
            s(r#"{"model":"m","metadata":{"user_id":7},"user":5}"#),
            None
        );
        // What admission depends on is still checked.
        assert!(matches!(
            describe("/v1/messages", None, br#"{"model":5}"#, 1),
            Err(FactsError::Json(_))
        ));
    }
}
