//! Command-line interface: one binary, four subcommands. Every flag has an
//! environment fallback so the Helm chart can configure it either way.

use crate::core::duration::parse_duration;
use crate::signing::SigningAlg;
pub use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Machine-to-machine identities for Kubernetes: OAuth 2.0 client-credentials
/// Secrets, rotation, and an in-cluster token endpoint.
#[derive(Debug, Parser)]
#[command(name = "m2m-operator", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconcilers (credentials, service accounts, signing keys) under a leader-election Lease.
    Controller(ControllerArgs),
    /// Serve the OAuth 2.0 token endpoint from the reconciled state (horizontally scalable).
    TokenServer(TokenServerArgs),
    /// Run the controller and the token server in one process.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Benchmark only: a token server with one generated credential and no cluster.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchServer(BenchServerArgs),
    /// Benchmark only: DPoP proofs for the load generator, and the cost of verifying one.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchDpop(BenchDpopArgs),
}

/// `m2m-operator bench-dpop` (hidden, `bench` feature).
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Args)]
pub struct BenchDpopArgs {
    /// Proof algorithm: `ES256` or `EdDSA`.
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    /// The token endpoint URL the proofs name (`htu`).
    #[arg(long)]
    pub htu: String,
    /// How many proofs to write.
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// Where to write them, one per line.
    #[arg(long)]
    pub out: PathBuf,
    /// Proofs verified in the micro-benchmark.
    #[arg(long, default_value_t = 5_000)]
    pub verify_iterations: usize,
}

/// `m2m-operator bench-server` (hidden): serves `/oauth/token` from generated
/// in-memory state, plus `/bench/token-unsigned` (everything but signing).
/// Only in builds with the `bench` cargo feature.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Args)]
pub struct BenchServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Signing algorithm of the generated key.
    #[arg(long, value_enum, default_value_t = SigningAlg::Es256)]
    pub signing_alg: SigningAlg,
    /// Write `client_id:client_secret` of the generated credential here.
    #[arg(long)]
    pub credentials_file: PathBuf,
    /// Write a client assertion (service-account-token shaped, pre-seeded in
    /// the assertion cache) of the workload-identity credential here.
    #[arg(long)]
    pub assertion_file: Option<PathBuf>,
    /// Write the API token of the generated `APIToken` credential here.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Oldest accepted DPoP proof `iat` (the benchmark's proofs are made
    /// before each run).
    #[arg(long, default_value = "600s", value_parser = parse_duration_flag)]
    pub dpop_proof_max_age: Duration,
    /// Also serve over TLS here (for the mTLS columns).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,
    /// TLS certificate of `--tls-listen`.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS key of `--tls-listen`.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CAs of client certificates on `--tls-listen`.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
}

/// `--signing-alg` takes the JOSE names (`ES256`, `EdDSA`, `RS256`).
impl ValueEnum for SigningAlg {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// Flags every long-running subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Namespace holding the signing-key Secret, the revocation list and the
    /// leader Lease [default: the pod's namespace, else m2m-system].
    #[arg(long, env = "M2M_NAMESPACE")]
    pub namespace: Option<String>,

    /// Watch only this namespace instead of the whole cluster (for
    /// single-tenant installs and tests) [default: all namespaces].
    #[arg(long, env = "M2M_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Address of `/livez`, `/readyz` and `/metrics`.
    #[arg(long, env = "M2M_ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,

    /// Issuer URL: the `iss` claim and the discovery base URL
    /// [default: http://<service-name>.<namespace>.svc:8080].
    #[arg(long, env = "M2M_ISSUER")]
    pub issuer: Option<String>,

    /// Name of the Service in front of the token server, for the default issuer URL.
    #[arg(long, env = "M2M_SERVICE_NAME", default_value = "m2m-operator")]
    pub service_name: String,

    /// Scope policy for namespaces without the `m2m.dev/allowed-scopes`
    /// annotation: comma-separated exact scopes or `prefix*` patterns. The
    /// default `*` allows everything and is unsafe on shared clusters.
    #[arg(long, env = "M2M_DEFAULT_ALLOWED_SCOPES", default_value = "*")]
    pub default_allowed_scopes: String,

    /// A `ClusterM2MRole` granted to every ServiceAccount (m2m.dev). While
    /// it does not exist every ServiceAccount is `Ready=False`
    /// (`RoleNotFound`) and gets no token [default: none].
    #[arg(long, env = "M2M_DEFAULT_ROLE")]
    pub default_role: Option<String>,

    /// Log format.
    #[arg(long, env = "M2M_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Flags of the controller.
#[derive(Debug, Clone, Args)]
pub struct ControllerOptions {
    /// Algorithm of newly generated signing keys.
    #[arg(long, env = "M2M_SIGNING_ALG", value_enum, default_value_t = SigningAlg::Es256)]
    pub signing_alg: SigningAlg,

    /// How long a signing key signs before a new one replaces it (retired keys
    /// stay in the JWKS until every token they signed has expired).
    #[arg(long, env = "M2M_SIGNING_KEY_ROTATION", default_value = "720h", value_parser = positive_duration)]
    pub signing_key_rotation: Duration,

    /// Token endpoint URL written into each credential Secret's `token_url`
    /// [default: <issuer>/oauth/token].
    #[arg(long, env = "M2M_TOKEN_URL")]
    pub token_url: Option<String>,

    /// Longest life of an API token (`spec.type: APIToken`): its
    /// `rotation.every`, or its `expiresAt` measured from when the token was
    /// issued. A credential over it, or without an end, is `Ready=False`.
    #[arg(long, env = "M2M_MAX_API_TOKEN_LIFETIME", default_value = "8760h", value_parser = positive_duration)]
    pub max_api_token_lifetime: Duration,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "M2M_LEASE_NAME",
        default_value = "m2m-operator-controller"
    )]
    pub lease_name: String,

    #[command(flatten)]
    /// The Pod-certificate signer.
    pub pod_certificates: crate::controller::podcert::PodCertificateArgs,
}

/// Flags of the token server.
#[derive(Debug, Clone, Args)]
pub struct TokenServerOptions {
    /// Address of the token endpoint.
    #[arg(long, env = "M2M_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain for TLS; reloaded when the file changes.
    #[arg(long, env = "M2M_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS; reloaded when the file changes.
    #[arg(long, env = "M2M_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// `aud` of tokens whose credential lists no audiences [default: the issuer URL].
    #[arg(long, env = "M2M_DEFAULT_AUDIENCE")]
    pub default_audience: Option<String>,

    /// Workload identity: how long a service-account token Kubernetes
    /// confirmed (TokenReview) is accepted without asking again; never past
    /// the token's `exp`. Also bounds how long a deleted Pod's or
    /// ServiceAccount's token keeps working.
    #[arg(long, env = "M2M_ASSERTION_CACHE_TTL", default_value = "30s", value_parser = parse_duration_flag)]
    pub assertion_cache_ttl: std::time::Duration,

    /// Workload identity: at most this many TokenReview results are cached.
    #[arg(long, env = "M2M_ASSERTION_CACHE_ENTRIES", default_value_t = crate::core::workload::DEFAULT_CACHE_ENTRIES)]
    pub assertion_cache_entries: usize,

    /// Workload identity: at most this many TokenReview calls in flight
    /// per replica, whatever the callers; beyond it an assertion not in
    /// the cache is answered `503` with `Retry-After` instead of reviewed.
    #[arg(long, env = "M2M_TOKEN_REVIEW_MAX_CONCURRENT",
          default_value_t = crate::core::workload::DEFAULT_MAX_CONCURRENT_REVIEWS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub token_review_max_concurrent: u32,

    /// Workload identity: at most this many TokenReview calls per second
    /// per replica (cached assertions cost none); beyond it `503` with
    /// `Retry-After`.
    #[arg(long, env = "M2M_TOKEN_REVIEW_MAX_PER_SECOND",
          default_value_t = crate::core::workload::DEFAULT_REVIEWS_PER_SECOND,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub token_review_max_per_second: u32,

    /// Federation (trusted issuers' keys).
    #[command(flatten)]
    pub federation: FederationOptions,

    /// Open connections per process on the token endpoint; at the limit no
    /// new connection is accepted until one closes.
    #[arg(long, env = "M2M_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Deadline for a request's headers (and the keep-alive idle timeout).
    #[arg(long, env = "M2M_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration_flag)]
    pub header_read_timeout: std::time::Duration,

    /// Deadline for a whole request, body included.
    #[arg(long, env = "M2M_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration_flag)]
    pub request_timeout: std::time::Duration,

    /// Revoked tokens kept one by one per client; beyond it, a client's next
    /// revocation revokes every token it was issued up to the newest revoked one.
    #[arg(long, env = "M2M_REVOCATION_QUOTA", default_value_t = crate::server::revocation::DEFAULT_QUOTA,
          value_parser = parse_revocation_quota)]
    pub revocation_quota: usize,

    /// How fresh `status.lastUsedTime` and `status.versionUsage` are kept
    /// outside grace periods: at most one usage write per credential per
    /// interval per replica.
    #[arg(long, env = "M2M_USAGE_RESOLUTION", default_value = "60s", value_parser = parse_duration_flag)]
    pub usage_resolution: std::time::Duration,

    /// The usage resolution while a previous secret version is in its grace
    /// period (adoption-aware retirement decides on it).
    #[arg(long, env = "M2M_USAGE_RESOLUTION_IN_GRACE", default_value = "5s", value_parser = parse_duration_flag)]
    pub usage_resolution_in_grace: std::time::Duration,

    /// Sender-constrained tokens: DPoP and client certificates.
    #[command(flatten)]
    pub sender: SenderArgs,
}

/// Flags of sender-constrained tokens (RFC 9449 DPoP, RFC 8705 mTLS).
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct SenderArgs {
    /// PEM file of the CAs TLS client certificates must chain to; with it,
    /// the TLS listener asks for a client certificate (optional), binds
    /// tokens to it (`cnf["x5t#S256"]`) and accepts `tls_client_auth`.
    /// Reloaded when it changes.
    #[arg(long, env = "M2M_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Trust the CAs of every `ClusterTrustBundle` (certificates.k8s.io/v1)
    /// with this `spec.signerName` for client certificates, as they change
    /// (e.g. `m2m.dev/workload-identity`). Needs `list`/`watch` on
    /// clustertrustbundles.
    #[arg(long, env = "M2M_TLS_CLIENT_CA_SIGNER", requires = "tls_cert")]
    pub tls_client_ca_signer: Option<String>,

    /// Oldest `iat` a DPoP proof may have.
    #[arg(long, env = "M2M_DPOP_PROOF_MAX_AGE", default_value = "60s", value_parser = parse_duration_flag)]
    pub dpop_proof_max_age: std::time::Duration,

    /// DPoP proofs remembered per replica to refuse replays (about 16 bytes
    /// each); when full of proofs still in their window, DPoP requests get
    /// `503` until some age out.
    #[arg(long, env = "M2M_DPOP_REPLAY_CACHE_ENTRIES",
          default_value_t = crate::server::dpop::DEFAULT_REPLAY_ENTRIES,
          value_parser = parse_replay_entries)]
    pub dpop_replay_cache_entries: usize,

    /// Require a server nonce in DPoP proofs (RFC 9449 §8): a proof without
    /// a current one is answered `use_dpop_nonce` with a `DPoP-Nonce` header.
    #[arg(long, env = "M2M_DPOP_NONCE")]
    pub dpop_nonce: bool,

    /// Another URL of the token endpoint a DPoP proof's `htu` may name
    /// (e.g. the in-cluster URL when `--issuer` is an external one);
    /// `<issuer>/oauth/token` always works. Repeatable.
    #[arg(long, env = "M2M_DPOP_HTU", value_delimiter = ',')]
    pub dpop_htu: Vec<String>,
}

/// At least one replay-cache entry.
fn parse_replay_entries(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a positive integer".into()),
    }
}

/// 1 to 10,000: a list of that many entries stays far below the ConfigMap limit.
fn parse_revocation_quota(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("expected an integer from 1 to 10000".into()),
    }
}

/// The token server's federation flags (SPEC §9, docs/federation.md).
#[derive(Debug, Clone, clap::Args)]
pub struct FederationOptions {
    /// Federation: how often every replica refreshes each trusted
    /// issuer's keys (an unknown `kid` refreshes sooner, at most once per
    /// `--federation-unknown-kid-interval`).
    #[arg(long, env = "M2M_FEDERATION_REFRESH_INTERVAL", default_value = "5m", value_parser = parse_duration_flag)]
    pub federation_refresh_interval: std::time::Duration,

    /// Federation: while an issuer cannot be reached its last good keys
    /// are used for at most this long after their last successful
    /// refresh; then its tokens get `503` until a refresh succeeds.
    #[arg(long, env = "M2M_FEDERATION_MAX_KEY_STALENESS", default_value = "24h", value_parser = parse_duration_flag)]
    pub federation_max_key_staleness: std::time::Duration,

    /// Federation: a token with a `kid` the issuer's keys lack refreshes
    /// them at most this often per issuer (the request waits up to 2 s).
    #[arg(long, env = "M2M_FEDERATION_UNKNOWN_KID_INTERVAL", default_value = "10s", value_parser = parse_duration_flag)]
    pub federation_unknown_kid_interval: std::time::Duration,
}

impl Default for FederationOptions {
    fn default() -> Self {
        let b = crate::server::federation::FederationBounds::default();
        Self {
            federation_refresh_interval: b.refresh_interval,
            federation_max_key_staleness: b.max_key_staleness,
            federation_unknown_kid_interval: b.unknown_kid_interval,
        }
    }
}

fn parse_duration_flag(value: &str) -> Result<std::time::Duration, String> {
    match crate::core::duration::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `m2m-operator controller`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    /// Shared flags.
    pub common: CommonArgs,
    #[command(flatten)]
    /// Controller flags.
    pub controller: ControllerOptions,
}

/// `m2m-operator token-server`.
#[derive(Debug, Clone, Args)]
pub struct TokenServerArgs {
    #[command(flatten)]
    /// Shared flags.
    pub common: CommonArgs,
    #[command(flatten)]
    /// Token-server flags.
    pub server: TokenServerOptions,
}

/// `m2m-operator run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    /// Shared flags.
    pub common: CommonArgs,
    #[command(flatten)]
    /// Controller flags.
    pub controller: ControllerOptions,
    #[command(flatten)]
    /// Token-server flags.
    pub server: TokenServerOptions,
}

/// A Go-style duration greater than zero, parsed once here at the edge.
fn positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["m2m-operator", "run", "--namespace", "ops"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(run.common.admin_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(run.controller.signing_alg, SigningAlg::Es256);
        assert_eq!(
            run.controller.signing_key_rotation,
            Duration::from_secs(720 * 3600)
        );
        let cli =
            Cli::try_parse_from(["m2m-operator", "controller", "--signing-alg", "EdDSA"]).unwrap();
        let Command::Controller(c) = cli.command else {
            panic!("not controller")
        };
        assert_eq!(c.controller.signing_alg, SigningAlg::EdDsa);
        assert!(
            Cli::try_parse_from(["m2m-operator", "controller", "--signing-alg", "HS256"]).is_err()
        );
        for bad in ["0s", "soon", ""] {
            let argv = ["m2m-operator", "controller", "--signing-key-rotation", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
