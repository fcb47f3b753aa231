//! The operator's key Secret (`m2m-operator-keys` in the operator
//! namespace): the HMAC key of the verification state (`verifier-key`, 32
//! raw bytes) and the JWT signing keys (`signing-keys.json`, see
//! [`crate::signing::keyset`]).
//!
//! [`reconcile_keys`] creates it when missing, generates a new signing key
//! when the active one reached `--signing-key-rotation` or `--signing-alg`
//! changed, prunes retired keys whose publication window ended, and writes
//! nothing when nothing is due. The verifier key is generated once and kept
//! forever: replacing it would invalidate every credential's verifiers.
//!
//! Creation uses `create` (not apply) so that two writers racing on a
//! missing Secret can never overwrite each other's verifier key: the loser
//! gets 409 and re-reads. Later changes are server-side applies (field
//! manager `m2m-operator`) carrying the observed `resourceVersion`, so a
//! concurrent change makes the apply fail instead of being lost.

use crate::cli::{CommonArgs, ControllerOptions, SigningAlg};
use crate::core::duration::{DurationError, parse_duration};
use crate::core::verifier::{VerifierKey, VerifierKeyLengthError};
use crate::signing::keyset::{
    KeyPlan, KeyPolicy, KeySet, KeySetError, apply_plan, generate_key, next_due, plan,
};
use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// Name of the operator's key Secret.
pub const KEY_SECRET_NAME: &str = "m2m-operator-keys";
/// Data key of the verifier (HMAC) key: 32 raw bytes.
pub const VERIFIER_KEY_DATA: &str = "verifier-key";
/// Data key of the signing-key set.
pub const SIGNING_KEYS_DATA: &str = "signing-keys.json";
/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "m2m-operator";
/// The label every object the operator manages carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "m2m-operator");

/// Why the key Secret could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// `--signing-key-rotation` is not a positive duration.
    #[error("--signing-key-rotation {0:?} is not a positive duration")]
    InvalidRotation(String, #[source] Option<DurationError>),
    /// Reading the Secret failed.
    #[error("reading Secret {0} failed")]
    Get(String, #[source] kube::Error),
    /// Creating the Secret failed.
    #[error("creating Secret {0} failed")]
    Create(String, #[source] kube::Error),
    /// The Secret was created and deleted concurrently twice in a row.
    #[error("Secret {0} keeps appearing and disappearing; retry later")]
    CreateRace(String),
    /// Applying the updated Secret failed (a 409 means someone else changed it: retry).
    #[error("applying Secret {0} failed")]
    Apply(String, #[source] kube::Error),
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
    /// The signing-key set is unreadable or a key could not be generated.
    #[error("signing keys in Secret {0}")]
    KeySet(String, #[source] KeySetError),
    /// The OS random generator failed.
    #[error("generating the verifier key failed")]
    Random(#[source] crate::core::client_secret::RandomnessError),
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
    /// The configuration the controller flags describe.
    pub fn from_args(common: &CommonArgs, opts: &ControllerOptions) -> Result<Self, KeysError> {
        let rotation = &opts.signing_key_rotation;
        let rotate_every = parse_duration(rotation)
            .map_err(|e| KeysError::InvalidRotation(rotation.clone(), Some(e)))?;
        if rotate_every.is_zero() {
            return Err(KeysError::InvalidRotation(rotation.clone(), None));
        }
        Ok(Self::new(
            common.namespace(),
            opts.signing_alg,
            rotate_every,
        ))
    }

    /// A configuration for the default Secret name.
    pub fn new(namespace: String, alg: SigningAlg, rotate_every: Duration) -> Self {
        Self {
            namespace,
            name: KEY_SECRET_NAME.to_owned(),
            policy: KeyPolicy { alg, rotate_every },
        }
    }
}

/// The outcome of one [`reconcile_keys`].
#[derive(Debug, Clone)]
pub struct KeyReconcile {
    /// The HMAC key of the verification state (never changes once created).
    pub verifier_key: VerifierKey,
    /// When the next signing-key change (rotation or pruning) is due: call
    /// [`reconcile_keys`] again then.
    pub next_due: Option<DateTime<Utc>>,
    /// Whether this call wrote the Secret.
    pub changed: bool,
    /// The signing keys now stored.
    pub key_set: KeySet,
}

/// Read the verifier key and signing keys from the key Secret. The token
/// server parses the Secret with the same function.
pub fn parse_key_secret(secret: &Secret) -> Result<(VerifierKey, KeySet), KeysError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.as_ref();
    let verifier = data
        .and_then(|d| d.get(VERIFIER_KEY_DATA))
        .ok_or_else(|| KeysError::MissingVerifierKey(name.clone()))?;
    let verifier_key = VerifierKey::from_bytes(&verifier.0)
        .map_err(|e| KeysError::BadVerifierKey(name.clone(), e))?;
    let key_set = match data.and_then(|d| d.get(SIGNING_KEYS_DATA)) {
        Some(json) => KeySet::from_json(&json.0).map_err(|e| KeysError::KeySet(name, e))?,
        None => KeySet::default(),
    };
    Ok((verifier_key, key_set))
}

/// The key Secret holding `verifier_key` and `key_set` (what
/// [`reconcile_keys`] writes; tests build state with it too).
pub fn desired_secret(
    cfg: &KeySecretConfig,
    verifier_key: &VerifierKey,
    key_set: &KeySet,
    resource_version: Option<String>,
) -> Result<Secret, KeysError> {
    let json = key_set
        .to_json()
        .map_err(|e| KeysError::KeySet(cfg.name.clone(), e))?;
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

/// The key set after applying what is due at `now` (a rotation, pruning),
/// or `None` when nothing is due. Pure apart from key generation.
pub fn next_key_set(
    set: &KeySet,
    policy: &KeyPolicy,
    now: DateTime<Utc>,
) -> Result<Option<(KeyPlan, KeySet)>, KeySetError> {
    let plan = plan(set, policy, now);
    if plan.is_empty() {
        return Ok(None);
    }
    let new_key = match &plan.rotate {
        Some(_) => Some(generate_key(policy.alg, now)?),
        None => None,
    };
    let next = apply_plan(set, &plan, new_key, now);
    Ok(Some((plan, next)))
}

/// Bring the key Secret to what `cfg` asks for at `now`; see the module docs.
pub async fn reconcile_keys(
    client: &kube::Client,
    cfg: &KeySecretConfig,
    now: DateTime<Utc>,
) -> Result<KeyReconcile, KeysError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let key_set_err = |e| KeysError::KeySet(cfg.name.clone(), e);
    // Two attempts: a lost creation race is resolved by reading the winner.
    for _ in 0..2 {
        let existing = api
            .get_opt(&cfg.name)
            .await
            .map_err(|e| KeysError::Get(cfg.name.clone(), e))?;
        match existing {
            None => {
                let verifier_key = VerifierKey::generate().map_err(KeysError::Random)?;
                let (plan, key_set) = next_key_set(&KeySet::default(), &cfg.policy, now)
                    .map_err(key_set_err)?
                    .unwrap_or_default();
                let secret = desired_secret(cfg, &verifier_key, &key_set, None)?;
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&pp, &secret).await {
                    Ok(_) => {
                        tracing::info!(
                            namespace = %cfg.namespace, name = %cfg.name,
                            reason = plan.rotate.as_ref().map(|r| r.reason()),
                            kid = key_set.active().map(|k| k.kid.as_str()),
                            "created the operator key Secret"
                        );
                        return Ok(KeyReconcile {
                            verifier_key,
                            next_due: next_due(&key_set, &cfg.policy),
                            changed: true,
                            key_set,
                        });
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(e) => return Err(KeysError::Create(cfg.name.clone(), e)),
                }
            }
            Some(secret) => {
                let (verifier_key, key_set) = parse_key_secret(&secret)?;
                let Some((plan, next)) =
                    next_key_set(&key_set, &cfg.policy, now).map_err(key_set_err)?
                else {
                    return Ok(KeyReconcile {
                        verifier_key,
                        next_due: next_due(&key_set, &cfg.policy),
                        changed: false,
                        key_set,
                    });
                };
                let desired = desired_secret(
                    cfg,
                    &verifier_key,
                    &next,
                    secret.metadata.resource_version.clone(),
                )?;
                api.patch(
                    &cfg.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .map_err(|e| KeysError::Apply(cfg.name.clone(), e))?;
                tracing::info!(
                    namespace = %cfg.namespace, name = %cfg.name,
                    rotated = plan.rotate.as_ref().map(|r| r.message()),
                    pruned = ?plan.prune,
                    kid = next.active().map(|k| k.kid.as_str()),
                    "updated the signing keys"
                );
                return Ok(KeyReconcile {
                    verifier_key,
                    next_due: next_due(&next, &cfg.policy),
                    changed: true,
                    key_set: next,
                });
            }
        }
    }
    Err(KeysError::CreateRace(cfg.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + h * 3600, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn nothing_is_written_when_nothing_is_due() {
        let policy = KeyPolicy {
            alg: SigningAlg::Es256,
            rotate_every: Duration::from_secs(10 * 3600),
        };
        let (_, set) = next_key_set(&KeySet::default(), &policy, at(0))
            .unwrap()
            .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(next_key_set(&set, &policy, at(9)).unwrap().is_none());
        let (plan, rotated) = next_key_set(&set, &policy, at(10)).unwrap().unwrap();
        assert_eq!(plan.rotate.unwrap().reason(), "KeyExpired");
        assert_eq!(rotated.keys.len(), 2);
        assert!(next_key_set(&rotated, &policy, at(19)).unwrap().is_none());
        let (plan, twice) = next_key_set(&rotated, &policy, at(20)).unwrap().unwrap();
        assert!(plan.rotate.is_some(), "the second key is due at 20h");
        assert!(
            plan.prune.is_empty(),
            "the first key is published until 34h05m"
        );
        assert_eq!(twice.keys.len(), 3);
        let first = set.keys[0].kid.clone();
        assert!(next_key_set(&twice, &policy, at(29)).unwrap().is_none());
        assert_eq!(next_due(&twice, &policy), Some(at(30)));
        let late = at(34) + chrono::Duration::minutes(5);
        let (plan, pruned) = next_key_set(&twice, &policy, late).unwrap().unwrap();
        assert_eq!(plan.prune, vec![first]);
        assert_eq!(pruned.keys.len(), 3, "pruned one, rotated the active one");
        let policy_rs = KeyPolicy {
            alg: SigningAlg::EdDsa,
            ..policy
        };
        let (plan, _) = next_key_set(&set, &policy_rs, at(1)).unwrap().unwrap();
        assert_eq!(plan.rotate.unwrap().reason(), "AlgorithmChanged");
    }

    #[test]
    fn secret_round_trips_through_the_parser() {
        let cfg = KeySecretConfig::new("ops".into(), SigningAlg::Es256, Duration::from_secs(60));
        let key = VerifierKey::generate().unwrap();
        let (_, set) = next_key_set(&KeySet::default(), &cfg.policy, at(0))
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
            Err(KeysError::MissingVerifierKey(_))
        ));
    }
}
