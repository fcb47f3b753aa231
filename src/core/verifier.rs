//! The verification state: keyed hashes of the client secrets the token
//! endpoint accepts. Digests are HMAC-SHA256 under a key only the operator
//! and token servers hold, bound to the credential's identity and secret
//! version, so whoever can write a credential's status still cannot make a
//! secret of their choice valid, nor move a digest to another credential.

use crate::crd::SecretVerifier;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Length of the verifier key in bytes.
pub(crate) const VERIFIER_KEY_LEN: usize = 32;

/// The HMAC key of the verification state. `Debug` never prints it.
///
/// It keeps the HMAC state with the key already absorbed (cloned per MAC:
/// two SHA-256 blocks fewer each time) and its public fingerprint
/// ([`key_id`](Self::key_id), [`id`](Self::id)).
#[derive(Clone)]
pub struct VerifierKey {
    bytes: [u8; VERIFIER_KEY_LEN],
    keyed: HmacSha256,
    /// HMAC of a fixed label under the key, truncated: public.
    fingerprint: [u8; 12],
}

impl PartialEq for VerifierKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for VerifierKey {}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifierKey([redacted])")
    }
}

/// A stored verifier key has the wrong length.
#[derive(Debug, thiserror::Error)]
#[error("verifier key must be {VERIFIER_KEY_LEN} bytes, found {0}")]
pub struct VerifierKeyLengthError(pub usize);

impl VerifierKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<Self, crate::core::client_secret::RandomnessError> {
        let mut key = [0u8; VERIFIER_KEY_LEN];
        crate::core::client_secret::fill_random(&mut key)?;
        Ok(Self::new(key))
    }

    /// Load a key from its stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VerifierKeyLengthError> {
        let key: [u8; VERIFIER_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| VerifierKeyLengthError(bytes.len()))?;
        Ok(Self::new(key))
    }

    fn new(bytes: [u8; VERIFIER_KEY_LEN]) -> Self {
        // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
        let keyed = <HmacSha256 as Mac>::new_from_slice(&bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
        let mut mac = keyed.clone();
        mac.update(KEY_ID_DOMAIN.as_bytes());
        let mut fingerprint = [0u8; 12];
        fingerprint.copy_from_slice(&mac.finalize().into_bytes()[..12]);
        Self {
            bytes,
            keyed,
            fingerprint,
        }
    }

    /// The fingerprint as a number, for in-memory caches: equal ids mean
    /// the same key, so what was computed under one id can be reused, and
    /// a reloaded different key is never confused with it.
    pub fn id(&self) -> u64 {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.fingerprint[..8]);
        u64::from_be_bytes(id)
    }

    /// The raw key, for storing in the operator's key Secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// HMAC over length-prefixed fields: no two different inputs share bytes.
    fn mac(&self, domain: &str, binding: &SecretBinding<'_>, last: &[&str]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        let version = binding.version.to_string();
        let fields = [
            domain,
            binding.namespace,
            binding.name,
            binding.uid,
            binding.client_id,
            &version,
        ];
        for field in fields.iter().chain(last) {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    fn check(mac: HmacSha256, expected_b64: &str) -> bool {
        let Ok(expected) = URL_SAFE_NO_PAD.decode(expected_b64) else {
            return false;
        };
        mac.verify_slice(&expected).is_ok()
    }

    /// The digest of `secret` for this credential and version.
    pub fn digest(&self, binding: &SecretBinding<'_>, secret: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            self.mac(DIGEST_DOMAIN, binding, &[secret])
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `secret` matches `digest`, compared in constant time.
    pub fn verify(&self, binding: &SecretBinding<'_>, secret: &str, digest: &str) -> bool {
        Self::check(self.mac(DIGEST_DOMAIN, binding, &[secret]), digest)
    }

    fn seal_mac(&self, binding: &SecretBinding<'_>, v: &SecretVerifier) -> HmacSha256 {
        let not_after = v
            .not_after
            .map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default();
        self.mac(
            SEAL_DOMAIN,
            &binding.with_version(v.version),
            &[&v.digest, &not_after],
        )
    }

    /// Seal a verifier the controller itself produced: binds its digest and
    /// grace-period end, so a status writer can neither invent a verifier
    /// nor lengthen a grace period.
    pub fn seal(&self, binding: &SecretBinding<'_>, verifier: &mut SecretVerifier) {
        verifier.seal =
            Some(URL_SAFE_NO_PAD.encode(self.seal_mac(binding, verifier).finalize().into_bytes()));
    }

    /// A public fingerprint of this key (16 characters): an HMAC of a fixed
    /// label under the key, so it reveals nothing about the key, yet two
    /// installations (or a replaced key Secret) are told apart by it.
    pub(crate) fn key_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.fingerprint)
    }

    /// Whether the verifier carries a valid seal (constant-time comparison).
    pub(crate) fn is_sealed(&self, binding: &SecretBinding<'_>, verifier: &SecretVerifier) -> bool {
        verifier
            .seal
            .as_deref()
            .is_some_and(|seal| Self::check(self.seal_mac(binding, verifier), seal))
    }
}

const DIGEST_DOMAIN: &str = "m2m.dev/secret-verifier/v1";
const KEY_ID_DOMAIN: &str = "m2m.dev/verifier-key-id/v1";
const SEAL_DOMAIN: &str = "m2m.dev/verifier-seal/v1";

/// What a digest is bound to besides the secret itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretBinding<'a> {
    /// Credential namespace.
    pub namespace: &'a str,
    /// Credential name.
    pub name: &'a str,
    /// Credential UID: a re-created credential never inherits old digests.
    pub uid: &'a str,
    /// The client id.
    pub client_id: &'a str,
    /// The secret version.
    pub version: i64,
}

impl SecretBinding<'_> {
    /// The same binding for another version.
    pub(crate) fn with_version(&self, version: i64) -> Self {
        Self { version, ..*self }
    }
}

/// Whether a verifier is accepted at `now`: the current one always, a
/// replaced one until the end of its grace period.
pub(crate) fn is_accepted(verifier: &SecretVerifier, now: DateTime<Utc>) -> bool {
    verifier.not_after.is_none_or(|end| now < end)
}

/// The verifiers accepted at `now`.
pub(crate) fn accepted_at(
    verifiers: &[SecretVerifier],
    now: DateTime<Utc>,
) -> Vec<&SecretVerifier> {
    verifiers.iter().filter(|v| is_accepted(v, now)).collect()
}

/// The earliest future moment at which the accepted set changes, so the
/// controller can requeue exactly then to prune.
pub(crate) fn next_expiry(
    verifiers: &[SecretVerifier],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    verifiers
        .iter()
        .filter_map(|v| v.not_after)
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn binding() -> SecretBinding<'static> {
        SecretBinding {
            namespace: "team-a",
            name: "ci-bot-uploads",
            uid: "uid-1",
            client_id: "m2mc_1",
            version: 3,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().unwrap()
    }

    #[test]
    fn digest_verifies_only_its_own_secret_and_binding() {
        let key = VerifierKey::generate().unwrap();
        let d = key.digest(&binding(), "m2ms_secret");
        assert!(key.verify(&binding(), "m2ms_secret", &d));
        assert!(!key.verify(&binding(), "m2ms_secreT", &d));
        assert!(!key.verify(&binding().with_version(4), "m2ms_secret", &d));
        assert!(!key.verify(
            &SecretBinding {
                uid: "uid-2",
                ..binding()
            },
            "m2ms_secret",
            &d
        ));
        assert!(!key.verify(
            &SecretBinding {
                name: "other",
                ..binding()
            },
            "m2ms_secret",
            &d
        ));
        assert!(!key.verify(&binding(), "m2ms_secret", "not base64!"));
        let other = VerifierKey::generate().unwrap();
        assert!(
            !other.verify(&binding(), "m2ms_secret", &d),
            "digest forged without the key"
        );
    }

    #[test]
    fn seals_bind_digest_version_and_grace_end() {
        let key = VerifierKey::generate().unwrap();
        let mut v = SecretVerifier {
            version: 3,
            digest: "d3".into(),
            not_after: Some(at(100)),
            seal: None,
        };
        assert!(!key.is_sealed(&binding(), &v), "unsealed");
        key.seal(&binding(), &mut v);
        assert!(key.is_sealed(&binding(), &v));
        let lengthened = SecretVerifier {
            not_after: Some(at(10_000)),
            ..v.clone()
        };
        assert!(
            !key.is_sealed(&binding(), &lengthened),
            "grace cannot be lengthened"
        );
        let endless = SecretVerifier {
            not_after: None,
            ..v.clone()
        };
        assert!(
            !key.is_sealed(&binding(), &endless),
            "a graced verifier cannot become current"
        );
        let relabelled = SecretVerifier {
            version: 4,
            ..v.clone()
        };
        assert!(!key.is_sealed(&binding(), &relabelled));
        let other_digest = SecretVerifier {
            digest: "forged".into(),
            ..v.clone()
        };
        assert!(!key.is_sealed(&binding(), &other_digest));
        assert!(
            !key.is_sealed(
                &SecretBinding {
                    uid: "uid-2",
                    ..binding()
                },
                &v
            ),
            "bound to the credential"
        );
        assert!(
            !VerifierKey::generate().unwrap().is_sealed(&binding(), &v),
            "needs the key"
        );
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let key = VerifierKey::from_bytes(&[7; 32]).unwrap();
        let a = SecretBinding {
            namespace: "ab",
            name: "c",
            ..binding()
        };
        let b = SecretBinding {
            namespace: "a",
            name: "bc",
            ..binding()
        };
        assert_ne!(key.digest(&a, "s"), key.digest(&b, "s"));
    }

    #[test]
    fn key_debug_is_redacted_and_length_checked() {
        let key = VerifierKey::from_bytes(&[42; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "VerifierKey([redacted])");
        assert!(VerifierKey::from_bytes(&[1; 31]).is_err());
    }

    #[test]
    fn accepted_versions_at_time() {
        let v = |version, not_after: Option<i64>| SecretVerifier {
            version,
            digest: String::new(),
            not_after: not_after.map(at),
            seal: None,
        };
        let list = vec![v(3, None), v(2, Some(100)), v(1, Some(50))];
        let versions = |t| {
            accepted_at(&list, at(t))
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(10), vec![3, 2, 1]);
        assert_eq!(versions(50), vec![3, 2]);
        assert_eq!(versions(99), vec![3, 2]);
        assert_eq!(versions(100), vec![3]);
        assert_eq!(next_expiry(&list, at(10)), Some(at(50)));
        assert_eq!(next_expiry(&list, at(60)), Some(at(100)));
        assert_eq!(next_expiry(&list, at(100)), None);
    }
}
