//! `relay-loadgen`: a small closed-loop HTTP/1.1 load generator for `benches/load/run.sh`,
//! a stand-alone demo upstream to measure against, and a bare hyper reverse proxy (the
//! floor under a hyper-based gateway).
//!
//! ```text
//! relay-loadgen upstream --bind 127.0.0.1:9101
//! relay-loadgen proxy --bind 127.0.0.1:9105 --upstream 127.0.0.1:9101
//! relay-loadgen run --url http://127.0.0.1:8080/v1/messages --connections 32 --seconds 10 \
//!     --header 'x-api-key: rk_live_...' --body '{"model":...}'
//! ```
//!
//! Each connection sends its next request when the previous answer has been read to the
//! end (keep-alive). Only loopback targets are accepted, and runs are bounded (at most
//! 120 s), so a mistyped URL cannot turn this into traffic against anybody else.

mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Parser)]
#[command(
    name = "relay-loadgen",
    about = "Load generator and demo upstream for relay benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the deterministic demo upstream.
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9101")]
        bind: SocketAddr,
    },
    /// Relay every request to `upstream` as a bare hyper reverse proxy.
    Proxy {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9105")]
        bind: SocketAddr,
        /// Address of the upstream (HTTP/1.1).
        #[arg(long)]
        upstream: SocketAddr,
        /// Serving threads, each with a single-threaded runtime (default: the CPUs).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Send requests and report throughput and latency.
    Run {
        /// Target URL (loopback only).
        #[arg(long)]
        url: String,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Duration in seconds (at most 120).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Extra header `name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// JSON body (POST).
        #[arg(long)]
        body: String,
    },
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    non_2xx: u64,
}

async fn worker(
    addr: SocketAddr,
    req: Arc<http::Request<Full<Bytes>>>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        tally.errors += 1;
        return tally;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        tally.errors += 1;
        return tally;
    };
    tokio::spawn(conn);
    while Instant::now() < deadline {
        let mut r = http::Request::builder()
            .method(req.method())
            .uri(req.uri().clone());
        for (k, v) in req.headers() {
            r = r.header(k, v);
        }
        let Ok(request) = r.body(req.body().clone()) else {
            break;
        };
        if sender.ready().await.is_err() {
            tally.errors += 1;
            break;
        }
        let started = Instant::now();
        match sender.send_request(request).await {
            Ok(res) => {
                let ok = res.status().is_success();
                if res.into_body().collect().await.is_err() {
                    tally.errors += 1;
                    break;
                }
                tally
                    .latencies_us
                    .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                if !ok {
                    tally.non_2xx += 1;
                }
            }
            Err(_) => {
                tally.errors += 1;
                break;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    url: &str,
    connections: usize,
    seconds: u64,
    headers: &[String],
    body: String,
) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--url: {e}"))?;
    let host = uri.host().ok_or("--url needs a host")?;
    let port = uri.port_u16().unwrap_or(80);
    let ip: std::net::IpAddr = if host == "localhost" {
        [127, 0, 0, 1].into()
    } else {
        host.parse()
            .map_err(|_| "--url host must be a loopback IP or localhost")?
    };
    if !ip.is_loopback() {
        return Err("only loopback targets are allowed".into());
    }
    let addr = SocketAddr::new(ip, port);
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", format!("{host}:{port}"))
        .header("content-type", "application/json");
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header `{h}` is not `name: value`"))?;
        builder = builder.header(k.trim(), v.trim());
    }
    let req = Arc::new(
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?,
    );
    let duration = Duration::from_secs(seconds.clamp(1, 120));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections.clamp(1, 1024))
        .map(|_| tokio::spawn(worker(addr, Arc::clone(&req), deadline)))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            all.latencies_us.extend(t.latencies_us);
            all.errors += t.errors;
            all.non_2xx += t.non_2xx;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    println!(
        "requests={n} rps={:.0} p50_us={} p99_us={} errors={} non_2xx={}",
        n as f64 / elapsed,
        percentile(&all.latencies_us, 0.50),
        percentile(&all.latencies_us, 0.99),
        all.errors,
        all.non_2xx
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Upstream { bind } => {
            match relay_server::demo::DemoUpstream::start(bind, false).await {
                Ok(up) => {
                    println!("demo upstream on {}", up.base_url());
                    let _ = tokio::signal::ctrl_c().await;
                    up.stop().await;
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("relay-loadgen: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Proxy {
            bind,
            upstream,
            threads,
        } => {
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            match proxy::serve(bind, upstream, threads).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("relay-loadgen: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            url,
            connections,
            seconds,
            headers,
            body,
        } => match run(&url, connections, seconds, &headers, body).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay-loadgen: {e}");
                std::process::ExitCode::from(2)
            }
        },
    }
}
