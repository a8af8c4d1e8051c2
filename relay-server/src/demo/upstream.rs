//! The demo upstream: answers Anthropic, OpenAI (chat and responses) and Gemini requests
//! deterministically with realistic usage, as JSON or SSE, so the whole loop runs on a
//! machine without internet and load tests measure the gateway, not a remote API.
//!
//! Usage is a function of the request: the prompt counts one token per 4 body bytes (at
//! least 8); the reply is the first `max_tokens` words of [`REPLY`], one token per word.
//! Cache fields: an Anthropic body mentioning `cache_control` reads half its prompt from
//! the cache and writes a quarter; an OpenAI body with `prompt_cache_key` and a Gemini body
//! with `cachedContent` read half from the cache.
//!
//! Credentials steer failures, for tests and demonstrations: a key containing `fail-529`
//! answers 529, `fail-500` answers 500, `unauthorized` answers 401, and `stall` starts a
//! stream (or a JSON answer) and never finishes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{header, HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// The demo reply, one token per word.
pub const REPLY: &str =
    "Hello! This is the relay demo upstream answering with a deterministic reply.";

/// What the demo upstream saw of one request (tests check what the relay forwarded).
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// The credential presented (whichever header carried it).
    pub credential: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Shared state: what was seen, per credential counts.
#[derive(Debug, Default)]
pub struct DemoState {
    seen: Mutex<Vec<Seen>>,
    hits: Mutex<HashMap<String, u64>>,
    record: bool,
}

impl DemoState {
    /// Requests answered for `credential`.
    pub fn hits(&self, credential: &str) -> u64 {
        self.hits.lock().get(credential).copied().unwrap_or(0)
    }

    /// The last requests seen (at most 64 are kept).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// A running demo upstream.
#[derive(Debug)]
pub struct DemoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<DemoState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoUpstream {
    /// Start on `addr` (use port 0 for any). `record` keeps what it sees (tests).
    pub async fn start(addr: SocketAddr, record: bool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(DemoState {
            record,
            ..DemoState::default()
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "demo upstream stopped");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(tx),
            task,
        })
    }

    /// Its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop it. Stalled streams are cut rather than waited for.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// The demo upstream's routes.
pub fn router(state: Arc<DemoState>) -> Router {
    Router::new()
        .route("/v1/messages", post(anthropic))
        .route("/v1/messages/count_tokens", post(anthropic_count))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/responses", post(openai_responses))
        .route("/v1beta/models/{target}", post(gemini))
        .with_state(state)
}

fn credential(h: &HeaderMap) -> String {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    get("x-api-key")
        .or_else(|| get("authorization").map(|v| v.trim_start_matches("Bearer ").to_owned()))
        .or_else(|| get("x-goog-api-key"))
        .unwrap_or_default()
}

/// Count the request and answer a failure when its credential asks for one.
async fn observe(
    state: &DemoState,
    req: Request,
) -> Result<(String, Value, Bytes, bool), Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let cred = credential(&parts.headers);
    *state.hits.lock().entry(cred.clone()).or_default() += 1;
    if state.record {
        let mut seen = state.seen.lock();
        if seen.len() >= 64 {
            seen.remove(0);
        }
        seen.push(Seen {
            path: parts.uri.to_string(),
            credential: cred.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if cred.contains("fail-529") {
        return Err(raw(
            529,
            &json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
        ));
    }
    if cred.contains("fail-500") {
        return Err(raw(
            500,
            &json!({"type":"error","error":{"type":"api_error","message":"Internal server error"}}),
        ));
    }
    if cred.contains("unauthorized") {
        return Err(raw(
            401,
            &json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}),
        ));
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stall = cred.contains("stall");
    Ok((parts.uri.to_string(), value, body, stall))
}

fn raw(status: u16, body: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response(v: &Value, stall: bool) -> Response {
    if stall {
        // Headers and half a body, then nothing.
        let text = v.to_string();
        let half = Bytes::from(text.as_bytes()[..text.len() / 2].to_vec());
        let body = stream::iter([Ok::<Bytes, std::io::Error>(half)]).chain(stream::pending());
        let mut r = Response::new(Body::from_stream(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    raw(200, v)
}

fn sse_response(events: Vec<String>, stall: bool) -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        events.into_iter().map(|e| Ok(Bytes::from(e))).collect();
    let body = if stall {
        // The first three events (start and a delta), then silence until the client leaves.
        let head: Vec<_> = chunks.into_iter().take(3).collect();
        Body::from_stream(stream::iter(head).chain(stream::pending()))
    } else {
        Body::from_stream(stream::iter(chunks))
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// Tokens of a prompt of `len` bytes.
pub fn prompt_tokens(len: usize) -> u64 {
    (len as u64 / 4).max(8)
}

fn reply_words(max: Option<u64>) -> (Vec<&'static str>, bool) {
    let words: Vec<&str> = REPLY.split(' ').collect();
    let n = max.map_or(words.len(), |m| (m as usize).min(words.len()));
    (words[..n].to_vec(), n < words.len())
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

async fn anthropic(State(state): State<Arc<DemoState>>, req: Request) -> Response {
    let (_, body, raw_body, stall) = match observe(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = body["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();
    let prompt = prompt_tokens(raw_body.len());
    let cached = raw_body.windows(13).any(|w| w == b"cache_control");
    let (read, write) = if cached {
        (prompt / 2, prompt / 4)
    } else {
        (0, 0)
    };
    let input = prompt - read - write;
    let (words, truncated) = reply_words(body["max_tokens"].as_u64());
    let output = words.len() as u64;
    let stop = if truncated { "max_tokens" } else { "end_turn" };
    let usage = json!({"input_tokens": input, "cache_creation_input_tokens": write, "cache_read_input_tokens": read, "output_tokens": output});
    if body["stream"].as_bool() != Some(true) {
        let v = json!({"id": "msg_demo_01", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": words.join(" ")}], "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return json_response(&v, stall);
    }
    let mut events = vec![
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {"id": "msg_demo_01", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": write, "cache_read_input_tokens": read, "output_tokens": 1}}}),
        ),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for (i, w) in words.iter().enumerate() {
        let text = if i == 0 {
            (*w).to_owned()
        } else {
            format!(" {w}")
        };
        events.push(sse(Some("content_block_delta"), &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})));
    }
    events.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse(Some("message_delta"), &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}})));
    events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    sse_response(events, stall)
}

async fn anthropic_count(State(state): State<Arc<DemoState>>, req: Request) -> Response {
    match observe(&state, req).await {
        Ok((_, _, raw_body, _)) => {
            raw(200, &json!({"input_tokens": prompt_tokens(raw_body.len())}))
        }
        Err(r) => r,
    }
}

async fn openai_chat(State(state): State<Arc<DemoState>>, req: Request) -> Response {
    let (_, body, raw_body, stall) = match observe(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = body["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let prompt = prompt_tokens(raw_body.len());
    let cached = if body.get("prompt_cache_key").is_some() {
        prompt / 2
    } else {
        0
    };
    let max = body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64());
    let (words, truncated) = reply_words(max);
    let output = words.len() as u64;
    let finish = if truncated { "length" } else { "stop" };
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}});
    if body["stream"].as_bool() != Some(true) {
        let v = json!({"id": "chatcmpl-demo01", "object": "chat.completion", "created": 1_735_689_600, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.join(" "), "refusal": null}, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "system_fingerprint": null});
        return json_response(&v, stall);
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-demo01", "object": "chat.completion.chunk", "created": 1_735_689_600, "model": model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse(None, &c)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for (i, w) in words.iter().enumerate() {
        let text = if i == 0 {
            (*w).to_owned()
        } else {
            format!(" {w}")
        };
        events.push(chunk(json!({"content": text}), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    if include_usage {
        events.push(sse(None, &json!({"id": "chatcmpl-demo01", "object": "chat.completion.chunk", "created": 1_735_689_600, "model": model, "system_fingerprint": null, "choices": [], "usage": usage})));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse_response(events, stall)
}

async fn openai_responses(State(state): State<Arc<DemoState>>, req: Request) -> Response {
    let (_, body, raw_body, stall) = match observe(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = body["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let prompt = prompt_tokens(raw_body.len());
    let cached = if body.get("prompt_cache_key").is_some() {
        prompt / 2
    } else {
        0
    };
    let (words, truncated) = reply_words(body["max_output_tokens"].as_u64());
    let output = words.len() as u64;
    let text = words.join(" ");
    let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output});
    let item = json!({"type": "message", "id": "msg_demo01", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let response = |status: &str, output_items: Value, usage: Value| {
        json!({"id": "resp_demo01", "object": "response", "created_at": 1_735_689_600, "status": status, "model": model,
            "output": output_items, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "incomplete_details": if truncated && status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "usage": usage})
    };
    let final_status = if truncated { "incomplete" } else { "completed" };
    if body["stream"].as_bool() != Some(true) {
        return json_response(&response(final_status, json!([item]), usage), stall);
    }
    let mut seq = 0u64;
    let mut ev = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        sse(Some(kind), &data)
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": {"type": "message", "id": "msg_demo01", "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        ev(
            "response.content_part.added",
            json!({"item_id": "msg_demo01", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for (i, w) in words.iter().enumerate() {
        let delta = if i == 0 {
            (*w).to_owned()
        } else {
            format!(" {w}")
        };
        events.push(ev(
            "response.output_text.delta",
            json!({"item_id": "msg_demo01", "output_index": 0, "content_index": 0, "delta": delta}),
        ));
    }
    events.push(ev(
        "response.output_text.done",
        json!({"item_id": "msg_demo01", "output_index": 0, "content_index": 0, "text": text}),
    ));
    events.push(ev("response.content_part.done", json!({"item_id": "msg_demo01", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}})));
    events.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    ));
    let done = if truncated {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(ev(
        done,
        json!({"response": response(final_status, json!([item]), usage)}),
    ));
    sse_response(events, stall)
}

async fn gemini(
    State(state): State<Arc<DemoState>>,
    Path(target): Path<String>,
    req: Request,
) -> Response {
    let (uri, body, raw_body, stall) = match observe(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (model, action) = target.split_once(':').unwrap_or((&target, ""));
    let prompt = prompt_tokens(raw_body.len());
    if action == "countTokens" {
        return raw(200, &json!({"totalTokens": prompt}));
    }
    let cached = if body.get("cachedContent").is_some() {
        prompt / 2
    } else {
        0
    };
    let (words, truncated) = reply_words(body["generationConfig"]["maxOutputTokens"].as_u64());
    let output = words.len() as u64;
    let finish = if truncated { "MAX_TOKENS" } else { "STOP" };
    let chunk = |text: String, finish: Option<&str>, out: Option<u64>| {
        let mut usage =
            json!({"promptTokenCount": prompt, "totalTokenCount": prompt + out.unwrap_or(0)});
        if let Some(o) = out {
            usage["candidatesTokenCount"] = json!(o);
        }
        if cached > 0 {
            usage["cachedContentTokenCount"] = json!(cached);
        }
        let mut cand = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": model, "responseId": "demo01"})
    };
    if action == "generateContent" {
        return json_response(&chunk(words.join(" "), Some(finish), Some(output)), stall);
    }
    let n = words.len();
    let mut chunks = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let text = if i == 0 {
            (*w).to_owned()
        } else {
            format!(" {w}")
        };
        let last = i + 1 == n;
        chunks.push(chunk(text, last.then_some(finish), last.then_some(output)));
    }
    if uri.contains("alt=sse") {
        return sse_response(
            chunks
                .iter()
                .map(|c| format!("data: {c}\r\n\r\n"))
                .collect(),
            stall,
        );
    }
    // Without alt=sse Gemini streams one JSON array.
    let mut parts: Vec<String> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                format!("[{c}")
            } else {
                format!(",\r\n{c}")
            }
        })
        .collect();
    parts.push("]".to_owned());
    let body = stream::iter(
        parts
            .into_iter()
            .map(|p| Ok::<Bytes, std::io::Error>(Bytes::from(p))),
    );
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
