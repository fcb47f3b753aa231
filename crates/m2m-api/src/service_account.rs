//! `ServiceAccount` (`serviceaccounts.m2m.dev`): a non-human identity and the
//! widest set of scopes its credentials may ever be granted. Not to be
//! confused with the core `v1/ServiceAccount`; address it as `m2msa`.

use super::conditions::{Condition, conditions_schema};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A machine-to-machine identity. Its `M2MCredential`s exchange client
/// credentials for access tokens whose subject is `m2m:<namespace>:<name>`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "m2m.dev",
    version = "v1alpha1",
    kind = "ServiceAccount",
    plural = "serviceaccounts",
    singular = "serviceaccount",
    namespaced,
    status = "ServiceAccountStatus",
    shortname = "m2msa",
    category = "m2m",
    doc = "A machine-to-machine identity (serviceaccounts.m2m.dev; `kubectl get m2msa`). Not the core v1 ServiceAccount.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Scopes","type":"string","jsonPath":".spec.scopes"}"#,
    printcolumn = r#"{"name":"Credentials","type":"integer","jsonPath":".status.credentialCount"}"#,
    printcolumn = r#"{"name":"Roles","type":"string","jsonPath":".status.roles","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSpec {
    /// What this identity is for, shown to humans only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Every scope this identity may ever be granted. A credential asks for a
    /// subset (or all of them). Must also be allowed by the namespace's
    /// `m2m.dev/allowed-scopes` annotation, or the operator-wide default.
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 256), pattern(super::SCOPE_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<String>,

    /// Roles whose scopes this identity is granted on top of `scopes`: an
    /// `M2MRole` of this namespace or a `ClusterM2MRole`. Every granted scope
    /// must still be allowed by the namespace policy. While a referenced role
    /// does not exist the identity is `Ready=False` (`RoleNotFound`) and its
    /// credentials get no token, never a narrower or wider grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub role_refs: Vec<RoleRef>,

    /// When true, every token request of every credential of this identity
    /// fails and introspection reports all its tokens inactive. Secrets are
    /// kept, so re-enabling restores access without redistributing them.
    #[serde(default)]
    pub disabled: bool,

    /// Default and maximum access-token lifetime of this identity's
    /// credentials, as a duration such as `15m` or `1h` (default `1h`; at
    /// least `1m`, at most `24h`).
    #[serde(default, rename = "tokenTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = crate::cel::token_ttl_bounds())]
    pub token_ttl: Option<String>,
}

/// The kind of role a [`RoleRef`] names.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum RoleKind {
    /// An `M2MRole` in the ServiceAccount's own namespace.
    M2MRole,
    /// A cluster-wide `ClusterM2MRole`.
    ClusterM2MRole,
}

impl RoleKind {
    /// The kind's name, as written in `roleRefs[].kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::M2MRole => "M2MRole",
            Self::ClusterM2MRole => "ClusterM2MRole",
        }
    }
}

impl std::fmt::Display for RoleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role granted to a ServiceAccount.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub struct RoleRef {
    /// `M2MRole` (looked up in the ServiceAccount's namespace) or `ClusterM2MRole`.
    pub kind: RoleKind,
    /// Name of the role.
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// What the operator observed of a `ServiceAccount`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of `M2MCredential`s in this namespace bound to this identity.
    #[serde(default)]
    pub credential_count: i32,

    /// Every scope this identity's credentials may be granted: its own
    /// `scopes` and those of its roles (the operator's default role
    /// included), sorted. Empty while the identity is not valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective_scopes: Vec<String>,

    /// The roles granted to this identity (its `roleRefs` and the
    /// operator's default role), sorted, named as in the `roles` claim: a
    /// ClusterM2MRole by its name, an M2MRole as `<namespace>/<name>`.
    /// Access tokens claim those with scopes whose every scope they hold.
    /// Empty while the identity is not valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,

    /// `Ready` (the identity is valid — its roles exist and every scope fits
    /// the namespace policy — and enabled), `ScopesAllowed` (its own and its
    /// roles' scopes fit the namespace policy) and `Disabled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
