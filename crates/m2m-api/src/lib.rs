//! The Kubernetes API types of `m2m.dev/v1alpha1`: what users write in Git
//! and what `kubectl explain` documents. Nothing here talks to a cluster;
//! the `///` comments become the schema descriptions of the generated CRDs.

#![forbid(unsafe_code)]

pub mod cel;
mod conditions;
mod credential;
mod issuer;
pub mod labels;
mod role;
mod sender;
mod service_account;

pub use conditions::{Condition, ConditionStatus, set_condition};
pub use credential::{
    CredentialMode, CredentialRotation, CredentialType, M2MCredential, M2MCredentialSpec,
    M2MCredentialStatus, RestartKind, RestartTarget, SecretTemplate, SecretVerifier, VersionUsage,
    WorkloadIdentity, WorkloadIdentityStatus,
};
pub use issuer::{
    ClaimValidationRule, ClusterTrustBundleRef, ClusterTrustedIssuer, ClusterTrustedIssuerSpec,
    ConfigMapKeyRef, Discovery, Federation, FederationStatus, IssuerKey, IssuerKind, IssuerRef,
    IssuerSpec, MAX_CLAIM_RULES, MAX_EXPRESSION_LENGTH, StaticJwks, TrustedIssuer,
    TrustedIssuerSpec, TrustedIssuerStatus,
};
pub use role::{ClusterM2MRole, ClusterM2MRoleSpec, M2MRole, M2MRoleSpec};
pub use sender::{MutualTls, SAN_URI_PATTERN, SenderConstraint};
pub use service_account::{
    RoleKind, RoleRef, ServiceAccount, ServiceAccountSpec, ServiceAccountStatus,
};

use kube::CustomResourceExt;

/// API group of every kind this operator serves.
pub const GROUP: &str = "m2m.dev";

/// Annotation whose value change asks for an immediate rotation.
pub const ROTATE_ANNOTATION: &str = "m2m.dev/rotate";
/// Namespace annotation bounding which scopes identities in it may hold.
pub const ALLOWED_SCOPES_ANNOTATION: &str = "m2m.dev/allowed-scopes";

/// Regular expression (RE2 and Rust `regex` compatible) for a Go-style
/// duration as used by `tokenTTL`, `rotation.every` and `rotation.gracePeriod`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// A DNS-1123 subdomain: the names Kubernetes accepts for Secrets and most objects.
pub const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An OAuth 2.0 scope token (RFC 6749 §3.3) without `*`, which is reserved
/// for namespace scope patterns so that a scope can never be read as a wildcard.
pub const SCOPE_PATTERN: &str = r"^[\x21\x23-\x29\x2B-\x5B\x5D-\x7E]+$";

/// Every CRD, in the order `m2m-operator crds` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        ServiceAccount::crd(),
        M2MCredential::crd(),
        M2MRole::crd(),
        ClusterM2MRole::crd(),
        ClusterTrustedIssuer::crd(),
        TrustedIssuer::crd(),
    ]
}

/// The multi-document YAML that `m2m-operator crds` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
