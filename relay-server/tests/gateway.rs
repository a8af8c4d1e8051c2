//! End to end through the gateway: relayed to the demo upstream, streaming and not, usage
//! and exact cost recorded, denials in each client's error shape, failover, and a client
//! leaving mid-stream. Each scenario runs on SQLite + memory and on PostgreSQL + Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{account, Backend, TestServer};
use relay_core::{Budget, BudgetPeriod, Currency, KeyPolicy, Money, RateWindow, Service, Usage};
use relay_server::demo::upstream::prompt_tokens;
use relay_usage::sink::MeterOutcome;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{json, Value};

fn cost(
    usage: &Usage,
    input: Decimal,
    output: Decimal,
    write_5m: Decimal,
    read: Decimal,
) -> Decimal {
    Decimal::from(usage.input_tokens) * input
        + Decimal::from(usage.output_tokens) * output
        + Decimal::from(usage.cache_write_5m_tokens) * write_5m
        + Decimal::from(usage.cache_read_tokens) * read
}

async fn relays_and_meters(backend: &Backend) {
    let s = TestServer::start(backend, None).await;
    let (key, key_id) = s.key(KeyPolicy::default()).await;

    // Anthropic JSON, with prompt caching: usage and the exact cost.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hello"}]});
    let res = s.post("/v1/messages", &key, &body).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    // The upstream's length is passed on (not re-chunked), and metering still sees the end.
    let length: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(res.headers().get("transfer-encoding").is_none());
    let v: Value = res.json().await.unwrap();
    assert_eq!(v.to_string().len(), length, "compact JSON, byte for byte");
    assert_eq!(v["content"][0]["text"], relay_server::demo::upstream::REPLY);
    let prompt = prompt_tokens(body.to_string().len());
    assert_eq!(v["usage"]["cache_read_input_tokens"], prompt / 2);
    let events = s.events(1).await;
    let e = &events[0];
    assert_eq!(e.outcome, MeterOutcome::Complete);
    assert_eq!(e.service, Service::Anthropic);
    assert_eq!(e.key_id, key_id);
    let expect = Usage {
        input_tokens: prompt - prompt / 2 - prompt / 4,
        output_tokens: 12,
        cache_write_5m_tokens: prompt / 4,
        cache_read_tokens: prompt / 2,
        requests: e.usage.requests,
        ..Usage::default()
    };
    assert_eq!(e.usage, expect);
    assert_eq!(
        e.cost.amount(),
        cost(
            &expect,
            dec!(0.000003),
            dec!(0.000015),
            dec!(0.00000375),
            dec!(0.0000003)
        )
    );
    assert_eq!(e.cost.currency(), Currency::USD);
    // The client's key never reaches the upstream; the account's does.
    let seen = s.upstream.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.credential, "good-key-anthropic");
    assert!(!format!("{:?}", last.headers).contains(&key));

    // Anthropic stream.
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 5, "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]});
    let res = s.post("/v1/messages", &key, &body).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = res.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    let e = s.events(2).await[1].clone();
    assert_eq!(
        (e.outcome, e.usage.output_tokens),
        (MeterOutcome::Complete, 5)
    );
    let p = prompt_tokens(body.to_string().len());
    assert_eq!(e.usage.input_tokens, p);
    assert_eq!(
        e.cost.amount(),
        Decimal::from(p) * dec!(0.000001) + dec!(5) * dec!(0.000005)
    );

    // OpenAI chat stream: the relay asks for the usage chunk, and meters it.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let res = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let forwarded: Value = serde_json::from_slice(&s.upstream.seen().last().unwrap().body).unwrap();
    assert_eq!(forwarded["stream_options"]["include_usage"], true);
    let e = s.events(3).await[2].clone();
    assert_eq!(
        (e.outcome, e.usage.output_tokens),
        (MeterOutcome::Complete, 12)
    );
    let p = prompt_tokens(forwarded.to_string().len());
    assert_eq!(e.usage.input_tokens, p);
    assert_eq!(
        e.cost.amount(),
        Decimal::from(p) * dec!(0.00000015) + dec!(12) * dec!(0.0000006)
    );

    // OpenAI responses, JSON.
    let res = s
        .http
        .post(s.url("/v1/responses"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o", "input": "Hi", "max_output_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["usage"]["output_tokens"], 3);
    let e = s.events(4).await[3].clone();
    assert_eq!(
        (e.outcome, e.usage.output_tokens, e.service),
        (MeterOutcome::Complete, 3, Service::Openai)
    );

    // Gemini stream (alt=sse) with the key in the query, as Google's clients send it.
    let res = s
        .http
        .post(s.url(&format!(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={key}"
        )))
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("\"finishReason\":\"STOP\""), "{text}");
    let seen = s.upstream.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        last.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    let e = s.events(5).await[4].clone();
    assert_eq!(
        (e.outcome, e.usage.output_tokens, e.service),
        (MeterOutcome::Complete, 12, Service::Gemini)
    );

    // Token counting (Anthropic's count_tokens, Gemini's countTokens): admitted, relayed,
    // never metered or charged, and its lease released.
    let res = s
        .post(
            "/v1/messages/count_tokens",
            &key,
            &json!({"model": "claude-sonnet-4-5", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.json::<Value>().await.unwrap()["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let res = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:countTokens"))
        .header("x-goog-api-key", &key)
        .json(&json!({"contents": [{"parts": [{"text": "Hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.json::<Value>().await.unwrap()["totalTokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(s.in_flight_settles(&key_id).await, 0);
    assert_eq!(s.state.usage.recent().len(), 5);

    // Stop the jobs first: only this test charges usage.
    s.state.scheduler.shutdown();
    // The same events are durable, and billing's usage source offers each costed one once.
    s.state.usage_writer.flush().await.unwrap();
    let source = relay_server::usage_charges::RecordUsageSource::new(s.state.db.clone());
    let pending = relay_billing::jobs::UsageSource::pending(&source)
        .await
        .unwrap();
    let mut expected: Vec<(String, Money)> = s
        .state
        .usage
        .recent()
        .iter()
        .filter(|e| !e.cost.is_zero())
        .map(|e| (format!("usage:{}", e.request_id), e.cost))
        .collect();
    let mut offered: Vec<(String, Money)> =
        pending.into_iter().map(|b| (b.batch_id, b.cost)).collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    offered.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(offered, expected);

    // Metrics saw it all.
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("relay_requests_total{route=\"/v1/messages\",status=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("relay_tokens_total"));
    assert!(m.contains("relay_upstream_account_up"));
    let ready = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    s.stop().await;
}

async fn denials_in_client_shapes(backend: &Backend) {
    let s = TestServer::start(backend, None).await;

    // Unknown key: 401 in each shape.
    let bad = format!("rk_live_{}", "A".repeat(43));
    let res = s
        .post("/v1/messages", &bad, &json!({"model": "claude-sonnet-4-5"}))
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );
    let res = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&bad)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );

    // Model not allowed: 403 (Anthropic shape); /v1/models lists only what is allowed.
    let (haiku_only, _) = s
        .key(KeyPolicy {
            allowed_models: vec!["claude-haiku-*".into()],
            ..KeyPolicy::default()
        })
        .await;
    let res = s
        .post(
            "/v1/messages",
            &haiku_only,
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 403);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("permission_error"))
    );
    let models: Value = s
        .http
        .get(s.url("/v1/models"))
        .bearer_auth(&haiku_only)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["claude-haiku-4-5"]);
    let anthropic_shape: Value = s
        .http
        .get(s.url("/v1/models"))
        .header("x-api-key", &haiku_only)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic_shape["data"][0]["type"], "model");
    // count_tokens is admitted like any request: a model the key may not use is refused in
    // Anthropic's shape, one it may use is answered.
    let count =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
    let res = s
        .post(
            "/v1/messages/count_tokens",
            &haiku_only,
            &count("claude-sonnet-4-5"),
        )
        .await;
    assert_eq!(res.status(), 403);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("permission_error"))
    );
    let res = s
        .post(
            "/v1/messages/count_tokens",
            &haiku_only,
            &count("claude-haiku-4-5"),
        )
        .await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    // ... and it counts against request windows, while reserving no tokens: a one-token
    // cap refuses a message, but not two token counts; the third count is over the
    // request cap.
    let (two_a_minute, two_id) = s
        .key(KeyPolicy {
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(2),
                max_tokens: Some(1),
                max_cost: None,
            }],
            ..KeyPolicy::default()
        })
        .await;
    let res = s
        .post(
            "/v1/messages",
            &two_a_minute,
            &json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 429);
    res.bytes().await.unwrap();
    for _ in 0..2 {
        let res = s
            .post(
                "/v1/messages/count_tokens",
                &two_a_minute,
                &count("claude-haiku-4-5"),
            )
            .await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    let res = s
        .post(
            "/v1/messages/count_tokens",
            &two_a_minute,
            &count("claude-haiku-4-5"),
        )
        .await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(s.in_flight_settles(&two_id).await, 0);

    // Rate window: second request is 429 with Retry-After (OpenAI shape).
    let (one_a_minute, _) = s
        .key(KeyPolicy {
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(1),
                max_tokens: None,
                max_cost: None,
            }],
            ..KeyPolicy::default()
        })
        .await;
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
    let first = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&one_a_minute)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    let second = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&one_a_minute)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    let v: Value = second.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{v}"
    );

    // Budget: spent before the first request (Gemini shape, 402).
    let (tiny_budget, _) = s
        .key(KeyPolicy {
            budgets: vec![Budget {
                period: BudgetPeriod::Daily,
                cap: Money::new(dec!(0.000001), Currency::USD),
            }],
            ..KeyPolicy::default()
        })
        .await;
    let res = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-pro:generateContent"))
        .header("x-goog-api-key", &tiny_budget)
        .json(&json!({"contents": [{"parts": [{"text": "Hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 402);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], 402, "{v}");

    // Bad input: not JSON, unknown Gemini action, too large, unknown route.
    let (key, _) = s.key(KeyPolicy::default()).await;
    let res = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let res = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:explode"))
        .header("x-goog-api-key", &key)
        .json(&json!({"contents": []}))
        .send()
        .await
        .unwrap();
    assert!(
        res.status() == 404 || res.status() == 400,
        "{}",
        res.status()
    );
    // Just over the limit (a few KiB past it fit in the socket buffers, so the client
    // finishes writing). The server answers 413 and closes with the rest unread; the
    // kernel may then reset the connection before the client reads the answer, so a
    // reset is a refusal too. Anything else (a 2xx, another status) fails.
    let huge = json!({"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "x".repeat(s.state.max_body_bytes + 1024)}]});
    let sent = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(huge.to_string())
        .send()
        .await;
    match sent {
        Ok(res) => assert_eq!(res.status(), 413),
        Err(e) => assert!(
            !e.is_timeout() && (e.is_request() || e.is_connect() || e.is_body()),
            "oversized body: {e:?}"
        ),
    }
    let res = s
        .http
        .get(s.url("/v1/nothing"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.json::<Value>().await.unwrap()["error"].is_object());
    // Nothing was charged for refused requests: only the one chat request cost anything.
    let events = s.events(1).await;
    let charged: Vec<_> = events
        .iter()
        .filter(|e| !e.cost.amount().is_zero())
        .collect();
    assert_eq!(charged.len(), 1, "{events:?}");
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("relay_denials_total{reason=\"rate_limited\"}"),
        "{m}"
    );
    s.stop().await;
}

async fn fails_over_to_another_account(backend: &Backend) {
    let accounts = vec![
        account(Service::Anthropic, "overloaded", "demo-fail-529", 1),
        account(Service::Anthropic, "broken", "demo-fail-500", 1),
        account(Service::Anthropic, "healthy", "good-key", 1),
        account(Service::Openai, "only-broken", "demo-fail-500", 1),
        account(Service::Gemini, "revoked", "demo-unauthorized", 1),
    ];
    let s = TestServer::start(backend, Some(accounts)).await;
    let (key, _) = s.key(KeyPolicy::default()).await;
    // A conversation whose home is the overloaded account: it is tried first, fails, and
    // the request is answered by another account before anything reaches the client.
    let pool = s.state.relay.pools().pool(Service::Anthropic);
    let home = |sticky: &str| {
        pool.accounts()[pool.pick(Some(sticky), &[], 0).unwrap()]
            .name
            .clone()
    };
    let session = (0..1000)
        .map(|i| format!("conv-{i}"))
        .find(|c| home(c) == "overloaded")
        .unwrap();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
    let res = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("x-relay-session", &session)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["usage"]["output_tokens"],
        8
    );
    assert_eq!(s.upstream.hits("demo-fail-529"), 1);
    let now = chrono::Utc::now().timestamp_millis();
    let overloaded = pool
        .accounts()
        .iter()
        .find(|a| a.name == "overloaded")
        .unwrap();
    assert!(
        !overloaded.is_healthy(now),
        "the overloaded account cools down"
    );
    // While it cools down, every request goes elsewhere and succeeds.
    for _ in 0..6 {
        let res = s.post("/v1/messages", &key, &body).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    assert_eq!(s.upstream.hits("demo-fail-529"), 1);
    assert!(s.upstream.hits("good-key") >= 6);
    // A pool with nothing healthy: the client gets the upstream's own error, in its shape.
    let res = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    res.bytes().await.unwrap();
    // An upstream refusing our credential is a 502 for the client, not a 401.
    let res = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", &key)
        .json(&json!({"contents": [{"parts": [{"text": "Hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["status"],
        "INTERNAL"
    );
    // Failed upstream answers are not charged.
    let events = s.events(9).await;
    assert_eq!(events.len(), 9, "{events:?}");
    for failed in &events[7..] {
        assert!(failed.cost.amount().is_zero(), "{failed:?}");
    }
    s.stop().await;
}

async fn client_leaving_mid_stream(backend: &Backend) {
    let accounts = vec![account(Service::Anthropic, "stalls", "demo-stall", 1)];
    let s = TestServer::start(backend, Some(accounts)).await;
    let (key, key_id) = s
        .key(KeyPolicy {
            concurrency: Some(1),
            ..KeyPolicy::default()
        })
        .await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "Tell me a long story"}]});
    let mut res = s.post("/v1/messages", &key, &body).await;
    assert_eq!(res.status(), 200);
    let mut seen = String::new();
    while !seen.contains("content_block_delta") {
        let chunk = res.chunk().await.unwrap().expect("stream continues");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // While the stream is open, the key's one slot is taken.
    assert_eq!(s.state.limiter.in_flight(&key_id).await.unwrap(), 1);
    let again = s.post("/v1/messages", &key, &body).await;
    assert_eq!(again.status(), 429);
    drop(res);
    // The client is gone: the lease is released and what was consumed is recorded.
    assert_eq!(s.in_flight_settles(&key_id).await, 0);
    let events = s.events(1).await;
    let e = events.last().unwrap();
    assert_eq!(e.outcome, MeterOutcome::ClientDisconnected);
    assert!(e.usage.input_tokens > 0, "{e:?}");
    assert!(e.cost.amount() > Decimal::ZERO);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_relays_and_meters() {
    relays_and_meters(&Backend::SqliteMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_denials() {
    denials_in_client_shapes(&Backend::SqliteMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_failover() {
    fails_over_to_another_account(&Backend::SqliteMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_client_disconnect() {
    client_leaving_mid_stream(&Backend::SqliteMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_end_to_end() {
    let Some(backend) = common::postgres_redis().await else {
        return;
    };
    relays_and_meters(&backend).await;
    denials_in_client_shapes(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_failover_and_disconnect() {
    let Some(backend) = common::postgres_redis().await else {
        return;
    };
    fails_over_to_another_account(&backend).await;
    client_leaving_mid_stream(&backend).await;
}
