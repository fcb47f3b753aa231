//! Command-line interface: one binary, four subcommands. Every flag has an
//! environment fallback so the Helm chart can configure it either way.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// JWT signing algorithm of the keys the controller generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256.
    #[default]
    #[value(name = "ES256")]
    Es256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    #[value(name = "RS256")]
    Rs256,
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
    /// [default: http://<service>.<namespace>.svc:8080, from M2M_SERVICE_NAME (default m2m-operator)].
    #[arg(long, env = "M2M_ISSUER")]
    pub issuer: Option<String>,

    /// Scope policy for namespaces without the `m2m.dev/allowed-scopes`
    /// annotation: comma-separated exact scopes or `prefix*` patterns. The
    /// default `*` allows everything and is unsafe on shared clusters.
    #[arg(long, env = "M2M_DEFAULT_ALLOWED_SCOPES", default_value = "*")]
    pub default_allowed_scopes: String,

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
    #[arg(long, env = "M2M_SIGNING_KEY_ROTATION", default_value = "720h")]
    pub signing_key_rotation: String,

    /// Token endpoint URL written into each credential Secret's `token_url`
    /// [default: <issuer>/oauth/token].
    #[arg(long, env = "M2M_TOKEN_URL")]
    pub token_url: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "M2M_LEASE_NAME",
        default_value = "m2m-operator-controller"
    )]
    pub lease_name: String,
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
}

fn parse_duration_flag(value: &str) -> Result<std::time::Duration, String> {
    match crate::core::duration::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl TokenServerOptions {
    /// The token endpoint's connection and request limits.
    pub fn limits(&self) -> crate::http::HttpLimits {
        let defaults = crate::http::HttpLimits::token_endpoint();
        crate::http::HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: defaults.body_read_timeout.min(self.request_timeout),
            request_timeout: self.request_timeout,
            ..defaults
        }
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

impl CommonArgs {
    /// The operator namespace: flag, else the pod's namespace, else `m2m-system`.
    pub fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "m2m-system".to_owned())
        })
    }

    /// The issuer URL: flag, else derived from the in-cluster Service name.
    pub fn issuer(&self) -> String {
        match &self.issuer {
            Some(i) => i.trim_end_matches('/').to_owned(),
            None => {
                let service =
                    std::env::var("M2M_SERVICE_NAME").unwrap_or_else(|_| "m2m-operator".to_owned());
                format!("http://{service}.{}.svc:8080", self.namespace())
            }
        }
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
        assert_eq!(run.common.issuer(), "http://m2m-operator.ops.svc:8080");
        let cli =
            Cli::try_parse_from(["m2m-operator", "controller", "--signing-alg", "EdDSA"]).unwrap();
        let Command::Controller(c) = cli.command else {
            panic!("not controller")
        };
        assert_eq!(c.controller.signing_alg, SigningAlg::EdDsa);
        assert!(
            Cli::try_parse_from(["m2m-operator", "controller", "--signing-alg", "HS256"]).is_err()
        );
    }
}
