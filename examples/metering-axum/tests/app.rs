//! The example meters exactly and enforces its policy.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use relay_core::price::TokenPrices;
use relay_core::{ModelPrice, PriceBook};
use relay_usage::sink::{MemoryUsageSink, MeterOutcome};
use rust_decimal::Decimal;
use tower::ServiceExt;

fn request(key: &str, model: &str) -> axum::http::Request<Body> {
    axum::http::Request::post("/v1/messages")
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"model":"{model}","max_tokens":64}}"#
        )))
        .unwrap_or_default()
}

#[tokio::test]
async fn meters_admits_and_refuses() {
    let prices = PriceBook::default()
        .with_default_price(ModelPrice::new(TokenPrices::per_million(
            Decimal::from(3),
            Decimal::from(15),
        )))
        .expect("price");
    let sink = Arc::new(MemoryUsageSink::new(100));
    let app = metering_axum::app(Arc::new(prices), sink.clone());

    let res = app
        .clone()
        .oneshot(request("sk-demo", "claude-sonnet-4-5"))
        .await
        .expect("infallible");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Hello from the example."));
    let events = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events[0].outcome, MeterOutcome::Complete);
    // 12 * 3e-6 + 6 * 15e-6 + 100 * 0.3e-6 = 0.000036 + 0.00009 + 0.00003
    assert_eq!(events[0].cost.amount(), Decimal::new(156, 6));

    // Wrong key: 401; a model outside the allow-list: 403.
    let res = app
        .clone()
        .oneshot(request("nope", "claude-sonnet-4-5"))
        .await
        .expect("infallible");
    assert_eq!(res.status(), 401);
    let res = app
        .clone()
        .oneshot(request("sk-demo", "gpt-4o"))
        .await
        .expect("infallible");
    assert_eq!(res.status(), 403);
    // 5 per minute: four more fit, the sixth is refused with Retry-After.
    for _ in 0..4 {
        let res = app
            .clone()
            .oneshot(request("sk-demo", "claude-sonnet-4-5"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), 200);
    }
    let res = app
        .clone()
        .oneshot(request("sk-demo", "claude-sonnet-4-5"))
        .await
        .expect("infallible");
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
}
