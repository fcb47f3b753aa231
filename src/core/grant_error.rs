//! Why a grant is refused. Grants (`core::grant`) and role resolution
//! (`core::roles`) both return it, so it sits below both of them.

use crate::core::scope::ScopePolicyError;
use chrono::{DateTime, Utc};

/// Why a credential (or an account) cannot be granted anything. Each variant
/// maps to the `reason` of a `Ready=False` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// `spec.serviceAccountName` names no ServiceAccount in the namespace.
    #[error("ServiceAccount {0:?} (serviceaccounts.m2m.dev) does not exist in this namespace")]
    ServiceAccountNotFound(String),
    /// The account has `disabled: true`.
    #[error("ServiceAccount {0:?} is disabled")]
    ServiceAccountDisabled(String),
    /// The namespace annotation `m2m.dev/allowed-scopes` is malformed.
    #[error("namespace annotation m2m.dev/allowed-scopes is invalid: {0}")]
    InvalidNamespacePolicy(ScopePolicyError),
    /// Roles the account is granted (`spec.roleRefs` or the operator's
    /// default role) do not exist; each listed as `Kind/name`.
    #[error("roles not found: {}", .0.join(", "))]
    RoleNotFound(Vec<String>),
    /// The account holds scopes its namespace does not allow.
    #[error("scopes not allowed in this namespace by m2m.dev/allowed-scopes: {}", .0.join(", "))]
    ScopesNotAllowedInNamespace(Vec<String>),
    /// The credential asks for scopes its account does not hold.
    #[error("scopes not held by ServiceAccount {account:?}: {}", .scopes.join(", "))]
    ScopesOutsideServiceAccount {
        /// The ServiceAccount.
        account: String,
        /// The scopes it lacks.
        scopes: Vec<String>,
    },
    /// A `tokenTTL` does not parse, or is zero.
    #[error("{field} {value:?} is not a positive duration")]
    InvalidTokenTTL {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A `tokenTTL` exceeds what is allowed.
    #[error("{field} {value} exceeds the maximum of {max}")]
    TokenTTLTooLong {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The bound it broke.
        max: String,
    },
    /// A `tokenTTL` is below `core::grant::MIN_TOKEN_TTL`: its tokens would expire
    /// before a client could use them (`expires_in` rounds to seconds).
    #[error("{field} {value} is below the minimum of {min}")]
    TokenTTLTooShort {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The bound it broke.
        min: String,
    },
    /// `spec.expiresAt` has passed.
    #[error("the credential expired at {0}")]
    Expired(DateTime<Utc>),
}

impl GrantError {
    /// The machine-readable condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ServiceAccountNotFound(_) => "ServiceAccountNotFound",
            Self::ServiceAccountDisabled(_) => "ServiceAccountDisabled",
            Self::InvalidNamespacePolicy(_) => "InvalidNamespacePolicy",
            Self::RoleNotFound(_) => "RoleNotFound",
            Self::ScopesNotAllowedInNamespace(_) => "ScopesNotAllowedInNamespace",
            Self::ScopesOutsideServiceAccount { .. } => "ScopesOutsideServiceAccount",
            Self::InvalidTokenTTL { .. } => "InvalidTokenTTL",
            Self::TokenTTLTooLong { .. } => "TokenTTLTooLong",
            Self::TokenTTLTooShort { .. } => "TokenTTLTooShort",
            Self::Expired(_) => "Expired",
        }
    }
}
