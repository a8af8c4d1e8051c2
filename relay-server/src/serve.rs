//! Serving HTTP on several single-threaded runtimes, one connection per thread.
//!
//! On tokio's work-stealing runtime a relayed request crossed threads: the connection's
//! task woke a parked worker to run the upstream connection's task, and that worker woke
//! the first one with the response: two futex wake-ups per request (seen with `strace` at
//! one connection), each costing an idle CPU's wake-up on a virtual machine. Here one
//! acceptor hands each accepted connection, round robin, to one of N threads, each running
//! a single-threaded runtime, as nginx's workers do: a connection and everything its
//! requests do (parsing, admission, the upstream call on the thread's own connection pool,
//! see [`crate::upstream::Relay`], and metering) stay on one thread. Background work
//! (usage writer, jobs, Redis connections, the database pool) stays on the main runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use axum::Router;
use relay_usage::layer::metering::MeteringLayer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::observe::Observe;

/// Answers go out as soon as they are written: without `TCP_NODELAY` the end of a streamed
/// body can wait for the client's ACK of the previous segment (Nagle).
pub(crate) fn set_nodelay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
    }
}

/// A thread's side of the acceptor: connections accepted on the main runtime, registered
/// with this thread's runtime as they are taken.
struct Handoff {
    rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for Handoff {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((stream, peer)) = self.rx.recv().await else {
                // The acceptor stopped: shutting down, and the shutdown signal ends serving.
                return std::future::pending().await;
            };
            match TcpStream::from_std(stream) {
                Ok(stream) => return (stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, %peer, "a connection could not join its thread's runtime")
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serve `app` on `threads` threads until `shutdown`, then stop accepting, let every thread
/// drain its connections (streams included) and the settlements `metering` spawned on it,
/// and return.
pub(crate) async fn on_threads(
    app: Observe<Router>,
    listener: TcpListener,
    threads: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
    metering: MeteringLayer,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::with_capacity(threads);
    let mut finished = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let (done_tx, done_rx) = oneshot::channel();
        finished.push(done_rx);
        let app = app.clone();
        let metering = metering.clone();
        let mut stop = stop_rx.clone();
        std::thread::Builder::new()
            .name(format!("relay-http-{i}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            tokio::spawn(standing_tick());
                            let listener = Handoff { rx, local }.tap_io(set_nodelay);
                            axum::serve(listener, app.make_service())
                                .with_graceful_shutdown(async move {
                                    // An error means the sender is gone: stop as well.
                                    let _ = stop.wait_for(|stopping| *stopping).await;
                                })
                                .await?;
                            // Dropping the runtime would drop the settlement tasks with it.
                            settle_metering(&metering).await;
                            Ok(())
                        })
                    });
                // The receiver only goes away if the server's own task was dropped.
                let _ = done_tx.send(served);
            })?;
    }
    tokio::select! {
        () = shutdown => {}
        () = accept_loop(&listener, &senders) => {}
    }
    drop(listener);
    drop(senders);
    let _ = stop_tx.send(true);
    let mut first_error = None;
    for done in finished {
        let result = done
            .await
            .unwrap_or_else(|_| Err(io::Error::other("an HTTP thread ended without a report")));
        if let Err(e) = result {
            tracing::error!(error = %e, "an HTTP thread failed");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How long shutdown waits for the settlements of ended responses (a Redis limiter that
/// stopped answering would otherwise hold it forever; the leases then expire on their own).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait, within [`SETTLE_TIMEOUT`], until every ended response has settled and recorded.
pub(crate) async fn settle_metering(metering: &MeteringLayer) {
    if tokio::time::timeout(SETTLE_TIMEOUT, metering.settled())
        .await
        .is_err()
    {
        tracing::error!("responses still settling at shutdown; their leases will expire");
    }
}

/// A timer that always fires within a second, on each HTTP thread.
///
/// Each relayed request arms a timer (the upstream's idle timeout, minutes away). When a
/// thread's runtime went to sleep with no timer armed, arming one made tokio wake its own
/// driver (an eventfd write and an extra `epoll_wait`, once per request at low load) to
/// recompute the sleep; with a nearer timer always pending, a later one needs no wake-up.
async fn standing_tick() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Accept forever, handing connections to the threads in turn.
async fn accept_loop(
    listener: &TcpListener,
    threads: &[mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>],
) {
    let mut next = 0usize;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match stream.into_std() {
                Ok(stream) => {
                    if let Some(thread) = threads.get(next % threads.len()) {
                        // A send fails only once that thread has stopped (shutting down).
                        let _ = thread.send((stream, peer));
                    }
                    next = next.wrapping_add(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %peer, "an accepted connection could not be handed over")
                }
            },
            // Out of file descriptors and the like: accepting again at once would spin.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
