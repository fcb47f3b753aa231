//! What a credential may be granted: its scopes, audiences and token
//! lifetime, bounded by its `ServiceAccount` and by the namespace's scope
//! policy. The controller reports these decisions in status; the token
//! server recomputes them from the same inputs, so a forged status can never
//! widen a grant.

use crate::core::duration::parse_duration;
pub use crate::core::grant_error::GrantError;
use crate::core::roles::{RoleGrant, RoleResolution};
pub use crate::core::scope::{ScopePolicy, ScopePolicyError};
use crate::crd::{M2MCredentialSpec, ServiceAccountSpec};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::time::Duration;

/// Token lifetime when neither the credential nor its account sets one.
pub(crate) const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// No access token lives longer than this.
pub(crate) const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest `tokenTTL` (ServiceAccount or credential): shorter tokens would
/// be expired, or nearly, when they arrive.
pub(crate) const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);

/// What an account may hand to its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountGrant {
    /// The account's effective scopes: its own and its roles' (all allowed
    /// by the namespace policy).
    pub scopes: BTreeSet<String>,
    /// The roles it is granted.
    pub roles: RoleGrant,
    /// The account's token lifetime, the credentials' default and maximum.
    pub token_ttl: Duration,
}

/// What a credential's tokens may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Scopes a token may hold; the default when a request names none.
    pub scopes: BTreeSet<String>,
    /// Allowed `aud` values; empty means the issuer's default audience.
    pub audiences: Vec<String>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// When the credential stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// The roles of the account; a token claims those whose every scope it
    /// holds ([`RoleGrant::held_with`]).
    pub roles: RoleGrant,
}

fn parse_ttl(field: &'static str, value: &str) -> Result<Duration, GrantError> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => Err(GrantError::InvalidTokenTTL {
            field,
            value: value.to_owned(),
        }),
        Ok(d) if d < MIN_TOKEN_TTL => Err(GrantError::TokenTTLTooShort {
            field,
            value: value.to_owned(),
            min: crate::core::duration::format_duration(MIN_TOKEN_TTL),
        }),
        Ok(d) => Ok(d),
        Err(_) => Err(GrantError::InvalidTokenTTL {
            field,
            value: value.to_owned(),
        }),
    }
}

/// Validate an account and its roles (resolved by
/// [`crate::core::roles::resolve_roles`]) against the namespace policy,
/// ignoring `disabled` (an account can be valid and disabled).
pub(crate) fn resolve_account(
    account: &ServiceAccountSpec,
    roles: &RoleResolution,
    policy: Result<&ScopePolicy, &ScopePolicyError>,
) -> Result<AccountGrant, GrantError> {
    let policy = policy.map_err(|e| GrantError::InvalidNamespacePolicy(e.clone()))?;
    let roles = roles.clone()?;
    let mut scopes: BTreeSet<String> = account.scopes.iter().cloned().collect();
    scopes.extend(roles.scopes());
    let refused = policy.refused(&scopes);
    if !refused.is_empty() {
        return Err(GrantError::ScopesNotAllowedInNamespace(refused));
    }
    let token_ttl = match &account.token_ttl {
        None => DEFAULT_TOKEN_TTL,
        Some(v) => {
            let ttl = parse_ttl("ServiceAccount tokenTTL", v)?;
            if ttl > MAX_TOKEN_TTL {
                return Err(GrantError::TokenTTLTooLong {
                    field: "ServiceAccount tokenTTL",
                    value: v.clone(),
                    max: "24h".into(),
                });
            }
            ttl
        }
    };
    Ok(AccountGrant {
        scopes,
        roles,
        token_ttl,
    })
}

/// Everything a credential may be granted right now, or the precise reason
/// it may be granted nothing. `account` is `None` when the referenced
/// ServiceAccount does not exist; `roles` are that account's roles.
pub(crate) fn resolve_grant(
    credential: &M2MCredentialSpec,
    account: Option<&ServiceAccountSpec>,
    roles: &RoleResolution,
    policy: Result<&ScopePolicy, &ScopePolicyError>,
    now: DateTime<Utc>,
) -> Result<Grant, GrantError> {
    let name = &credential.service_account_name;
    let account = account.ok_or_else(|| GrantError::ServiceAccountNotFound(name.clone()))?;
    let account_grant = resolve_account(account, roles, policy)?;
    let outside: BTreeSet<_> = credential
        .scopes
        .iter()
        .filter(|s| !account_grant.scopes.contains(*s))
        .cloned()
        .collect();
    if !outside.is_empty() {
        return Err(GrantError::ScopesOutsideServiceAccount {
            account: name.clone(),
            scopes: outside.into_iter().collect(),
        });
    }
    let token_ttl = match &credential.token_ttl {
        None => account_grant.token_ttl,
        Some(v) => {
            let ttl = parse_ttl("tokenTTL", v)?;
            if ttl > account_grant.token_ttl {
                return Err(GrantError::TokenTTLTooLong {
                    field: "tokenTTL",
                    value: v.clone(),
                    max: format!(
                        "{} (the ServiceAccount's tokenTTL)",
                        crate::core::duration::format_duration(account_grant.token_ttl)
                    ),
                });
            }
            ttl
        }
    };
    if let Some(at) = credential.expires_at
        && at <= now
    {
        return Err(GrantError::Expired(at));
    }
    if account.disabled {
        return Err(GrantError::ServiceAccountDisabled(name.clone()));
    }
    let scopes = if credential.scopes.is_empty() {
        account_grant.scopes
    } else {
        credential.scopes.iter().cloned().collect()
    };
    let audiences: BTreeSet<_> = credential.audiences.iter().cloned().collect();
    Ok(Grant {
        scopes,
        audiences: audiences.into_iter().collect(),
        token_ttl,
        expires_at: credential.expires_at,
        roles: account_grant.roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
            .single()
            .unwrap()
    }

    fn account(scopes: &[&str]) -> ServiceAccountSpec {
        ServiceAccountSpec {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn cred(scopes: &[&str]) -> M2MCredentialSpec {
        M2MCredentialSpec {
            service_account_name: "ci-bot".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn no_roles() -> RoleResolution {
        Ok(RoleGrant::none())
    }

    fn roles(roles: &[(&str, &[&str])]) -> RoleResolution {
        Ok(RoleGrant {
            roles: roles
                .iter()
                .map(|(name, scopes)| crate::core::roles::GrantedRole {
                    kind: crate::crd::RoleKind::ClusterM2MRole,
                    name: (*name).into(),
                    scopes: set(scopes),
                })
                .collect(),
        })
    }

    #[test]
    fn roles_widen_the_account_within_the_namespace_policy() {
        let all = ScopePolicy::allow_all();
        let repo_only = ScopePolicy::parse("repo:*").unwrap();
        let acc = account(&["repo:read"]);
        let ops = roles(&[("ops", &["repo:write", "admin"])]);
        // Effective scopes: own ∪ roles; a credential may ask for a role's scope.
        let g = resolve_grant(&cred(&[]), Some(&acc), &ops, Ok(&all), now()).unwrap();
        assert_eq!(g.scopes, set(&["admin", "repo:read", "repo:write"]));
        assert_eq!(g.roles.names("ns"), ["ops"]);
        let g = resolve_grant(&cred(&["admin"]), Some(&acc), &ops, Ok(&all), now()).unwrap();
        assert_eq!(g.scopes, set(&["admin"]));
        // A role scope the namespace forbids makes the account invalid, as
        // its own scope would.
        let e = resolve_account(&acc, &ops, Ok(&repo_only)).unwrap_err();
        assert_eq!(e.reason(), "ScopesNotAllowedInNamespace");
        assert!(e.to_string().ends_with(": admin"), "{e}");
        // A missing role grants nothing, even the account's own scopes.
        let missing = Err(GrantError::RoleNotFound(vec!["M2MRole/ops".into()]));
        let e = resolve_grant(&cred(&["repo:read"]), Some(&acc), &missing, Ok(&all), now());
        assert_eq!(e.unwrap_err().to_string(), "roles not found: M2MRole/ops");
        // Without roles, a role's scope is outside the account.
        let e = resolve_grant(&cred(&["admin"]), Some(&acc), &no_roles(), Ok(&all), now());
        assert_eq!(e.unwrap_err().reason(), "ScopesOutsideServiceAccount");
    }

    #[test]
    fn policy_matching() {
        let p = ScopePolicy::parse("repo:*, artifacts:write ,").unwrap();
        let cases = [
            ("repo:read", true),
            ("repo:", true),
            ("repo", false),
            ("artifacts:write", true),
            ("artifacts:write2", false),
            ("artifacts:read", false),
        ];
        for (scope, allowed) in cases {
            assert_eq!(p.allows(scope), allowed, "{scope}");
        }
        assert!(ScopePolicy::parse("*").unwrap().allows("anything"));
        assert!(ScopePolicy::allow_all().allows("x"));
        assert!(!ScopePolicy::parse("").unwrap().allows("x"));
        assert!(!ScopePolicy::deny_all().allows("x"));
    }

    #[test]
    fn malformed_policies_are_refused_not_widened() {
        for bad in ["a*b", "*x", "has space", "quote\"", "back\\slash", "a**"] {
            assert!(ScopePolicy::parse(bad).is_err(), "{bad:?}");
        }
        let err = ScopePolicy::parse("repo:*,a*b").unwrap_err();
        let grant = resolve_grant(
            &cred(&[]),
            Some(&account(&["repo:read"])),
            &no_roles(),
            Err(&err),
            now(),
        );
        assert_eq!(grant.unwrap_err().reason(), "InvalidNamespacePolicy");
    }

    #[test]
    fn grant_table() {
        let all = ScopePolicy::allow_all();
        let repo_only = ScopePolicy::parse("repo:*").unwrap();
        type Case<'a> = (
            &'a str,
            M2MCredentialSpec,
            Option<ServiceAccountSpec>,
            &'a ScopePolicy,
            Result<BTreeSet<String>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "empty = all of account",
                cred(&[]),
                Some(account(&["a", "b"])),
                &all,
                Ok(set(&["a", "b"])),
            ),
            (
                "subset",
                cred(&["a"]),
                Some(account(&["a", "b"])),
                &all,
                Ok(set(&["a"])),
            ),
            (
                "outside account",
                cred(&["a", "c"]),
                Some(account(&["a", "b"])),
                &all,
                Err("ScopesOutsideServiceAccount"),
            ),
            (
                "missing account",
                cred(&["a"]),
                None,
                &all,
                Err("ServiceAccountNotFound"),
            ),
            (
                "account beyond namespace",
                cred(&["repo:read"]),
                Some(account(&["repo:read", "admin"])),
                &repo_only,
                Err("ScopesNotAllowedInNamespace"),
            ),
            (
                "within namespace",
                cred(&[]),
                Some(account(&["repo:read", "repo:write"])),
                &repo_only,
                Ok(set(&["repo:read", "repo:write"])),
            ),
            (
                "disabled",
                cred(&[]),
                Some(ServiceAccountSpec {
                    disabled: true,
                    ..account(&["a"])
                }),
                &all,
                Err("ServiceAccountDisabled"),
            ),
            (
                "credential ttl over account",
                M2MCredentialSpec {
                    token_ttl: Some("2h".into()),
                    ..cred(&[])
                },
                Some(account(&["a"])),
                &all,
                Err("TokenTTLTooLong"),
            ),
            (
                "account ttl over max",
                cred(&[]),
                Some(ServiceAccountSpec {
                    token_ttl: Some("25h".into()),
                    ..account(&["a"])
                }),
                &all,
                Err("TokenTTLTooLong"),
            ),
            (
                "zero ttl",
                M2MCredentialSpec {
                    token_ttl: Some("0s".into()),
                    ..cred(&[])
                },
                Some(account(&["a"])),
                &all,
                Err("InvalidTokenTTL"),
            ),
            (
                "garbage ttl",
                M2MCredentialSpec {
                    token_ttl: Some("soon".into()),
                    ..cred(&[])
                },
                Some(account(&["a"])),
                &all,
                Err("InvalidTokenTTL"),
            ),
            (
                "expired",
                M2MCredentialSpec {
                    expires_at: Some(now()),
                    ..cred(&[])
                },
                Some(account(&["a"])),
                &all,
                Err("Expired"),
            ),
            (
                "not yet expired",
                M2MCredentialSpec {
                    expires_at: Some(now() + chrono::Duration::seconds(1)),
                    ..cred(&[])
                },
                Some(account(&["a"])),
                &all,
                Ok(set(&["a"])),
            ),
        ];
        for (name, c, a, policy, want) in cases {
            let got = resolve_grant(&c, a.as_ref(), &no_roles(), Ok(policy), now());
            match (got, want) {
                (Ok(g), Ok(scopes)) => assert_eq!(g.scopes, scopes, "{name}"),
                (Err(e), Err(reason)) => assert_eq!(e.reason(), reason, "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn ttl_defaults_and_caps() {
        let all = ScopePolicy::allow_all();
        let g = resolve_grant(
            &cred(&[]),
            Some(&account(&["a"])),
            &no_roles(),
            Ok(&all),
            now(),
        )
        .unwrap();
        assert_eq!(g.token_ttl, DEFAULT_TOKEN_TTL);
        let acc = ServiceAccountSpec {
            token_ttl: Some("24h".into()),
            ..account(&["a"])
        };
        let g = resolve_grant(&cred(&[]), Some(&acc), &no_roles(), Ok(&all), now()).unwrap();
        assert_eq!(g.token_ttl, MAX_TOKEN_TTL);
        let c = M2MCredentialSpec {
            token_ttl: Some("15m".into()),
            ..cred(&[])
        };
        let g = resolve_grant(&c, Some(&acc), &no_roles(), Ok(&all), now()).unwrap();
        assert_eq!(g.token_ttl, Duration::from_secs(900));
    }

    /// `tokenTTL: 500ms` issued already-expired tokens (`expires_in: 0`).
    #[test]
    fn ttls_below_one_minute_are_refused_with_a_precise_reason() {
        let all = ScopePolicy::allow_all();
        for ttl in ["500ms", "1s", "59s"] {
            let c = M2MCredentialSpec {
                token_ttl: Some(ttl.into()),
                ..cred(&[])
            };
            let e = resolve_grant(&c, Some(&account(&["a"])), &no_roles(), Ok(&all), now())
                .unwrap_err();
            assert_eq!(e.reason(), "TokenTTLTooShort", "{ttl}");
            assert!(e.to_string().contains("below the minimum of 1m"), "{e}");
            let acc = ServiceAccountSpec {
                token_ttl: Some(ttl.into()),
                ..account(&["a"])
            };
            let e =
                resolve_grant(&cred(&[]), Some(&acc), &no_roles(), Ok(&all), now()).unwrap_err();
            assert_eq!(e.reason(), "TokenTTLTooShort", "{ttl}");
        }
        let c = M2MCredentialSpec {
            token_ttl: Some("1m".into()),
            ..cred(&[])
        };
        let g = resolve_grant(&c, Some(&account(&["a"])), &no_roles(), Ok(&all), now()).unwrap();
        assert_eq!(g.token_ttl, MIN_TOKEN_TTL);
    }

    #[test]
    fn error_messages_name_the_problem() {
        let all = ScopePolicy::allow_all();
        let e = resolve_grant(
            &cred(&["x", "a"]),
            Some(&account(&["a"])),
            &no_roles(),
            Ok(&all),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "scopes not held by ServiceAccount \"ci-bot\": x"
        );
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of the grant decision over arbitrary accounts, credentials
    //! and namespace policies: a grant is never wider than the account, the
    //! namespace policy or the credential's request, and an empty request
    //! means everything the account may hold.
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const SCOPES: &[&str] = &["a", "b", "repo:read", "repo:write", "repo:", "admin", "x:y"];
    const PATTERNS: &[&str] = &["a", "b", "repo:*", "repo:read", "*", "x:*", "admin"];
    const TTLS: &[&str] = &["1s", "15m", "1h", "2h", "24h", "25h", "0s", "soon"];

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).single().unwrap()
    }

    fn no_roles() -> RoleResolution {
        Ok(RoleGrant::none())
    }

    fn scopes() -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(SCOPES, 0..=SCOPES.len())
            .prop_map(|v| v.into_iter().map(str::to_owned).collect())
            .prop_shuffle()
    }

    fn policy() -> impl Strategy<Value = String> {
        proptest::sample::subsequence(PATTERNS, 0..=PATTERNS.len()).prop_map(|v| v.join(", "))
    }

    fn ttl() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(proptest::sample::select(TTLS).prop_map(str::to_owned))
    }

    fn account() -> impl Strategy<Value = ServiceAccountSpec> {
        (scopes(), ttl(), proptest::bool::weighted(0.1)).prop_map(
            |(scopes, token_ttl, disabled)| ServiceAccountSpec {
                scopes,
                token_ttl,
                disabled,
                ..Default::default()
            },
        )
    }

    fn credential() -> impl Strategy<Value = M2MCredentialSpec> {
        (
            scopes(),
            ttl(),
            proptest::option::of(-100i64..100),
            proptest::collection::vec("[a-c]{1,2}", 0..3),
        )
            .prop_map(
                |(scopes, token_ttl, expires, audiences)| M2MCredentialSpec {
                    service_account_name: "ci-bot".into(),
                    scopes,
                    token_ttl,
                    expires_at: expires.map(|s| now() + chrono::Duration::seconds(s)),
                    audiences,
                    ..Default::default()
                },
            )
    }

    proptest! {
        #[test]
        fn a_grant_is_never_wider_than_account_policy_or_request(
            cred in credential(),
            acc in account(),
            policy in policy(),
        ) {
            let policy = ScopePolicy::parse(&policy).expect("patterns are valid");
            let Ok(g) = resolve_grant(&cred, Some(&acc), &no_roles(), Ok(&policy), now()) else {
                return Ok(());
            };
            for s in &g.scopes {
                prop_assert!(acc.scopes.contains(s), "{s} not held by the account");
                prop_assert!(policy.allows(s), "{s} not allowed by the namespace");
            }
            let requested: BTreeSet<String> = cred.scopes.iter().cloned().collect();
            if requested.is_empty() {
                let all: BTreeSet<String> = acc.scopes.iter().cloned().collect();
                prop_assert_eq!(&g.scopes, &all, "an empty request grants all the account may hold");
            } else {
                prop_assert_eq!(&g.scopes, &requested, "exactly what was requested");
            }
            prop_assert!(!acc.disabled);
            prop_assert!(cred.expires_at.is_none_or(|t| t > now()));
            prop_assert!(!g.token_ttl.is_zero() && g.token_ttl <= MAX_TOKEN_TTL);
            let account_ttl = resolve_account(&acc, &no_roles(), Ok(&policy)).expect("account valid").token_ttl;
            prop_assert!(g.token_ttl <= account_ttl);
            prop_assert!(g.audiences.windows(2).all(|w| w[0] < w[1]), "sorted, deduplicated");
        }

        #[test]
        fn a_valid_request_is_granted(
            cred in credential(),
            acc in account(),
            policy in policy(),
        ) {
            // Completeness: nothing fails except for a stated reason.
            let policy = ScopePolicy::parse(&policy).expect("patterns are valid");
            let in_policy = acc.scopes.iter().all(|s| policy.allows(s));
            let in_account = cred.scopes.iter().all(|s| acc.scopes.contains(s));
            let ttl_ok = |t: &Option<String>, max: Duration| {
                t.as_deref().is_none_or(|t| parse_duration(t).is_ok_and(|d| d >= MIN_TOKEN_TTL && d <= max))
            };
            let acc_ttl_ok = ttl_ok(&acc.token_ttl, MAX_TOKEN_TTL);
            let acc_ttl = acc.token_ttl.as_deref().and_then(|t| parse_duration(t).ok()).unwrap_or(DEFAULT_TOKEN_TTL);
            let cred_ttl_ok = ttl_ok(&cred.token_ttl, acc_ttl);
            let live = cred.expires_at.is_none_or(|t| t > now());
            let got = resolve_grant(&cred, Some(&acc), &no_roles(), Ok(&policy), now());
            let should = in_policy && in_account && acc_ttl_ok && cred_ttl_ok && live && !acc.disabled;
            prop_assert_eq!(got.is_ok(), should, "{:?}", got);
            if let Err(e) = got {
                // The first failing check, in the order users fix them.
                let ttl_reason = matches!(
                    e.reason(),
                    "InvalidTokenTTL" | "TokenTTLTooLong" | "TokenTTLTooShort"
                );
                if !in_policy {
                    prop_assert_eq!(e.reason(), "ScopesNotAllowedInNamespace");
                } else if !acc_ttl_ok {
                    prop_assert!(ttl_reason && e.to_string().starts_with("ServiceAccount"), "{}", e);
                } else if !in_account {
                    prop_assert_eq!(e.reason(), "ScopesOutsideServiceAccount");
                } else if !cred_ttl_ok {
                    prop_assert!(ttl_reason && e.to_string().starts_with("tokenTTL"), "{}", e);
                } else if !live {
                    prop_assert_eq!(e.reason(), "Expired");
                } else {
                    prop_assert_eq!(e.reason(), "ServiceAccountDisabled");
                }
            }
        }

        #[test]
        fn no_account_or_a_broken_policy_grants_nothing(
            cred in credential(),
            acc in account(),
        ) {
            let all = ScopePolicy::allow_all();
            prop_assert_eq!(
                resolve_grant(&cred, None, &no_roles(), Ok(&all), now()).map_err(|e| e.reason()),
                Err("ServiceAccountNotFound")
            );
            let broken = ScopePolicy::parse("a*b").unwrap_err();
            prop_assert_eq!(
                resolve_grant(&cred, Some(&acc), &no_roles(), Err(&broken), now()).map_err(|e| e.reason()),
                Err("InvalidNamespacePolicy")
            );
        }

        #[test]
        fn policy_allows_exactly_its_patterns(policy in policy(), scope in "[a-z:]{0,10}") {
            let parsed = ScopePolicy::parse(&policy).expect("patterns are valid");
            let expected = policy.split(',').map(str::trim).filter(|p| !p.is_empty()).any(|p| {
                match p.strip_suffix('*') {
                    Some(prefix) => scope.starts_with(prefix),
                    None => p == scope,
                }
            });
            prop_assert_eq!(parsed.allows(&scope), expected);
        }

        #[test]
        fn policy_parsing_never_widens_on_garbage(policy in "\\PC{0,40}") {
            // Whatever the annotation holds, a parsed policy allows only what
            // one of its well-formed entries allows; anything else is an error.
            if let Ok(parsed) = ScopePolicy::parse(&policy) {
                let entries: Vec<&str> = policy.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
                if entries.is_empty() {
                    prop_assert!(!parsed.allows("anything"));
                }
                if !entries.iter().any(|e| e.ends_with('*')) {
                    prop_assert!(!parsed.allows("zz-not-listed") || entries.contains(&"zz-not-listed"));
                }
            }
        }
    }
}
