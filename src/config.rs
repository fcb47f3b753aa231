//! The one typed configuration of a process, resolved once from the parsed
//! flags (clap has already applied the `M2M_*` environment fallbacks and
//! parsed durations). This is the only place that reads the environment or
//! the pod's files: the operator namespace from the service-account mount,
//! and the replica's name (`POD_NAME`, else `HOSTNAME`). Everything below
//! receives plain values, so a test builds them without touching the process.

use crate::cli::{CommonArgs, ControllerOptions, LogFormat, TokenServerOptions};
use crate::controller::ControllerConfig;
use crate::core::grant::{ScopePolicy, ScopePolicyError};
use crate::http::HttpLimits;
use crate::server::{ListenConfig, ServerBounds, ServerConfig, TlsFiles};
use crate::server::{assertion, binding, dpop, federation, mtls, usage};
use crate::signing::store::KeySecretConfig;
use std::net::SocketAddr;

/// Where a pod finds its own namespace.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// The operator namespace when neither the flag nor the pod says otherwise.
const FALLBACK_NAMESPACE: &str = "m2m-system";

/// Why the configuration is refused at start-up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// `--default-allowed-scopes` does not parse.
    #[error("--default-allowed-scopes")]
    DefaultPolicy(#[source] ScopePolicyError),
    /// `--default-role` cannot name a ClusterM2MRole: no role would ever be
    /// found and every ServiceAccount would be refused.
    #[error("--default-role {0:?} is not a valid object name (DNS-1123 subdomain)")]
    DefaultRole(String),
}

/// A DNS-1123 subdomain: what Kubernetes accepts as a ClusterM2MRole name.
fn is_dns1123_subdomain(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

/// What the process environment contributes beyond the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Environment {
    /// The namespace in the pod's service-account mount, if any.
    pub pod_namespace: Option<String>,
    /// This replica's name: `POD_NAME`, else `HOSTNAME`.
    pub instance: Option<String>,
}

impl Environment {
    /// Read the environment of this process (the only such read).
    pub fn current() -> Self {
        let pod_namespace = std::fs::read_to_string(NAMESPACE_FILE)
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty());
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|s| !s.is_empty());
        Self {
            pod_namespace,
            instance,
        }
    }
}

/// Settings every long-running subcommand shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the key Secret, the revocation list and the Lease.
    pub operator_namespace: String,
    /// Only this namespace is watched, if set.
    pub watch_namespace: Option<String>,
    /// Address of `/livez`, `/readyz` and `/metrics`.
    pub admin_listen: SocketAddr,
    /// The `iss` claim and discovery base URL, without a trailing slash.
    pub issuer: String,
    /// Scope policy of namespaces without the `m2m.dev/allowed-scopes` annotation.
    pub default_policy: ScopePolicy,
    /// The `ClusterM2MRole` granted to every ServiceAccount, if any.
    pub default_role: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// This replica's name (Events, Lease identity).
    pub instance: Option<String>,
}

impl Config {
    /// Resolve the shared flags against `env`.
    pub(crate) fn resolve(common: &CommonArgs, env: &Environment) -> Result<Self, ConfigError> {
        let operator_namespace = common
            .namespace
            .clone()
            .or_else(|| env.pod_namespace.clone())
            .unwrap_or_else(|| FALLBACK_NAMESPACE.to_owned());
        let issuer = match &common.issuer {
            Some(i) => i.trim_end_matches('/').to_owned(),
            None => format!(
                "http://{}.{operator_namespace}.svc:8080",
                common.service_name
            ),
        };
        Ok(Self {
            default_policy: ScopePolicy::parse(&common.default_allowed_scopes)
                .map_err(ConfigError::DefaultPolicy)?,
            operator_namespace,
            watch_namespace: common.watch_namespace.clone(),
            admin_listen: common.admin_listen,
            default_role: match common.default_role.as_deref() {
                None | Some("") => None,
                Some(r) if is_dns1123_subdomain(r) => Some(r.to_owned()),
                Some(r) => return Err(ConfigError::DefaultRole(r.to_owned())),
            },
            issuer,
            log_format: common.log_format,
            instance: env.instance.clone(),
        })
    }

    /// What the reconcilers need.
    pub fn controller(&self, opts: &ControllerOptions) -> ControllerConfig {
        ControllerConfig {
            operator_namespace: self.operator_namespace.clone(),
            watch_namespace: self.watch_namespace.clone(),
            token_url: opts
                .token_url
                .clone()
                .unwrap_or_else(|| format!("{}/oauth/token", self.issuer)),
            issuer: self.issuer.clone(),
            default_policy: self.default_policy.clone(),
            instance: self.instance.clone(),
            max_api_token_lifetime: opts.max_api_token_lifetime,
            default_role: self.default_role.clone(),
            pod_certificates: opts.pod_certificates.resolve(&self.issuer),
        }
    }

    /// Where the operator key Secret lives and how its keys rotate.
    pub(crate) fn key_secret(&self, opts: &ControllerOptions) -> KeySecretConfig {
        KeySecretConfig::new(
            self.operator_namespace.clone(),
            opts.signing_alg,
            opts.signing_key_rotation,
        )
    }

    /// Everything the token server needs: its handlers, its listener and
    /// the bounds of its caches (resolved here once, so the server never
    /// reads the flags).
    pub fn server(&self, opts: &TokenServerOptions) -> ServerConfig {
        let client_trust = client_trust_sources(opts);
        ServerConfig {
            default_audience: opts
                .default_audience
                .clone()
                .unwrap_or_else(|| self.issuer.clone()),
            issuer: self.issuer.clone(),
            default_policy: self.default_policy.clone(),
            default_role: self.default_role.clone(),
            operator_namespace: self.operator_namespace.clone(),
            limits: token_limits(opts),
            sender: binding::SenderOptions {
                dpop: dpop::DpopConfig {
                    max_age: opts.sender.dpop_proof_max_age,
                    replay_entries: opts.sender.dpop_replay_cache_entries,
                    nonce: opts.sender.dpop_nonce,
                    extra_htu: opts.sender.dpop_htu.clone(),
                },
                client_certificates: client_trust.is_enabled(),
            },
            listen: ListenConfig {
                addr: opts.listen,
                tls: match (&opts.tls_cert, &opts.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                },
                client_trust,
            },
            bounds: ServerBounds {
                revocation_quota: opts.revocation_quota,
                assertion_cache: assertion::CacheBounds {
                    ttl: opts.assertion_cache_ttl,
                    entries: opts.assertion_cache_entries,
                },
                token_review: assertion::ReviewLimits {
                    max_concurrent: opts.token_review_max_concurrent as usize,
                    per_second: opts.token_review_max_per_second,
                },
                usage: usage::UsageResolution {
                    coarse: opts.usage_resolution,
                    fine: opts.usage_resolution_in_grace,
                },
                // The verified-token cache shares the workload-identity
                // cache's flags.
                federation: federation::FederationBounds {
                    refresh_interval: opts.federation.federation_refresh_interval,
                    max_key_staleness: opts.federation.federation_max_key_staleness,
                    cache_ttl: opts.assertion_cache_ttl,
                    cache_entries: opts.assertion_cache_entries,
                    unknown_kid_interval: opts.federation.federation_unknown_kid_interval,
                },
            },
        }
    }
}

/// Where client-certificate trust comes from (none without TLS).
fn client_trust_sources(opts: &TokenServerOptions) -> mtls::TrustSources {
    if opts.tls_cert.is_none() {
        return Default::default();
    }
    mtls::TrustSources {
        ca_file: opts.sender.tls_client_ca.clone(),
        signer: opts.sender.tls_client_ca_signer.clone(),
    }
}

/// The token endpoint's connection and request limits.
fn token_limits(opts: &TokenServerOptions) -> HttpLimits {
    let defaults = HttpLimits::token_endpoint();
    HttpLimits {
        max_connections: opts.max_connections,
        header_read_timeout: opts.header_read_timeout,
        body_read_timeout: defaults.body_read_timeout.min(opts.request_timeout),
        request_timeout: opts.request_timeout,
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::Duration;

    fn run_args(args: &[&str]) -> crate::cli::RunArgs {
        let mut argv = vec!["m2m-operator", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(run) => run,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn namespace_and_issuer_fall_back_in_order() {
        let in_pod = Environment {
            pod_namespace: Some("pod-ns".into()),
            instance: Some("pod-0".into()),
        };
        let run = run_args(&[]);
        let cfg = Config::resolve(&run.common, &in_pod).unwrap();
        assert_eq!(cfg.operator_namespace, "pod-ns");
        assert_eq!(cfg.issuer, "http://m2m-operator.pod-ns.svc:8080");
        assert_eq!(cfg.instance.as_deref(), Some("pod-0"));
        let cfg = Config::resolve(&run.common, &Environment::default()).unwrap();
        assert_eq!(cfg.operator_namespace, "m2m-system");
        let run = run_args(&["--namespace", "ops", "--issuer", "https://id.example/"]);
        let cfg = Config::resolve(&run.common, &in_pod).unwrap();
        assert_eq!(cfg.operator_namespace, "ops");
        assert_eq!(cfg.issuer, "https://id.example");
        let controller = cfg.controller(&run.controller);
        assert_eq!(controller.token_url, "https://id.example/oauth/token");
        assert_eq!(
            cfg.server(&run.server).default_audience,
            "https://id.example"
        );
        let keys = cfg.key_secret(&run.controller);
        assert_eq!(keys.policy.rotate_every, Duration::from_secs(720 * 3600));
        let run = run_args(&["--namespace", "ops", "--service-name", "auth"]);
        let cfg = Config::resolve(&run.common, &in_pod).unwrap();
        assert_eq!(cfg.issuer, "http://auth.ops.svc:8080");
    }

    /// The controller and the token server get the same default role; an
    /// empty value (the chart's default) means none.
    #[test]
    fn default_role_reaches_both_components() {
        for (args, want) in [
            (vec![], None),
            (vec!["--default-role", ""], None),
            (vec!["--default-role", "baseline"], Some("baseline")),
        ] {
            let run = run_args(&args);
            let cfg = Config::resolve(&run.common, &Environment::default()).unwrap();
            assert_eq!(
                cfg.controller(&run.controller).default_role.as_deref(),
                want
            );
            assert_eq!(cfg.server(&run.server).default_role.as_deref(), want);
        }
        for bad in ["Baseline", "base_line", "-base", "base.", "a..b"] {
            let run = run_args(&[&format!("--default-role={bad}")]);
            let err = Config::resolve(&run.common, &Environment::default()).unwrap_err();
            assert!(matches!(err, ConfigError::DefaultRole(_)), "{bad}");
        }
    }

    #[test]
    fn malformed_default_policy_is_refused_at_start_up() {
        let run = run_args(&["--default-allowed-scopes", "a*b"]);
        assert!(Config::resolve(&run.common, &Environment::default()).is_err());
    }
}
