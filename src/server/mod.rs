//! The OAuth 2.0 token endpoint (`m2m-operator token-server`, SPEC §4).
//!
//! - [`oauth`]: the handlers (token, introspection, revocation, metadata, JWKS).
//! - [`form`] and [`error`]: strict request parsing and RFC error responses.
//! - [`index`]: the in-memory state every request reads; [`watch`] keeps it
//!   current from the cluster; no request makes an API call (revocation
//!   aside, which must persist).
//! - [`usage`]: last-used tracking, written to the credentials' status in
//!   bounded batches, never per request.
//! - [`revocation`]: the shared revocation list; [`ratelimit`]: failed
//!   authentication limits; [`tls`]: optional TLS with reloading.
//! - [`api_token`]: API tokens — introspection and RFC 8693 token exchange.
//! - [`assertion`]: workload identity — Kubernetes service-account tokens as
//!   RFC 7523 client assertions, checked by TokenReview and cached (bounded).
//! - [`federation`]: JWTs of trusted external issuers (other clusters, CI
//!   systems, SPIFFE) as client assertions, verified offline.
//! - [`binding`], [`dpop`] and [`mtls`]: sender-constrained tokens — DPoP
//!   proofs (RFC 9449) and TLS client certificates (RFC 8705) bind tokens
//!   to a key the client holds; `tls_client_auth`.
//! - [`bench`] (cargo feature `bench`): a cluster-free server for the
//!   benchmark (`bench-server`).
//!
//! Every route sits behind the same tower stack ([`router`]): tracing span,
//! metrics and RFC 6749 error shaping, request timeout, concurrency limit,
//! body deadline and body-size limit; connection-level limits are in
//! [`crate::http`].

pub mod api_token;
pub mod assertion;
#[cfg(feature = "bench")]
pub mod bench;
pub mod binding;
pub mod dpop;
pub mod error;
pub mod federation;
pub mod form;
pub mod index;
pub mod mtls;
pub mod oauth;
pub mod pod_identity;
pub mod ratelimit;
pub mod revocation;
pub mod secret_check;
pub mod usage;
pub mod watch;

#[cfg(test)]
mod tests;

use crate::admin::Readiness;
use crate::core::grant::ScopePolicy;
use crate::http::HttpLimits;
use crate::telemetry::{Endpoint, Metrics};
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use index::TokenState;
use ratelimit::AuthLimiter;
use revocation::{ConfigMapRevocations, RevocationStore};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyDeadlineLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

/// Why the token server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound or serving failed.
    #[error("serving on {0}")]
    Io(String, #[source] std::io::Error),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    /// The client CA file is unusable.
    #[error(transparent)]
    ClientTrust(#[from] mtls::TrustError),
}

/// What the handlers need to know besides the state.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `iss` of every token and the metadata base URL.
    pub issuer: String,
    /// `aud` when a credential lists no audiences.
    pub default_audience: String,
    /// Scope policy of namespaces without `m2m.dev/allowed-scopes`.
    pub default_policy: ScopePolicy,
    /// The `ClusterM2MRole` granted to every ServiceAccount, if any.
    pub default_role: Option<String>,
    /// Namespace of the key Secret and the revocation ConfigMap.
    pub operator_namespace: String,
    /// Connection and request limits.
    pub limits: HttpLimits,
    /// DPoP and client-certificate options.
    pub sender: binding::SenderOptions,
    /// Where and how the endpoint listens.
    pub listen: ListenConfig,
    /// Bounds of the caches and background writers.
    pub bounds: ServerBounds,
}

/// Where the token endpoint listens: the address, TLS files and the
/// sources of client-certificate trust (none without TLS).
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Address of the token endpoint.
    pub addr: std::net::SocketAddr,
    /// PEM certificate chain and key; the endpoint speaks TLS when set.
    pub tls: Option<TlsFiles>,
    /// Where client-certificate trust comes from (mTLS hook).
    pub client_trust: mtls::TrustSources,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            client_trust: mtls::TrustSources::default(),
        }
    }
}

/// The certificate chain and key files of the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, reloaded when it changes.
    pub cert: std::path::PathBuf,
    /// PEM private key, reloaded when it changes.
    pub key: std::path::PathBuf,
}

/// Bounds of the token server's caches and background writers.
#[derive(Debug, Clone)]
pub struct ServerBounds {
    /// Revoked tokens kept one by one per client.
    pub revocation_quota: usize,
    /// The TokenReview result cache.
    pub assertion_cache: assertion::CacheBounds,
    /// The TokenReview call budget.
    pub token_review: assertion::ReviewLimits,
    /// How often usage is written.
    pub usage: usage::UsageResolution,
    /// Federation key refresh and cache bounds.
    pub federation: federation::FederationBounds,
}

impl Default for ServerBounds {
    fn default() -> Self {
        Self {
            revocation_quota: revocation::DEFAULT_QUOTA,
            assertion_cache: Default::default(),
            token_review: Default::default(),
            usage: Default::default(),
            federation: Default::default(),
        }
    }
}

struct Inner {
    config: ServerConfig,
    state: Arc<TokenState>,
    limiter: AuthLimiter,
    metrics: Metrics,
    revocations: Arc<dyn RevocationStore>,
    assertions: Arc<assertion::AssertionVerifier>,
    federation: Arc<federation::FederationState>,
    dpop: dpop::DpopVerifier,
}

/// The token endpoint's shared handle (cheap to clone).
#[derive(Clone)]
pub struct TokenServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("issuer", &self.inner.config.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenServer {
    /// A server answering from `state`, recording revocations in `revocations`.
    pub fn new(
        config: ServerConfig,
        state: Arc<TokenState>,
        metrics: Metrics,
        revocations: Arc<dyn RevocationStore>,
    ) -> Self {
        let assertions = Arc::new(assertion::AssertionVerifier::refuse_all());
        Self::with_assertions(config, state, metrics, revocations, assertions)
    }

    /// Like [`TokenServer::new`], checking workload-identity assertions with `assertions`.
    pub(crate) fn with_assertions(
        config: ServerConfig,
        state: Arc<TokenState>,
        metrics: Metrics,
        revocations: Arc<dyn RevocationStore>,
        assertions: Arc<assertion::AssertionVerifier>,
    ) -> Self {
        let federation = Arc::new(federation::FederationState::new(
            None,
            &config.operator_namespace,
            Default::default(),
            metrics.clone(),
        ));
        Self::with_federation(config, state, metrics, revocations, assertions, federation)
    }

    /// Like [`TokenServer::with_assertions`], trusting the issuers of `federation`.
    pub(crate) fn with_federation(
        config: ServerConfig,
        state: Arc<TokenState>,
        metrics: Metrics,
        revocations: Arc<dyn RevocationStore>,
        assertions: Arc<assertion::AssertionVerifier>,
        federation: Arc<federation::FederationState>,
    ) -> Self {
        let dpop = dpop::DpopVerifier::new(&config.issuer, config.sender.dpop.clone());
        Self {
            inner: Arc::new(Inner {
                dpop,
                config,
                state,
                limiter: AuthLimiter::new(),
                metrics,
                revocations,
                assertions,
                federation,
            }),
        }
    }

    /// The workload-identity assertion verifier (and its cache).
    #[cfg(feature = "bench")]
    pub(crate) fn assertions(&self) -> &Arc<assertion::AssertionVerifier> {
        &self.inner.assertions
    }

    /// The state the handlers read (and the watches write).
    pub fn state(&self) -> &Arc<TokenState> {
        &self.inner.state
    }

    /// The metrics the handlers record into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The configuration the handlers read.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }
}

/// The path of an issuer URL (`https://host/tenant-a` → `/tenant-a`),
/// without a trailing slash; `None` for a bare host.
pub(crate) fn issuer_path(issuer: &str) -> Option<String> {
    let after_scheme = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
    let path = after_scheme.find('/').map(|i| &after_scheme[i..])?;
    let path = path.trim_end_matches('/');
    (!path.is_empty() && !path.contains(['?', '#'])).then(|| path.to_owned())
}

/// The token endpoint's routes behind its tower stack.
///
/// Discovery: the RFC 8414 document at
/// `/.well-known/oauth-authorization-server` and, the same document, at
/// `/.well-known/openid-configuration`, where OpenID Connect clients look
/// (Kubernetes' JWT authenticator, go-oidc's `NewProvider`, Spring). It
/// lists what this server does and nothing else (no authorization
/// endpoint, no ID tokens). When the issuer URL has a path (`/tenant-a`),
/// every route is served under it as well, and the metadata also at the
/// RFC 8414 §3.1 path-inserted location
/// `/.well-known/oauth-authorization-server/tenant-a`.
pub fn router(server: TokenServer) -> Router {
    let limits = server.config().limits.clone();
    let metrics = server.inner.metrics.clone();
    let path = issuer_path(&server.config().issuer);
    let endpoints = || {
        Router::new()
            .route("/oauth/token", post(oauth::token))
            .route("/oauth/introspect", post(oauth::introspect))
            .route("/oauth/revoke", post(oauth::revoke))
            .route(
                "/.well-known/oauth-authorization-server",
                get(oauth::metadata),
            )
            .route("/.well-known/openid-configuration", get(oauth::metadata))
            .route("/.well-known/jwks.json", get(oauth::jwks))
    };
    let mut routes = endpoints();
    if let Some(path) = &path {
        routes = routes
            .route(
                &format!("/.well-known/oauth-authorization-server{path}"),
                get(oauth::metadata),
            )
            .nest(path, endpoints());
    }
    let routes = routes
        // A wrong method is a malformed request too: an RFC 6749 JSON error
        // (with the Allow header axum adds), not an empty 405.
        .method_not_allowed_fallback(|| async {
            error::OAuthError::invalid_request_status(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(server);
    with_layers(routes, &limits, metrics)
}

/// The tower stack of the token endpoint, outermost first.
pub(crate) fn with_layers(routes: Router, limits: &HttpLimits, metrics: Metrics) -> Router {
    routes.layer(
        ServiceBuilder::new()
            // A span per request (method and path only: a query string can
            // carry what a client should not have sent).
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request| {
                        tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
                    })
                    .on_failure(()),
            )
            // Shared, not cloned: the middleware clones its state per request.
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(metrics),
                observe,
            ))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                limits.request_timeout,
            ))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.max_concurrent_requests.max(1),
            ))
            .layer(RequestBodyDeadlineLayer::new(limits.body_read_timeout))
            .layer(RequestBodyLimitLayer::new(form::MAX_BODY_BYTES)),
    )
}

/// Metrics per endpoint and outcome, and the RFC 6749 shape of errors
/// the layers below answer themselves (413, 408, 503).
async fn observe(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = match request.uri().path() {
        "/oauth/token" => Some(Endpoint::token),
        "/oauth/introspect" => Some(Endpoint::introspect),
        "/oauth/revoke" => Some(Endpoint::revoke),
        _ => None,
    };
    let started = Instant::now();
    let response = error::as_oauth_error(next.run(request).await);
    if let Some(endpoint) = endpoint {
        let outcome = match response.extensions().get::<error::Outcome>() {
            Some(error::Outcome(outcome)) => outcome,
            None if response.status().is_success() => "ok",
            None => "server_error",
        };
        metrics.observe_request(endpoint, outcome, started.elapsed().as_secs_f64());
    }
    response
}

/// Run the token server inside a process that already has a client,
/// metrics, readiness and a shutdown signal (`token-server` and `run`).
/// Registers the readiness flags `token-server-watches` and
/// `token-server-signing-key`; returns after `shutdown` resolved and
/// in-flight requests finished.
pub async fn run_token_server(
    client: kube::Client,
    config: ServerConfig,
    watch_namespace: Option<String>,
    metrics: Metrics,
    readiness: &Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = Arc::new(TokenState::new());
    let revocations = ConfigMapRevocations::new(
        client.clone(),
        &config.operator_namespace,
        state.clone(),
        config.bounds.revocation_quota,
    );
    let repairs = tokio::spawn(revocations.clone().run_repairs());
    let watch_ready = watch::WatchReadiness {
        synced: readiness.flag("token-server-watches"),
        signing_key: readiness.flag("token-server-signing-key"),
        fresh: readiness.flag("token-server-state-fresh"),
        metrics: metrics.clone(),
    };
    let assertions = Arc::new(assertion::AssertionVerifier::with_limits(
        Arc::new(assertion::KubeTokenReviewer::new(client.clone())),
        config.bounds.assertion_cache,
        config.bounds.token_review,
    ));
    let (stop_usage, usage_stopped) = tokio::sync::oneshot::channel::<()>();
    let usage = tokio::spawn(usage::run_flusher(
        client.clone(),
        state.clone(),
        config.bounds.usage,
        metrics.clone(),
        async move {
            let _ = usage_stopped.await;
        },
    ));
    // Federation hook: trusted issuers, their keys and Namespace labels.
    let federation = Arc::new(federation::FederationState::new(
        Some(client.clone()),
        &config.operator_namespace,
        config.bounds.federation,
        metrics.clone(),
    ));
    let federation_watches = tokio::spawn(federation::run_watches(
        client.clone(),
        federation.clone(),
        watch_namespace.clone(),
        readiness.flag("token-server-federation"),
    ));
    let watches = tokio::spawn(watch::run_watches(
        client.clone(),
        watch::WatchConfig {
            operator_namespace: config.operator_namespace.clone(),
            default_policy: config.default_policy.clone(),
            default_role: config.default_role.clone(),
            watch_namespace,
        },
        state.clone(),
        watch_ready,
    ));
    let (listen, limits) = (config.listen.clone(), config.limits.clone());
    tracing::info!(issuer = %config.issuer, listen = %config.listen.addr, "token server starting");
    let server = TokenServer::with_federation(
        config,
        state,
        metrics.clone(),
        Arc::new(revocations),
        assertions,
        federation,
    );
    let result = serve_with_client(
        router(server),
        &listen,
        limits,
        metrics,
        shutdown,
        Some(client),
    )
    .await;
    // Write the usage the last interval held back, while the watch still
    // delivers (a bounded wait: shutdown must not hang on the apiserver).
    let _ = stop_usage.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), usage).await;
    watches.abort();
    federation_watches.abort();
    repairs.abort();
    result
}

/// Serve `app` on `listen`, over TLS when it names certificate files.
pub async fn serve(
    app: Router,
    listen: &ListenConfig,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with_client(app, listen, limits, metrics, shutdown, None).await
}

/// [`serve`], with `client` to watch `ClusterTrustBundle`s when
/// client certificates are trusted by signer name (mTLS hook).
pub async fn serve_with_client(
    app: Router,
    listen: &ListenConfig,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
    client: Option<kube::Client>,
) -> Result<(), ServerError> {
    let addr = listen.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Io(addr.to_string(), e))?;
    let mut background = Vec::new();
    let tls = match &listen.tls {
        Some(TlsFiles { cert, key }) => {
            let sources = listen.client_trust.clone();
            let trust = if sources.is_enabled() {
                let trust = mtls::ClientTrust::new(sources)?;
                background.push(tokio::spawn(trust.clone().watch_file()));
                if let Some(client) = client {
                    background.push(tokio::spawn(trust.clone().watch_bundles(client)));
                }
                Some(trust.verifier())
            } else {
                None
            };
            Some(crate::http::tls::ReloadingTls::with_client_trust(
                cert.clone(),
                key.clone(),
                trust,
            )?)
        }
        None => None,
    };
    if let Some(t) = &tls {
        background.push(tokio::spawn(t.clone().watch()));
    }
    let result = crate::http::serve("token", listener, app, tls, limits, metrics, shutdown)
        .await
        .map_err(|e| ServerError::Io(addr.to_string(), e));
    for task in background {
        task.abort();
    }
    result
}
