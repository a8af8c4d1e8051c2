//! `relay-server`: the reference gateway binary.

use clap::Parser;
use relay_server::config::{Args, Config};

// The gateway allocates many small, short-lived buffers per request on two or more
// threads; glibc's allocator spent a fifth of a relayed request's instructions on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay-server: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match relay_server::run(config, relay_server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
