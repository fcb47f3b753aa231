//! The CEL rules (`x-kubernetes-validations`) the CRDs carry: what the API
//! server refuses at `kubectl apply`, with a message naming the field. The
//! controller keeps its own checks (it also serves clusters where a rule was
//! relaxed, and rules across objects are beyond CEL). Each rule has a
//! refused manifest in `examples/invalid/` that `tests/crds.rs` applies.
//!
//! Not expressible here: "`expiresAt` is in the future when created" — CRD
//! validation rules have no clock (no `now()`), so the controller reports
//! an expired credential with `Ready=False` instead.

use kube::core::{Message, Rule};

/// Shortest access-token lifetime a schema accepts.
pub const MIN_TOKEN_TTL: &str = "1m";
/// Longest access-token lifetime (the controller's `MAX_TOKEN_TTL`).
pub const MAX_TOKEN_TTL: &str = "24h";
/// Longest grace period a replaced secret may keep working.
pub const MAX_GRACE_PERIOD: &str = "168h";

/// `tokenTTL` (of both kinds) lies within [`MIN_TOKEN_TTL`, `MAX_TOKEN_TTL`].
pub fn token_ttl_bounds() -> Rule {
    Rule::new(format!(
        "duration(self) >= duration('{MIN_TOKEN_TTL}') && duration(self) <= duration('{MAX_TOKEN_TTL}')"
    ))
    .message(Message::Expression(format!(
        "'tokenTTL must be at least {MIN_TOKEN_TTL} and at most {MAX_TOKEN_TTL}, not ' + self"
    )))
}

/// `rotation.every` is a positive duration.
pub fn rotation_every_positive() -> Rule {
    Rule::new("duration(self) > duration('0s')").message(Message::Expression(
        "'rotation.every must be longer than 0s (leave it unset to rotate only when the m2m.dev/rotate annotation changes), not ' + self".into(),
    ))
}

/// `rotation.gracePeriod` is at most [`MAX_GRACE_PERIOD`].
pub fn grace_period_bounds() -> Rule {
    Rule::new(format!("duration(self) <= duration('{MAX_GRACE_PERIOD}')")).message(
        Message::Expression(format!(
            "'rotation.gracePeriod must be at most {MAX_GRACE_PERIOD}, not ' + self"
        )),
    )
}

/// With both set, a replaced secret stops working before the next rotation,
/// so at most two secret versions are ever valid.
pub fn grace_shorter_than_every() -> Rule {
    Rule::new(
        "!has(self.every) || !has(self.gracePeriod) || duration(self.gracePeriod) < duration(self.every)",
    )
    .message(Message::Expression(
        "'rotation.gracePeriod (' + self.gracePeriod + ') must be shorter than rotation.every (' + self.every + ')'".into(),
    ))
    .field_path(".gracePeriod")
}

/// `rotation.retireWhenUnusedFor` ends a grace period early, so it is at
/// most the grace period (which stays the upper bound).
pub fn retire_within_grace() -> Rule {
    Rule::new(
        "!has(self.retireWhenUnusedFor) || (has(self.gracePeriod) && duration(self.retireWhenUnusedFor) <= duration(self.gracePeriod))",
    )
    .message(Message::Expression(
        "'rotation.retireWhenUnusedFor (' + self.retireWhenUnusedFor + ') must be at most rotation.gracePeriod (' + (has(self.gracePeriod) ? self.gracePeriod : 'unset: 0s') + ')'".into(),
    ))
    .field_path(".retireWhenUnusedFor")
}

/// A duration field is longer than `0s`.
pub fn positive_duration(field: &str) -> Rule {
    Rule::new("duration(self) > duration('0s')").message(Message::Expression(format!(
        "'{field} must be longer than 0s, not ' + self"
    )))
}

/// A workload-identity credential has no client secret, so no rotation
/// schedule or grace period: the two are mutually exclusive.
pub fn workload_identity_has_no_rotation() -> Rule {
    Rule::new("!has(self.workloadIdentity) || !has(self.rotation)")
        .message(Message::Expression(
            "'rotation does not apply to a workloadIdentity credential (it has no secret to rotate): remove spec.rotation or spec.workloadIdentity'".into(),
        ))
        .field_path(".rotation")
}

/// `spec.type` keeps the value it was created with; absent means
/// `ClientSecret`, so adding `type: ClientSecret` later is no change.
/// A rule on the spec (not the field) because the field may be absent.
pub fn type_immutable() -> Rule {
    Rule::new(
        "(has(self.type) ? self.type : 'ClientSecret') == (has(oldSelf.type) ? oldSelf.type : 'ClientSecret')",
    )
    .message("type is immutable: create another M2MCredential to switch between ClientSecret and APIToken")
    .field_path(".type")
}

/// An API token is a generated secret: it cannot come from a pod's
/// service-account token, so `APIToken` and `workloadIdentity` exclude each other.
pub fn api_token_has_no_workload_identity() -> Rule {
    Rule::new("!has(self.type) || self.type != 'APIToken' || !has(self.workloadIdentity)")
        .message("workloadIdentity does not apply to an APIToken credential (an API token is a generated secret): remove spec.workloadIdentity or spec.type")
        .field_path(".workloadIdentity")
}

/// The field keeps the value it was created with.
pub fn immutable(field: &str, hint: &str) -> Rule {
    Rule::new("self == oldSelf").message(format!("{field} is immutable: {hint}").as_str())
}

// --- Federation (SPEC §9) -------------------------------------------------

/// An issuer or JWKS URL is `https://` without query or fragment.
pub fn https_url(field: &str) -> Rule {
    Rule::new("self.startsWith('https://') && !self.contains('?') && !self.contains('#')").message(
        Message::Expression(format!(
            "'{field} must be an https:// URL without query or fragment, not ' + self"
        )),
    )
}

/// At most one of `discovery`, `jwksURL` and `jwks` says where the keys are.
pub fn one_key_source() -> Rule {
    Rule::new("[has(self.discovery), has(self.jwksURL), has(self.jwks)].filter(x, x).size() <= 1")
        .message("set at most one of discovery, jwksURL and jwks (none: discovery)")
}

/// At most one of `caBundle` and `clusterTrustBundle` replaces the system roots.
pub fn one_trust_anchor() -> Rule {
    Rule::new("!has(self.caBundle) || !has(self.clusterTrustBundle)")
        .message("set at most one of caBundle and clusterTrustBundle")
}

/// Longest `maxTokenLifetime` an issuer may accept.
pub const MAX_FEDERATED_TOKEN_LIFETIME: &str = "24h";

/// `maxTokenLifetime` is positive and at most [`MAX_FEDERATED_TOKEN_LIFETIME`].
pub fn max_token_lifetime_bounds() -> Rule {
    Rule::new(format!(
        "duration(self) > duration('0s') && duration(self) <= duration('{MAX_FEDERATED_TOKEN_LIFETIME}')"
    ))
    .message(Message::Expression(format!(
        "'maxTokenLifetime must be longer than 0s and at most {MAX_FEDERATED_TOKEN_LIFETIME}, not ' + self"
    )))
}

/// A credential authenticates one way: a generated secret (neither set),
/// `workloadIdentity` or `federation`.
pub fn one_authentication() -> Rule {
    Rule::new("!has(self.workloadIdentity) || !has(self.federation)")
        .message("set at most one of workloadIdentity and federation (neither: a generated client secret)")
        .field_path(".federation")
}

/// A federated credential has no secret to rotate.
pub fn federation_has_no_rotation() -> Rule {
    Rule::new("!has(self.federation) || !has(self.rotation)")
        .message("rotation does not apply to a federation credential (it has no secret to rotate): remove spec.rotation or spec.federation")
        .field_path(".rotation")
}

/// An API token is a generated secret, never an external JWT.
pub fn api_token_has_no_federation() -> Rule {
    Rule::new("!has(self.type) || self.type != 'APIToken' || !has(self.federation)")
        .message("federation does not apply to an APIToken credential (an API token is a generated secret): remove spec.federation or spec.type")
        .field_path(".federation")
}
