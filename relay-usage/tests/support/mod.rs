//! Shared test support: reaching the real Redis server.
#![allow(dead_code)]

use redis::aio::ConnectionManager;
use relay_core::ApiKeyId;

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, or `None` (with a notice) when it is not reachable
/// outside CI. In CI (`CI=true`) an unreachable server fails the test.
pub async fn redis_conn() -> Option<ConnectionManager> {
    let url = redis_url();
    let result = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = ConnectionManager::new(client).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    }
    .await;
    match result {
        Ok(c) => Some(c),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but Redis at {url} is unreachable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: Redis at {url} unreachable ({e})");
            None
        }
    }
}

/// The records of a limiter state (layout in `limiter/redis/shape.rs`): the leases, as
/// (stored id, expiry), and the stored lease ids of the settlement notes. Old-format
/// settled records are skipped.
pub fn records(raw: &[u8]) -> (Vec<(i64, i64)>, Vec<i64>) {
    let value = |at: usize| {
        let bytes: [u8; 8] = raw[at..at + 8].try_into().expect("8 bytes");
        f64::from_le_bytes(bytes) as i64
    };
    let first = usize::try_from(value(0) - 1).expect("a state, not notes only");
    assert_eq!((raw.len() - first) % 32, 0, "{raw:?}");
    let (mut leases, mut notes) = (Vec::new(), Vec::new());
    for at in (first..raw.len()).step_by(32) {
        let (id, second) = (value(at), value(at + 8));
        match (id < 0, second < 0) {
            (true, false) => leases.push((id, second)),
            (true, true) => notes.push(id),
            _ => {}
        }
    }
    (leases, notes)
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!(
        "relaytest:{}",
        ApiKeyId::new().as_str().trim_start_matches("key_")
    )
}

/// A TCP proxy to the test Redis that can stop forwarding, to simulate a dead link.
pub struct PausableProxy {
    addr: std::net::SocketAddr,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PausableProxy {
    /// Start a proxy on 127.0.0.1 in front of the test Redis.
    pub async fn start() -> Option<Self> {
        redis_conn().await?;
        let target = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = paused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let flag = flag.clone();
                tokio::spawn(pipe(client, server, flag));
            }
        });
        Some(Self { addr, paused })
    }

    /// The proxy's Redis URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stop forwarding: requests get no answer.
    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pipe(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let p1 = paused.clone();
    let up = async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if p1.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = sr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if paused.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}
