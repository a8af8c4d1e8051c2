//! A bare HTTP/1.1 reverse proxy on hyper, laid out as the gateway serves (one
//! single-threaded runtime per thread, connections handed out in turn, an upstream
//! connection kept per client connection) and doing nothing else: the floor under any
//! hyper-based gateway, measured beside nginx and the relay by `benches/load/run.sh`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// Serve on `bind`, forwarding every request to `upstream`, on `threads` threads, until the
/// process is stopped.
pub async fn serve(bind: SocketAddr, upstream: SocketAddr, threads: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(bind).await?;
    let mut senders = Vec::new();
    for _ in 0..threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        senders.push(tx);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(run_thread(rx, upstream));
            }
        });
    }
    let mut next = 0usize;
    loop {
        let (stream, _) = listener.accept().await?;
        let stream = stream.into_std()?;
        if let Some(tx) = senders.get(next % senders.len()) {
            let _ = tx.send(stream);
        }
        next = next.wrapping_add(1);
    }
}

async fn run_thread(mut rx: mpsc::UnboundedReceiver<std::net::TcpStream>, upstream: SocketAddr) {
    while let Some(stream) = rx.recv().await {
        let Ok(stream) = TcpStream::from_std(stream) else {
            continue;
        };
        tokio::spawn(connection(stream, upstream));
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    let sender = Arc::new(Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let sender = Arc::clone(&sender);
        async move { sender.lock().await.send_request(req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}
