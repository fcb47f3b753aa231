//! Scope policies: which scopes identities in a namespace may hold. A
//! module of its own because grants, roles and the namespace lookup
//! (`core::policy`) all read it, and none of them should import another
//! for it.

use std::collections::BTreeSet;

/// One entry of a scope policy: an exact scope, a `prefix*` pattern
/// (`repo:*` allows `repo:read`), or `*` for everything.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScopePattern {
    Exact(String),
    Prefix(String),
}

/// Which scopes identities in a namespace may hold: the Namespace
/// annotation `m2m.dev/allowed-scopes`, else the operator-wide default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopePolicy {
    patterns: Vec<ScopePattern>,
}

/// A scope policy string that could not be understood. The namespace is then
/// treated as allowing nothing, never as allowing everything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope policy entry {entry:?}: use exact scopes or prefix patterns like \"repo:*\", separated by commas"
)]
pub struct ScopePolicyError {
    /// The offending entry.
    pub entry: String,
}

impl ScopePolicy {
    /// A policy that allows every scope (the unsafe-for-shared-clusters default).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn allow_all() -> Self {
        Self {
            patterns: vec![ScopePattern::Prefix(String::new())],
        }
    }

    /// A policy that allows nothing.
    #[cfg(test)]
    pub(crate) fn deny_all() -> Self {
        Self { patterns: vec![] }
    }

    /// Parse a comma-separated list of exact scopes and `prefix*` patterns.
    /// Whitespace around entries is ignored; an empty string allows nothing.
    pub fn parse(policy: &str) -> Result<Self, ScopePolicyError> {
        let mut patterns = Vec::new();
        for entry in policy.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || ScopePolicyError {
                entry: entry.to_owned(),
            };
            let (body, prefix) = match entry.strip_suffix('*') {
                Some(body) => (body, true),
                None => (entry, false),
            };
            if body.contains('*') || !body.bytes().all(is_scope_byte) {
                return Err(bad());
            }
            patterns.push(if prefix {
                ScopePattern::Prefix(body.to_owned())
            } else {
                ScopePattern::Exact(body.to_owned())
            });
        }
        Ok(Self { patterns })
    }

    /// Whether `scope` may be held under this policy.
    pub fn allows(&self, scope: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            ScopePattern::Exact(s) => s == scope,
            ScopePattern::Prefix(prefix) => scope.starts_with(prefix.as_str()),
        })
    }

    /// The scopes of `scopes` this policy refuses, sorted.
    pub fn refused<'a>(&self, scopes: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let refused: BTreeSet<_> = scopes
            .into_iter()
            .filter(|s| !self.allows(s))
            .cloned()
            .collect();
        refused.into_iter().collect()
    }
}

/// RFC 6749 §3.3 scope-token characters, excluding `*` (reserved for patterns).
fn is_scope_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x29 | 0x2B..=0x5B | 0x5D..=0x7E)
}
