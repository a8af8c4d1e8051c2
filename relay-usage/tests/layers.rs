//! PolicyLayer + MeteringLayer around a plain tower service: admission, error shapes,
//! streaming pass-through, exact metering, disconnects.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use relay_core::price::TokenPrices;
use relay_core::{
    AccountStatus, ApiKeyId, Budget, BudgetPeriod, Currency, KeyPolicy, ModelPrice, Money,
    PriceBook, Principal, RateWindow, SystemClock, UserId,
};
use relay_usage::layer::metering::MeteringLayer;
use relay_usage::layer::policy::PolicyLayer;
use relay_usage::limiter::Limiter;
use relay_usage::sink::{MemoryUsageSink, MeterOutcome};
use relay_usage::MemoryLimiter;
use rust_decimal_macros::dec;
use tokio::sync::mpsc;
use tower::{service_fn, Layer, Service, ServiceExt};

type UpBody = UnsyncBoxBody<Bytes, Infallible>;

const SSE: &[&str] = &[
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1000,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":500}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

fn prices() -> Arc<PriceBook> {
    // $3 / $15 per million, catalog-style cache prices from the documented fallbacks.
    let book = PriceBook::default()
        .with_override(
            "claude-test",
            ModelPrice::new(TokenPrices::per_million(dec!(3), dec!(15))),
        )
        .expect("valid price");
    Arc::new(book)
}

struct Stack {
    limiter: Arc<dyn Limiter>,
    sink: Arc<MemoryUsageSink>,
    principal: Principal,
    /// Sends the chunks of the next streamed upstream response.
    stream_tx: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<Bytes>>>>,
}

fn stack(policy: KeyPolicy) -> Stack {
    Stack {
        limiter: Arc::new(MemoryLimiter::new(Arc::new(SystemClock))),
        sink: Arc::new(MemoryUsageSink::new(100)),
        principal: Principal {
            user_id: UserId::new(),
            key_id: ApiKeyId::new(),
            status: AccountStatus::Active,
            policy: Arc::new(policy),
        },
        stream_tx: Arc::new(tokio::sync::Mutex::new(None)),
    }
}

impl Stack {
    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
        Error = Infallible,
    > + Clone {
        self.service_with(&MeteringLayer::new(prices(), self.sink.clone()))
    }

    /// The stack with `metering` in place of one recording into `self.sink`.
    fn service_with(
        &self,
        metering: &MeteringLayer,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
        Error = Infallible,
    > + Clone {
        let streams = self.stream_tx.clone();
        let upstream = service_fn(move |req: Request<Full<Bytes>>| {
            let streams = streams.clone();
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&body).to_string();
                if text.contains("\"fail\"") {
                    let r = Response::builder()
                        .status(500)
                        .body(Full::new(Bytes::from_static(b"{\"type\":\"error\"}")).boxed_unsync())
                        .unwrap_or_default();
                    return Ok::<_, Infallible>(r);
                }
                if text.contains("\"stream\":true") {
                    let rx = streams.lock().await.take();
                    let body: UpBody = match rx {
                        Some(rx) => {
                            let s = futures_util::stream::unfold(rx, |mut rx| async move {
                                rx.recv()
                                    .await
                                    .map(|b| (Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
                            });
                            StreamBody::new(s).boxed_unsync()
                        }
                        None => Full::new(Bytes::from(SSE.concat())).boxed_unsync(),
                    };
                    return Ok(Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body)
                        .unwrap_or_default());
                }
                let json = r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":1000,"cache_read_input_tokens":2000,"output_tokens":500}}"#;
                Ok(Response::new(Full::new(Bytes::from(json)).boxed_unsync()))
            }
        });
        let metered = metering.layer(upstream);
        let policy = PolicyLayer::new(self.limiter.clone(), prices())
            .with_max_body_bytes(4096)
            .layer(metered);
        let principal = self.principal.clone();
        // Stands in for ApiKeyAuthLayer: puts the principal into extensions.
        tower::ServiceBuilder::new()
            .map_request(move |mut req: Request<Full<Bytes>>| {
                if req.headers().contains_key("x-api-key") {
                    req.extensions_mut().insert(principal.clone());
                }
                req
            })
            .service(policy)
    }
}

fn request(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("x-api-key", "test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}

async fn send<S, B>(svc: &S, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).to_string(),
    )
}

// 1000 * 3e-6 + 2000 * 0.3e-6 (read = 0.1x input) + 500 * 15e-6 = 0.003 + 0.0006 + 0.0075
const EXPECTED_COST: rust_decimal::Decimal = dec!(0.0111);

#[tokio::test]
async fn json_response_passes_through_and_is_metered_exactly() {
    let s = stack(KeyPolicy::default());
    let svc = s.service();
    let (status, _, body) = send(
        &svc,
        request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":1024,"messages":[]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"text\":\"Hi\""));
    let events = s.sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.outcome, MeterOutcome::Complete);
    assert_eq!(e.usage.input_tokens, 1000);
    assert_eq!(e.usage.cache_read_tokens, 2000);
    assert_eq!(e.usage.output_tokens, 500);
    assert_eq!(e.cost, Money::new(EXPECTED_COST, Currency::USD));
    assert_eq!(e.key_id, s.principal.key_id);
    assert_eq!(s.limiter.in_flight(&s.principal.key_id).await.ok(), Some(0));
}

#[tokio::test]
async fn sse_streams_through_unchanged_and_is_metered() {
    let s = stack(KeyPolicy {
        service_multipliers: [(relay_core::Service::Anthropic, dec!(2))].into(),
        ..KeyPolicy::default()
    });
    let svc = s.service();
    let (status, headers, body) = send(
        &svc,
        request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":1024,"stream":true}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(body, SSE.concat());
    let events = s.sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events[0].outcome, MeterOutcome::Complete);
    // The key's service multiplier doubles the exact cost.
    assert_eq!(events[0].cost.amount(), EXPECTED_COST * dec!(2));
}

#[tokio::test]
async fn chunks_reach_the_client_before_the_stream_ends() {
    let s = stack(KeyPolicy::default());
    let (tx, rx) = mpsc::channel(8);
    *s.stream_tx.lock().await = Some(rx);
    let svc = s.service();
    let res = svc
        .clone()
        .oneshot(request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":1024,"stream":true}"#,
        ))
        .await
        .expect("infallible");
    let mut body = res.into_body().into_data_stream();
    tx.send(Bytes::from(SSE[0])).await.expect("send");
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first event arrives while the upstream is still open");
    assert_eq!(first.and_then(Result::ok), Some(Bytes::from(SSE[0])));
    // The client goes away mid-stream.
    drop(body);
    let events = s.sink.wait_for(1, Duration::from_secs(5)).await;
    let e = &events[0];
    assert_eq!(e.outcome, MeterOutcome::ClientDisconnected);
    // What message_start reported is charged: 1000 input, 2000 cache read, 1 output.
    assert_eq!(e.usage.input_tokens, 1000);
    assert_eq!(e.usage.output_tokens, 1);
    assert_eq!(e.cost.amount(), dec!(0.003) + dec!(0.0006) + dec!(0.000015));
    for _ in 0..100 {
        if s.limiter.in_flight(&s.principal.key_id).await.ok() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.limiter.in_flight(&s.principal.key_id).await.ok(), Some(0));
}

#[tokio::test]
async fn upstream_errors_are_not_charged() {
    let s = stack(KeyPolicy::default());
    let svc = s.service();
    let (status, _, _) = send(
        &svc,
        request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":10,"metadata":"fail"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let events = s.sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events[0].outcome, MeterOutcome::UpstreamStatus);
    assert!(events[0].cost.is_zero());
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_default()
}

#[tokio::test]
async fn denials_answer_in_the_clients_error_shape() {
    let usd = |s: &str| Money::parse(s, Currency::USD).expect("amount");
    let s = stack(KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: 60,
            max_requests: Some(2),
            max_tokens: None,
            max_cost: None,
        }],
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: usd("0.05"),
        }],
        allowed_models: vec!["claude-*".into()],
        ..KeyPolicy::default()
    });
    let svc = s.service();
    // Not allowed: 403, Anthropic shape.
    let (status, _, body) = send(
        &svc,
        request("/v1/messages", r#"{"model":"gpt-4o","max_tokens":10}"#),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v = json(&body);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "permission_error");
    // Budget: max_tokens 4000 * 15e-6 = 0.06 > 0.05: 402, OpenAI shape.
    let (status, _, body) = send(
        &svc,
        request(
            "/v1/chat/completions",
            r#"{"model":"claude-test","max_tokens":4000}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(json(&body)["error"]["code"], "insufficient_quota");
    // Two requests fit the window, the third gets 429 with Retry-After.
    for _ in 0..2 {
        let (status, _, _) = send(
            &svc,
            request("/v1/messages", r#"{"model":"claude-test","max_tokens":10}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = send(
        &svc,
        request("/v1/messages", r#"{"model":"claude-test","max_tokens":10}"#),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&body)["error"]["type"], "rate_limit_error");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=120).contains(&retry), "retry-after {retry}");
    // Which cap refused, its limit and window.
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-window-secs"], "60");
    // Gemini shape on Gemini routes.
    let (status, _, body) = send(
        &svc,
        request(
            "/v1beta/models/claude-test:generateContent",
            r#"{"contents":[]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&body)["error"]["status"], "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_count_nothing() {
    let s = stack(KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: 60,
            max_requests: Some(1),
            max_tokens: None,
            max_cost: None,
        }],
        ..KeyPolicy::default()
    });
    let svc = s.service();
    let cases = [
        (
            request("/v1/messages", "{not json"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            request("/v1/messages", r#"{"max_tokens":1}"#),
            StatusCode::BAD_REQUEST,
            "no `model`",
        ),
        (
            request("/v1/messages", r#"{"model":"unknown-model"}"#),
            StatusCode::BAD_REQUEST,
            "no price for model",
        ),
        (
            request(
                "/v1/messages",
                &format!(r#"{{"model":"claude-test","x":"{}"}}"#, "a".repeat(5000)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 4096",
        ),
    ];
    for (req, want, needle) in cases {
        let (status, _, body) = send(&svc, req).await;
        assert_eq!(status, want, "{body}");
        assert!(body.contains(needle), "{body}");
    }
    // No API key: 401.
    let mut req = request("/v1/messages", r#"{"model":"claude-test"}"#);
    req.headers_mut().remove("x-api-key");
    let (status, _, _) = send(&svc, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // None of that used the window's single request.
    let (status, _, _) = send(
        &svc,
        request("/v1/messages", r#"{"model":"claude-test","max_tokens":5}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Non-LLM routes pass through untouched.
    let (status, _, _) = send(&svc, request("/healthz", "")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_closing_right_after_the_end_marker_got_a_complete_response() {
    let s = stack(KeyPolicy::default());
    let (tx, rx) = mpsc::channel(8);
    *s.stream_tx.lock().await = Some(rx);
    let svc = s.service();
    let res = svc
        .clone()
        .oneshot(request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":1024,"stream":true}"#,
        ))
        .await
        .expect("infallible");
    let mut body = res.into_body().into_data_stream();
    for chunk in SSE {
        tx.send(Bytes::from(*chunk)).await.expect("send");
        let _ = body.next().await;
    }
    // The upstream connection is still open, but message_stop was delivered: the client
    // (as the openai and anthropic SDKs do) closes now.
    drop(body);
    let events = s.sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events[0].outcome, MeterOutcome::Complete);
    assert_eq!(events[0].cost.amount(), EXPECTED_COST);
    drop(tx);
}

#[tokio::test]
async fn a_body_with_a_known_length_completes_without_a_final_poll() {
    use http_body::Body as _;
    let s = stack(KeyPolicy::default());
    let svc = s.service();
    let res = svc
        .clone()
        .oneshot(request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":1024}"#,
        ))
        .await
        .expect("infallible");
    // Poll exactly one frame, as hyper does for a body whose length it knows, then drop.
    let mut body = Box::pin(res.into_body());
    let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
    assert!(frame.is_some());
    drop(body);
    let events = s.sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events[0].outcome, MeterOutcome::Complete);
    assert_eq!(events[0].cost.amount(), EXPECTED_COST);
}

#[tokio::test]
async fn settled_waits_for_a_sink_that_is_still_recording() {
    let s = stack(KeyPolicy::default());
    let sink = relay_usage::sink::GatedSink::closed(s.sink.clone());
    let gate = sink.gate.clone();
    let metering = MeteringLayer::new(prices(), Arc::new(sink));
    let svc = s.service_with(&metering);
    let (status, _, body) = send(
        &svc,
        request(
            "/v1/messages",
            r#"{"model":"claude-test","max_tokens":1024,"messages":[]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"text\":\"Hi\""));
    // The lease was settled before the body's end reached the client; the event, which
    // the closed sink cannot take, waits in a task of its own, and `settled` with it...
    assert_eq!(s.limiter.in_flight(&s.principal.key_id).await.ok(), Some(0));
    let waited = tokio::time::timeout(Duration::from_millis(50), metering.settled()).await;
    assert!(
        waited.is_err(),
        "settled() returned before the event was recorded"
    );
    assert!(s.sink.recent().is_empty());
    // ...until it records: then `settled` returns, with the event there.
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(5), metering.settled())
        .await
        .expect("settled() returns once the sink recorded");
    let events = s.sink.recent();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].cost, Money::new(EXPECTED_COST, Currency::USD));
    // With nothing pending, `settled` returns at once.
    tokio::time::timeout(Duration::from_secs(5), metering.settled())
        .await
        .expect("nothing pending");
}
