//! Shutdown waits for the settlements metering could not finish inline.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use relay_core::{AccountStatus, ApiKeyId, KeyPolicy, PriceBook, Principal, SystemClock, UserId};
use relay_usage::layer::metering::MeteringLayer;
use relay_usage::layer::policy::PolicyLayer;
use relay_usage::limiter::Limiter;
use relay_usage::sink::{GatedSink, MemoryUsageSink};
use relay_usage::MemoryLimiter;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":10,"output_tokens":5}}"#;

async fn post_once(addr: std::net::SocketAddr) -> (http::StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/messages")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[]}"#,
        ))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn shutdown_waits_for_a_settlement_still_recording() {
    let prices = Arc::new(
        PriceBook::from_litellm_json(crate::app::EMBEDDED_CATALOG)
            .unwrap()
            .0,
    );
    let limiter: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new(Arc::new(SystemClock)));
    let recorded = Arc::new(MemoryUsageSink::new(16));
    let sink = GatedSink::closed(Arc::clone(&recorded));
    let gate = Arc::clone(&sink.gate);
    let metering = MeteringLayer::new(Arc::clone(&prices), Arc::new(sink));
    let principal = Principal {
        user_id: UserId::new(),
        key_id: ApiKeyId::new(),
        status: AccountStatus::Active,
        policy: Arc::new(KeyPolicy::default()),
    };
    let authenticated = principal.clone();
    let app = Router::new()
        .route(
            "/v1/messages",
            post(|| async { ([("content-type", "application/json")], ANSWER) }),
        )
        .layer(
            tower::ServiceBuilder::new()
                // Stands in for the authentication layer.
                .layer(axum::middleware::from_fn(
                    move |mut req: Request, next: Next| {
                        req.extensions_mut().insert(authenticated.clone());
                        next.run(req)
                    },
                ))
                .layer(PolicyLayer::new(Arc::clone(&limiter), prices))
                .layer(metering.clone()),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(super::on_threads(
        tower::Layer::layer(&crate::observe::ObserveLayer, app),
        listener,
        2,
        async move {
            let _ = stopped.await;
        },
        metering,
    ));

    let (status, body) = post_once(addr).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body, ANSWER);
    // The lease is back; the usage event waits for the gate in a task on an HTTP thread.
    assert_eq!(limiter.in_flight(&principal.key_id).await.ok(), Some(0));
    assert!(recorded.recent().is_empty());

    // Shutting down does not end serving (nor drop that thread's runtime, with the task)
    // while the event is unrecorded...
    stop.send(()).unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), &mut server).await;
    assert!(
        early.is_err(),
        "the server stopped before the usage was recorded"
    );
    assert!(recorded.recent().is_empty());
    // ...and ends once it is recorded, with the event kept.
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the usage is recorded")
        .unwrap()
        .unwrap();
    let events = recorded.recent();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key_id, principal.key_id);
    assert_eq!(events[0].usage.input_tokens, 10);
    assert_eq!(events[0].usage.output_tokens, 5);
}
