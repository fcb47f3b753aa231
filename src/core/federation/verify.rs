//! Offline verification of an external issuer's JWT (SPEC §9): signature
//! against the issuer's keys, asymmetric algorithms only, then the claims —
//! `iss` exactly, `aud`, `exp` required, `nbf`/`iat` with a bounded skew,
//! and the lifetime `exp − iat` bounded. Pure: the keys and the time are
//! arguments; nothing here fetches.

use super::keys::{ACCEPTED_ALGORITHMS, KeySet};
use super::rules::Claims;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};

/// How far an issuer's clock may run ahead of ours (`nbf`, `iat`). `exp`
/// gets none: a clock behind shortens a token's life, never lengthens it.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Longest token read (bytes); longer ones are malformed.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most keys tried for a token without `kid`.
const MAX_CANDIDATES: usize = 8;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct ClaimPolicy<'a> {
    /// `iss`, exactly.
    pub issuer: &'a str,
    /// `aud` must contain one of these (never empty: the caller resolves
    /// the default).
    pub audiences: &'a [String],
    /// Longest `exp − iat`, in seconds.
    pub max_lifetime_secs: i64,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `sub`.
    pub subject: String,
    /// `exp` (seconds since the epoch).
    pub exp: i64,
    /// `jti`, if any.
    pub jti: Option<String>,
    /// `kid` of the key that verified it, if it had one.
    pub kid: Option<String>,
    /// The whole payload, for CEL.
    pub claims: Claims,
}

/// Why a token was refused (a bounded metric label, and for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a compact JWS with a JSON header and payload.
    #[error("malformed token")]
    Malformed,
    /// `alg` missing, `none`, HMAC, or not accepted.
    #[error("algorithm not accepted (asymmetric algorithms only)")]
    Algorithm,
    /// No key with the token's `kid` (or none for its `alg`).
    #[error("no key of the issuer matches the token's kid")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the issuer's.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` contains none of the accepted audiences.
    #[error("audience not accepted")]
    Audience,
    /// `exp` missing or past.
    #[error("expired or without exp")]
    Expired,
    /// `nbf` or `iat` in the future.
    #[error("not valid yet")]
    NotYetValid,
    /// No `iat`, or `exp − iat` not within (0, maxTokenLifetime].
    #[error("lifetime too long or unknown")]
    Lifetime,
    /// No `sub`.
    #[error("no subject")]
    Subject,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_kid",
            Self::Signature => "signature",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Lifetime => "lifetime",
            Self::Subject => "subject",
        }
    }
}

/// What a token says about itself before verification: only used to pick
/// the issuer (`iss`) and the credential (`sub`); nothing is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// `iss`.
    pub issuer: String,
    /// `sub`, if a string.
    pub subject: Option<String>,
    /// `kid` of the header.
    pub kid: Option<String>,
}

/// Read `iss`, `sub` and `kid` of a compact JWS without verifying it.
pub fn peek(token: &str) -> Option<Unverified> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(default)]
        kid: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Payload {
        iss: String,
        #[serde(default)]
        sub: Option<serde_json::Value>,
    }
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    let payload: Payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    Some(Unverified {
        issuer: payload.iss,
        subject: payload.sub.and_then(|s| s.as_str().map(str::to_owned)),
        kid: header.kid,
    })
}

/// The header's algorithm and key id, if the algorithm is one we accept.
pub fn header(token: &str) -> Result<(Algorithm, Option<String>), Refused> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refused::Malformed);
    }
    let first = token.split('.').next().ok_or(Refused::Malformed)?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(default)]
        alg: Option<String>,
        #[serde(default)]
        kid: Option<String>,
    }
    let raw = URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|_| Refused::Malformed)?;
    let h: Header = serde_json::from_slice(&raw).map_err(|_| Refused::Malformed)?;
    let alg = h.alg.ok_or(Refused::Algorithm)?;
    let alg = ACCEPTED_ALGORITHMS
        .iter()
        .copied()
        .find(|a| format!("{a:?}") == alg)
        .ok_or(Refused::Algorithm)?;
    Ok((alg, h.kid))
}

/// Verify `token` against `keys` and `policy` at `now` (seconds).
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &ClaimPolicy<'_>,
    now: i64,
) -> Result<Verified, Refused> {
    let (alg, kid) = header(token)?;
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let wanted = kid.clone();
    let mut candidates = keys.candidates(wanted.as_deref(), alg).take(MAX_CANDIDATES);
    let mut tried = false;
    let payload = loop {
        let Some(key) = candidates.next() else {
            return Err(if tried {
                Refused::Signature
            } else {
                Refused::UnknownKey
            });
        };
        tried = true;
        match jsonwebtoken::decode::<serde_json::Value>(token, key.decoding_key(), &validation) {
            Ok(data) => break data.claims,
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
                | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_) => continue,
                _ => return Err(Refused::Malformed),
            },
        }
    };
    check_claims(payload, policy, now, kid)
}

/// The claim checks after a good signature.
fn check_claims(
    payload: serde_json::Value,
    policy: &ClaimPolicy<'_>,
    now: i64,
    kid: Option<String>,
) -> Result<Verified, Refused> {
    let get = |name: &str| payload.get(name);
    let number = |name: &str| {
        get(name)
            .and_then(serde_json::Value::as_f64)
            .map(|f| f as i64)
    };
    if get("iss").and_then(|v| v.as_str()) != Some(policy.issuer) {
        return Err(Refused::Issuer);
    }
    let audience_ok = match get("aud") {
        Some(serde_json::Value::String(a)) => policy.audiences.iter().any(|p| p == a),
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .filter_map(|a| a.as_str())
            .any(|a| policy.audiences.iter().any(|p| p == a)),
        _ => false,
    };
    if !audience_ok {
        return Err(Refused::Audience);
    }
    let exp = number("exp").ok_or(Refused::Expired)?;
    if exp <= now {
        return Err(Refused::Expired);
    }
    if number("nbf").is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS) {
        return Err(Refused::NotYetValid);
    }
    let iat = number("iat").ok_or(Refused::Lifetime)?;
    if iat > now + CLOCK_SKEW_SECS {
        return Err(Refused::NotYetValid);
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime <= 0 || lifetime > policy.max_lifetime_secs {
        return Err(Refused::Lifetime);
    }
    let subject = get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .ok_or(Refused::Subject)?
        .to_owned();
    let jti = get("jti").and_then(|j| j.as_str()).map(str::to_owned);
    let claims = Claims::from_json(&payload).ok_or(Refused::Malformed)?;
    Ok(Verified {
        subject,
        exp,
        jti,
        kid,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::federation::keys::parse_jwks;

    /// An ES256 key pair from the crypto backend, its JWK Set and a signer.
    fn issuer() -> (KeySet, jsonwebtoken::EncodingKey) {
        use crate::signing::SigningAlg;
        use crate::signing::crypto::{generate_pkcs8, parse_private, public_jwk};
        let pkcs8 = generate_pkcs8(SigningAlg::Es256).unwrap();
        let key = parse_private(SigningAlg::Es256, "k1", &pkcs8).unwrap();
        let jwk = public_jwk(SigningAlg::Es256, &key, Some("k1".into())).unwrap();
        let jwks = serde_json::json!({ "keys": [jwk] });
        let signer = jsonwebtoken::EncodingKey::from_ec_der(&pkcs8);
        (parse_jwks(jwks.to_string().as_bytes()).unwrap(), signer)
    }

    fn sign(key: &jsonwebtoken::EncodingKey, kid: &str, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "iss": "https://ci.example", "sub": "repo:acme/app:ref:refs/heads/main",
            "aud": ["https://m2m.example", "other"], "iat": NOW - 10, "exp": NOW + 290,
        })
    }

    #[test]
    fn a_good_token_verifies_and_every_deviation_is_refused() {
        let (keys, signer) = issuer();
        let aud = vec!["https://m2m.example".to_owned()];
        let policy = ClaimPolicy {
            issuer: "https://ci.example",
            audiences: &aud,
            max_lifetime_secs: 3600,
        };
        let ok = verify(&sign(&signer, "k1", claims()), &keys, &policy, NOW).unwrap();
        assert_eq!(ok.subject, "repo:acme/app:ref:refs/heads/main");
        assert_eq!(ok.exp, NOW + 290);
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims();
            f(&mut c);
            verify(&sign(&signer, "k1", c), &keys, &policy, NOW).map(|_| ())
        };
        assert_eq!(
            with(&|c| c["iss"] = "https://ci.example/".into()),
            Err(Refused::Issuer)
        );
        assert_eq!(with(&|c| c["aud"] = "other".into()), Err(Refused::Audience));
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            Err(Refused::Audience)
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Err(Refused::Expired)
        );
        assert_eq!(with(&|c| c["exp"] = NOW.into()), Err(Refused::Expired));
        assert_eq!(
            with(&|c| c["nbf"] = (NOW + 120).into()),
            Err(Refused::NotYetValid)
        );
        assert_eq!(
            with(&|c| c["iat"] = (NOW + 120).into()),
            Err(Refused::NotYetValid)
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            Err(Refused::Lifetime)
        );
        assert_eq!(
            with(&|c| c["exp"] = (NOW + 7200).into()),
            Err(Refused::Lifetime)
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            Err(Refused::Subject)
        );
        // Within the skew: accepted.
        assert_eq!(with(&|c| c["iat"] = (NOW + 30).into()), Ok(()));
        // Unknown kid, and another key's signature under a known kid.
        let token = sign(&signer, "k2", claims());
        assert_eq!(
            verify(&token, &keys, &policy, NOW).unwrap_err(),
            Refused::UnknownKey
        );
        let (_, other_signer) = issuer();
        let forged = sign(&other_signer, "k1", claims());
        assert_eq!(
            verify(&forged, &keys, &policy, NOW).unwrap_err(),
            Refused::Signature
        );
    }

    #[test]
    fn none_and_hmac_are_refused_even_with_the_jwks_as_secret() {
        let (keys, _) = issuer();
        let aud = vec!["https://m2m.example".to_owned()];
        let policy = ClaimPolicy {
            issuer: "https://ci.example",
            audiences: &aud,
            max_lifetime_secs: 3600,
        };
        let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
        );
        assert_eq!(
            verify(&none, &keys, &policy, NOW).unwrap_err(),
            Refused::Algorithm
        );
        // HS256 keyed with the public JWK Set text (the classic confusion).
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let secret = jsonwebtoken::EncodingKey::from_secret(b"{\"keys\":[]}");
        let hs = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
        assert_eq!(
            verify(&hs, &keys, &policy, NOW).unwrap_err(),
            Refused::Algorithm
        );
        assert_eq!(
            verify("a.b", &keys, &policy, NOW).unwrap_err(),
            Refused::Malformed
        );
    }

    #[test]
    fn peek_reads_only_what_routing_needs() {
        let (_, signer) = issuer();
        let p = peek(&sign(&signer, "k1", claims())).unwrap();
        assert_eq!(p.issuer, "https://ci.example");
        assert_eq!(
            p.subject.as_deref(),
            Some("repo:acme/app:ref:refs/heads/main")
        );
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(peek("x.y.z"), None);
    }
}
