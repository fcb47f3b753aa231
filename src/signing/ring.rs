//! Parsed signing keys: a [`TokenSigner`] per key, built once when the key
//! Secret changes, and the [`KeyRing`] the token server holds (the active
//! signer, the public keys of every published key, and the JWKS document,
//! pre-rendered).
//!
//! Tokens use the compact JWS format `jsonwebtoken` produces and verifies
//! (`b64url(header).b64url(claims).b64url(signature)`), signed with aws-lc
//! — the same backend `jsonwebtoken`'s `aws_lc_rs` feature uses — but with
//! the key pair parsed once instead of per token (`jsonwebtoken::encode`
//! re-parses the private key on every call: ~11 µs for ES256, ~470 µs for
//! RS256). The header is encoded once per key.

use super::algorithm::SigningAlg;
use super::crypto::{CryptoError, PrivateKey, PublicKey, parse_private, public_jwk, to_low_s};
use super::keyset::{KeySet, SigningKeyRecord};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature as sig;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::Arc;

/// The JWT `typ` of access tokens (RFC 9068 §2.1).
pub(crate) const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Why a key ring could not be built or a token signed.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// A stored key is unusable.
    #[error(transparent)]
    Key(#[from] CryptoError),
    /// The crypto library refused to sign.
    #[error("signing with key {0:?} failed")]
    Sign(String),
    /// Rendering the JWKS failed.
    #[error("rendering the JWKS failed")]
    Jwks(#[source] serde_json::Error),
}

/// A parsed private key that signs access tokens. Thread-safe; shared by
/// every request through an `Arc`.
pub struct TokenSigner {
    kid: String,
    alg: SigningAlg,
    /// `b64url({"alg":…,"typ":"at+jwt","kid":…})`, encoded once.
    header_b64: String,
    key: PrivateKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Parse a stored key.
    pub fn new(record: &SigningKeyRecord) -> Result<Self, CryptoError> {
        let key = parse_private(record.alg, &record.kid, &record.private_key_pkcs8)?;
        let header = serde_json::json!({
            "alg": record.alg.as_str(),
            "typ": ACCESS_TOKEN_TYP,
            "kid": record.kid,
        });
        Ok(Self {
            kid: record.kid.clone(),
            alg: record.alg,
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            key,
        })
    }

    /// The key id in every header this signer writes.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// Sign serialized claims into a compact JWS.
    pub fn sign(&self, claims_json: &[u8]) -> Result<String, KeyRingError> {
        let claims_len = base64::encoded_len(claims_json.len(), false).unwrap_or(0);
        let mut out = String::with_capacity(self.header_b64.len() + claims_len + 2 + 344);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut out);
        let failed = || KeyRingError::Sign(self.kid.clone());
        let message = out.as_bytes();
        match &self.key {
            PrivateKey::Es256(k) => {
                let s = k
                    .sign(&SystemRandom::new(), message)
                    .map_err(|_| failed())?;
                let mut fixed: [u8; 64] = s.as_ref().try_into().map_err(|_| failed())?;
                to_low_s(&mut fixed);
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(fixed, &mut out);
            }
            PrivateKey::EdDsa(k) => {
                let s = k.sign(message);
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(s.as_ref(), &mut out);
            }
            PrivateKey::Rs256(k) => {
                let mut s = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &sig::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut s,
                )
                .map_err(|_| failed())?;
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(&s, &mut out);
            }
        }
        Ok(out)
    }
}

/// A token whose signature checked out against a published key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The key that signed it.
    pub kid: String,
    /// The decoded claims JSON.
    pub claims_json: Vec<u8>,
}

/// Everything the token server needs from the key Secret's signing keys:
/// the signer of new tokens, the public keys of every published key, and
/// the JWKS document.
pub struct KeyRing {
    active: Option<Arc<TokenSigner>>,
    public: HashMap<String, PublicKey>,
    jwks_json: Arc<[u8]>,
    algs: Vec<&'static str>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("published", &self.public.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Parse the published keys of `set` at `now`. A key that fails to parse
    /// is an error: a half-loaded ring would sign with a key nobody can verify.
    pub fn new(set: &KeySet, now: DateTime<Utc>) -> Result<Self, KeyRingError> {
        let active_kid = set.active().map(|k| k.kid.clone());
        let mut active = None;
        let mut public = HashMap::new();
        let mut jwks = JwkSet::default();
        let mut algs = Vec::new();
        for record in set.published(now) {
            let signer = TokenSigner::new(record)?;
            jwks.keys.push(public_jwk(
                record.alg,
                &signer.key,
                Some(record.kid.clone()),
            )?);
            public.insert(
                record.kid.clone(),
                PublicKey {
                    alg: record.alg,
                    bytes: signer.key.public_bytes().to_vec(),
                },
            );
            if !algs.contains(&record.alg.as_str()) {
                algs.push(record.alg.as_str());
            }
            if active_kid.as_deref() == Some(record.kid.as_str()) {
                active = Some(Arc::new(signer));
            }
        }
        let jwks_json = serde_json::to_vec(&jwks).map_err(KeyRingError::Jwks)?;
        Ok(Self {
            active,
            public,
            jwks_json: jwks_json.into(),
            algs,
        })
    }

    /// The signer of new tokens, if there is an active key.
    pub fn active(&self) -> Option<&Arc<TokenSigner>> {
        self.active.as_ref()
    }

    /// The JWKS document (`{"keys":[…]}`), rendered once.
    pub(crate) fn jwks_json(&self) -> Arc<[u8]> {
        self.jwks_json.clone()
    }

    /// The JOSE algorithms of the published keys.
    pub(crate) fn algorithms(&self) -> &[&'static str] {
        &self.algs
    }

    /// Check a compact JWS against the published keys: the header must name
    /// a published `kid` with its algorithm and `typ: at+jwt`. Returns the
    /// claims; says nothing about expiry or revocation.
    pub fn verify(&self, token: &str) -> Option<VerifiedToken> {
        #[derive(serde::Deserialize)]
        struct Header {
            alg: String,
            kid: String,
            typ: Option<String>,
        }
        let mut parts = token.splitn(3, '.');
        let (header_b64, claims_b64, sig_b64) = (parts.next()?, parts.next()?, parts.next()?);
        if sig_b64.contains('.') {
            return None;
        }
        let header: Header =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
        let key = self.public.get(&header.kid)?;
        if header.alg != key.alg.as_str()
            || !header
                .typ
                .is_some_and(|t| t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP))
        {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(sig_b64).ok()?;
        let message_len = header_b64.len() + 1 + claims_b64.len();
        if !key.verify(&token.as_bytes()[..message_len], &signature) {
            return None;
        }
        Some(VerifiedToken {
            kid: header.kid,
            claims_json: URL_SAFE_NO_PAD.decode(claims_b64).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keyset::generate_key;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};

    const ALGS: [SigningAlg; 3] = [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256];

    fn ring(alg: SigningAlg) -> (KeySet, KeyRing) {
        let set = KeySet {
            format: 1,
            keys: vec![generate_key(alg, Utc::now()).unwrap()],
        };
        let ring = KeyRing::new(&set, Utc::now()).unwrap();
        (set, ring)
    }

    #[test]
    fn tokens_verify_with_jsonwebtoken_against_the_jwks() {
        for alg in ALGS {
            let (_, ring) = ring(alg);
            let signer = ring.active().unwrap();
            let exp = Utc::now().timestamp() + 60;
            let claims = serde_json::json!({"sub": "m2m:a:b", "exp": exp, "aud": "x"});
            let token = signer.sign(claims.to_string().as_bytes()).unwrap();

            let jwks: JwkSet = serde_json::from_slice(&ring.jwks_json()).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.to_jsonwebtoken());
            validation.set_audience(&["x"]);
            let data =
                jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
            assert_eq!(data.claims["sub"], "m2m:a:b");

            let verified = ring.verify(&token).unwrap();
            assert_eq!(verified.kid, signer.kid());
            let mut tampered = token.clone();
            tampered.insert(token.find('.').unwrap() + 2, 'A');
            assert!(ring.verify(&tampered).is_none(), "{alg:?}");
            assert!(ring.verify("a.b.c").is_none());
            assert!(ring.verify("").is_none());
        }
    }

    /// (r, n − s) verifies as ECDSA too; only the low-S form is accepted,
    /// and every token we sign is in that form.
    #[test]
    fn high_s_ecdsa_signatures_are_refused() {
        use crate::signing::crypto::{P256_N, is_low_s};
        let (_, ring) = ring(SigningAlg::Es256);
        let signer = ring.active().unwrap();
        for i in 0..32 {
            let token = signer.sign(format!(r#"{{"n":{i}}}"#).as_bytes()).unwrap();
            let (message, sig_b64) = token.rsplit_once('.').unwrap();
            let sig: [u8; 64] = URL_SAFE_NO_PAD.decode(sig_b64).unwrap().try_into().unwrap();
            assert!(is_low_s(&sig), "signed with high S");
            assert!(ring.verify(&token).is_some());
            // The twin (r, n − s).
            let mut twin = sig;
            let mut borrow = 0i16;
            for j in (0..32).rev() {
                let d = i16::from(P256_N[j]) - i16::from(sig[32 + j]) - borrow;
                borrow = i16::from(d < 0);
                twin[32 + j] = (d + (borrow << 8)) as u8;
            }
            assert_ne!(twin, sig);
            let twin_token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(twin));
            assert!(ring.verify(&twin_token).is_none(), "high-S twin accepted");
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_jsonwebtoken_computes() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let record = generate_key(alg, Utc::now()).unwrap();
            let encoding = match alg {
                SigningAlg::Es256 => {
                    jsonwebtoken::EncodingKey::from_ec_der(&record.private_key_pkcs8)
                }
                _ => jsonwebtoken::EncodingKey::from_ed_der(&record.private_key_pkcs8),
            };
            let jwk = Jwk::from_encoding_key(&encoding, alg.to_jsonwebtoken()).unwrap();
            assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256).unwrap(), record.kid);
        }
    }

    #[test]
    fn tokens_from_other_keys_or_algorithms_are_refused() {
        let (_, a) = ring(SigningAlg::Es256);
        let (_, b) = ring(SigningAlg::Es256);
        let token = a.active().unwrap().sign(b"{}").unwrap();
        assert!(b.verify(&token).is_none());
        assert!(a.verify(&token).is_some());
    }

    #[test]
    fn retired_keys_verify_until_pruned_and_do_not_sign() {
        let now = Utc::now();
        let old = generate_key(SigningAlg::Es256, now).unwrap();
        let new = generate_key(SigningAlg::EdDsa, now).unwrap();
        let set = KeySet {
            format: 1,
            keys: vec![
                SigningKeyRecord {
                    retired_at: Some(now),
                    ..old.clone()
                },
                new.clone(),
            ],
        };
        let ring = KeyRing::new(&set, now).unwrap();
        assert_eq!(ring.active().unwrap().kid(), new.kid);
        let old_ring = KeyRing::new(
            &KeySet {
                format: 1,
                keys: vec![old],
            },
            now,
        )
        .unwrap();
        let token = old_ring.active().unwrap().sign(b"{}").unwrap();
        assert!(ring.verify(&token).is_some());
        assert_eq!(ring.algorithms(), &["ES256", "EdDSA"]);
        let later = now + chrono::Duration::hours(25);
        let ring = KeyRing::new(&set, later).unwrap();
        assert!(ring.verify(&token).is_none());
    }
}
