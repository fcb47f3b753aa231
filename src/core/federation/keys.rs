//! An external issuer's verification keys: a JWK Set parsed into the keys
//! that may verify a token, and which JWS algorithm each accepts.
//!
//! Only asymmetric keys are kept (RSA, EC P-256/P-384, Ed25519): a
//! symmetric (`oct`) key in a published JWK Set would let anyone who read
//! the set sign tokens, and `none` never verifies. A key with `use` other
//! than `sig`, an unknown `kty` or curve, or an `alg` we do not accept is
//! skipped (and counted), not an error for the whole set — issuers publish
//! encryption keys beside signing keys.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// The JWS algorithms a federated token may use (SPEC §9).
pub const ACCEPTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Most keys kept from one JWK Set (a set with more is truncated).
pub const MAX_KEYS: usize = 64;

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    /// `kid`, if the issuer gave one.
    pub kid: Option<String>,
    /// The algorithms it verifies: the JWK's `alg`, else every accepted
    /// algorithm of its type (and curve).
    pub algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// The key for `jsonwebtoken`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// The algorithms as shown in status (`RS256`, or `ES256` …; a key
    /// without `alg` lists every one it accepts, comma-separated).
    pub fn algorithms_label(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The usable keys of one JWK Set.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    /// The keys, in the order published.
    pub keys: Vec<VerificationKey>,
    /// How many published keys were skipped (encryption keys, symmetric
    /// keys, unsupported types).
    pub skipped: usize,
}

impl KeySet {
    /// The keys that may verify a token with header `kid` and `alg`: with
    /// a `kid`, the keys of that id; without, every key accepting `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    /// Whether a key with this id is known.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key ids (sorted, deduplicated) and their algorithms, for status.
    pub fn summary(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .keys
            .iter()
            .map(|k| (k.kid.clone().unwrap_or_default(), k.algorithms_label()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Why a JWK Set is unusable as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    #[error("not a JWK Set (a JSON object with a \"keys\" array): {0}")]
    Malformed(String),
    /// Valid, but not one usable signing key.
    #[error(
        "the JWK Set has no usable signing key ({skipped} skipped: only RSA, EC P-256/P-384 and Ed25519 signature keys are accepted)"
    )]
    NoUsableKeys {
        /// Keys present but skipped.
        skipped: usize,
    },
}

/// Parse a JWK Set, keeping its usable asymmetric signing keys.
pub fn parse_jwks(json: &[u8]) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(json).map_err(|e| JwksError::Malformed(e.to_string()))?;
    let mut out = KeySet::default();
    for value in set.keys {
        match usable(value) {
            Some(key) if out.keys.len() < MAX_KEYS => out.keys.push(key),
            _ => out.skipped += 1,
        }
    }
    if out.keys.is_empty() {
        return Err(JwksError::NoUsableKeys {
            skipped: out.skipped,
        });
    }
    Ok(out)
}

/// One JWK as a verification key, if it is a usable signing key.
fn usable(mut value: serde_json::Value) -> Option<VerificationKey> {
    // `use`: absent, `sig`, or SPIFFE's `jwt-svid` (the JWT-SVID keys of a
    // SPIRE trust bundle); `enc`, `x509-svid` and anything else are skipped.
    match value.get("use").map(|u| u.as_str()) {
        None | Some(Some("sig" | "jwt-svid")) => {}
        _ => return None,
    }
    value.as_object_mut()?.remove("use");
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric keys never verify a federated token.
        _ => return None,
    };
    let algorithms = match &jwk.common.key_algorithm {
        None => family,
        Some(declared) => {
            let name = format!("{declared:?}");
            let alg = family.into_iter().find(|a| format!("{a:?}") == name)?;
            vec![alg]
        }
    };
    let algorithms: Vec<Algorithm> = algorithms
        .into_iter()
        .filter(|a| ACCEPTED_ALGORITHMS.contains(a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn only_asymmetric_signing_keys_are_kept() {
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r2", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "x509", "use": "x509-svid", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "svid", "use": "jwt-svid", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "wrong-alg", "alg": "ES256", "n": RSA_N, "e": "AQAB"},
            {"kty": "weird"}
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r1", "r2", "svid"]);
        assert_eq!(keys.skipped, 5);
        assert_eq!(keys.keys[0].algorithms, [Algorithm::RS256]);
        assert_eq!(keys.keys[1].algorithms.len(), 6);
        assert!(!keys.keys[1].algorithms.contains(&Algorithm::HS256));
        assert_eq!(keys.candidates(Some("r1"), Algorithm::RS256).count(), 1);
        assert_eq!(keys.candidates(Some("r1"), Algorithm::PS256).count(), 0);
        assert_eq!(keys.candidates(None, Algorithm::PS256).count(), 2);
    }

    #[test]
    fn a_set_without_usable_keys_is_refused() {
        let only_hmac = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#;
        assert_eq!(
            parse_jwks(only_hmac.as_bytes()).unwrap_err(),
            JwksError::NoUsableKeys { skipped: 1 }
        );
        assert!(matches!(
            parse_jwks(b"<html>"),
            Err(JwksError::Malformed(_))
        ));
    }
}
