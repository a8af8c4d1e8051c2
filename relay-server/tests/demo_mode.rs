//! `relay-server --demo` with `RELAY_DEMO_KEY`: the fixed key works against the in-process
//! upstream, and the server stops gracefully.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use relay_server::config::{Args, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_serves_the_fixed_key() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let key = format!("rk_live_{}", "d".repeat(43));
    let args = Args {
        database_url: format!("sqlite://{}", dir.path().join("demo.db").display()),
        bind: format!("127.0.0.1:{port}"),
        demo: true,
        demo_key: Some(key.clone()),
        ..Args::default()
    };
    let config = Config::load(&args).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay_server::run(config, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..400 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "server did not come up");
    let res = http
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", &key)
        .json(
            &serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": true,
            "messages": [{"role": "user", "content": "Hello"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("message_stop"));
    let res = http
        .post(format!(
            "{url}/v1beta/models/gemini-2.5-flash:generateContent?key={key}"
        ))
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "Hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("server stops after the shutdown signal")
        .unwrap()
        .unwrap();
}
