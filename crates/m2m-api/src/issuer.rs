//! `ClusterTrustedIssuer` (cluster-scoped) and `TrustedIssuer` (namespaced):
//! an external JWT issuer — another cluster's service-account issuer, a CI
//! system's OIDC provider, a SPIRE server — whose tokens the token endpoint
//! accepts as client assertions (SPEC §9). Both kinds share
//! [`IssuerSpec`]; only the cluster kind has `allowedNamespaces`,
//! because a namespaced issuer can only be bound from its own namespace.
//!
//! A platform admin trusts an issuer once; application teams bind one
//! subject of it with `M2MCredential.spec.federation`.

use super::conditions::{Condition, conditions_schema};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest CEL expression in `claimValidationRules` or a credential's
/// `federation.condition` (characters).
pub const MAX_EXPRESSION_LENGTH: usize = 1024;
/// Most `claimValidationRules` per issuer.
pub const MAX_CLAIM_RULES: usize = 16;

/// What both issuer kinds declare: where the keys come from, what a token
/// must say, and the CEL rules every accepted token's claims satisfy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    /// The issuer URL: a token's `iss` must equal it exactly (no trailing
    /// slash added or removed). `https://` only, without query or fragment.
    /// Discovery reads `<issuer>/.well-known/openid-configuration`.
    #[schemars(length(min = 9, max = 512))]
    #[x_kube(validation = crate::cel::https_url("issuer"))]
    pub issuer: String,

    /// Find the keys by OpenID Connect discovery: the `jwks_uri` of
    /// `<issuer>/.well-known/openid-configuration` (the default when none of
    /// `discovery`, `jwksURL` and `jwks` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,

    /// Fetch the keys (a JWK Set) from this URL instead of discovery.
    /// `https://` only.
    #[serde(default, rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 1024))]
    #[x_kube(validation = crate::cel::https_url("jwksURL"))]
    pub jwks_url: Option<String>,

    /// A static JWK Set from a ConfigMap, for issuers that publish no
    /// endpoint reachable from here (e.g. a SPIRE bundle). The ConfigMap is
    /// in the issuer's namespace (TrustedIssuer) or the operator's namespace
    /// (ClusterTrustedIssuer); it is re-read on every key refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<StaticJwks>,

    /// PEM CA certificates to verify the discovery and JWKS endpoints'
    /// TLS certificates with, instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub ca_bundle: Option<String>,

    /// A `ClusterTrustBundle` (certificates.k8s.io) whose certificates
    /// verify the discovery and JWKS endpoints, instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_trust_bundle: Option<ClusterTrustBundleRef>,

    /// Accepted `aud` values: a token's `aud` must contain at least one.
    /// Empty: the token endpoint's issuer URL. Binding an audience only
    /// identifies the token's recipient; for a multi-tenant issuer
    /// (GitHub Actions, GitLab) it says nothing about *who* the token is
    /// for — add `claimValidationRules` on the owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 512)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Vec<String>,

    /// Longest accepted token lifetime (`exp − iat`), e.g. `1h`; longer
    /// tokens are refused. Default `1h`, at most `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::max_token_lifetime_bounds())]
    pub max_token_lifetime: Option<String>,

    /// CEL expressions over `claims` (the token's payload, as in the
    /// apiserver's structured authentication configuration) that must all
    /// be `true`, e.g. `claims.repository_owner == "acme"`. An expression
    /// that does not compile makes the issuer `Ready=False` with the
    /// compiler's message; one that errors at evaluation refuses the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub claim_validation_rules: Vec<ClaimValidationRule>,
}

/// OpenID Connect discovery of the keys (no settings yet).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Discovery {}

/// A JWK Set stored in a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticJwks {
    /// The ConfigMap and key holding the JWK Set (JSON `{"keys": [...]}`).
    pub config_map_ref: ConfigMapKeyRef,
}

/// A key of a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The data key holding the JWK Set.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A `ClusterTrustBundle` by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClusterTrustBundleRef {
    /// The ClusterTrustBundle's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One CEL rule over a token's claims.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClaimValidationRule {
    /// A CEL expression over `claims` that must evaluate to `true`.
    #[schemars(length(min = 1, max = 1024))]
    pub expression: String,
    /// What a refusal because of this rule is logged with (never sent to
    /// the client, which gets `invalid_client` as for any failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
}

/// A JWT issuer trusted cluster-wide; namespaces it allows bind its subjects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "m2m.dev",
    version = "v1alpha1",
    kind = "ClusterTrustedIssuer",
    plural = "clustertrustedissuers",
    singular = "clustertrustedissuer",
    status = "TrustedIssuerStatus",
    shortname = "m2mcissuer",
    category = "m2m",
    doc = "A JWT issuer (another cluster, a CI system, SPIFFE) whose tokens authenticate the M2MCredentials that bind one of its subjects, from the namespaces allowedNamespaces selects (clustertrustedissuers.m2m.dev).",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"Keys","type":"string","jsonPath":".status.keys[*].kid"}"#,
    printcolumn = r#"{"name":"Last Refresh","type":"date","jsonPath":".status.lastRefreshTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::cel::one_key_source())]
#[x_kube(validation = crate::cel::one_trust_anchor())]
pub struct ClusterTrustedIssuerSpec {
    /// The issuer, its keys and rules.
    #[serde(flatten)]
    pub issuer: IssuerSpec,

    /// Which namespaces' M2MCredentials may bind this issuer, by their
    /// labels. Unset: none (bind it by labelling namespaces, or use a
    /// namespaced TrustedIssuer). `{}` selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<LabelSelector>,
}

/// A JWT issuer trusted by the M2MCredentials of its own namespace only.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "m2m.dev",
    version = "v1alpha1",
    kind = "TrustedIssuer",
    plural = "trustedissuers",
    singular = "trustedissuer",
    namespaced,
    status = "TrustedIssuerStatus",
    shortname = "m2missuer",
    category = "m2m",
    doc = "A JWT issuer (another cluster, a CI system, SPIFFE) whose tokens authenticate the M2MCredentials of this namespace that bind one of its subjects (trustedissuers.m2m.dev).",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"Keys","type":"string","jsonPath":".status.keys[*].kid"}"#,
    printcolumn = r#"{"name":"Last Refresh","type":"date","jsonPath":".status.lastRefreshTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::cel::one_key_source())]
#[x_kube(validation = crate::cel::one_trust_anchor())]
pub struct TrustedIssuerSpec {
    /// The issuer, its keys and rules.
    #[serde(flatten)]
    pub issuer: IssuerSpec,
}

/// One verification key the issuer published.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IssuerKey {
    /// The key id (`kid`); empty when the issuer publishes none.
    #[serde(default)]
    pub kid: String,
    /// The JWS algorithm it verifies (`RS256`, `ES256`, …).
    #[serde(default)]
    pub alg: String,
}

/// What the operator last observed of an issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The usable keys of the last successful refresh (public data).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub keys: Vec<IssuerKey>,
    /// When the keys were last fetched successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<DateTime<Utc>>,
    /// Where the keys were fetched from (discovery's `jwks_uri`, `jwksURL`,
    /// or `configmap:<namespace>/<name>#<key>`).
    #[serde(default, rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// `Ready`, `KeysAvailable` and `RulesValid`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

impl TrustedIssuer {
    /// The shared spec.
    pub fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }
}

impl ClusterTrustedIssuer {
    /// The shared spec.
    pub fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }
}

/// Which issuer kind a credential binds.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum IssuerKind {
    /// A cluster-scoped `ClusterTrustedIssuer` (from an allowed namespace only).
    ClusterTrustedIssuer,
    /// A `TrustedIssuer` in the credential's own namespace.
    TrustedIssuer,
}

impl IssuerKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterTrustedIssuer => "ClusterTrustedIssuer",
            Self::TrustedIssuer => "TrustedIssuer",
        }
    }
}

/// The issuer a credential binds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct IssuerRef {
    /// `ClusterTrustedIssuer` or `TrustedIssuer` (same namespace).
    pub kind: IssuerKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// Authenticate with a JWT from a trusted external issuer (RFC 7523 client
/// assertion, or RFC 8693 `subject_token`) instead of a generated secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Federation {
    /// The trusted issuer: a `ClusterTrustedIssuer` whose
    /// `allowedNamespaces` selects this namespace, or a `TrustedIssuer` in
    /// this namespace.
    pub issuer_ref: IssuerRef,
    /// The exact `sub` accepted tokens carry, e.g.
    /// `repo:acme/app:ref:refs/heads/main` or
    /// `system:serviceaccount:ci:uploader`.
    #[schemars(length(min = 1, max = 512))]
    pub subject: String,
    /// An optional extra CEL expression over `claims` that must be `true`,
    /// e.g. `claims.environment == "production"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub condition: Option<String>,
}

/// The federation binding a credential accepts (`status.federation`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationStatus {
    /// `<kind>/<name>` of the bound issuer.
    pub issuer_ref: String,
    /// The issuer URL accepted tokens carry as `iss`.
    pub issuer: String,
    /// The `sub` accepted tokens carry.
    pub subject: String,
    /// The binding's epoch: the credential's `metadata.generation` when it
    /// took effect, renewed on every change of the binding. Tokens carry it
    /// as `m2m_sv`; only the current epoch's tokens are active.
    #[serde(default)]
    pub epoch: i64,
    /// A keyed hash (under the operator's verifier key) over the epoch and
    /// the binding: the token servers ignore an epoch without a valid seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}
