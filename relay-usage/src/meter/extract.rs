//! Usage fields of each API, translated into [`Usage`].
//!
//! `input_tokens` of a [`Usage`] counts uncached prompt tokens only, so OpenAI's and
//! Gemini's cached counts (which are included in their prompt totals) are subtracted.

use relay_core::Usage;
use serde::Deserialize;

use crate::facts::ApiFlavor;

/// Usage fields an event carried; `None` fields were not reported by this event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reported {
    input: Option<u64>,
    output: Option<u64>,
    cache_write_5m: Option<u64>,
    cache_write_1h: Option<u64>,
    cache_read: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation: Option<AnthropicCacheCreation>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct AnthropicCacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnthropicMessage {
    usage: Option<AnthropicUsage>,
}

/// Both the non-streamed message and the `message_start` / `message_delta` events.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnthropicDoc {
    message: Option<AnthropicMessage>,
    usage: Option<AnthropicUsage>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct CachedDetails {
    cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct OpenaiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedDetails>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<CachedDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OpenaiResponse {
    usage: Option<OpenaiUsage>,
}

/// A chat completion (or chunk), a response object, or a Responses stream event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OpenaiDoc {
    usage: Option<OpenaiUsage>,
    response: Option<OpenaiResponse>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct GeminiUsage {
    #[serde(rename = "promptTokenCount")]
    prompt: u64,
    #[serde(rename = "candidatesTokenCount")]
    candidates: u64,
    #[serde(rename = "cachedContentTokenCount")]
    cached: u64,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GeminiDoc {
    #[serde(rename = "usageMetadata")]
    usage: Option<GeminiUsage>,
}

fn anthropic(u: AnthropicUsage) -> Reported {
    let (w5, w1h) = match (&u.cache_creation, u.cache_creation_input_tokens) {
        (Some(c), _) => (
            Some(c.ephemeral_5m_input_tokens),
            Some(c.ephemeral_1h_input_tokens),
        ),
        (None, total) => (total, total.map(|_| 0)),
    };
    Reported {
        input: u.input_tokens,
        output: u.output_tokens,
        cache_write_5m: w5,
        cache_write_1h: w1h,
        cache_read: u.cache_read_input_tokens,
    }
}

fn openai(u: OpenaiUsage) -> Reported {
    let prompt = u.prompt_tokens.or(u.input_tokens);
    let output = u.completion_tokens.or(u.output_tokens);
    let cached = u
        .prompt_tokens_details
        .or(u.input_tokens_details)
        .map_or(0, |d| d.cached_tokens);
    Reported {
        input: prompt.map(|p| p.saturating_sub(cached)),
        output,
        cache_write_5m: Some(0),
        cache_write_1h: Some(0),
        cache_read: Some(cached),
    }
}

fn gemini(u: GeminiUsage) -> Reported {
    Reported {
        input: Some(u.prompt.saturating_sub(u.cached)),
        output: Some(u.candidates.saturating_add(u.thoughts)),
        cache_write_5m: Some(0),
        cache_write_1h: Some(0),
        cache_read: Some(u.cached),
    }
}

/// Does this SSE data payload mark the end of the response? Anthropic's `message_stop`,
/// OpenAI Chat's `[DONE]`, and the Responses API's terminal `response.*` events.
pub(crate) fn is_end_marker(data: &[u8]) -> bool {
    let d = data.trim_ascii();
    d == b"[DONE]"
        || (d.len() < 128 && d.windows(12).any(|w| w == b"message_stop"))
        || d.starts_with(b"{\"type\":\"response.completed\"")
        || d.starts_with(b"{\"type\":\"response.incomplete\"")
        || d.starts_with(b"{\"type\":\"response.failed\"")
}

/// Whether `usage` or `Usage` occurs at all: documents without it (most SSE events) are
/// not parsed. A SIMD substring search: a byte-window scan of each response cost more
/// than parsing its usage.
fn mentions_usage(data: &[u8]) -> bool {
    memchr::memmem::find(data, b"usage").is_some() || memchr::memmem::find(data, b"Usage").is_some()
}

/// Usage reported by one JSON document (an SSE event's data, or a whole body).
/// `Ok(None)`: no usage in it; `Err(())`: not valid JSON.
pub(crate) fn from_event(flavor: ApiFlavor, data: &[u8]) -> Result<Option<Reported>, ()> {
    let trimmed = data.trim_ascii();
    if trimmed.is_empty() || trimmed == b"[DONE]" || !mentions_usage(trimmed) {
        return Ok(None);
    }
    parse_usage(flavor, trimmed)
}

/// The usage in a trimmed, non-empty document already known to mention it.
fn parse_usage(flavor: ApiFlavor, trimmed: &[u8]) -> Result<Option<Reported>, ()> {
    let reported = match flavor {
        ApiFlavor::AnthropicMessages => {
            let doc: AnthropicDoc = serde_json::from_slice(trimmed).map_err(|_| ())?;
            doc.message
                .and_then(|m| m.usage)
                .or(doc.usage)
                .map(anthropic)
        }
        ApiFlavor::OpenaiChat | ApiFlavor::OpenaiResponses => {
            let doc: OpenaiDoc = serde_json::from_slice(trimmed).map_err(|_| ())?;
            doc.response.and_then(|r| r.usage).or(doc.usage).map(openai)
        }
        ApiFlavor::GeminiGenerate => {
            let doc: GeminiDoc = serde_json::from_slice(trimmed).map_err(|_| ())?;
            doc.usage.map(gemini)
        }
    };
    Ok(reported)
}

/// Fold an event's report into the usage so far. Anthropic's `message_delta` repeats the
/// cumulative output count (and may restate input counts); later reports win field by
/// field. Gemini and OpenAI report cumulative totals, so the last report wins.
pub(crate) fn merge(_flavor: ApiFlavor, usage: &mut Option<Usage>, r: Reported) {
    let u = usage.get_or_insert(Usage {
        requests: 1,
        ..Usage::default()
    });
    if let Some(v) = r.input {
        u.input_tokens = v;
    }
    if let Some(v) = r.output {
        u.output_tokens = v;
    }
    if let Some(v) = r.cache_write_5m {
        u.cache_write_5m_tokens = v;
    }
    if let Some(v) = r.cache_write_1h {
        u.cache_write_1h_tokens = v;
    }
    if let Some(v) = r.cache_read {
        u.cache_read_tokens = v;
    }
}

/// The body is not the JSON its API documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("response body is not valid JSON of its API")]
pub struct Malformed;

/// Usage of a whole non-streamed body (for Gemini's streamed JSON array, the last element
/// that reports usage). `Ok(None)` when the body reports none.
pub fn extract_json(flavor: ApiFlavor, body: &[u8]) -> Result<Option<Usage>, Malformed> {
    let trimmed = body.trim_ascii();
    let mut usage = None;
    if flavor == ApiFlavor::GeminiGenerate && trimmed.first() == Some(&b'[') {
        let docs: Vec<GeminiDoc> = serde_json::from_slice(trimmed).map_err(|_| Malformed)?;
        for r in docs.into_iter().filter_map(|d| d.usage).map(gemini) {
            merge(flavor, &mut usage, r);
        }
        return Ok(usage);
    }
    if trimmed.is_empty() {
        return Ok(None);
    }
    // A body without usage is still validated as JSON.
    if !mentions_usage(trimmed) {
        serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).map_err(|_| Malformed)?;
        return Ok(None);
    }
    if let Some(r) = parse_usage(flavor, trimmed).map_err(|()| Malformed)? {
        merge(flavor, &mut usage, r);
    }
    Ok(usage)
}
