//! Which roles a `ServiceAccount` is granted and what they add: its
//! `spec.roleRefs` plus the operator's default role, looked up among the
//! `M2MRole`s of its namespace and the `ClusterM2MRole`s (SPEC §7).
//!
//! The controller (status) and the token server (index) both resolve
//! roles with [`resolve_roles`], each with its own lookup, so they always
//! agree. A role that does not exist is an error ([`GrantError::RoleNotFound`]),
//! never skipped: skipping would silently narrow the grant, and guessing
//! would widen it. That holds for the default role too — a `--default-role`
//! naming no `ClusterM2MRole` makes every identity `RoleNotFound` until the
//! role exists, which is loud and quickly fixed.
//!
//! Whether role scopes fit the namespace policy is decided later, with the
//! identity's own scopes, by [`crate::core::grant::resolve_account`].

use crate::core::grant_error::GrantError;
use crate::crd::{RoleKind, RoleRef, ServiceAccountSpec};
use std::collections::BTreeSet;

/// One role granted to an identity, with the scopes it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedRole {
    /// `M2MRole` (in the identity's namespace) or `ClusterM2MRole`.
    pub kind: RoleKind,
    /// The role object's name.
    pub name: String,
    /// The scopes it grants.
    pub scopes: BTreeSet<String>,
}

impl GrantedRole {
    /// The name the role goes by in the `roles` claim and `status.roles`
    /// of an identity in `namespace`: see [`claim_name`].
    pub fn claim_name(&self, namespace: &str) -> String {
        claim_name(self.kind, namespace, &self.name)
    }
}

/// The stable, unambiguous name of a role in the `roles` claim: a
/// `ClusterM2MRole` by its bare name (`platform-admin`), an `M2MRole` as
/// `<namespace>/<name>` (`team-a/deployer`). Neither a namespace nor an
/// object name can contain `/`, so a tenant's `M2MRole` can never be
/// claimed under a cluster role's name, nor under another namespace's.
pub fn claim_name(kind: RoleKind, namespace: &str, name: &str) -> String {
    match kind {
        RoleKind::ClusterM2MRole => name.to_owned(),
        RoleKind::M2MRole => format!("{namespace}/{name}"),
    }
}

/// The roles an identity is granted, each once, sorted by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleGrant {
    /// The granted roles.
    pub roles: Vec<GrantedRole>,
}

/// The outcome of [`resolve_roles`]: the roles, or which are missing.
pub(crate) type RoleResolution = Result<RoleGrant, GrantError>;

impl RoleGrant {
    /// No roles (an identity without `roleRefs` and no default role).
    pub fn none() -> Self {
        Self::default()
    }

    /// Every scope the roles grant.
    pub fn scopes(&self) -> BTreeSet<String> {
        self.roles
            .iter()
            .flat_map(|r| r.scopes.iter().cloned())
            .collect()
    }

    /// The claim names ([`claim_name`]) of the granted roles of an
    /// identity in `namespace`, sorted.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let names: BTreeSet<String> = self.roles.iter().map(|r| r.claim_name(namespace)).collect();
        names.into_iter().collect()
    }

    /// The claim names of the roles a token of an identity in `namespace`
    /// holding exactly `scope` (space separated, as in the `scope` claim)
    /// carries in its `roles` claim: those with at least one scope, every
    /// one of which it holds. A token narrowed to fewer scopes must not
    /// claim a role it cannot exercise, or a resource server that
    /// authorizes by role would grant more than the token's scopes allow;
    /// a role with no scopes grants nothing, so claiming it would only
    /// lend its name.
    pub(crate) fn held_with(&self, scope: &str, namespace: &str) -> Vec<String> {
        if self.roles.is_empty() {
            return vec![];
        }
        let scopes: BTreeSet<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        let held: BTreeSet<String> = self
            .roles
            .iter()
            .filter(|r| !r.scopes.is_empty())
            .filter(|r| r.scopes.iter().all(|s| scopes.contains(s.as_str())))
            .map(|r| r.claim_name(namespace))
            .collect();
        held.into_iter().collect()
    }
}

/// The roles `account` references, then the default role (a
/// `ClusterM2MRole`), each once.
pub(crate) fn role_refs(
    account: &ServiceAccountSpec,
    default_role: Option<&str>,
) -> BTreeSet<RoleRef> {
    let mut refs: BTreeSet<RoleRef> = account.role_refs.iter().cloned().collect();
    if let Some(name) = default_role.filter(|n| !n.is_empty()) {
        refs.insert(RoleRef {
            kind: RoleKind::ClusterM2MRole,
            name: name.to_owned(),
        });
    }
    refs
}

/// Resolve the roles of `account`. `lookup` answers the scopes of a role
/// (an `M2MRole` in the account's namespace, or a `ClusterM2MRole`), or
/// `None` when it does not exist.
pub(crate) fn resolve_roles(
    account: &ServiceAccountSpec,
    default_role: Option<&str>,
    lookup: impl Fn(&RoleRef) -> Option<BTreeSet<String>>,
) -> RoleResolution {
    let mut roles = Vec::new();
    let mut missing = Vec::new();
    let default = default_role.filter(|n| !n.is_empty());
    for r in role_refs(account, default) {
        match lookup(&r) {
            Some(scopes) => roles.push(GrantedRole {
                kind: r.kind,
                name: r.name,
                scopes,
            }),
            None => {
                let is_default = r.kind == RoleKind::ClusterM2MRole
                    && default == Some(r.name.as_str())
                    && !account.role_refs.contains(&r);
                missing.push(if is_default {
                    format!("{}/{} (the operator's default role)", r.kind, r.name)
                } else {
                    format!("{}/{}", r.kind, r.name)
                });
            }
        }
    }
    if missing.is_empty() {
        Ok(RoleGrant { roles })
    } else {
        Err(GrantError::RoleNotFound(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn account(refs: &[(RoleKind, &str)]) -> ServiceAccountSpec {
        ServiceAccountSpec {
            scopes: vec!["own".into()],
            role_refs: refs
                .iter()
                .map(|(kind, name)| RoleRef {
                    kind: *kind,
                    name: (*name).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn catalog() -> BTreeMap<(RoleKind, &'static str), Vec<String>> {
        BTreeMap::from([
            ((RoleKind::M2MRole, "reader"), vec!["repo:read".into()]),
            (
                (RoleKind::M2MRole, "writer"),
                vec!["repo:read".into(), "repo:write".into()],
            ),
            (
                (RoleKind::ClusterM2MRole, "reader"),
                vec!["audit:read".into()],
            ),
            ((RoleKind::ClusterM2MRole, "basic"), vec!["ping".into()]),
            ((RoleKind::ClusterM2MRole, "empty"), vec![]),
        ])
    }

    fn resolve(a: &ServiceAccountSpec, default: Option<&str>) -> RoleResolution {
        let c = catalog();
        resolve_roles(a, default, |r| {
            c.get(&(r.kind, r.name.as_str()))
                .map(|s| s.iter().cloned().collect())
        })
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn role_table() {
        use RoleKind::{ClusterM2MRole as C, M2MRole as N};
        type Case<'a> = (
            &'a str,
            Vec<(RoleKind, &'a str)>,
            Option<&'a str>,
            Result<(Vec<&'a str>, BTreeSet<String>), &'a str>,
        );
        let cases: Vec<Case> = vec![
            ("no roles", vec![], None, Ok((vec![], set(&[])))),
            (
                "empty default name = none",
                vec![],
                Some(""),
                Ok((vec![], set(&[]))),
            ),
            (
                "one namespaced",
                vec![(N, "reader")],
                None,
                Ok((vec!["ns/reader"], set(&["repo:read"]))),
            ),
            (
                "union of roles",
                vec![(N, "reader"), (N, "writer")],
                None,
                Ok((
                    vec!["ns/reader", "ns/writer"],
                    set(&["repo:read", "repo:write"]),
                )),
            ),
            (
                "same name, both kinds: both granted, told apart",
                vec![(N, "reader"), (C, "reader")],
                None,
                Ok((
                    vec!["ns/reader", "reader"],
                    set(&["repo:read", "audit:read"]),
                )),
            ),
            (
                "default role",
                vec![],
                Some("basic"),
                Ok((vec!["basic"], set(&["ping"]))),
            ),
            (
                "default role also referenced",
                vec![(C, "basic")],
                Some("basic"),
                Ok((vec!["basic"], set(&["ping"]))),
            ),
            (
                "role without scopes",
                vec![(C, "empty")],
                None,
                Ok((vec!["empty"], set(&[]))),
            ),
            (
                "kind matters",
                vec![(C, "writer")],
                None,
                Err("ClusterM2MRole/writer"),
            ),
            (
                "missing default",
                vec![(N, "reader")],
                Some("gone"),
                Err("ClusterM2MRole/gone (the operator's default role)"),
            ),
            (
                "all missing ones named",
                vec![(N, "a"), (N, "reader"), (C, "b")],
                None,
                Err("M2MRole/a, ClusterM2MRole/b"),
            ),
        ];
        for (name, refs, default, want) in cases {
            let got = resolve(&account(&refs), default);
            match (got, want) {
                (Ok(g), Ok((names, scopes))) => {
                    assert_eq!(g.names("ns"), names, "{name}");
                    assert_eq!(g.scopes(), scopes, "{name}");
                }
                (Err(e), Err(listed)) => {
                    assert_eq!(e.reason(), "RoleNotFound", "{name}");
                    assert_eq!(
                        e.to_string(),
                        format!("roles not found: {listed}"),
                        "{name}"
                    );
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn claim_names_cannot_collide() {
        // The tenant's M2MRole and the cluster role of the same name.
        assert_eq!(
            claim_name(RoleKind::M2MRole, "team-a", "platform-admin"),
            "team-a/platform-admin"
        );
        assert_eq!(
            claim_name(RoleKind::ClusterM2MRole, "team-a", "platform-admin"),
            "platform-admin"
        );
        assert_ne!(
            claim_name(RoleKind::M2MRole, "a", "b"),
            claim_name(RoleKind::M2MRole, "b", "a")
        );
    }

    #[test]
    fn a_token_claims_only_the_roles_whose_scopes_it_holds() {
        let g = resolve(
            &account(&[(RoleKind::M2MRole, "reader"), (RoleKind::M2MRole, "writer")]),
            Some("empty"),
        )
        .unwrap();
        assert_eq!(
            g.held_with("repo:read repo:write", "ns"),
            ["ns/reader", "ns/writer"]
        );
        assert_eq!(g.held_with("repo:read", "ns"), ["ns/reader"]);
        // A role without scopes is never claimed.
        assert!(g.held_with("own", "ns").is_empty());
        assert!(g.held_with("", "ns").is_empty());
        assert!(RoleGrant::none().held_with("own", "ns").is_empty());
    }
}
