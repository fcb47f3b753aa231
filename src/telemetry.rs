//! Logs and metrics shared by the controller and the token server: logging
//! set-up (text or JSON) and one Prometheus registry with every metric the
//! operator exports, served by [`crate::admin`] at `/metrics`.
//!
//! Audit lines (one per token issued or refused) use the tracing target
//! [`AUDIT_TARGET`], so they can be routed or filtered on their own
//! (`RUST_LOG=audit=info`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The tracing target of audit lines.
pub(crate) const AUDIT_TARGET: &str = "audit";

/// Longest audit field kept, in characters.
pub(crate) const MAX_AUDIT_FIELD_CHARS: usize = 256;

/// An audit field as it may be logged, whatever its source: control
/// characters escaped (`\n` as `\u{a}`, so a value can never end the line
/// and forge the next one in the text format) and at most
/// [`MAX_AUDIT_FIELD_CHARS`] characters (then `…`). Every string field of
/// every audit line goes through it; values a caller presented (a client
/// id) are first made safe to reveal by the token server's
/// `loggable_client_id`.
pub(crate) fn audit_field(value: &str) -> std::borrow::Cow<'_, str> {
    let clean = value.chars().count() <= MAX_AUDIT_FIELD_CHARS
        && !value
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}');
    if clean {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(4 * MAX_AUDIT_FIELD_CHARS));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_AUDIT_FIELD_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Install the global tracing subscriber. The filter comes from `RUST_LOG`
/// (default `info`). Calling it twice is harmless (the second call is ignored).
pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Which token-server endpoint served a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Endpoint {
    /// `POST /oauth/token`.
    token,
    /// `POST /oauth/introspect`.
    introspect,
    /// `POST /oauth/revoke`.
    revoke,
}

/// How a request ended: `ok`, or the OAuth error code (`invalid_client`,
/// `invalid_scope`, …), `rate_limited` or `server_error`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The outcome.
    pub outcome: &'static str,
}

/// Labels of client authentications at the token endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientAuthLabels {
    /// `client_secret_basic`, `client_secret_post` or `private_key_jwt`
    /// (a Kubernetes service-account token, workload identity).
    pub method: &'static str,
    /// `ok` or the OAuth error code.
    pub outcome: &'static str,
}

/// Labels of workload-identity assertion checks.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AssertionLabels {
    /// `cache_hit`, `negative_cache_hit`, `review_ok`, `review_refused`,
    /// `review_error` or `not_reviewed` (refused before any API call).
    pub result: &'static str,
}

/// Labels of per-endpoint latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint.
    pub endpoint: Endpoint,
}

/// Labels of reconcile metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller (`credential`, `serviceaccount`, `keys`).
    pub controller: String,
}

/// Labels of reconcile errors.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    /// The controller.
    pub controller: String,
    /// A machine-readable reason (an error variant name).
    pub reason: String,
}

/// Labels of the credentials gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialStateLabels {
    /// `ready`, `not_ready` or `pending` (no `Ready` condition yet).
    pub state: String,
}

/// Labels of federation metrics: the issuer object (`ClusterTrustedIssuer/ci`,
/// `TrustedIssuer/<ns>/<name>`, or `unknown` — never a token's own `iss`,
/// so the label set is bounded by the issuer objects) and a result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FederationLabels {
    /// The issuer object.
    pub issuer: String,
    /// What happened.
    pub result: &'static str,
}

/// Labels of connection metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener (`token`, `admin`).
    pub listener: &'static str,
}

/// Builds latency histograms from 100 µs to ~1.6 s.
#[derive(Clone, Copy)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 15))
    }
}

/// Builds reconcile-duration histograms from 1 ms to ~16 s.
#[derive(Clone, Copy)]
pub struct ReconcileBuckets;

impl MetricConstructor<Histogram> for ReconcileBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }
}

/// Every metric the operator exports. Cheap to clone (handles are `Arc`s).
#[derive(Clone)]
pub struct Metrics {
    /// `m2m_token_requests_total{endpoint, outcome}`.
    pub token_requests: Family<RequestLabels, Counter>,
    /// `m2m_token_request_duration_seconds{endpoint}`.
    pub request_duration: Family<EndpointLabels, Histogram, LatencyBuckets>,
    /// `m2m_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: Family<ControllerLabels, Histogram, ReconcileBuckets>,
    /// `m2m_reconcile_errors_total{controller, reason}`.
    pub reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    /// `m2m_credentials{state}`.
    pub credentials: Family<CredentialStateLabels, Gauge>,
    /// `m2m_token_client_auth_total{method, outcome}`.
    pub client_auth: Family<ClientAuthLabels, Counter>,
    /// `m2m_token_assertion_checks_total{result}`: how workload-identity
    /// assertions were checked (TokenReview calls vs cache hits).
    pub assertion_checks: Family<AssertionLabels, Counter>,
    /// `m2m_http_connections{listener}`: open connections.
    pub http_connections: Family<ListenerLabels, Gauge>,
    /// `m2m_http_connection_limit_reached_total{listener}`.
    pub http_connection_limit: Family<ListenerLabels, Counter>,
    /// `m2m_token_server_state_age_seconds`: time since the token server's
    /// watches last confirmed its state is current.
    pub token_server_state_age: Gauge<f64, AtomicU64>,
    /// `m2m_token_server_credentials`: credentials the token server serves.
    pub token_server_credentials: Gauge,
    /// `m2m_usage_writes_total{outcome}`: usage status writes by outcome.
    pub usage_writes: Family<OutcomeLabels, Counter>,
    /// `m2m_usage_unwritten_credentials`: credentials whose last usage write failed.
    pub usage_unwritten: Gauge,
    /// `m2m_stale_secret_in_use_total`: grace periods that ended while the
    /// previous secret version was still in use.
    pub stale_secret_in_use: Counter,
    /// `m2m_federation_assertions_total{issuer, result}`.
    pub federation_assertions: Family<FederationLabels, Counter>,
    /// `m2m_federation_key_refreshes_total{issuer, result}`.
    pub federation_key_refreshes: Family<FederationLabels, Counter>,
    registry: Arc<Registry>,
}

/// Labels of a counter by outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, `conflict`, `gone` or `error`.
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under the `m2m` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("m2m");
        let token_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Token-server requests by endpoint and outcome",
            token_requests.clone(),
        );
        let request_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "token_request_duration_seconds",
            "Token-server request latency by endpoint",
            request_duration.clone(),
        );
        let reconcile_duration = Family::new_with_constructor(ReconcileBuckets);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile by controller",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and reason",
            reconcile_errors.clone(),
        );
        let credentials = Family::<CredentialStateLabels, Gauge>::default();
        registry.register(
            "credentials",
            "M2MCredentials by state",
            credentials.clone(),
        );
        let client_auth = Family::<ClientAuthLabels, Counter>::default();
        registry.register(
            "token_client_auth",
            "Token-endpoint client authentications by method and outcome",
            client_auth.clone(),
        );
        let assertion_checks = Family::<AssertionLabels, Counter>::default();
        registry.register(
            "token_assertion_checks",
            "Workload-identity assertion checks by result (TokenReview call or cache)",
            assertion_checks.clone(),
        );
        let http_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "http_connections",
            "Open HTTP connections by listener",
            http_connections.clone(),
        );
        let http_connection_limit = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "http_connection_limit_reached",
            "Times a listener reached its connection limit and paused accepting",
            http_connection_limit.clone(),
        );
        let token_server_state_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_server_state_age_seconds",
            "Seconds since the token server's watches last confirmed the served state is current",
            token_server_state_age.clone(),
        );
        let token_server_credentials = Gauge::default();
        registry.register(
            "token_server_credentials",
            "Credentials in the token server's index",
            token_server_credentials.clone(),
        );
        let usage_writes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "usage_writes",
            "Usage status writes (lastUsedTime, versionUsage) by the token server, by outcome",
            usage_writes.clone(),
        );
        let usage_unwritten = Gauge::default();
        registry.register(
            "usage_unwritten_credentials",
            "Credentials whose recorded usage the last flush could not write",
            usage_unwritten.clone(),
        );
        let stale_secret_in_use = Counter::default();
        registry.register(
            "stale_secret_in_use",
            "Grace periods that ended while the previous secret version was still in use",
            stale_secret_in_use.clone(),
        );
        let federation_assertions = Family::<FederationLabels, Counter>::default();
        registry.register(
            "federation_assertions",
            "Federated JWTs checked, by issuer object and result",
            federation_assertions.clone(),
        );
        let federation_key_refreshes = Family::<FederationLabels, Counter>::default();
        registry.register(
            "federation_key_refreshes",
            "Trusted-issuer key refreshes by this replica, by issuer object and result",
            federation_key_refreshes.clone(),
        );
        Self {
            federation_assertions,
            federation_key_refreshes,
            usage_writes,
            usage_unwritten,
            stale_secret_in_use,
            http_connections,
            http_connection_limit,
            token_server_state_age,
            token_server_credentials,
            token_requests,
            request_duration,
            reconcile_duration,
            reconcile_errors,
            credentials,
            client_auth,
            assertion_checks,
            registry: Arc::new(registry),
        }
    }

    /// Count one token-server request and its latency.
    pub(crate) fn observe_request(&self, endpoint: Endpoint, outcome: &'static str, seconds: f64) {
        self.token_requests
            .get_or_create(&RequestLabels { endpoint, outcome })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// Count one client authentication at the token endpoint.
    pub(crate) fn observe_client_auth(&self, method: &'static str, outcome: &'static str) {
        self.client_auth
            .get_or_create(&ClientAuthLabels { method, outcome })
            .inc();
    }

    /// Count one federated JWT check.
    pub(crate) fn observe_federation(&self, issuer: &str, result: &'static str) {
        self.federation_assertions
            .get_or_create(&FederationLabels {
                issuer: issuer.to_owned(),
                result,
            })
            .inc();
    }

    /// Count one trusted-issuer key refresh.
    pub(crate) fn observe_federation_refresh(&self, issuer: &str, result: &'static str) {
        self.federation_key_refreshes
            .get_or_create(&FederationLabels {
                issuer: issuer.to_owned(),
                result,
            })
            .inc();
    }

    /// Count one workload-identity assertion check.
    pub(crate) fn observe_assertion(&self, result: &'static str) {
        self.assertion_checks
            .get_or_create(&AssertionLabels { result })
            .inc();
    }

    /// Record one reconcile of `controller`; `error` is the failure reason, if any.
    pub(crate) fn observe_reconcile(&self, controller: &str, seconds: f64, error: Option<&str>) {
        self.reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .observe(seconds);
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ReconcileErrorLabels {
                    controller: controller.to_owned(),
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// The open-connections gauge of `listener`.
    pub(crate) fn http_connections(&self, listener: &'static str) -> Gauge {
        self.http_connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// Count one time `listener` reached its connection limit.
    pub(crate) fn http_connection_limit_reached(&self, listener: &'static str) {
        self.http_connection_limit
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// Set the number of credentials in `state`.
    pub(crate) fn set_credentials(&self, state: &str, count: i64) {
        self.credentials
            .get_or_create(&CredentialStateLabels {
                state: state.to_owned(),
            })
            .set(count);
    }

    /// Set the age of the token server's state.
    pub(crate) fn set_token_server_state_age(&self, seconds: f64) {
        self.token_server_state_age.set(seconds);
    }

    /// Set the number of credentials the token server serves.
    pub(crate) fn set_token_server_credentials(&self, count: i64) {
        self.token_server_credentials.set(count);
    }

    /// Count one usage status write by outcome.
    pub(crate) fn observe_usage_write(&self, outcome: &'static str) {
        self.usage_writes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Set the number of credentials with usage not written.
    pub(crate) fn set_usage_unwritten(&self, count: i64) {
        self.usage_unwritten.set(count);
    }

    /// Count a grace period that ended with its version still in use.
    pub(crate) fn observe_stale_secret_in_use(&self) {
        self.stale_secret_in_use.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn audit_fields_cannot_break_the_line() {
        assert_eq!(super::audit_field("m2mc_abc"), "m2mc_abc");
        assert_eq!(
            super::audit_field("a\nb\r\u{1b}c"),
            "a\\u{a}b\\u{d}\\u{1b}c"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            super::audit_field(&long).chars().count(),
            super::MAX_AUDIT_FIELD_CHARS + 1
        );
        assert!(!super::audit_field("a\u{2028}b").contains('\u{2028}'));
    }

    use super::*;

    #[test]
    fn metrics_are_exported_with_their_names() {
        let m = Metrics::new();
        m.observe_request(Endpoint::token, "ok", 0.0002);
        m.observe_request(Endpoint::token, "invalid_client", 0.0001);
        m.observe_reconcile("credential", 0.01, Some("ApplySecret"));
        m.set_credentials("ready", 3);
        m.set_token_server_state_age(1.5);
        m.set_token_server_credentials(7);
        let text = m.encode().unwrap();
        for needle in [
            "m2m_token_requests_total{endpoint=\"token\",outcome=\"ok\"} 1",
            "m2m_token_request_duration_seconds_bucket",
            "m2m_reconcile_duration_seconds_count{controller=\"credential\"} 1",
            "m2m_reconcile_errors_total{controller=\"credential\",reason=\"ApplySecret\"} 1",
            "m2m_credentials{state=\"ready\"} 3",
            "m2m_token_server_state_age_seconds 1.5",
            "m2m_token_server_credentials 7",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
