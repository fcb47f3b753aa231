//! `M2MCredential`: one OAuth 2.0 client-credentials credential bound to a
//! `ServiceAccount`, materialised as a Kubernetes Secret that pods mount.

use super::conditions::{Condition, conditions_schema};
use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An OAuth 2.0 client-credentials credential. The operator writes its
/// `client_id` and `client_secret` into a Secret and rotates the secret on
/// request (`m2m.dev/rotate` annotation) or on a schedule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "m2m.dev",
    version = "v1alpha1",
    kind = "M2MCredential",
    plural = "m2mcredentials",
    singular = "m2mcredential",
    namespaced,
    status = "M2MCredentialStatus",
    shortname = "m2mcred",
    category = "m2m",
    doc = "An OAuth 2.0 client-credentials credential bound to an m2m.dev ServiceAccount.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Client ID","type":"string","jsonPath":".status.clientId"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".spec.serviceAccountName"}"#,
    printcolumn = r#"{"name":"Scopes","type":"string","jsonPath":".spec.scopes"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".status.secretVersion","priority":1}"#,
    printcolumn = r#"{"name":"Last Rotation","type":"date","jsonPath":".status.lastRotationTime"}"#,
    printcolumn = r#"{"name":"Last Used","type":"date","jsonPath":".status.lastUsedTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::cel::workload_identity_has_no_rotation())]
#[x_kube(validation = crate::cel::type_immutable())]
#[x_kube(validation = crate::cel::api_token_has_no_workload_identity())]
// Federation hook (SPEC §9, src/crd/issuer.rs).
#[x_kube(validation = crate::cel::one_authentication())]
#[x_kube(validation = crate::cel::federation_has_no_rotation())]
#[x_kube(validation = crate::cel::api_token_has_no_federation())]
#[x_kube(validation = super::sender::api_token_has_no_mtls())]
pub struct M2MCredentialSpec {
    /// Name of the `ServiceAccount` (m2m.dev) in the same namespace this
    /// credential authenticates as. Immutable: to bind another identity,
    /// create another credential.
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    #[x_kube(validation = crate::cel::immutable("serviceAccountName", "create another M2MCredential to bind another ServiceAccount"))]
    pub service_account_name: String,

    /// `ClientSecret` (default): an OAuth 2.0 client id and client secret
    /// for the client-credentials grant. `APIToken`: a long-lived opaque
    /// bearer token (`m2mt_…`, Secret key `token`) that resource servers
    /// check by introspection and that can be exchanged for a short-lived
    /// JWT (RFC 8693); it must have an end, `expiresAt` or `rotation.every`,
    /// at most the operator's `--max-api-token-lifetime` (default 8760h).
    /// Immutable; `APIToken` excludes `workloadIdentity`.
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "CredentialType::is_client_secret"
    )]
    pub type_: CredentialType,

    /// What this credential is used for, shown to humans only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Scopes this credential may request: a subset of the ServiceAccount's
    /// scopes. Empty means all of the ServiceAccount's scopes.
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 256), pattern(super::SCOPE_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<String>,

    /// Allowed `aud` values of issued tokens; a token request may ask for a
    /// subset with `audience` or `resource`. Empty means the issuer's default audience.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Vec<String>,

    /// Access-token lifetime, a duration such as `15m`; at least `1m` and at
    /// most the ServiceAccount's `tokenTTL`, which is also the default.
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::token_ttl_bounds())]
    pub token_ttl: Option<String>,

    /// Name of the generated Secret in this namespace (default
    /// `<metadata.name>-credentials`). The operator never adopts or
    /// overwrites a Secret it did not create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// RFC 3339 time after which the credential stops working: no token is
    /// issued and tokens issued before turn inactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,

    /// Scheduled rotation and how long a replaced secret keeps working.
    // Not an Option: a nullable object loses its fields in the OpenAPI v2
    // document older apiservers publish, and `kubectl explain` shows nothing.
    #[serde(default, skip_serializing_if = "CredentialRotation::is_unset")]
    pub rotation: CredentialRotation,

    /// Labels and annotations copied onto the generated Secret.
    #[serde(default, skip_serializing_if = "SecretTemplate::is_empty")]
    pub secret_template: SecretTemplate,

    /// Authenticate with the pod's own Kubernetes service-account token
    /// instead of a generated client secret (RFC 7523 client assertion).
    /// When set, no secret is generated and no Secret is written;
    /// `secretName` and `secretTemplate` are ignored, `rotation` is refused
    /// (there is no secret to rotate), and a Secret written before is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,

    /// Authenticate with a JWT of a trusted external issuer (another
    /// cluster, a CI system, SPIFFE; see `ClusterTrustedIssuer`) instead of
    /// a generated client secret. Like `workloadIdentity`: no secret, no
    /// Secret, no `rotation`; excludes `workloadIdentity` and `APIToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<Box<super::issuer::Federation>>,

    /// Mark the credential `Dormant=True` (with a Warning Event) once it has
    /// not been used for this long, e.g. `720h`, so unused credentials can be
    /// found and removed; it clears on the next use. Counted from the last
    /// use the token servers recorded (`status.lastUsedTime`), or from
    /// creation when it was never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::positive_duration("dormantAfter"))]
    pub dormant_after: Option<String>,

    /// Require every token of this credential to be bound to a key the
    /// client holds: `DPoP` (RFC 9449: each token request carries a `DPoP`
    /// proof) or `MTLS` (RFC 8705: each token request comes with a TLS
    /// client certificate). A request without the binding is refused
    /// (`invalid_dpop_proof`, or `invalid_request` for `MTLS`). Unset (the
    /// default): tokens are bearer tokens unless the request brings a
    /// proof or a client certificate, which bind them anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_constraint: Option<super::sender::SenderConstraint>,

    /// Accept a TLS client certificate as client authentication
    /// (`tls_client_auth`, RFC 8705 §2.1): the certificate must chain to a
    /// CA the token server trusts and carry this SAN. Other client
    /// authentication (the secret, workload identity) keeps working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<super::sender::MutualTls>,
}

/// Bind a core `v1/ServiceAccount` of the credential's namespace: a pod
/// running as it obtains tokens by presenting its projected
/// service-account token as `client_assertion`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// Name of the core `v1/ServiceAccount` (not `serviceaccounts.m2m.dev`)
    /// in this namespace whose tokens authenticate this credential.
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub kubernetes_service_account: String,

    /// The `aud` the service-account token must carry (the `audience` of the
    /// pod's projected token volume). Default: the token endpoint's issuer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,

    /// Allow binding the namespace's `default` ServiceAccount. Off by
    /// default: every pod that names no ServiceAccount runs as `default`
    /// and holds its token, so binding it grants this credential to all of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_default_service_account: bool,
}

/// What a credential's Secret holds (`spec.type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CredentialType {
    /// A client id and client secret (client-credentials grant).
    #[default]
    ClientSecret,
    /// A long-lived opaque bearer token, checked by introspection.
    #[serde(rename = "APIToken")]
    ApiToken,
}

impl CredentialType {
    /// The default, left out when serialising.
    pub fn is_client_secret(&self) -> bool {
        *self == Self::ClientSecret
    }
}

/// How a credential authenticates at the token endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CredentialMode {
    /// A generated client secret in a Secret.
    ClientSecret,
    /// A generated API token in a Secret (`spec.type: APIToken`).
    #[serde(rename = "APIToken")]
    ApiToken,
    /// A Kubernetes service-account token (`spec.workloadIdentity`).
    WorkloadIdentity,
    /// A JWT of a trusted external issuer (`spec.federation`).
    Federation,
}

/// The Kubernetes identity a workload-identity credential accepts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentityStatus {
    /// The username of accepted service-account tokens,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// The audience those tokens must carry.
    pub audience: String,
    /// The workload-identity epoch: the credential's `metadata.generation`
    /// when this binding took effect, renewed on every switch into
    /// workload-identity mode and every change of the binding. Tokens carry
    /// it as `m2m_sv`; only the current epoch's tokens are active.
    #[serde(default)]
    pub epoch: i64,
    /// A keyed hash (under the operator's verifier key) over the epoch and
    /// the binding: the token servers ignore an epoch without a valid seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// When the client secret is replaced, and for how long the previous one
/// keeps working.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::cel::grace_shorter_than_every())]
#[x_kube(validation = crate::cel::retire_within_grace())]
pub struct CredentialRotation {
    /// Rotate automatically this long after the last rotation, e.g. `720h`;
    /// longer than `0s`. Unset: rotate only when the `m2m.dev/rotate`
    /// annotation changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::rotation_every_positive())]
    pub every: Option<String>,

    /// How long the previous secret (and tokens issued with it) stays valid
    /// after a rotation, e.g. `10m`; at most `168h` and shorter than `every`.
    /// Default `0s`: the old secret and its tokens stop working at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::grace_period_bounds())]
    pub grace_period: Option<String>,

    /// End the grace period early once the previous secret version has not
    /// been used for this long after the rotation (as the token servers
    /// report it in `status.versionUsage`; a version not used since the
    /// rotation counts from the rotation), e.g. `10m`. At most
    /// `gracePeriod`, which stays the upper bound. Set it well above the
    /// token server's in-grace usage resolution (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::positive_duration("rotation.retireWhenUnusedFor"))]
    pub retire_when_unused_for: Option<String>,

    /// Workloads in this namespace that read the secret only once (an
    /// environment variable, a client built at start-up): each gets one
    /// rollout restart per rotation, as `kubectl rollout restart` does, never
    /// on an operator restart or resync. A workload is restarted only if
    /// it consents: its annotation `m2m.dev/restart-on-rotation` lists this
    /// credential's name (comma-separated); one that does not is reported
    /// like a missing one. Needs the chart value `rbac.restartTargets` (off
    /// by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub restart_targets: Vec<RestartTarget>,
}

impl CredentialRotation {
    /// No field is set.
    pub fn is_unset(&self) -> bool {
        self.every.is_none()
            && self.grace_period.is_none()
            && self.retire_when_unused_for.is_none()
            && self.restart_targets.is_empty()
    }
}

/// A workload restarted after each rotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (group `apps`).
    pub kind: RestartKind,
    /// Its name, in the credential's namespace.
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// The kinds of workloads a rotation can restart.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum RestartKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl SecretTemplate {
    /// No labels and no annotations.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// Extra metadata for the generated Secret. The operator's own labels
/// (`app.kubernetes.io/managed-by`, `m2m.dev/credential`) always win.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A keyed hash (HMAC-SHA256 under a key only the operator and token
/// servers hold) of one client secret that the token endpoint accepts.
/// It reveals nothing about the secret and cannot be forged without the key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVerifier {
    /// The secret version this verifier belongs to.
    pub version: i64,
    /// Base64url HMAC-SHA256 of the secret bound to this credential's
    /// namespace, name, UID, client id and version.
    pub digest: String,
    /// End of the grace period of a replaced secret; unset for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// Keyed hash over the digest, version and `notAfter`, written by the
    /// operator: the token endpoint ignores a verifier whose seal does not
    /// match, so none can be added or have its grace period lengthened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// When one secret version last authenticated successfully.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionUsage {
    /// The secret version (`0` for workload identity).
    pub version: i64,
    /// Its last successful authentication.
    pub last_used_time: DateTime<Utc>,
}

/// What the operator observed and did for an `M2MCredential`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct M2MCredentialStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The OAuth 2.0 client id; stable for the credential's whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// Name of the Secret holding `client_id` and `client_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// Incremented on every rotation (1 after creation).
    #[serde(default)]
    pub secret_version: i64,

    /// When the current secret was generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<DateTime<Utc>>,

    /// When the next scheduled rotation is due, if `rotation.every` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<DateTime<Utc>>,

    /// The `m2m.dev/rotate` annotation value the last rotation handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_rotate_annotation: Option<String>,

    /// A fingerprint of the current secret to tell versions apart: `sha256:`
    /// and the first 8 hex digits of its SHA-256 (reveals none of its characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hint: Option<String>,

    /// Copy of `spec.expiresAt` once accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,

    /// The secret versions the token endpoint accepts now, as keyed hashes.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub verifiers: Vec<SecretVerifier>,

    /// `ClientSecret`, `APIToken`, `WorkloadIdentity` or `Federation`: how the credential authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CredentialMode>,

    /// The bound Kubernetes ServiceAccount, in workload-identity mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityStatus>,

    /// The bound external issuer and subject, in federation mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<super::issuer::FederationStatus>,

    /// Last successful authentication with any secret version (or workload
    /// identity), to the token server's usage resolution. Written only by
    /// the token server (field manager `m2m-token-server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_time: Option<DateTime<Utc>>,

    /// Last successful authentication per live secret version that was
    /// used. Written only by the token server (field manager
    /// `m2m-token-server`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["version"]))]
    pub version_usage: Vec<VersionUsage>,

    /// The secret version whose rollout restarts of `rotation.restartTargets`
    /// are done (each target also records it in its `m2m.dev/restarted-for`
    /// annotation, so none is restarted twice for one rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_version: Option<i64>,

    /// `Ready` plus specific conditions (`ServiceAccountValid`, `SecretReady`,
    /// and `Dormant` when `spec.dormantAfter` is set).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
