//! The operator's key Secret (`m2m-operator-keys` in the operator
//! namespace) as data: its name, its keys — the HMAC key of the
//! verification state (`verifier-key`, 32 raw bytes) and the JWT signing
//! keys (`signing-keys.json`, see [`crate::signing::keyset`]) — how it is
//! built and how it is parsed. The controller writes it
//! (`controller::keys::reconcile_keys`), the token server reads it; both
//! use these functions so they agree on the format.

use crate::core::verifier::{VerifierKey, VerifierKeyLengthError};
use crate::labels::MANAGED_BY;
use crate::signing::SigningAlg;
use crate::signing::keyset::{KeyPolicy, KeySet, KeySetError};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;
use std::time::Duration;

/// Name of the operator's key Secret.
pub(crate) const KEY_SECRET_NAME: &str = "m2m-operator-keys";
/// Data key of the verifier (HMAC) key: 32 raw bytes.
pub(crate) const VERIFIER_KEY_DATA: &str = "verifier-key";
/// Data key of the signing-key set.
pub(crate) const SIGNING_KEYS_DATA: &str = "signing-keys.json";

/// Why the key Secret's content is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeySecretError {
    /// The Secret exists but has no `verifier-key`. Not regenerated
    /// automatically: that would invalidate every credential. Delete the
    /// Secret to start over (every credential then rotates).
    #[error(
        "Secret {0} has no {VERIFIER_KEY_DATA}; refusing to replace it (delete the Secret to reset all credentials)"
    )]
    MissingVerifierKey(String),
    /// The stored verifier key has the wrong length.
    #[error("Secret {0} has a malformed {VERIFIER_KEY_DATA}")]
    BadVerifierKey(String, #[source] VerifierKeyLengthError),
    /// The signing-key set is unreadable or unwritable.
    #[error("signing keys in Secret {0}")]
    KeySet(String, #[source] KeySetError),
}

/// Where the key Secret lives and what it must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySecretConfig {
    /// The operator namespace.
    pub namespace: String,
    /// The Secret's name ([`KEY_SECRET_NAME`]).
    pub name: String,
    /// Algorithm and rotation age of signing keys.
    pub policy: KeyPolicy,
}

impl KeySecretConfig {
    /// A configuration for the default Secret name.
    pub fn new(namespace: String, alg: SigningAlg, rotate_every: Duration) -> Self {
        Self {
            namespace,
            name: KEY_SECRET_NAME.to_owned(),
            policy: KeyPolicy { alg, rotate_every },
        }
    }
}

/// Read the verifier key and signing keys from the key Secret.
pub fn parse_key_secret(secret: &Secret) -> Result<(VerifierKey, KeySet), KeySecretError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.as_ref();
    let verifier = data
        .and_then(|d| d.get(VERIFIER_KEY_DATA))
        .ok_or_else(|| KeySecretError::MissingVerifierKey(name.clone()))?;
    let verifier_key = VerifierKey::from_bytes(&verifier.0)
        .map_err(|e| KeySecretError::BadVerifierKey(name.clone(), e))?;
    let key_set = match data.and_then(|d| d.get(SIGNING_KEYS_DATA)) {
        Some(json) => KeySet::from_json(&json.0).map_err(|e| KeySecretError::KeySet(name, e))?,
        None => KeySet::default(),
    };
    Ok((verifier_key, key_set))
}

/// The key Secret holding `verifier_key` and `key_set` (what the controller
/// writes; tests build state with it too).
pub fn desired_secret(
    cfg: &KeySecretConfig,
    verifier_key: &VerifierKey,
    key_set: &KeySet,
    resource_version: Option<String>,
) -> Result<Secret, KeySecretError> {
    let json = key_set
        .to_json()
        .map_err(|e| KeySecretError::KeySet(cfg.name.clone(), e))?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            resource_version,
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                VERIFIER_KEY_DATA.to_owned(),
                ByteString(verifier_key.as_bytes().to_vec()),
            ),
            (SIGNING_KEYS_DATA.to_owned(), ByteString(json)),
        ])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keyset::next_key_set;
    use chrono::Utc;

    #[test]
    fn secret_round_trips_through_the_parser() {
        let cfg = KeySecretConfig::new("ops".into(), SigningAlg::Es256, Duration::from_secs(60));
        let key = VerifierKey::generate().unwrap();
        let (_, set) = next_key_set(&KeySet::default(), &cfg.policy, Utc::now())
            .unwrap()
            .unwrap();
        let secret = desired_secret(&cfg, &key, &set, None).unwrap();
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "m2m-operator"
        );
        let (parsed_key, parsed_set) = parse_key_secret(&secret).unwrap();
        assert_eq!(parsed_key, key);
        assert_eq!(parsed_set, set);
        let mut broken = secret.clone();
        broken.data.as_mut().unwrap().remove(VERIFIER_KEY_DATA);
        assert!(matches!(
            parse_key_secret(&broken),
            Err(KeySecretError::MissingVerifierKey(_))
        ));
    }
}
