//! Serving HTTP safely, for the token endpoint and the admin endpoint alike:
//! one accept loop with a per-process connection limit, hyper with its timer
//! (header-read deadline, which is also the keep-alive idle timeout),
//! bounded header and buffer sizes, HTTP/1.1 and HTTP/2 (ALPN over TLS,
//! prior knowledge in clear text), optional TLS, and graceful shutdown.
//!
//! Request-level limits (body size, body deadline, request timeout,
//! concurrent requests) are tower layers on the routers; their values live
//! here too so that `docs/security.md` has one place to point at.
//!
//! | limit | default | what happens |
//! |---|---|---|
//! | [`HttpLimits::header_read_timeout`] | 10 s | the connection is closed (also between keep-alive requests) |
//! | [`HttpLimits::handshake_timeout`] | 10 s | TLS handshake or protocol detection not done: closed |
//! | [`HttpLimits::max_header_bytes`] | 16 KiB | `431` and the connection is closed |
//! | [`HttpLimits::max_connections`] | 1024 token / 64 admin | no more `accept` until one closes; one log line and a metric |
//! | [`HttpLimits::body_read_timeout`] | 10 s | `408` |
//! | [`HttpLimits::request_timeout`] | 15 s | `503` |
//! | [`HttpLimits::max_concurrent_requests`] | 512 | further requests wait (within the request timeout) |

pub mod peer;
pub mod tls;

use crate::telemetry::Metrics;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connection- and request-level limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Deadline for a complete request head (request line and headers),
    /// counted from the end of the previous response on a kept-alive
    /// connection.
    pub header_read_timeout: Duration,
    /// Deadline for the TLS handshake, and in clear text for the first bytes
    /// that tell HTTP/1.1 from HTTP/2.
    pub handshake_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2), in bytes.
    pub max_header_bytes: usize,
    /// Open connections per process on this listener.
    pub max_connections: usize,
    /// Deadline for the whole request body, from the end of the head.
    pub body_read_timeout: Duration,
    /// Deadline for a whole request, body included, until the response head.
    pub request_timeout: Duration,
    /// Requests handled at once; more wait for a slot.
    pub max_concurrent_requests: usize,
}

impl HttpLimits {
    /// The token endpoint's defaults.
    pub(crate) fn token_endpoint() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            max_concurrent_requests: 512,
        }
    }

    /// The admin endpoint's defaults: probes and scrapes only.
    pub(crate) fn admin_endpoint() -> Self {
        Self {
            max_connections: 64,
            max_concurrent_requests: 32,
            ..Self::token_endpoint()
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self::token_endpoint()
    }
}

/// How long in-flight connections get to finish after shutdown.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Serve `app` on `listener` (over TLS when `tls` is set) until `shutdown`
/// resolves, then drain for at most [`DRAIN_TIMEOUT`]. `name` labels the
/// listener in logs and metrics (`token`, `admin`).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tls::ReloadingTls>>,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let limits = Arc::new(limits);
    let gauge = metrics.http_connections(name);
    let mut saturated = false;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A connection slot first: at the limit, stop accepting (clients wait
        // in the kernel's backlog) instead of accepting and dropping.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => {
                saturated = false;
                p
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    metrics.http_connection_limit_reached(name);
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "connection limit reached; not accepting new connections until one closes"
                    );
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let mut service = WithPeer {
            app: app.clone(),
            peer,
            client_cert: None,
        };
        let watcher = graceful.watcher();
        let limits = limits.clone();
        let tls = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.current()));
        let gauge = gauge.clone();
        gauge.inc();
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = limits.handshake_timeout;
            match tls {
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(deadline, acceptor.accept(tcp)).await
                    {
                        let session = stream.get_ref().1;
                        let h2 = session.alpn_protocol() == Some(b"h2");
                        // mTLS hook: the verified client certificate, parsed
                        // once per connection (RFC 8705).
                        service.client_cert = session
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|der| {
                                peer::PeerCertificate(Arc::new(peer::ClientCert::from_der(der)))
                            });
                        let service = TowerToHyperService::new(service);
                        serve_connection(stream, h2, &limits, service, watcher).await;
                    }
                }
                None => {
                    if let Ok(Some(h2)) = tokio::time::timeout(deadline, is_h2_preface(&tcp)).await
                    {
                        let service = TowerToHyperService::new(service);
                        serve_connection(tcp, h2, &limits, service, watcher).await;
                    }
                }
            }
            gauge.dec();
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the drain timeout; closing"
        );
    }
    Ok(())
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a clear-text client speaks HTTP/2 (prior knowledge): peeks until
/// the bytes differ from the preface or all of it arrived. `None`: the
/// client closed first.
async fn is_h2_preface(tcp: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        if n == seen {
            // A partial preface and nothing new yet: peek returns at once,
            // so poll gently (bounded by the handshake timeout).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen = n;
    }
}

/// The router, with the client's address in each request's extensions
/// (`ConnectInfo<SocketAddr>`, as `axum::serve` provides it).
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: std::net::SocketAddr,
    /// The connection's TLS client certificate, if it sent one.
    client_cert: Option<peer::PeerCertificate>,
}

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<axum::http::Request<hyper::body::Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        if let Some(cert) = &self.client_cert {
            request.extensions_mut().insert(cert.clone());
        }
        self.app.call(request)
    }
}

type Service = TowerToHyperService<WithPeer>;

async fn serve_connection<I>(
    io: I,
    h2: bool,
    limits: &HttpLimits,
    service: Service,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(64)
            .max_pending_accept_reset_streams(32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        watcher.watch(builder.serve_connection(io, service)).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes)
            // The read buffer bounds what one connection can make us hold.
            .max_buf_size((limits.max_header_bytes * 2).max(8192));
        watcher.watch(builder.serve_connection(io, service)).await
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Real-socket tests: slow clients on both listeners, clear text and TLS.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminState, Readiness};
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    fn test_limits() -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            ..HttpLimits::admin_endpoint()
        }
    }

    /// The admin endpoint on an ephemeral port with `limits`.
    async fn admin(limits: HttpLimits) -> (SocketAddr, Metrics) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let app = crate::admin::router(AdminState {
            readiness: Readiness::new(),
            metrics: metrics.clone(),
        });
        tokio::spawn(serve(
            "admin",
            listener,
            app,
            None,
            limits,
            metrics.clone(),
            std::future::pending(),
        ));
        (addr, metrics)
    }

    /// One HTTP/1.1 GET on a fresh connection; the status code.
    async fn get(addr: SocketAddr, path: &str) -> u16 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
            .await
            .expect("response")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// How long until the server closes `tcp` (reads to EOF or error).
    async fn closed_after(mut tcp: TcpStream, started: Instant) -> Duration {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    }

    /// A client that opens a connection and sends part of a request head.
    async fn slow_client(addr: SocketAddr, head: &[u8]) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head).await.unwrap();
        tcp
    }

    /// Measured in a process of its own: other tests running in parallel
    /// in this one would make the RSS figures meaningless.
    #[test]
    fn slow_clients_are_cut_off_while_others_are_served() {
        const NAME: &str = "http::tests::slow_clients_are_cut_off_while_others_are_served";
        if std::env::var("M2M_ISOLATED_TEST").as_deref() == Ok(NAME) {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(slow_clients_are_cut_off_while_others_are_served_alone());
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("M2M_ISOLATED_TEST", NAME)
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    async fn slow_clients_are_cut_off_while_others_are_served_alone() {
        let limits = HttpLimits {
            max_connections: 600,
            ..test_limits()
        };
        let (addr, _) = admin(limits).await;
        assert_eq!(get(addr, "/livez").await, 200);
        let rss_before = rss_kib();
        // 500 slow clients, each holding a partial head of ~15 KiB (under the
        // header limit, so only the deadline can end them).
        let mut head = b"GET /livez HTTP/1.1\r\nHost: test\r\n".to_vec();
        for i in 0..150 {
            head.extend_from_slice(format!("X-Pad-{i:03}: {}\r\n", "a".repeat(88)).as_bytes());
        }
        let started = Instant::now();
        let mut slow = Vec::new();
        for _ in 0..500 {
            slow.push(slow_client(addr, &head).await);
        }
        // And some that send nothing at all, or half an HTTP/2 preface.
        for _ in 0..10 {
            slow.push(TcpStream::connect(addr).await.unwrap());
            slow.push(slow_client(addr, b"PRI * HTTP/2.0\r\n").await);
        }
        let rss_during = rss_kib();
        // A legitimate request is served while they are all connected.
        assert_eq!(get(addr, "/livez").await, 200);
        let closes: Vec<Duration> = tokio::time::timeout(
            Duration::from_secs(20),
            futures::future::join_all(slow.into_iter().map(|tcp| closed_after(tcp, started))),
        )
        .await
        .expect("slow clients are cut off, not held open");
        let slowest = closes.iter().max().copied().unwrap_or_default();
        eprintln!(
            "520 slow clients: RSS {rss_before} KiB before, {rss_during} KiB with them connected \
             (+{} KiB); all cut off after at most {slowest:?} (header deadline 1 s)",
            rss_during.saturating_sub(rss_before)
        );
        // Cut off by the deadline (1 s) — with slack for a loaded machine —
        // not held for ever.
        assert!(slowest < Duration::from_secs(5), "{slowest:?}");
        // Bounded memory: far below what 500 × 15 KiB buffers could reach
        // without a limit (the unbounded server reached ~400 KiB each).
        assert!(rss_during.saturating_sub(rss_before) < 100 * 1024);
        assert_eq!(get(addr, "/livez").await, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_heads_are_refused() {
        let (addr, _) = admin(test_limits()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        );
        let _ = tcp.write_all(head.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connection_limit_pauses_accepting_and_is_reported() {
        let limits = HttpLimits {
            max_connections: 4,
            ..test_limits()
        };
        let (addr, metrics) = admin(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(slow_client(addr, b"GET /livez HTTP/1.1\r\n").await);
        }
        // The fifth waits in the backlog and is served once the slow ones
        // are cut off by the header deadline.
        let started = Instant::now();
        assert_eq!(get(addr, "/livez").await, 200);
        assert!(started.elapsed() >= Duration::from_millis(500));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"m2m_http_connection_limit_reached_total{listener="admin"} 1"#),
            "{text}"
        );
        drop(idle);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_tls_clients_are_cut_off() {
        let dir = std::env::temp_dir().join(format!("m2m-http-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self_signed(&dir);
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let listen = crate::server::ListenConfig {
            addr,
            tls: Some(crate::server::TlsFiles { cert, key }),
            client_trust: Default::default(),
        };
        let limits = HttpLimits {
            max_connections: 100,
            header_read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            ..HttpLimits::token_endpoint()
        };
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            crate::server::serve(app, &listen, limits, Metrics::new(), std::future::pending()).await
        });
        let mut conn = None;
        for _ in 0..50 {
            if let Ok(c) = TcpStream::connect(addr).await {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let silent = conn.unwrap();
        // A partial ClientHello (record header only).
        let partial = slow_client(addr, &[0x16, 0x03, 0x01, 0x02, 0x00]).await;
        // A complete handshake, then half a request head.
        let mut tls = tls_connect(addr).await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let tls_started = Instant::now();
        let slow_head = async move {
            let mut buf = [0u8; 256];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return tls_started.elapsed(),
                    Ok(_) => {}
                }
            }
        };
        let (a, b, c) = tokio::time::timeout(
            Duration::from_secs(20),
            futures::future::join3(
                closed_after(silent, started),
                closed_after(partial, started),
                slow_head,
            ),
        )
        .await
        .expect("slow TLS clients are cut off");
        eprintln!(
            "TLS: silent client cut off after {a:?}, partial handshake after {b:?}, \
             partial head after {c:?}"
        );
        // Handshake deadline 10 s (default), header deadline 1 s (set above).
        assert!(
            a < Duration::from_secs(13) && b < Duration::from_secs(13),
            "{a:?} {b:?}"
        );
        assert!(c < Duration::from_secs(5), "{c:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A TLS client that trusts any certificate (the test server's is self-signed).
    async fn tls_connect(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        use tokio_rustls::rustls::client::danger::{
            HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
        };
        use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use tokio_rustls::rustls::{self, DigitallySignedStruct, SignatureScheme};
        #[derive(Debug)]
        struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
        impl ServerCertVerifier for AnyCert {
            fn verify_server_cert(
                &self,
                _: &CertificateDer<'_>,
                _: &[CertificateDer<'_>],
                _: &ServerName<'_>,
                _: &[u8],
                _: UnixTime,
            ) -> Result<ServerCertVerified, rustls::Error> {
                Ok(ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                _: &[u8],
                _: &CertificateDer<'_>,
                _: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                Ok(HandshakeSignatureValid::assertion())
            }
            fn verify_tls13_signature(
                &self,
                _: &[u8],
                _: &CertificateDer<'_>,
                _: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                Ok(HandshakeSignatureValid::assertion())
            }
            fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
                self.0.signature_verification_algorithms.supported_schemes()
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (cert, key)
    }
}
