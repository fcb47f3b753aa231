//! Federation (SPEC §9): tokens for workloads outside the cluster, signed
//! by an issuer a platform admin trusts (`ClusterTrustedIssuer`,
//! `TrustedIssuer`) and bound subject by subject with
//! `M2MCredential.spec.federation`.
//!
//! - [`rules`]: CEL over `claims` (compiled once, cost-bounded).
//! - [`keys`]: an issuer's JWK Set, asymmetric signing keys only.
//! - [`verify`]: offline verification of one token.
//! - [`fetch`]: discovery and JWKS over HTTPS (shared by the controller and
//!   the token servers; no Kubernetes API).
//!
//! This module holds the decisions both sides make identically: what an
//! issuer object compiles to ([`CompiledIssuer`]), whether a namespace may
//! bind it ([`namespace_allowed`]), and the sealed epoch of a binding
//! ([`epoch_verifier`]).

pub mod fetch;
pub mod keys;
pub mod rules;
pub mod verify;

use crate::core::duration::parse_duration;
use crate::crd::{Federation, FederationStatus, IssuerKind, IssuerRef, IssuerSpec, SecretVerifier};
use fetch::KeySource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rules::{ClaimRule, Claims, RuleError};
use std::collections::BTreeMap;
use std::time::Duration;

/// `maxTokenLifetime` when unset.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How often keys are refreshed when nothing asks sooner.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a refresh at most this often per issuer.
pub const UNKNOWN_KID_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Keys are used at most this long after their last successful refresh
/// while the issuer cannot be reached; then its tokens are refused.
pub const DEFAULT_MAX_KEY_STALENESS: Duration = Duration::from_secs(24 * 3600);
/// How the digest of an [`epoch_verifier`] starts.
pub const EPOCH_DIGEST_PREFIX: &str = "federation:";

/// An issuer object's identity: kind, namespace (empty for the cluster
/// kind) and name. Its `Display` (`ClusterTrustedIssuer/ci`,
/// `TrustedIssuer/team-a/ci`) is the status, metric and audit name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId {
    /// Which kind.
    pub kind: IssuerKind,
    /// Namespace of a `TrustedIssuer`; empty for a `ClusterTrustedIssuer`.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for IssuerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            IssuerKind::ClusterTrustedIssuer => write!(f, "ClusterTrustedIssuer/{}", self.name),
            IssuerKind::TrustedIssuer => {
                write!(f, "TrustedIssuer/{}/{}", self.namespace, self.name)
            }
        }
    }
}

impl IssuerId {
    /// The issuer a credential in `namespace` refers to: a `TrustedIssuer`
    /// always in that same namespace (a reference cannot name another).
    pub fn referenced(namespace: &str, r: &IssuerRef) -> Self {
        Self {
            kind: r.kind,
            namespace: match r.kind {
                IssuerKind::ClusterTrustedIssuer => String::new(),
                IssuerKind::TrustedIssuer => namespace.to_owned(),
            },
            name: r.name.clone(),
        }
    }
}

/// Why an issuer object is unusable as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// A claim rule does not compile.
    #[error("claimValidationRules[{index}]: {error}")]
    Rule {
        /// Which rule.
        index: usize,
        /// The compiler's complaint.
        error: RuleError,
    },
    /// `maxTokenLifetime` unparsable (the schema normally refuses it).
    #[error("maxTokenLifetime {0:?} is not a duration")]
    Lifetime(String),
    /// Not `https://` (the schema normally refuses it).
    #[error("issuer {0:?} is not an https:// URL")]
    Issuer(String),
}

impl IssuerError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rule { .. } => "InvalidClaimValidationRule",
            Self::Lifetime(_) | Self::Issuer(_) => "InvalidSpec",
        }
    }
}

/// A claim rule with its message.
#[derive(Debug)]
pub struct CompiledRule {
    /// The program.
    pub rule: ClaimRule,
    /// The message it refuses with (logs only).
    pub message: Option<String>,
}

/// What an issuer object compiles to: the same for the controller and the
/// token servers.
#[derive(Debug)]
pub struct CompiledIssuer {
    /// Which object.
    pub id: IssuerId,
    /// `iss`, exactly.
    pub issuer: String,
    /// Accepted audiences; empty: the token endpoint's issuer URL.
    pub audiences: Vec<String>,
    /// Longest `exp − iat`.
    pub max_lifetime: Duration,
    /// The claim rules.
    pub rules: Vec<CompiledRule>,
    /// Where the keys come from.
    pub key_source: KeySource,
    /// PEM CA bundle, if any (a ClusterTrustBundle is resolved into it).
    pub ca_bundle: Option<String>,
    /// `ClusterTrustBundle` to resolve, if named.
    pub cluster_trust_bundle: Option<String>,
    /// Cluster kind only: which namespaces may bind it (`None`: none).
    pub allowed_namespaces: Option<LabelSelector>,
}

impl CompiledIssuer {
    /// Compile an issuer's spec. `config_map_namespace` is where its
    /// `jwks.configMapRef` lives (its own namespace, or the operator's for
    /// the cluster kind).
    pub fn compile(
        id: IssuerId,
        spec: &IssuerSpec,
        allowed_namespaces: Option<LabelSelector>,
        config_map_namespace: &str,
    ) -> Result<Self, IssuerError> {
        if !spec.issuer.starts_with("https://") {
            return Err(IssuerError::Issuer(spec.issuer.clone()));
        }
        let max_lifetime = match &spec.max_token_lifetime {
            None => DEFAULT_MAX_TOKEN_LIFETIME,
            Some(d) => parse_duration(d).map_err(|_| IssuerError::Lifetime(d.clone()))?,
        };
        let rules = spec
            .claim_validation_rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                ClaimRule::compile(&r.expression)
                    .map(|rule| CompiledRule {
                        rule,
                        message: r.message.clone(),
                    })
                    .map_err(|error| IssuerError::Rule { index, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key_source = match (&spec.jwks_url, &spec.jwks) {
            (Some(url), _) => KeySource::Url(url.clone()),
            (None, Some(j)) => KeySource::ConfigMap(
                config_map_namespace.to_owned(),
                j.config_map_ref.name.clone(),
                j.config_map_ref.key.clone(),
            ),
            (None, None) => KeySource::Discovery,
        };
        Ok(Self {
            id,
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            max_lifetime,
            rules,
            key_source,
            ca_bundle: spec.ca_bundle.clone(),
            cluster_trust_bundle: spec.cluster_trust_bundle.as_ref().map(|b| b.name.clone()),
            allowed_namespaces,
        })
    }

    /// The first rule that does not hold for `claims` (its message, or
    /// the expression), if any.
    pub fn failing_rule(&self, claims: &Claims) -> Option<String> {
        self.rules.iter().find_map(|r| match r.rule.holds(claims) {
            Ok(true) => None,
            Ok(false) => Some(
                r.message
                    .clone()
                    .unwrap_or_else(|| format!("rule {:?} is false", r.rule.source())),
            ),
            Err(e) => Some(format!("rule {:?} failed: {e}", r.rule.source())),
        })
    }

    /// Whether a credential in `namespace` (with these labels) may bind it.
    pub fn binds_from(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        match self.id.kind {
            IssuerKind::TrustedIssuer => self.id.namespace == namespace,
            IssuerKind::ClusterTrustedIssuer => {
                namespace_allowed(self.allowed_namespaces.as_ref(), labels)
            }
        }
    }
}

/// Whether `selector` selects a namespace with `labels`; no selector
/// selects none, an empty one selects all (Kubernetes' semantics).
pub fn namespace_allowed(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // An operator Kubernetes does not define selects nothing.
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

/// A credential's federation binding as the token server and the
/// controller resolve it from the spec.
#[derive(Debug)]
pub struct FederationBinding {
    /// The issuer object.
    pub issuer: IssuerId,
    /// The exact `sub`.
    pub subject: String,
    /// The optional extra condition, compiled (`Err`: it does not compile,
    /// so the binding accepts nothing).
    pub condition: Option<Result<ClaimRule, RuleError>>,
}

impl PartialEq for FederationBinding {
    fn eq(&self, other: &Self) -> bool {
        self.issuer == other.issuer
            && self.subject == other.subject
            && match (&self.condition, &other.condition) {
                (None, None) => true,
                (Some(Ok(a)), Some(Ok(b))) => a == b,
                (Some(Err(a)), Some(Err(b))) => a == b,
                _ => false,
            }
    }
}

impl FederationBinding {
    /// Resolve `spec.federation` of a credential in `namespace`.
    pub fn resolve(namespace: &str, f: &Federation) -> Self {
        Self {
            issuer: IssuerId::referenced(namespace, &f.issuer_ref),
            subject: f.subject.clone(),
            condition: f.condition.as_deref().map(ClaimRule::compile),
        }
    }

    /// `Ok` if the condition (if any) holds for `claims`, else why not.
    pub fn condition_holds(&self, claims: &Claims) -> Result<(), String> {
        match &self.condition {
            None => Ok(()),
            Some(Err(e)) => Err(format!("the condition does not compile: {e}")),
            Some(Ok(rule)) => match rule.holds(claims) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("condition {:?} is false", rule.source())),
                Err(e) => Err(format!("condition {:?} failed: {e}", rule.source())),
            },
        }
    }

    /// The digest text of this binding's epoch.
    pub fn epoch_digest(&self) -> String {
        epoch_digest(&self.issuer.to_string(), &self.subject)
    }
}

fn epoch_digest(issuer_ref: &str, subject: &str) -> String {
    // An issuer id has no space; the subject may have anything after it.
    format!("{EPOCH_DIGEST_PREFIX}{issuer_ref} {subject}")
}

/// `status.federation` in the shape of a sealed verifier (version = epoch,
/// digest names the binding), as for workload identity: sealed by the
/// controller, checked by the token servers with the verifier key.
pub fn epoch_verifier(status: &FederationStatus) -> SecretVerifier {
    SecretVerifier {
        version: status.epoch,
        digest: epoch_digest(&status.issuer_ref, &status.subject),
        not_after: None,
        seal: status.seal.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn allowed_namespaces_defaults_to_none_and_follows_selector_semantics() {
        let team = labels(&[("team", "a"), ("env", "prod")]);
        assert!(!namespace_allowed(None, &team), "unset: no namespace");
        assert!(
            namespace_allowed(Some(&LabelSelector::default()), &team),
            "{{}}: all"
        );
        let by_label = LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            ..Default::default()
        };
        assert!(namespace_allowed(Some(&by_label), &team));
        assert!(!namespace_allowed(
            Some(&by_label),
            &labels(&[("team", "b")])
        ));
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            ..Default::default()
        };
        assert!(namespace_allowed(Some(&expr("In", &["prod"])), &team));
        assert!(!namespace_allowed(Some(&expr("NotIn", &["prod"])), &team));
        assert!(namespace_allowed(Some(&expr("Exists", &[])), &team));
        assert!(!namespace_allowed(Some(&expr("DoesNotExist", &[])), &team));
        assert!(!namespace_allowed(Some(&expr("Bogus", &[])), &team));
    }

    #[test]
    fn a_trusted_issuer_binds_only_from_its_namespace() {
        let spec = IssuerSpec {
            issuer: "https://ci.example".into(),
            ..Default::default()
        };
        let id = IssuerId {
            kind: IssuerKind::TrustedIssuer,
            namespace: "team-a".into(),
            name: "ci".into(),
        };
        let issuer = CompiledIssuer::compile(id, &spec, None, "team-a").unwrap();
        assert!(issuer.binds_from("team-a", &BTreeMap::new()));
        assert!(!issuer.binds_from("team-b", &BTreeMap::new()));
        // A reference from team-b names team-b's TrustedIssuer, never team-a's.
        let r = IssuerRef {
            kind: IssuerKind::TrustedIssuer,
            name: "ci".into(),
        };
        assert_eq!(IssuerId::referenced("team-b", &r).namespace, "team-b");
    }

    #[test]
    fn a_rule_that_does_not_compile_names_itself() {
        let spec = IssuerSpec {
            issuer: "https://ci.example".into(),
            claim_validation_rules: vec![
                crate::crd::ClaimValidationRule {
                    expression: "claims.a == 'x'".into(),
                    message: None,
                },
                crate::crd::ClaimValidationRule {
                    expression: "claims.a ==".into(),
                    message: None,
                },
            ],
            ..Default::default()
        };
        let id = IssuerId {
            kind: IssuerKind::ClusterTrustedIssuer,
            namespace: String::new(),
            name: "ci".into(),
        };
        let e = CompiledIssuer::compile(id, &spec, None, "m2m-system").unwrap_err();
        assert!(matches!(e, IssuerError::Rule { index: 1, .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("claimValidationRules[1]: compiling:"),
            "{e}"
        );
    }
}
