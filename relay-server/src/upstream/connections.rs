//! Upstream connections: one keep-alive pool per thread, HTTP/1.1 or HTTP/2 by ALPN.
//!
//! hyper-util's pooled client spawned a task per HTTP/1 request to wait for the connection
//! to become free again, and hashed the pool key (scheme and authority, byte by byte) three
//! times per request. Here an HTTP/1 connection goes back to its thread's pool when the
//! response body reports its end, and the next request takes the most recently used one
//! (warm in every cache), so a relayed request spawns nothing. An HTTP/2 connection is
//! shared by every request to its origin on the thread.
//!
//! Each thread has its own pool ([`relay_core::PerThread`]): a connection's task runs on
//! the runtime that opened it, and a request sent from another thread would cross to it and
//! back. A connection that the upstream closed while idle is skipped at checkout; a request
//! it refused before sending a byte is sent again on another connection.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Idle HTTP/1 connections kept per origin and thread.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection unused for this long is closed (upstreams close theirs after a
/// minute or more; reusing one they are closing fails the request).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Where a request goes: the scheme and authority (the pool key), and the `Host` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority`, lower-cased: compared at every checkout.
    key: Arc<str>,
    host: HeaderValue,
}

impl Origin {
    /// `None` if the authority cannot be a `Host` header (it always can once parsed).
    pub(crate) fn new(scheme: Scheme, authority: Authority) -> Option<Self> {
        let key = format!("{scheme}://{authority}")
            .to_ascii_lowercase()
            .into();
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        Some(Self {
            scheme,
            authority,
            key,
            host,
        })
    }

    /// The absolute URI of `path_and_query` at this origin.
    pub(crate) fn uri_of(&self, path_and_query: PathAndQuery) -> Result<Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Ok(Uri::from_parts(parts)?)
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Connecting (TCP, then TLS) took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// Connecting or the TLS handshake failed.
    #[error("connect failed: {0}")]
    Connect(BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("request failed: {0}")]
    Request(#[source] hyper::Error),
}

/// The TLS-capable connector and its timeout (covering TCP and TLS both).
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl Connector {
    /// TCP (no Nagle delay), then TLS for `https` with the webpki roots, offering HTTP/2
    /// and HTTP/1.1 by ALPN; `timeout` for each connection.
    pub(crate) fn https(timeout: Duration) -> Self {
        Self::over(
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
            timeout,
        )
    }

    /// As [`Connector::https`], trusting what `tls` trusts (tests with their own CA).
    #[cfg(test)]
    fn with_tls(tls: rustls::ClientConfig, timeout: Duration) -> Self {
        Self::over(
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls),
            timeout,
        )
    }

    fn over(
        tls: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
        timeout: Duration,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let inner = tls
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Self { inner, timeout }
    }

    async fn connect(&self, origin: &Origin) -> Result<Stream, ClientError> {
        let uri = origin
            .uri_of(PathAndQuery::from_static("/"))
            .map_err(|e| ClientError::Connect(e.into()))?;
        let connecting = self.inner.clone().call(uri);
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(ClientError::Connect(e)),
            Err(_) => Err(ClientError::ConnectTimeout),
        }
    }
}

/// An HTTP/1 connection waiting in the pool.
struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

/// One origin's connections on one thread.
struct OriginConnections {
    key: Arc<str>,
    /// Oldest first: a checkout takes the newest, expiry drops from the front.
    idle: VecDeque<Idle>,
    /// An HTTP/2 connection serves every request to the origin at once.
    h2: Option<http2::SendRequest<Full<Bytes>>>,
}

#[derive(Default)]
struct ThreadConnections {
    origins: Vec<OriginConnections>,
}

impl ThreadConnections {
    fn origin(&mut self, key: &Arc<str>) -> &mut OriginConnections {
        let i = match self.origins.iter().position(|o| o.key == *key) {
            Some(i) => i,
            None => {
                self.origins.push(OriginConnections {
                    key: Arc::clone(key),
                    idle: VecDeque::new(),
                    h2: None,
                });
                self.origins.len() - 1
            }
        };
        &mut self.origins[i]
    }
}

/// A connection taken for one request.
enum Taken {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Upstream connections, pooled per thread. Clones share the pools.
#[derive(Clone)]
pub(crate) struct Connections {
    connector: Connector,
    pools: relay_core::PerThread<RefCell<ThreadConnections>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// No connection yet; they are opened with `connector` as requests need them.
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            pools: relay_core::PerThread::new(),
        }
    }

    fn with_pool<R>(&self, f: impl FnOnce(&mut ThreadConnections) -> R) -> R {
        self.pools
            .with_or_insert(RefCell::default, |pool| f(&mut pool.borrow_mut()))
    }

    /// A pooled connection to `origin`, if one is open.
    fn checkout(&self, origin: &Origin) -> Option<Taken> {
        self.with_pool(|pool| {
            let conns = pool.origin(&origin.key);
            if let Some(h2) = &conns.h2 {
                if !h2.is_closed() {
                    return Some(Taken::H2(h2.clone()));
                }
                conns.h2 = None;
            }
            while let Some(idle) = conns.idle.pop_back() {
                if idle.since.elapsed() >= IDLE_TIMEOUT {
                    // The rest are older still.
                    conns.idle.clear();
                    break;
                }
                if !idle.sender.is_closed() {
                    return Some(Taken::H1(idle.sender));
                }
            }
            None
        })
    }

    /// Put an HTTP/1 connection whose response has ended back into this thread's pool.
    fn put_back(&self, key: &Arc<str>, sender: http1::SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        self.with_pool(|pool| {
            let conns = pool.origin(key);
            let now = Instant::now();
            while conns
                .idle
                .front()
                .is_some_and(|idle| now.duration_since(idle.since) >= IDLE_TIMEOUT)
            {
                conns.idle.pop_front();
            }
            if conns.idle.len() < MAX_IDLE_PER_ORIGIN {
                conns.idle.push_back(Idle { sender, since: now });
            }
        });
    }

    /// A new connection to `origin`, its task spawned on the current runtime.
    async fn open(&self, origin: &Origin) -> Result<Taken, ClientError> {
        let stream = self.connector.connect(origin).await?;
        let h2 = stream.connected().is_negotiated_h2();
        // `MaybeHttpsStream` already speaks hyper's IO traits.
        let io = stream;
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| ClientError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            self.with_pool(|pool| pool.origin(&origin.key).h2 = Some(sender.clone()));
            Ok(Taken::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| ClientError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
                }
            });
            Ok(Taken::H1(sender))
        }
    }

    /// Send `request` (its URI absolute, to `origin`) on a pooled connection or a new one.
    /// The response's body hands an HTTP/1 connection back to the pool when it ends.
    pub(crate) async fn send(
        &self,
        origin: &Origin,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        // Pooled connections first; each is tried once, so this ends.
        while let Some(taken) = self.checkout(origin) {
            match self.send_on(origin, taken, request).await {
                Ok(response) => return Ok(response),
                // Refused before a byte was sent (closed while idle): try another one.
                Err((Some(unsent), _)) => request = unsent,
                Err((None, e)) => return Err(e),
            }
        }
        // Boxed: opening a connection (TLS, HTTP/2 handshake) is a state machine of
        // several KB that every request's future would otherwise carry, and copy each
        // time a layer boxes it, though only a cold connection needs it.
        let taken = Box::pin(self.open(origin)).await?;
        self.send_on(origin, taken, request)
            .await
            .map_err(|(_, e)| e)
    }

    async fn send_on(
        &self,
        origin: &Origin,
        taken: Taken,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, (Option<Request<Full<Bytes>>>, ClientError)> {
        match taken {
            Taken::H2(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => Ok(response.map(|body| UpstreamBody::new(body, None))),
                Err(mut e) => {
                    let unsent = e.take_message();
                    if unsent.is_some() {
                        self.with_pool(|pool| pool.origin(&origin.key).h2 = None);
                    }
                    Err((unsent, ClientError::Request(e.into_error())))
                }
            },
            Taken::H1(mut sender) => {
                if let Err(e) = sender.ready().await {
                    return Err((Some(request), ClientError::Request(e)));
                }
                // HTTP/1 sends the path (origin-form) and names the host in `Host`.
                let pq = request.uri().path_and_query().cloned();
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = pq;
                if let Ok(uri) = Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
                request
                    .headers_mut()
                    .entry(header::HOST)
                    .or_insert_with(|| origin.host.clone());
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        let back = PutBack {
                            connections: self.clone(),
                            key: Arc::clone(&origin.key),
                            sender,
                        };
                        Ok(response.map(|body| UpstreamBody::new(body, Some(back))))
                    }
                    Err(mut e) => {
                        let unsent = e.take_message().map(|mut r| {
                            // Absolute again, for whichever connection takes it next.
                            let pq = r.uri().path_and_query().cloned();
                            if let Some(Ok(uri)) = pq.map(|pq| origin.uri_of(pq)) {
                                *r.uri_mut() = uri;
                            }
                            r
                        });
                        Err((unsent, ClientError::Request(e.into_error())))
                    }
                }
            }
        }
    }
}

/// What an HTTP/1 response body needs to return its connection.
struct PutBack {
    connections: Connections,
    key: Arc<str>,
    sender: http1::SendRequest<Full<Bytes>>,
}

/// A response body from an upstream. An HTTP/1 connection goes back to the pool once the
/// body has ended; dropped before that, the connection closes (hyper cannot reuse it).
pub(crate) struct UpstreamBody {
    inner: Incoming,
    back: Option<PutBack>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn new(inner: Incoming, back: Option<PutBack>) -> Self {
        let mut body = Self { inner, back };
        if body.inner.is_end_stream() {
            body.put_back();
        }
        body
    }

    fn put_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.connections.put_back(&back.key, back.sender);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // The last frame: whoever reads this body may stop polling after it.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.put_back(),
            Poll::Ready(None) => this.put_back(),
            // A failed body leaves the connection unusable: it closes with the sender.
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, StreamBody};
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How the test upstream answers.
    #[derive(Clone, Copy)]
    enum Upstream {
        /// `path host` with a content-length, keeping connections alive.
        KeepAlive,
        /// The same, then closing each connection (`Connection: close`).
        Close,
        /// Two chunks 50 ms apart (a stream).
        Slow,
    }

    /// Accept on a local port, handing each connection to `serve` in a task of its own;
    /// returns the address and how many connections were accepted.
    async fn accept_counting<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp));
            }
        });
        (addr, accepted)
    }

    /// A local upstream; returns its address and how many connections it accepted.
    async fn upstream(kind: Upstream) -> (SocketAddr, Arc<AtomicUsize>) {
        accept_counting(move |tcp| async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                // Origin-form on the wire, the authority in `Host`.
                let text = format!(
                    "{} {} {}",
                    req.uri(),
                    req.uri().authority().is_some(),
                    req.headers()[header::HOST].to_str().unwrap()
                );
                let body = match kind {
                    Upstream::KeepAlive | Upstream::Close => {
                        http_body_util::Either::Left(Full::new(Bytes::from(text)))
                    }
                    Upstream::Slow => {
                        let chunks = futures_util::stream::unfold(0, |i| async move {
                            if i == 2 {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Some((Ok::<_, Infallible>(Frame::data(Bytes::from("x"))), i + 1))
                        });
                        http_body_util::Either::Right(StreamBody::new(chunks))
                    }
                };
                Ok::<_, Infallible>(Response::new(body))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(matches!(kind, Upstream::KeepAlive | Upstream::Slow))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        })
        .await
    }

    fn origin(addr: SocketAddr) -> Origin {
        Origin::new(Scheme::HTTP, addr.to_string().parse().unwrap()).unwrap()
    }

    fn request(origin: &Origin, path: &'static str) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::from_static(b"{}")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = origin.uri_of(PathAndQuery::from_static(path)).unwrap();
        request
    }

    fn connections() -> Connections {
        Connections::new(Connector::https(Duration::from_secs(2)))
    }

    /// One request to `path`, its body read to the end.
    async fn fetch(conns: &Connections, origin: &Origin, path: &'static str) -> String {
        let response = conns.send(origin, request(origin, path)).await.unwrap();
        read_to_end(response.into_body()).await
    }

    /// Read as hyper's server does: stop at the body's reported end, never polling past it.
    async fn read_to_end(mut body: UpstreamBody) -> String {
        let mut out = Vec::new();
        while !body.is_end_stream() {
            match body.frame().await {
                Some(frame) => out.extend_from_slice(&frame.unwrap().into_data().unwrap()),
                None => break,
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// `n` requests one after another to an upstream answering as `kind`, each answer checked
    /// (origin-form path, no authority on the wire, `Host` set); how many connections it took.
    async fn sequential(kind: Upstream, n: usize) -> usize {
        let (addr, accepted) = upstream(kind).await;
        let origin = origin(addr);
        let conns = connections();
        for _ in 0..n {
            assert_eq!(
                fetch(&conns, &origin, "/v1/messages?beta=true").await,
                format!("/v1/messages?beta=true false {addr}")
            );
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_in_origin_form() {
        assert_eq!(sequential(Upstream::KeepAlive, 20).await, 1);
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_reused() {
        assert_eq!(sequential(Upstream::Close, 5).await, 5);
    }

    /// An upstream that closes each connection after one answer without saying so: the
    /// pooled connection looked reusable when it went back, and is skipped once closed.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    // The request is small: its head and the 2-byte body.
                    while !seen.ends_with(b"\r\n\r\n{}") {
                        let n = tcp.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                    // Closed without `Connection: close`, after the client had the answer.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let origin = origin(addr);
        let conns = connections();
        for _ in 0..5 {
            assert_eq!(fetch(&conns, &origin, "/a").await, "ok");
            // Let the upstream's close arrive (or not) before the next checkout.
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (addr, accepted) = upstream(Upstream::Slow).await;
        let origin = origin(addr);
        let conns = connections();
        let mut body = conns
            .send(&origin, request(&origin, "/s"))
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "x");
        drop(body);
        assert_eq!(fetch(&conns, &origin, "/s").await, "xx");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // That one ended: it is reused.
        assert_eq!(fetch(&conns, &origin, "/s").await, "xx");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_then_reuse_them() {
        let (addr, accepted) = upstream(Upstream::Slow).await;
        let origin = origin(addr);
        let conns = connections();
        for _ in 0..3 {
            let sends = (0..8).map(|_| fetch(&conns, &origin, "/s"));
            for body in futures_util::future::join_all(sends).await {
                assert_eq!(body, "xx");
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
    }

    // The upstream runs on the test's workers while this thread waits for the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_thread_keeps_its_own_connections() {
        let (addr, accepted) = upstream(Upstream::KeepAlive).await;
        let origin = origin(addr);
        let conns = connections();
        for _ in 0..2 {
            let (conns, origin) = (conns.clone(), origin.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..3 {
                        fetch(&conns, &origin, "/t").await;
                    }
                });
            })
            .join()
            .unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let origin = origin(addr);
        let err = connections()
            .send(&origin, request(&origin, "/a"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    }

    /// An `https` upstream offering HTTP/2 by ALPN: one connection carries every request,
    /// concurrent ones included, with the absolute URI HTTP/2 needs.
    #[tokio::test]
    async fn https_upstreams_speaking_http2_share_one_connection() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert_der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key.into())
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (addr, accepted) = accept_counting(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let service = service_fn(|req: Request<Incoming>| async move {
                    let text = format!("{:?} {}", req.version(), req.uri());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        })
        .await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conns = Connections::new(Connector::with_tls(client, Duration::from_secs(5)));
        let origin = Origin::new(Scheme::HTTPS, addr.to_string().parse().unwrap()).unwrap();
        let expected = format!("HTTP/2.0 https://{addr}/v1/messages");
        assert_eq!(fetch(&conns, &origin, "/v1/messages").await, expected);
        let sends = (0..8).map(|_| fetch(&conns, &origin, "/v1/messages"));
        for body in futures_util::future::join_all(sends).await {
            assert_eq!(body, expected);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
