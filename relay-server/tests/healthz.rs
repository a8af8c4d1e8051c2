//! The server answers `/healthz` and shuts down gracefully.

use std::time::Duration;

use relay_server::config::{Args, Config};

#[tokio::test]
async fn healthz_answers_and_shutdown_is_graceful() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let args = Args {
        database_url: format!("sqlite://{}", dir.path().join("relay-test.db").display()),
        redis_url: None,
        bind: format!("127.0.0.1:{port}"),
        ..Args::default()
    };
    let config = Config::from_args(&args).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay_server::run(config, async {
        let _ = rx.await;
    }));
    let mut body = String::new();
    for _ in 0..500 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            s.read_to_string(&mut body).await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains(r#"{"status":"ok"}"#), "{body}");
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after the shutdown signal")
        .unwrap()
        .unwrap();
}
