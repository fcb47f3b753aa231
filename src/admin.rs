//! The admin endpoint (`--admin-listen`): `/livez`, `/readyz` and
//! `/metrics`, separate from the token endpoint so probes and scrapes never
//! compete with token traffic and never need to be exposed publicly.
//!
//! Readiness is the conjunction of named flags that components register
//! ([`Readiness::flag`]): the token server's watches, its signing key, the
//! controller's leadership, … `/readyz` lists the ones not ready yet.

use crate::http::HttpLimits;
use crate::telemetry::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One component's readiness; cheap to clone and to set.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    ready: Arc<AtomicBool>,
}

impl ReadyFlag {
    /// Mark the component ready (or not).
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the component is ready.
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The set of readiness flags `/readyz` reports on.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    flags: Arc<Mutex<Vec<(String, ReadyFlag)>>>,
}

impl Readiness {
    /// A new, empty set (ready until a flag is registered).
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a component, initially not ready.
    pub fn flag(&self, name: &str) -> ReadyFlag {
        let flag = ReadyFlag {
            ready: Arc::new(AtomicBool::new(false)),
        };
        if let Ok(mut flags) = self.flags.lock() {
            flags.push((name.to_owned(), flag.clone()));
        }
        flag
    }

    /// The names of the components not ready yet (empty: ready).
    pub fn not_ready(&self) -> Vec<String> {
        match self.flags.lock() {
            Ok(flags) => flags
                .iter()
                .filter(|(_, f)| !f.get())
                .map(|(n, _)| n.clone())
                .collect(),
            Err(_) => vec!["readiness-lock".into()],
        }
    }
}

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Readiness flags.
    pub readiness: Readiness,
    /// The metrics registry.
    pub metrics: Metrics,
}

/// `/livez`, `/readyz`, `/metrics`, behind a request timeout and a
/// concurrency limit (no bodies are read).
pub fn router(state: AdminState) -> Router {
    let limits = HttpLimits::admin_endpoint();
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    limits.request_timeout,
                ))
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                ))
                .layer(tower_http::limit::RequestBodyLimitLayer::new(1024)),
        )
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let waiting = state.readiness.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serve the admin router on `addr` until `shutdown` resolves, with the
/// admin limits ([`HttpLimits::admin_endpoint`]).
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(addr, state, HttpLimits::admin_endpoint(), shutdown).await
}

/// [`serve`] with explicit limits.
pub(crate) async fn serve_with(
    addr: SocketAddr,
    state: AdminState,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    let metrics = state.metrics.clone();
    crate::http::serve(
        "admin",
        listener,
        router(state),
        None,
        limits,
        metrics,
        shutdown,
    )
    .await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readyz_follows_every_flag() {
        let readiness = Readiness::new();
        let a = readiness.flag("watches");
        let b = readiness.flag("signing-key");
        let app = router(AdminState {
            readiness: readiness.clone(),
            metrics: Metrics::new(),
        });
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        a.set(true);
        let resp = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        b.set(true);
        let resp = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = app.clone().oneshot(get("/livez")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = app.oneshot(get("/metrics")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
