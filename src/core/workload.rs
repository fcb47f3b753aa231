//! Workload identity (SPEC §6): which Kubernetes service-account tokens a
//! credential accepts, and the small pure decisions around them — the mode
//! of a credential, the binding it declares, how long a verified assertion
//! may be remembered, and what an unverified assertion claims to be (only
//! used to find the credential whose audience to verify it against; the
//! apiserver's TokenReview is the authority).
//!
//! Nothing here talks to a cluster: the controller writes the binding into
//! status, the token server builds its index from the same function, so
//! both always agree.

use crate::crd::{
    CredentialMode, M2MCredentialSpec, SecretVerifier, WorkloadIdentity, WorkloadIdentityStatus,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// `client_assertion_type` of RFC 7523 §2.2 client authentication.
pub(crate) const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The usage version of workload-identity requests (`status.versionUsage`
/// and dormancy): no secret version authenticated them. Their tokens'
/// `m2m_sv` is the binding's epoch instead ([`epoch_verifier`]).
pub(crate) const WORKLOAD_IDENTITY_VERSION: i64 = 0;

/// How the digest of an [`epoch_verifier`] starts (then `<subject>:<audience>`).
pub(crate) const EPOCH_DIGEST_PREFIX: &str = "workload-identity:";

/// The binding and epoch of `status.workloadIdentity` in the shape the
/// verifier seals take (a [`SecretVerifier`] whose version is the epoch and
/// whose digest names the binding), so the controller seals and the token
/// servers check it with the verifier key like any verifier. The digest
/// text is no base64url, so it never matches a secret, and a sealed secret
/// verifier never names a binding.
pub(crate) fn epoch_verifier(status: &WorkloadIdentityStatus) -> SecretVerifier {
    SecretVerifier {
        version: status.epoch,
        digest: format!(
            "{EPOCH_DIGEST_PREFIX}{}:{}",
            status.subject, status.audience
        ),
        not_after: None,
        seal: status.seal.clone(),
    }
}

/// Whether the epoch in a credential's status can still be the binding's
/// current one: no spec generation went unseen since the controller wrote
/// it. Two or more unseen generations may hide a switch away and back (a
/// binding removed and re-added before the controller looked), after which
/// the controller renews the epoch; until it has, the token servers honour
/// no epoch at all, so tokens of before the switch never revive in between.
/// The controller's choice of epoch and the token servers' check share this
/// one rule.
pub(crate) fn epoch_may_stand(observed_generation: Option<i64>, generation: Option<i64>) -> bool {
    let generation = generation.unwrap_or(1).max(1);
    observed_generation.is_some_and(|seen| seen >= generation - 1)
}

/// Default bound of a cached TokenReview result.
pub(crate) const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Default maximum number of cached TokenReview results.
pub(crate) const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// A refused assertion is remembered at most this long (protects the
/// apiserver from a client retrying a bad token in a loop).
pub(crate) const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(2);

/// Default bound of TokenReview calls in flight at once (per replica).
pub(crate) const DEFAULT_MAX_CONCURRENT_REVIEWS: usize = 16;
/// Default bound of TokenReview calls per second (per replica).
pub(crate) const DEFAULT_REVIEWS_PER_SECOND: u32 = 50;

/// The longest `exp − iat` a plausible assertion claims. kube-apiserver
/// issues service-account tokens of at most a year (its expiration
/// extension for projected tokens); anything longer is not one of them.
pub(crate) const MAX_ASSERTION_LIFETIME_SECS: i64 = 366 * 24 * 3600;
/// How far in the future an assertion's `iat` may be (clock skew).
pub(crate) const ASSERTION_CLOCK_SKEW_SECS: i64 = 60;
/// The shortest signature of an asymmetric algorithm (ES256, EdDSA: 64 bytes).
const MIN_SIGNATURE_BYTES: usize = 64;
/// Longest header or signature part read (base64url characters).
const MAX_PART_LEN: usize = 2048;
/// The JWS algorithms a Kubernetes service-account token may be signed
/// with: asymmetric only (never `none`, never HMAC).
const ASYMMETRIC_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
];

/// Why an assertion was refused before any TokenReview (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Implausible {
    /// Not three base64url parts, or a part too long or too short.
    Malformed,
    /// `alg` missing, `none` or symmetric.
    Algorithm,
    /// `aud` does not contain the audience the credential expects.
    Audience,
    /// `exp` or `iat` missing, expired, issued in the future, or a
    /// lifetime no Kubernetes token has.
    Lifetime,
}

/// The cheap checks on an unverified assertion that every real
/// service-account token passes, run before the TokenReview so that junk
/// naming a bound ServiceAccount costs the apiserver nothing: well formed
/// (three base64url parts, JSON header and payload, a signature of an
/// asymmetric algorithm's length), an asymmetric `alg`, `aud` containing
/// `audience`, `exp` in the future, `iat` not in the future, and
/// `0 < exp − iat ≤` [`MAX_ASSERTION_LIFETIME_SECS`]. Passing proves
/// nothing (anyone can write such a token); failing proves it is not a
/// valid token for this audience.
pub(crate) fn check_plausible(
    token: &str,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<(), Implausible> {
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(default)]
        alg: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    #[derive(serde::Deserialize)]
    struct Payload {
        #[serde(default)]
        aud: Option<Audience>,
        #[serde(default)]
        exp: Option<i64>,
        #[serde(default)]
        iat: Option<i64>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Implausible::Malformed);
    };
    if header.len() > MAX_PART_LEN || payload.len() > 8192 || signature.len() > MAX_PART_LEN {
        return Err(Implausible::Malformed);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Implausible::Malformed)?;
    if signature.len() < MIN_SIGNATURE_BYTES {
        return Err(Implausible::Malformed);
    }
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Implausible::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| Implausible::Malformed)?;
    let payload: Payload =
        serde_json::from_slice(&decode(payload)?).map_err(|_| Implausible::Malformed)?;
    if !header
        .alg
        .as_deref()
        .is_some_and(|a| ASYMMETRIC_ALGS.contains(&a))
    {
        return Err(Implausible::Algorithm);
    }
    let audience_ok = match &payload.aud {
        Some(Audience::One(a)) => a == audience,
        Some(Audience::Many(many)) => many.iter().any(|a| a == audience),
        None => false,
    };
    if !audience_ok {
        return Err(Implausible::Audience);
    }
    let (Some(exp), Some(iat)) = (payload.exp, payload.iat) else {
        return Err(Implausible::Lifetime);
    };
    let now = now.timestamp();
    let lifetime = exp.saturating_sub(iat);
    if exp <= now
        || iat > now.saturating_add(ASSERTION_CLOCK_SKEW_SECS)
        || lifetime <= 0
        || lifetime > MAX_ASSERTION_LIFETIME_SECS
    {
        return Err(Implausible::Lifetime);
    }
    Ok(())
}

/// The mode a credential spec asks for.
pub fn mode(spec: &M2MCredentialSpec) -> CredentialMode {
    if spec.workload_identity.is_some() {
        CredentialMode::WorkloadIdentity
    } else {
        CredentialMode::ClientSecret
    }
}

/// A valid workload-identity binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadBinding {
    /// Namespace of the credential and the ServiceAccount.
    pub namespace: String,
    /// The core ServiceAccount's name.
    pub service_account: String,
    /// The audience accepted tokens must carry; `None`: the issuer URL.
    pub audience: Option<String>,
}

impl WorkloadBinding {
    /// The username Kubernetes gives the ServiceAccount's tokens.
    pub fn subject(&self) -> String {
        service_account_subject(&self.namespace, &self.service_account)
    }

    /// The audience, defaulting to `issuer`.
    pub(crate) fn audience_or<'a>(&'a self, issuer: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(issuer)
    }
}

/// `system:serviceaccount:<namespace>:<name>`.
pub(crate) fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Why a workload-identity binding is refused; each maps to a condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The namespace's `default` ServiceAccount without the explicit opt-in.
    #[error(
        "binding the namespace's default ServiceAccount lets every pod without its own ServiceAccount use this credential; set spec.workloadIdentity.allowDefaultServiceAccount: true if that is intended"
    )]
    DefaultServiceAccountNotAllowed,
}

impl WorkloadError {
    /// The machine-readable condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DefaultServiceAccountNotAllowed => "DefaultServiceAccountNotAllowed",
        }
    }
}

/// The binding `wi` declares in `namespace`, or why it is refused.
pub(crate) fn resolve_binding(
    namespace: &str,
    wi: &WorkloadIdentity,
) -> Result<WorkloadBinding, WorkloadError> {
    if wi.kubernetes_service_account == "default" && !wi.allow_default_service_account {
        return Err(WorkloadError::DefaultServiceAccountNotAllowed);
    }
    Ok(WorkloadBinding {
        namespace: namespace.to_owned(),
        service_account: wi.kubernetes_service_account.clone(),
        audience: wi.audience.clone(),
    })
}

/// The cache key of an assertion verified for `audience`: SHA-256 over
/// both, so the cache never holds a token and a review for one audience is
/// never reused for another.
pub(crate) fn assertion_key(audience: &str, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(audience.as_bytes());
    h.update([0u8]);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// How long a verified assertion may be served from the cache: until the
/// token's `exp`, at most `bound` after it was verified.
pub(crate) fn cache_until(
    verified_at: DateTime<Utc>,
    exp: Option<DateTime<Utc>>,
    bound: Duration,
) -> DateTime<Utc> {
    let bound = verified_at + chrono::Duration::from_std(bound).unwrap_or_default();
    match exp {
        Some(exp) => exp.min(bound),
        // Kubernetes tokens always carry exp; without it, trust only the bound.
        None => bound,
    }
}

/// What an assertion claims before anyone verified it: enough to find the
/// credential(s) it may be for. Never trusted for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimedIdentity {
    /// `sub`.
    pub subject: String,
    /// `exp`, if present.
    pub exp: Option<DateTime<Utc>>,
}

/// Read `sub` and `exp` from a JWT's payload without checking anything.
/// `None` for anything that is not a three-part JWT with a JSON payload.
pub(crate) fn claimed_identity(token: &str) -> Option<ClaimedIdentity> {
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
        #[serde(default)]
        exp: Option<i64>,
    }
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 8192 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Some(ClaimedIdentity {
        subject: claims.sub,
        exp: claims
            .exp
            .and_then(|e| DateTime::<Utc>::from_timestamp(e, 0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn wi(sa: &str, allow_default: bool) -> WorkloadIdentity {
        WorkloadIdentity {
            kubernetes_service_account: sa.into(),
            audience: None,
            allow_default_service_account: allow_default,
        }
    }

    #[test]
    fn binding_table() {
        let cases = [
            (
                "uploader",
                false,
                Ok("system:serviceaccount:team-a:uploader"),
            ),
            ("default", false, Err("DefaultServiceAccountNotAllowed")),
            ("default", true, Ok("system:serviceaccount:team-a:default")),
            // Only the exact name is special.
            (
                "default-uploader",
                false,
                Ok("system:serviceaccount:team-a:default-uploader"),
            ),
        ];
        for (sa, allow, want) in cases {
            let got = resolve_binding("team-a", &wi(sa, allow))
                .map(|b| b.subject())
                .map_err(|e| e.reason());
            assert_eq!(got.as_deref().map_err(|e| *e), want, "{sa} allow={allow}");
        }
    }

    #[test]
    fn mode_follows_the_spec() {
        let mut spec = M2MCredentialSpec::default();
        assert_eq!(mode(&spec), CredentialMode::ClientSecret);
        spec.workload_identity = Some(wi("x", false));
        assert_eq!(mode(&spec), CredentialMode::WorkloadIdentity);
    }

    #[test]
    fn audience_defaults_to_the_issuer() {
        let mut b = resolve_binding("ns", &wi("x", false)).unwrap();
        assert_eq!(b.audience_or("https://iss"), "https://iss");
        b.audience = Some("https://other".into());
        assert_eq!(b.audience_or("https://iss"), "https://other");
    }

    #[test]
    fn cache_never_outlives_the_token_nor_the_bound() {
        let t = |s| Utc.timestamp_opt(s, 0).single().unwrap();
        let bound = Duration::from_secs(30);
        assert_eq!(cache_until(t(100), Some(t(1000)), bound), t(130));
        assert_eq!(cache_until(t(100), Some(t(110)), bound), t(110));
        assert_eq!(cache_until(t(100), None, bound), t(130));
    }

    #[test]
    fn keys_bind_the_audience_and_hide_the_token() {
        let a = assertion_key("aud1", "tok");
        assert_ne!(a, assertion_key("aud2", "tok"));
        assert_ne!(a, assertion_key("aud1", "tok2"));
        // No ambiguity between audience and token boundaries.
        assert_ne!(assertion_key("ab", "c"), assertion_key("a", "bc"));
    }

    #[test]
    fn plausibility_table() {
        let now = Utc.timestamp_opt(1_000_000, 0).single().unwrap();
        let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let sig = URL_SAFE_NO_PAD.encode([1u8; 256]);
        let tok =
            |h: serde_json::Value, p: serde_json::Value| format!("{}.{}.{sig}", enc(h), enc(p));
        let h = serde_json::json!({"alg": "RS256"});
        let p = |aud: serde_json::Value, exp: i64, iat: i64| serde_json::json!({"aud": aud, "exp": exp, "iat": iat, "sub": "s"});
        let ok = p(serde_json::json!(["a", "aud"]), 1_003_600, 1_000_000);
        assert_eq!(
            check_plausible(&tok(h.clone(), ok.clone()), "aud", now),
            Ok(())
        );
        let one = p(serde_json::json!("aud"), 1_003_600, 1_000_000);
        assert_eq!(check_plausible(&tok(h.clone(), one), "aud", now), Ok(()));
        let year = p(
            serde_json::json!("aud"),
            1_000_000 + 365 * 86_400,
            1_000_000,
        );
        assert_eq!(check_plausible(&tok(h.clone(), year), "aud", now), Ok(()));
        use Implausible::*;
        let cases = [
            (
                tok(serde_json::json!({"alg": "HS256"}), ok.clone()),
                Algorithm,
            ),
            (
                tok(serde_json::json!({"alg": "none"}), ok.clone()),
                Algorithm,
            ),
            (
                tok(
                    h.clone(),
                    p(serde_json::json!("other"), 1_003_600, 1_000_000),
                ),
                Audience,
            ),
            (
                tok(
                    h.clone(),
                    p(serde_json::json!(1_003_600), 1_003_600, 1_000_000),
                ),
                Malformed,
            ),
            (
                tok(h.clone(), p(serde_json::json!("aud"), 999_999, 990_000)),
                Lifetime,
            ),
            (
                tok(h.clone(), p(serde_json::json!("aud"), 1_100_000, 1_000_100)),
                Lifetime,
            ),
            (
                tok(
                    h.clone(),
                    p(
                        serde_json::json!("aud"),
                        1_000_000 + 400 * 86_400,
                        1_000_000,
                    ),
                ),
                Lifetime,
            ),
            (
                tok(
                    h.clone(),
                    serde_json::json!({"aud": "aud", "exp": 1_003_600}),
                ),
                Lifetime,
            ),
            (
                format!("{}.{}.c2ln", enc(h.clone()), enc(ok.clone())),
                Malformed,
            ),
            (format!("{}.{}", enc(h.clone()), enc(ok.clone())), Malformed),
            ("a.b.c".to_owned(), Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(check_plausible(&token, "aud", now), Err(want), "{token}");
        }
    }

    #[test]
    fn claimed_identity_reads_only_well_formed_jwts() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"system:serviceaccount:a:b","exp":100}"#);
        let c = claimed_identity(&format!("h.{payload}.s")).unwrap();
        assert_eq!(c.subject, "system:serviceaccount:a:b");
        assert_eq!(c.exp.map(|e| e.timestamp()), Some(100));
        for bad in ["", "a.b", "a.b.c.d", &format!("h.{payload}"), "h.!!!.s"] {
            assert!(claimed_identity(bad).is_none(), "{bad}");
        }
        let no_sub = URL_SAFE_NO_PAD.encode(br#"{"exp":1}"#);
        assert!(claimed_identity(&format!("h.{no_sub}.s")).is_none());
    }
}
