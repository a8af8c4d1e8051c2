use super::*;

fn usage(i: u64, o: u64, w5: u64, w1h: u64, r: u64) -> Usage {
    Usage {
        input_tokens: i,
        output_tokens: o,
        cache_write_5m_tokens: w5,
        cache_write_1h_tokens: w1h,
        cache_read_tokens: r,
        requests: 1,
    }
}

/// Feed `body` in chunks of every size from 1 byte to the whole, and check each run agrees.
fn run(flavor: ApiFlavor, framing: Framing, body: &str) -> (Option<Usage>, MeterOutcome) {
    let mut first = None;
    for size in [1usize, 2, 3, 7, 64, body.len().max(1)] {
        let mut p = UsageParser::new(flavor, framing);
        for chunk in body.as_bytes().chunks(size) {
            p.feed(chunk);
        }
        let got = p.finish();
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "chunk size {size} disagrees"),
        }
    }
    first.unwrap_or((None, MeterOutcome::UsageMissing))
}

const ANTHROPIC_SSE: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3000,\"cache_read_input_tokens\":1200,\"cache_creation\":{\"ephemeral_5m_input_tokens\":1000,\"ephemeral_1h_input_tokens\":2000},\"output_tokens\":1}}}\r\n\r\nevent: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\nevent: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage is fine\"}}\r\n\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\nevent: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

#[test]
fn anthropic_sse_with_cache_write_tiers() {
    let got = run(ApiFlavor::AnthropicMessages, Framing::Sse, ANTHROPIC_SSE);
    assert_eq!(
        got,
        (
            Some(usage(25, 15, 1000, 2000, 1200)),
            MeterOutcome::Complete
        )
    );
}

#[test]
fn anthropic_partial_usage_is_known_after_message_start() {
    let mut p = UsageParser::new(ApiFlavor::AnthropicMessages, Framing::Sse);
    let cut = ANTHROPIC_SSE
        .find("event: content_block_start")
        .unwrap_or(0);
    p.feed(&ANTHROPIC_SSE.as_bytes()[..cut]);
    assert_eq!(p.partial(), Some(usage(25, 1, 1000, 2000, 1200)));
}

#[test]
fn anthropic_json_without_tier_split() {
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"output_tokens":6}}"#;
    let got = run(ApiFlavor::AnthropicMessages, Framing::Json, body);
    assert_eq!(
        got,
        (Some(usage(12, 6, 100, 0, 50)), MeterOutcome::Complete)
    );
}

#[test]
fn openai_chat_json_and_stream_with_include_usage() {
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1200,"completion_tokens":30,"total_tokens":1230,"prompt_tokens_details":{"cached_tokens":1024}}}"#;
    let got = run(ApiFlavor::OpenaiChat, Framing::Json, body);
    assert_eq!(
        got,
        (Some(usage(176, 30, 0, 0, 1024)), MeterOutcome::Complete)
    );
    let sse = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n";
    let got = run(ApiFlavor::OpenaiChat, Framing::Sse, sse);
    assert_eq!(got, (Some(usage(9, 2, 0, 0, 0)), MeterOutcome::Complete));
}

#[test]
fn openai_stream_without_usage_is_reported_as_missing() {
    let sse =
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
    assert_eq!(
        run(ApiFlavor::OpenaiChat, Framing::Sse, sse),
        (None, MeterOutcome::UsageMissing)
    );
}

#[test]
fn openai_responses_json_and_stream() {
    let body = r#"{"id":"resp_1","object":"response","status":"completed","output":[],"usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},"output_tokens":52,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":380}}"#;
    let got = run(ApiFlavor::OpenaiResponses, Framing::Json, body);
    assert_eq!(
        got,
        (Some(usage(200, 52, 0, 0, 128)), MeterOutcome::Complete)
    );
    let sse = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":4,\"input_tokens_details\":{\"cached_tokens\":0}}}}\n\n";
    let got = run(ApiFlavor::OpenaiResponses, Framing::Sse, sse);
    assert_eq!(got, (Some(usage(10, 4, 0, 0, 0)), MeterOutcome::Complete));
}

#[test]
fn gemini_json_sse_and_streamed_array() {
    let body = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":500,"candidatesTokenCount":20,"cachedContentTokenCount":300,"thoughtsTokenCount":7,"totalTokenCount":527},"modelVersion":"gemini-2.5-pro"}"#;
    let got = run(ApiFlavor::GeminiGenerate, Framing::Json, body);
    assert_eq!(
        got,
        (Some(usage(200, 27, 0, 0, 300)), MeterOutcome::Complete)
    );
    let sse = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"H\"}]}}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":1}}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"i\"}]}}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":5,\"totalTokenCount\":13}}\r\n\r\n";
    let got = run(ApiFlavor::GeminiGenerate, Framing::Sse, sse);
    assert_eq!(got, (Some(usage(8, 5, 0, 0, 0)), MeterOutcome::Complete));
    let array = "[{\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":1}}\n,\r\n{\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":6}}\n]";
    let got = run(ApiFlavor::GeminiGenerate, Framing::JsonArray, array);
    assert_eq!(got, (Some(usage(8, 6, 0, 0, 0)), MeterOutcome::Complete));
}

#[test]
fn malformed_truncated_and_hostile_bytes_never_panic() {
    // A JSON body cut off mid-way.
    let got = run(
        ApiFlavor::AnthropicMessages,
        Framing::Json,
        r#"{"usage":{"input_tokens":12,"#,
    );
    assert_eq!(got, (None, MeterOutcome::Malformed));
    // Garbage SSE data that mentions usage.
    let got = run(
        ApiFlavor::OpenaiChat,
        Framing::Sse,
        "data: {usage: nope\n\n",
    );
    assert_eq!(got, (None, MeterOutcome::Malformed));
    // Wrong types, negative numbers, huge numbers.
    for body in [
        r#"{"usage":{"input_tokens":"12"}}"#,
        r#"{"usage":{"input_tokens":-5}}"#,
        r#"{"usage":{"input_tokens":1e400}}"#,
        r#"{"usage":{"input_tokens":99999999999999999999999}}"#,
    ] {
        let got = run(ApiFlavor::AnthropicMessages, Framing::Json, body);
        assert_eq!(got.1, MeterOutcome::Malformed, "{body}");
    }
    // Invalid UTF-8 and NUL bytes.
    let mut p = UsageParser::new(ApiFlavor::AnthropicMessages, Framing::Sse);
    p.feed(b"data: \xff\xfe\x00usage\n\n");
    assert_eq!(p.finish(), (None, MeterOutcome::Malformed));
    // Prompt counts smaller than cached counts saturate instead of wrapping.
    let got = run(
        ApiFlavor::OpenaiChat,
        Framing::Json,
        r#"{"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":50}}}"#,
    );
    assert_eq!(got, (Some(usage(0, 1, 0, 0, 50)), MeterOutcome::Complete));
}

#[test]
fn an_endless_sse_line_is_skipped_without_growing_memory() {
    let mut p = UsageParser::new(ApiFlavor::OpenaiChat, Framing::Sse);
    p.feed(b"data: {\"x\":\"");
    let junk = vec![b'a'; 64 * 1024];
    for _ in 0..(MAX_LINE / junk.len() + 4) {
        p.feed(&junk);
    }
    assert!(p.lines_buffered() <= MAX_LINE);
    p.feed(b"\"}\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n");
    assert_eq!(
        p.finish(),
        (Some(usage(3, 1, 0, 0, 0)), MeterOutcome::Complete)
    );
    assert!(p.malformed_events() >= 1);
}

#[test]
fn an_oversized_json_body_is_truncated_not_buffered() {
    let mut p = UsageParser::new(ApiFlavor::AnthropicMessages, Framing::Json);
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..(MAX_JSON / chunk.len() + 2) {
        p.feed(&chunk);
    }
    assert!(p.json_buffered() <= MAX_JSON);
    assert_eq!(p.finish(), (None, MeterOutcome::Truncated));
}

#[test]
fn end_markers_are_recognised() {
    let mut p = UsageParser::new(ApiFlavor::AnthropicMessages, Framing::Sse);
    let cut = ANTHROPIC_SSE.find("event: message_stop").unwrap_or(0);
    p.feed(&ANTHROPIC_SSE.as_bytes()[..cut]);
    assert!(!p.saw_end());
    p.feed(&ANTHROPIC_SSE.as_bytes()[cut..]);
    assert!(p.saw_end());
    let mut p = UsageParser::new(ApiFlavor::OpenaiChat, Framing::Sse);
    p.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n");
    assert!(!p.saw_end(), "[DONE] inside content is not the end");
    p.feed(b"data: [DONE]\n\n");
    assert!(p.saw_end());
    let mut p = UsageParser::new(ApiFlavor::OpenaiResponses, Framing::Sse);
    p.feed(
        b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n",
    );
    assert!(p.saw_end());
}
