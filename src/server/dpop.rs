//! DPoP at the token endpoint (RFC 9449): the `DPoP` proof a token request
//! may carry, checked exactly as §4.3 lists, for every grant and every
//! client authentication method. A valid proof binds the token to the
//! proof's key: `cnf.jkt` (its RFC 7638 SHA-256 thumbprint) and
//! `token_type: DPoP`.
//!
//! | §4.3 check | here |
//! |---|---|
//! | 1. exactly one `DPoP` header | a second one is refused |
//! | 2. a well-formed JWT | three base64url parts, JSON header and claims, at most [`MAX_PROOF_BYTES`] |
//! | 3. every required claim | `typ`, `alg`, `jwk`; `jti`, `htm`, `htu`, `iat` |
//! | 4. `typ` is `dpop+jwt` | |
//! | 5. asymmetric `alg` we support | [`SIGNING_ALGS`]; `none` and `HS*` are refused; `alg` must fit the key (`ES256` ↔ P-256, …) |
//! | 6. the signature verifies with `jwk` | `jsonwebtoken` (aws-lc) |
//! | 7. `jwk` holds no private key | members `d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k` are refused |
//! | 8. `htm` is the request method | `POST` |
//! | 9. `htu` is the request URI without query and fragment | both sides normalised (RFC 3986 §6.2.2–6.2.3, by the WHATWG parser of the `url` crate); the token endpoint URL of `--issuer`, or one of `--dpop-htu` |
//! | 10. the server's nonce, when it asks for one | `--dpop-nonce` (off by default) |
//! | 11. `iat` within the window | at most `--dpop-proof-max-age` (default 60 s) old, at most [`MAX_CLOCK_SKEW`] ahead |
//! | 12. `ath` | for resource servers only: there is no access token at the token endpoint |
//! | §11.1 replay | `jti` not seen before within the window ([`ReplayCache`]) |
//!
//! Errors are `invalid_dpop_proof` (400) with a description of the first
//! check that failed, and `use_dpop_nonce` (400, with a `DPoP-Nonce`
//! header) when a nonce is required and missing or stale.
//!
//! Replay cache: in memory, per replica, bounded (`--dpop-replay-cache-entries`,
//! default [`DEFAULT_REPLAY_ENTRIES`]). A proof is recorded only once its
//! request has authenticated, so unauthenticated callers cannot fill it;
//! when it is full of proofs still inside the window, further DPoP
//! requests are answered `503` with `Retry-After` rather than accepted
//! unchecked. Replicas do not share it: the same proof could be used once
//! per replica within its window (at most `--dpop-proof-max-age`). The
//! nonce, when on, closes that gap for pre-generated proofs; see
//! docs/sender-constrained.md.
//!
//! Why some of this is written here rather than taken from a crate:
//! `jsonwebtoken` verifies the signature and computes the thumbprint, but
//! its `Jwk` ignores unknown members — so the private-key check (7) reads
//! the raw header — and it has no notion of `typ`, `htm`, `htu`, `iat`
//! windows, nonces or replay; no maintained Rust crate implements the
//! server side of RFC 9449.

use super::error::OAuthError;
use axum::http::{HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

/// The request header carrying the proof.
pub const DPOP_HEADER: HeaderName = HeaderName::from_static("dpop");
/// The response header carrying a server nonce (RFC 9449 §8).
pub const DPOP_NONCE_HEADER: HeaderName = HeaderName::from_static("dpop-nonce");
/// Proof signing algorithms accepted, as metadata lists them
/// (`dpop_signing_alg_values_supported`).
/// `Ed25519` is RFC 9864's fully-specified name for `EdDSA` with Ed25519,
/// which current clients (oauth4webapi 3) send.
pub const SIGNING_ALGS: [&str; 6] = ["ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"];
/// Longest accepted proof (an RSA-4096 proof is about 2 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// How far ahead of this server's clock a proof's `iat` may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Default oldest accepted `iat`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Default bound of the replay cache (about 16 MiB at most; 1 M proofs in
/// a 65 s window is over 15,000 DPoP token requests per second per replica).
pub const DEFAULT_REPLAY_ENTRIES: usize = 1_000_000;
/// A server nonce is valid in the period it was issued in and the next one.
pub const NONCE_PERIOD: Duration = Duration::from_secs(60);
/// Longest `jti` accepted.
const MAX_JTI_BYTES: usize = 256;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;
/// JWK members that belong to a private or symmetric key (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// How the token endpoint checks proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopConfig {
    /// Oldest accepted `iat`, relative to now.
    pub max_age: Duration,
    /// Proofs remembered at most (replay cache bound).
    pub replay_entries: usize,
    /// Require a server nonce (RFC 9449 §8).
    pub nonce: bool,
    /// The URLs `htu` may name, besides `<issuer>/oauth/token`.
    pub extra_htu: Vec<String>,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_MAX_AGE,
            replay_entries: DEFAULT_REPLAY_ENTRIES,
            nonce: false,
            extra_htu: Vec::new(),
        }
    }
}

/// A proof that passed every stateless check: what it binds and what the
/// replay cache needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof key (`cnf.jkt`).
    pub jkt: String,
    jti: String,
    iat: i64,
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpopError {
    /// `invalid_dpop_proof`, with the reason.
    Invalid(String),
    /// `use_dpop_nonce`: send the proof again with this nonce.
    UseNonce(String),
    /// The replay cache is full of live proofs (`503`).
    Saturated,
}

impl DpopError {
    fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid(reason.into())
    }

    /// The RFC error response.
    pub fn into_oauth(self) -> OAuthError {
        match self {
            Self::Invalid(reason) => OAuthError::invalid_dpop_proof(reason),
            Self::UseNonce(nonce) => OAuthError::use_dpop_nonce(nonce),
            Self::Saturated => OAuthError::unavailable(
                "too many DPoP proofs in the replay window on this replica; retry shortly",
            ),
        }
    }
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<serde_json::Value>,
    htm: Option<serde_json::Value>,
    htu: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    #[serde(default)]
    nonce: Option<serde_json::Value>,
}

/// The DPoP checks of one token server: configuration, the accepted
/// `htu` values (normalised once) and the replay cache.
#[derive(Debug)]
pub struct DpopVerifier {
    config: DpopConfig,
    htu: Vec<String>,
    replay: ReplayCache,
}

/// `htu` without query and fragment, normalised (RFC 9449 §4.3 step 9).
pub fn normalise_htu(url: &str) -> Option<String> {
    let mut url = url::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

fn string_claim<'a>(
    value: &'a Option<serde_json::Value>,
    name: &str,
) -> Result<&'a str, DpopError> {
    match value {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(DpopError::invalid(format!(
            "the {name} claim is not a string"
        ))),
        None => Err(DpopError::invalid(format!("the {name} claim is missing"))),
    }
}

/// The algorithm a proof names, if it is one of [`SIGNING_ALGS`].
fn allowed_alg(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" | "Ed25519" => Algorithm::EdDSA,
        "RS256" => Algorithm::RS256,
        "PS256" => Algorithm::PS256,
        _ => return None,
    })
}

fn decoded_len(b64: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(b64).ok().map(|v| v.len())
}

/// The public key of a proof, checked against its `alg`: the curve the
/// algorithm names, coordinates of the curve's size, RSA of 2048 bits or more.
fn proof_key(jwk: &Jwk, alg: Algorithm) -> Result<DecodingKey, DpopError> {
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256 | Algorithm::ES384) => {
            let size = match (&ec.curve, alg) {
                (EllipticCurve::P256, Algorithm::ES256) => 32,
                (EllipticCurve::P384, Algorithm::ES384) => 48,
                _ => {
                    return Err(DpopError::invalid(format!(
                        "the jwk curve does not match alg {alg:?}"
                    )));
                }
            };
            decoded_len(&ec.x) == Some(size) && decoded_len(&ec.y) == Some(size)
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519 && decoded_len(&okp.x) == Some(32)
        }
        (AlgorithmParameters::RSA(rsa), Algorithm::RS256 | Algorithm::PS256) => {
            decoded_len(&rsa.n).is_some_and(|n| n >= MIN_RSA_BYTES)
                && decoded_len(&rsa.e).is_some_and(|e| (1..=8).contains(&e))
        }
        _ => {
            return Err(DpopError::invalid(format!(
                "the jwk key type does not match alg {alg:?}"
            )));
        }
    };
    if !fits {
        return Err(DpopError::invalid(
            "the jwk is not a valid public key for its alg (wrong coordinate size, or RSA under 2048 bits)",
        ));
    }
    DecodingKey::from_jwk(jwk).map_err(|_| DpopError::invalid("the jwk is not a usable public key"))
}

impl DpopVerifier {
    /// Checks for a server whose token endpoint is `<issuer>/oauth/token`.
    pub fn new(issuer: &str, config: DpopConfig) -> Self {
        let mut htu: Vec<String> =
            std::iter::once(format!("{}/oauth/token", issuer.trim_end_matches('/')))
                .chain(config.extra_htu.iter().cloned())
                .filter_map(|u| normalise_htu(&u))
                .collect();
        htu.sort();
        htu.dedup();
        let replay = ReplayCache::new(config.replay_entries);
        Self {
            config,
            htu,
            replay,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DpopConfig {
        &self.config
    }

    /// Every check of RFC 9449 §4.3 on one proof JWT but replay
    /// ([`DpopVerifier::record`] does that once the request has
    /// authenticated). `nonce_key` is set when a server nonce is required.
    pub fn check_proof(
        &self,
        proof: &str,
        method: &str,
        now: i64,
        nonce_key: Option<&[u8]>,
    ) -> Result<Proof, DpopError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(DpopError::invalid("the DPoP proof is larger than 8 KiB"));
        }
        let mut parts = proof.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DpopError::invalid(
                "the DPoP proof is not a JWS compact serialization",
            ));
        };
        let decode = |part: &str, what: &str| -> Result<serde_json::Value, DpopError> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
                DpopError::invalid(format!("the DPoP proof {what} is not base64url"))
            })?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| DpopError::invalid(format!("the DPoP proof {what} is not JSON")))?;
            if !value.is_object() {
                return Err(DpopError::invalid(format!(
                    "the DPoP proof {what} is not a JSON object"
                )));
            }
            Ok(value)
        };
        let header = decode(header_b64, "header")?;
        // 4. typ (media types compare case-insensitively, RFC 7515 §4.1.9).
        match header.get("typ").and_then(|t| t.as_str()) {
            Some(t) if t.eq_ignore_ascii_case("dpop+jwt") => {}
            Some(_) => return Err(DpopError::invalid("the DPoP proof typ is not dpop+jwt")),
            None => return Err(DpopError::invalid("the DPoP proof has no typ header")),
        }
        // 5. alg: asymmetric and supported.
        let alg_name = header
            .get("alg")
            .and_then(|a| a.as_str())
            .ok_or_else(|| DpopError::invalid("the DPoP proof has no alg header"))?;
        let alg = allowed_alg(alg_name).ok_or_else(|| {
            let alg: String = alg_name.chars().take(16).collect();
            DpopError::invalid(format!(
                "the DPoP proof alg {alg:?} is not accepted: use an asymmetric one of {}",
                SIGNING_ALGS.join(", ")
            ))
        })?;
        if header.get("crit").is_some() {
            return Err(DpopError::invalid(
                "the DPoP proof has a crit header this server does not understand",
            ));
        }
        // 7. a public key only.
        let raw_jwk = header
            .get("jwk")
            .ok_or_else(|| DpopError::invalid("the DPoP proof has no jwk header"))?;
        let members = raw_jwk
            .as_object()
            .ok_or_else(|| DpopError::invalid("the DPoP proof jwk is not a JSON object"))?;
        if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| members.contains_key(**m)) {
            return Err(DpopError::invalid(format!(
                "the DPoP proof jwk contains the private key member {private:?}: send the public key only"
            )));
        }
        let jwk: Jwk = serde_json::from_value(raw_jwk.clone())
            .map_err(|_| DpopError::invalid("the DPoP proof jwk is not a supported public JWK"))?;
        let key = proof_key(&jwk, alg)?;
        // 6. the signature.
        let signed_len = header_b64.len() + 1 + claims_b64.len();
        let valid =
            jsonwebtoken::crypto::verify(signature, &proof.as_bytes()[..signed_len], &key, alg)
                .unwrap_or(false);
        if !valid {
            return Err(DpopError::invalid(
                "the DPoP proof signature does not verify with its jwk",
            ));
        }
        let jkt = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| DpopError::invalid("the DPoP proof jwk has no thumbprint"))?;
        // 3. required claims.
        let claims: ProofClaims = serde_json::from_value(decode(claims_b64, "claims")?)
            .map_err(|_| DpopError::invalid("the DPoP proof claims are malformed"))?;
        let jti = string_claim(&claims.jti, "jti")?;
        if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
            return Err(DpopError::invalid(
                "the DPoP proof jti must be 1 to 256 bytes",
            ));
        }
        // 8. htm.
        if string_claim(&claims.htm, "htm")? != method {
            return Err(DpopError::invalid(format!(
                "the DPoP proof htm does not match the request method {method}"
            )));
        }
        // 9. htu.
        let htu = string_claim(&claims.htu, "htu")?;
        match normalise_htu(htu) {
            Some(h) if self.htu.contains(&h) => {}
            _ => {
                return Err(DpopError::invalid(format!(
                    "the DPoP proof htu does not name this token endpoint ({})",
                    self.htu.first().map_or("", String::as_str)
                )));
            }
        }
        // 11. iat (NumericDate: an integer or not).
        let iat = match &claims.iat {
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.floor() as i64)
                })
                .ok_or_else(|| DpopError::invalid("the DPoP proof iat is not a NumericDate"))?,
            Some(_) => return Err(DpopError::invalid("the DPoP proof iat is not a number")),
            None => return Err(DpopError::invalid("the iat claim is missing")),
        };
        let max_age = i64::try_from(self.config.max_age.as_secs()).unwrap_or(i64::MAX);
        if iat < now.saturating_sub(max_age) {
            return Err(DpopError::invalid(format!(
                "the DPoP proof is too old (iat {}s ago; at most {max_age}s): make a fresh proof per request",
                now - iat
            )));
        }
        if iat > now + MAX_CLOCK_SKEW.as_secs() as i64 {
            return Err(DpopError::invalid(
                "the DPoP proof iat is in the future: check the client's clock",
            ));
        }
        // 10. nonce.
        if let Some(key) = nonce_key {
            let fresh = match &claims.nonce {
                Some(serde_json::Value::String(n)) => nonce_is_valid(key, n, now),
                _ => false,
            };
            if !fresh {
                return Err(DpopError::UseNonce(nonce(key, now)));
            }
        }
        Ok(Proof {
            jkt,
            jti: jti.to_owned(),
            iat,
        })
    }

    /// Remember an accepted proof: refused if it was seen before in its
    /// window (§11.1), or if the cache is full of live proofs.
    pub fn record(&self, proof: &Proof, now: i64) -> Result<(), DpopError> {
        let max_age = i64::try_from(self.config.max_age.as_secs()).unwrap_or(i64::MAX);
        self.replay.insert(proof, now.saturating_sub(max_age))
    }

    /// Proofs remembered now.
    pub fn remembered(&self) -> usize {
        self.replay.len()
    }
}

/// The `jti`s of accepted proofs, bucketed by their `iat` second: a replay
/// carries the same `iat` (it is the same signed proof), so one bucket is
/// looked up, and whole buckets are dropped once their `iat` is older than
/// the window. Entries are keyed SipHash values of (`jkt`, `jti`) under a
/// per-process random key: 8 bytes each, and a collision (which would only
/// refuse a fresh proof, never accept a replay) cannot be aimed at.
#[derive(Debug)]
pub struct ReplayCache {
    hasher: std::collections::hash_map::RandomState,
    max_entries: usize,
    inner: Mutex<ReplayBuckets>,
}

#[derive(Debug, Default)]
struct ReplayBuckets {
    by_iat: BTreeMap<i64, HashSet<u64>>,
    len: usize,
}

impl ReplayCache {
    /// A cache holding at most `max_entries` proofs.
    pub fn new(max_entries: usize) -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            max_entries: max_entries.max(1),
            inner: Mutex::new(ReplayBuckets::default()),
        }
    }

    fn insert(&self, proof: &Proof, oldest_iat: i64) -> Result<(), DpopError> {
        let key = self.hasher.hash_one((&proof.jkt, &proof.jti));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what has left the window.
        while let Some(entry) = inner.by_iat.first_entry() {
            if *entry.key() >= oldest_iat {
                break;
            }
            let dropped = entry.remove().len();
            inner.len -= dropped;
        }
        if inner
            .by_iat
            .get(&proof.iat)
            .is_some_and(|bucket| bucket.contains(&key))
        {
            return Err(DpopError::invalid(
                "the DPoP proof was used before (jti replayed): make a fresh proof per request",
            ));
        }
        if inner.len >= self.max_entries {
            return Err(DpopError::Saturated);
        }
        inner.by_iat.entry(proof.iat).or_default().insert(key);
        inner.len += 1;
        Ok(())
    }

    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.len).unwrap_or(0)
    }
}

/// The nonce key of a server: derived from the verifier key every replica
/// shares, so a nonce one replica issued is accepted by all of them.
pub fn nonce_key(verifier_key: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(verifier_key)
        .expect("HMAC accepts any key length");
    mac.update(b"m2m.dev/dpop-nonce/v1");
    mac.finalize().into_bytes().into()
}

fn nonce_mac(key: &[u8], period: u64) -> [u8; 16] {
    use hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&period.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The current server nonce: the period number and a MAC over it, so any
/// replica can check it without shared state.
pub fn nonce(key: &[u8], now: i64) -> String {
    let period = u64::try_from(now).unwrap_or(0) / NONCE_PERIOD.as_secs();
    let mut raw = Vec::with_capacity(24);
    raw.extend_from_slice(&period.to_be_bytes());
    raw.extend_from_slice(&nonce_mac(key, period));
    URL_SAFE_NO_PAD.encode(raw)
}

/// Whether `nonce` was issued in this period or the previous one.
fn nonce_is_valid(key: &[u8], nonce: &str, now: i64) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
        return false;
    };
    if raw.len() != 24 {
        return false;
    }
    let period = u64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
    let current = u64::try_from(now).unwrap_or(0) / NONCE_PERIOD.as_secs();
    if period != current && period + 1 != current {
        return false;
    }
    use subtle::ConstantTimeEq;
    nonce_mac(key, period).ct_eq(&raw[8..]).into()
}

/// The `DPoP-Nonce` response header value.
pub fn nonce_header(nonce: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(nonce).ok()
}

/// The client side: a DPoP key and the proofs it signs, for
/// `kubectl m2m token --dpop`, the benchmark and the tests.
pub mod client {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    use jsonwebtoken::{EncodingKey, Header};

    /// A DPoP key pair.
    pub struct ProofKey {
        key: EncodingKey,
        alg: Algorithm,
        jwk: Jwk,
        pkcs8: Vec<u8>,
    }

    impl std::fmt::Debug for ProofKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ProofKey")
                .field("alg", &self.alg)
                .field("jkt", &self.thumbprint())
                .finish_non_exhaustive()
        }
    }

    impl ProofKey {
        /// A fresh key for `alg` (`ES256` or `EdDSA`), from the OS CSPRNG.
        pub fn generate(alg: Algorithm) -> anyhow::Result<Self> {
            let rng = SystemRandom::new();
            let pkcs8 = match alg {
                Algorithm::ES256 => {
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| anyhow::anyhow!("key generation failed"))?
                        .as_ref()
                        .to_vec()
                }
                Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| anyhow::anyhow!("key generation failed"))?
                    .as_ref()
                    .to_vec(),
                other => anyhow::bail!("no proof keys for {other:?}"),
            };
            Self::from_pkcs8(&pkcs8)
        }

        /// A P-256 or Ed25519 private key in PKCS#8 DER.
        pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
            let (key, alg) =
                if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).is_ok() {
                    (EncodingKey::from_ec_der(der), Algorithm::ES256)
                } else if Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).is_ok() {
                    (EncodingKey::from_ed_der(der), Algorithm::EdDSA)
                } else {
                    anyhow::bail!("not a PKCS#8 P-256 or Ed25519 private key");
                };
            let mut jwk = match alg {
                // jsonwebtoken reads only PKCS#8 v1 Ed25519 keys; aws-lc
                // writes v2 (with the public key): build the JWK from it.
                Algorithm::EdDSA => {
                    use aws_lc_rs::signature::KeyPair;
                    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .map_err(|_| anyhow::anyhow!("not an Ed25519 key"))?;
                    serde_json::from_value(serde_json::json!({
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                    }))?
                }
                _ => Jwk::from_encoding_key(&key, alg)?,
            };
            jwk.common = Default::default();
            Ok(Self {
                key,
                alg,
                jwk,
                pkcs8: der.to_vec(),
            })
        }

        /// A private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
        pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
            use tokio_rustls::rustls::pki_types::PrivateKeyDer;
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            match PrivateKeyDer::from_pem_slice(pem) {
                Ok(PrivateKeyDer::Pkcs8(der)) => Self::from_pkcs8(der.secret_pkcs8_der()),
                Ok(_) => anyhow::bail!("the key is not in PKCS#8 form (BEGIN PRIVATE KEY)"),
                Err(e) => anyhow::bail!("not a PEM private key: {e}"),
            }
        }

        /// The key as PKCS#8 PEM. (Written here: the PEM crates in the
        /// tree only decode; encoding is base64 in 64-column lines.)
        pub fn to_pem(&self) -> String {
            use base64::engine::general_purpose::STANDARD;
            let b64 = STANDARD.encode(&self.pkcs8);
            let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END PRIVATE KEY-----\n");
            out
        }

        /// The JWS algorithm of the key.
        pub fn alg(&self) -> Algorithm {
            self.alg
        }

        /// The key's RFC 7638 thumbprint (`cnf.jkt` of tokens it binds).
        pub fn thumbprint(&self) -> String {
            self.jwk
                .thumbprint(ThumbprintHash::SHA256)
                .unwrap_or_default()
        }

        /// A proof for `POST htu` at `iat` with a fresh random `jti` and,
        /// if given, the server's nonce.
        pub fn proof(&self, htu: &str, iat: i64, nonce: Option<&str>) -> anyhow::Result<String> {
            let mut header = Header::new(self.alg);
            header.typ = Some("dpop+jwt".into());
            header.jwk = Some(self.jwk.clone());
            let mut claims = serde_json::json!({
                "jti": uuid::Uuid::new_v4().to_string(),
                "htm": "POST",
                "htu": htu,
                "iat": iat,
            });
            if let Some(nonce) = nonce {
                claims["nonce"] = serde_json::json!(nonce);
            }
            Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ProofKey;
    use super::*;

    const ISSUER: &str = "https://id.example/tenant";
    const HTU: &str = "https://id.example/tenant/oauth/token";

    fn verifier() -> DpopVerifier {
        DpopVerifier::new(ISSUER, DpopConfig::default())
    }

    /// A proof with a junk signature: the header checks come first.
    fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{h}.{c}.AAAA")
    }

    #[test]
    fn a_good_proof_binds_its_thumbprint_and_is_refused_when_replayed() {
        let v = verifier();
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let key = ProofKey::generate(alg).unwrap();
            let now = 1_800_000_000;
            let proof = key.proof(HTU, now, None).unwrap();
            let checked = v.check_proof(&proof, "POST", now, None).unwrap();
            assert_eq!(checked.jkt, key.thumbprint());
            v.record(&checked, now).unwrap();
            let again = v.check_proof(&proof, "POST", now + 1, None).unwrap();
            let Err(DpopError::Invalid(why)) = v.record(&again, now + 1) else {
                panic!("replay accepted")
            };
            assert!(why.contains("replayed"), "{why}");
        }
    }

    #[test]
    fn htu_is_compared_normalised_and_without_query() {
        let v = verifier();
        let key = ProofKey::generate(Algorithm::ES256).unwrap();
        let now = 1_800_000_000;
        for ok in [
            "https://ID.example:443/tenant/oauth/token",
            "https://id.example/tenant/x/../oauth/token?a=b#f",
        ] {
            let proof = key.proof(ok, now, None).unwrap();
            assert!(v.check_proof(&proof, "POST", now, None).is_ok(), "{ok}");
        }
        for bad in [
            "http://id.example/tenant/oauth/token",
            "https://id.example/oauth/token",
            "https://id.example:8443/tenant/oauth/token",
            "/tenant/oauth/token",
        ] {
            let proof = key.proof(bad, now, None).unwrap();
            assert!(
                matches!(v.check_proof(&proof, "POST", now, None), Err(DpopError::Invalid(w)) if w.contains("htu")),
                "{bad}"
            );
        }
        let proof = key.proof(HTU, now, None).unwrap();
        assert!(
            matches!(v.check_proof(&proof, "GET", now, None), Err(DpopError::Invalid(w)) if w.contains("htm"))
        );
    }

    #[test]
    fn the_iat_window_is_enforced() {
        let v = verifier();
        let key = ProofKey::generate(Algorithm::EdDSA).unwrap();
        let now = 1_800_000_000;
        assert!(
            v.check_proof(&key.proof(HTU, now - 60, None).unwrap(), "POST", now, None)
                .is_ok()
        );
        assert!(
            v.check_proof(&key.proof(HTU, now + 5, None).unwrap(), "POST", now, None)
                .is_ok()
        );
        assert!(matches!(
            v.check_proof(&key.proof(HTU, now - 61, None).unwrap(), "POST", now, None),
            Err(DpopError::Invalid(w)) if w.contains("too old")
        ));
        assert!(matches!(
            v.check_proof(&key.proof(HTU, now + 6, None).unwrap(), "POST", now, None),
            Err(DpopError::Invalid(w)) if w.contains("future")
        ));
    }

    #[test]
    fn malformed_headers_are_refused_before_any_signature_check() {
        let v = verifier();
        let jwk = serde_json::to_value({
            let mut j = Jwk::from_encoding_key(&key_encoding(), Algorithm::ES256).unwrap();
            j.common = Default::default();
            j
        })
        .unwrap();
        let claims = serde_json::json!({"jti": "a", "htm": "POST", "htu": HTU, "iat": 1});
        let cases = [
            (
                serde_json::json!({"typ": "JWT", "alg": "ES256", "jwk": jwk}),
                "typ",
            ),
            (serde_json::json!({"alg": "ES256", "jwk": jwk}), "typ"),
            (
                serde_json::json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}),
                "alg",
            ),
            (
                serde_json::json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}),
                "alg",
            ),
            (
                serde_json::json!({"typ": "dpop+jwt", "alg": "ES256"}),
                "jwk",
            ),
            (
                serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}),
                "does not match",
            ),
            (
                serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "crit": ["x"]}),
                "crit",
            ),
        ];
        for (header, why) in cases {
            let proof = unsigned(header.clone(), claims.clone());
            match v.check_proof(&proof, "POST", 1, None) {
                Err(DpopError::Invalid(w)) => assert!(w.contains(why), "{header}: {w}"),
                other => panic!("{header}: {other:?}"),
            }
        }
        let mut private = jwk.clone();
        private["d"] = serde_json::json!("AAAA");
        let proof = unsigned(
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
            claims,
        );
        assert!(
            matches!(v.check_proof(&proof, "POST", 1, None), Err(DpopError::Invalid(w)) if w.contains("private"))
        );
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(
                matches!(
                    v.check_proof(junk, "POST", 1, None),
                    Err(DpopError::Invalid(_))
                ),
                "{junk}"
            );
        }
    }

    fn key_encoding() -> jsonwebtoken::EncodingKey {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref())
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let v = verifier();
        let a = ProofKey::generate(Algorithm::ES256).unwrap();
        let b = ProofKey::generate(Algorithm::ES256).unwrap();
        let pa = a.proof(HTU, 1, None).unwrap();
        let pb = b.proof(HTU, 1, None).unwrap();
        let (head_a, _) = pa.rsplit_once('.').unwrap();
        let (_, sig_b) = pb.rsplit_once('.').unwrap();
        let forged = format!("{head_a}.{sig_b}");
        assert!(
            matches!(v.check_proof(&forged, "POST", 1, None), Err(DpopError::Invalid(w)) if w.contains("signature"))
        );
    }

    #[test]
    fn nonces_are_required_when_on_and_accepted_across_one_period() {
        let v = verifier();
        let key = ProofKey::generate(Algorithm::ES256).unwrap();
        let nk = nonce_key(b"0123456789abcdef0123456789abcdef");
        let now = 1_800_000_000;
        let proof = key.proof(HTU, now, None).unwrap();
        let Err(DpopError::UseNonce(n)) = v.check_proof(&proof, "POST", now, Some(&nk)) else {
            panic!("nonce not asked for")
        };
        assert!(nonce_is_valid(&nk, &n, now));
        let with = key.proof(HTU, now, Some(&n)).unwrap();
        assert!(v.check_proof(&with, "POST", now + 30, Some(&nk)).is_ok());
        assert!(matches!(
            v.check_proof(
                &key.proof(HTU, now + 130, Some(&n)).unwrap(),
                "POST",
                now + 130,
                Some(&nk)
            ),
            Err(DpopError::UseNonce(_))
        ));
        assert!(nonce_is_valid(&nk, &n, now + 60));
        assert!(!nonce_is_valid(&nk, &n, now + 121));
        assert!(!nonce_is_valid(&nonce_key(b"another key"), &n, now));
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_what_left_the_window() {
        let cache = ReplayCache::new(3);
        let p = |jti: &str, iat: i64| Proof {
            jkt: "k".into(),
            jti: jti.into(),
            iat,
        };
        cache.insert(&p("a", 10), 0).unwrap();
        cache.insert(&p("b", 11), 0).unwrap();
        cache.insert(&p("c", 12), 0).unwrap();
        assert_eq!(cache.insert(&p("d", 12), 0), Err(DpopError::Saturated));
        // iat 10 and 11 leave the window: room again.
        cache.insert(&p("d", 12), 12).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(matches!(
            cache.insert(&p("c", 12), 12),
            Err(DpopError::Invalid(_))
        ));
    }
}
