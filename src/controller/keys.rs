//! The writer of the operator's key Secret (format and parser:
//! [`crate::signing::store`]).
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

use crate::core::verifier::VerifierKey;
use crate::labels::FIELD_MANAGER;
use crate::signing::keyset::{KeySet, KeySetError, next_due, next_key_set};
use crate::signing::store::{KeySecretConfig, KeySecretError, desired_secret, parse_key_secret};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Why the key Secret could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
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
    /// The stored Secret is unusable.
    #[error(transparent)]
    Secret(#[from] KeySecretError),
    /// A new signing key could not be generated.
    #[error("signing keys in Secret {0}")]
    KeySet(String, #[source] KeySetError),
    /// The OS random generator failed.
    #[error("generating the verifier key failed")]
    Random(#[source] crate::core::client_secret::RandomnessError),
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
