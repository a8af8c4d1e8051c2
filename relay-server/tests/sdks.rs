//! The official `anthropic` and `openai` Python SDKs work against the gateway unchanged,
//! streaming included. Runs when python3 and both packages are installed; with CI=true
//! they must be (`.ci/run` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestServer};
use relay_core::{KeyPolicy, RateWindow};
use relay_usage::sink::MeterOutcome;

fn python_ready() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import anthropic, openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdks_work_unchanged() {
    if !python_ready() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true requires python3 with the anthropic and openai packages"
        );
        eprintln!("skipping: python3 with anthropic and openai is not available");
        return;
    }
    let s = TestServer::start(&Backend::SqliteMemory, None).await;
    let (key, _) = s.key(KeyPolicy::default()).await;
    let (limited, _) = s
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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdks.py");
    let base = format!("http://{}", s.addr);
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("RELAY_BASE", &base)
        .env("RELAY_KEY", &key)
        .env("RELAY_LIMITED_KEY", &limited)
        .env("RELAY_REPLY", relay_server::demo::upstream::REPLY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("python sdks ok"));
    // Every relayed LLM call was metered with its full usage: 2 Anthropic, 4 OpenAI,
    // 1 limited. (The openai SDK closes a chat stream as soon as it reads `data: [DONE]`,
    // before the body's end, so that one may be recorded as a disconnect, with all of its
    // usage.)
    let events = s.events(7).await;
    assert_eq!(events.len(), 7, "{events:?}");
    for e in &events {
        assert_eq!(e.usage.output_tokens, 12, "{e:?}");
        assert!(
            e.usage.input_tokens > 0 && !e.cost.amount().is_zero(),
            "{e:?}"
        );
        assert!(
            matches!(
                e.outcome,
                MeterOutcome::Complete | MeterOutcome::ClientDisconnected
            ),
            "{e:?}"
        );
    }
    s.stop().await;
}
