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
    pub fn token_endpoint() -> Self {
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
    pub fn admin_endpoint() -> Self {
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
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Serve `app` on `listener` (over TLS when `tls` is set) until `shutdown`
/// resolves, then drain for at most [`DRAIN_TIMEOUT`]. `name` labels the
/// listener in logs and metrics (`token`, `admin`).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<crate::server::tls::ReloadingTls>>,
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
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
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
        let service = TowerToHyperService::new(app.clone());
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
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_connection(stream, h2, &limits, service, watcher).await;
                    }
                }
                None => {
                    if let Ok(Some(h2)) = tokio::time::timeout(deadline, is_h2_preface(&tcp)).await
                    {
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

type Service = TowerToHyperService<Router>;

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
