//! `M2MRole` (`m2mroles.m2m.dev`, namespaced) and `ClusterM2MRole`
//! (`clusterm2mroles.m2m.dev`, cluster-scoped): named bundles of scopes that
//! service accounts can be granted (SPEC §7). The scopes follow the same
//! pattern and limits as `ServiceAccount.spec.scopes`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A named set of scopes in one namespace, granted to the service accounts
/// of that namespace that reference it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "m2m.dev",
    version = "v1alpha1",
    kind = "M2MRole",
    plural = "m2mroles",
    singular = "m2mrole",
    namespaced,
    shortname = "m2mrole",
    category = "m2m",
    doc = "A named set of scopes granted to the service accounts of its namespace that reference it (m2mroles.m2m.dev; `kubectl get m2mrole`).",
    printcolumn = r#"{"name":"Scopes","type":"string","jsonPath":".spec.scopes"}"#,
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct M2MRoleSpec {
    /// What this role is for, shown to humans only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The scopes this role grants. Still bounded by the namespace's
    /// `m2m.dev/allowed-scopes` annotation (or the operator-wide default).
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 256), pattern(super::SCOPE_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<String>,
}

/// A named set of scopes for the whole cluster, granted to any service
/// account that references it and, when named by the operator's
/// `--default-role`, to every service account.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "m2m.dev",
    version = "v1alpha1",
    kind = "ClusterM2MRole",
    plural = "clusterm2mroles",
    singular = "clusterm2mrole",
    shortname = "m2mcrole",
    category = "m2m",
    doc = "A cluster-wide named set of scopes granted to the service accounts that reference it, or to all of them when it is the operator's default role (clusterm2mroles.m2m.dev; `kubectl get m2mcrole`).",
    printcolumn = r#"{"name":"Scopes","type":"string","jsonPath":".spec.scopes"}"#,
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterM2MRoleSpec {
    /// What this role is for, shown to humans only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The scopes this role grants. Still bounded by each service account's
    /// namespace policy (`m2m.dev/allowed-scopes` or the operator-wide default).
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 256), pattern(super::SCOPE_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<String>,
}
