//! The writer of the operator's key Secret (format and parser:
//! [`crate::signing::store`]).
//!
//! [`reconcile_keys`] creates it when missing, generates a new signing key
//! when the active one reached `--signing-key-rotation` or `--signing-alg`
//! changed, prunes retired keys whose publication window ended, and writes
//! nothing when nothing is due. The verifier key is generated once and kept
//! forever: replacing it would invalidate every credential's verifiers.
//!
//! A running controller keeps the keys it last read ([`HeldKeys`]) and
//! passes them to [`reconcile_keys_holding`]: a key Secret deleted (or
//! damaged) by hand is then recreated with *those* keys, not fresh ones, so
//! no credential is re-issued and every token issued before stays
//! verifiable. Fresh keys are generated only when no controller holds any
//! (first install, or the Secret deleted while no controller ran). A Secret
//! that parses but holds a *different* verifier key is taken as a
//! deliberate replacement (a restored backup): the stored key wins, and
//! credentials sealed under the other key report `VerifierKeyConflict`
//! instead of being re-issued.
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

/// The keys a running controller last read from (or wrote to) the key
/// Secret: what it restores when the Secret disappears.
#[derive(Debug, Clone)]
pub(crate) struct HeldKeys {
    /// The verifier key.
    pub verifier_key: VerifierKey,
    /// The signing keys.
    pub key_set: KeySet,
}

impl From<&KeyReconcile> for HeldKeys {
    fn from(r: &KeyReconcile) -> Self {
        Self {
            verifier_key: r.verifier_key.clone(),
            key_set: r.key_set.clone(),
        }
    }
}

/// Bring the key Secret to what `cfg` asks for at `now`, holding no keys
/// (a missing Secret gets fresh ones); see the module docs.
pub async fn reconcile_keys(
    client: &kube::Client,
    cfg: &KeySecretConfig,
    now: DateTime<Utc>,
) -> Result<KeyReconcile, KeysError> {
    reconcile_keys_holding(client, cfg, now, None).await
}

/// Create the missing key Secret, from `held` when given (else fresh
/// keys). `None` when another writer created it first.
async fn create_key_secret(
    api: &Api<Secret>,
    cfg: &KeySecretConfig,
    now: DateTime<Utc>,
    held: Option<&HeldKeys>,
) -> Result<Option<KeyReconcile>, KeysError> {
    let key_set_err = |e| KeysError::KeySet(cfg.name.clone(), e);
    let (verifier_key, base) = match held {
        Some(h) => (h.verifier_key.clone(), h.key_set.clone()),
        None => (
            VerifierKey::generate().map_err(KeysError::Random)?,
            KeySet::default(),
        ),
    };
    let (plan, key_set) = match next_key_set(&base, &cfg.policy, now).map_err(key_set_err)? {
        Some((plan, next)) => (Some(plan), next),
        None => (None, base),
    };
    let secret = desired_secret(cfg, &verifier_key, &key_set, None)?;
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &secret).await {
        Ok(_) => {
            let reason = plan.as_ref().and_then(|p| p.rotate.as_ref());
            if held.is_some() {
                tracing::warn!(
                    namespace = %cfg.namespace, name = %cfg.name,
                    kid = key_set.active().map(|k| k.kid.as_str()),
                    "the operator key Secret was deleted: recreated from the keys this controller holds"
                );
            } else {
                tracing::info!(
                    namespace = %cfg.namespace, name = %cfg.name,
                    reason = reason.map(|r| r.reason()),
                    kid = key_set.active().map(|k| k.kid.as_str()),
                    "created the operator key Secret"
                );
            }
            Ok(Some(KeyReconcile {
                verifier_key,
                next_due: next_due(&key_set, &cfg.policy),
                changed: true,
                key_set,
            }))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => Err(KeysError::Create(cfg.name.clone(), e)),
    }
}

/// Write `key` and `key_set` over the existing key Secret `current`
/// (guarded by its `resourceVersion`).
async fn apply_key_secret(
    api: &Api<Secret>,
    cfg: &KeySecretConfig,
    key: &VerifierKey,
    key_set: &KeySet,
    current: &Secret,
) -> Result<(), KeysError> {
    let desired = desired_secret(cfg, key, key_set, current.metadata.resource_version.clone())?;
    api.patch(
        &cfg.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|e| KeysError::Apply(cfg.name.clone(), e))?;
    Ok(())
}

/// Bring an existing key Secret to what `cfg` asks for at `now`; an
/// unreadable one is restored from `held` when given.
async fn update_key_secret(
    api: &Api<Secret>,
    cfg: &KeySecretConfig,
    now: DateTime<Utc>,
    held: Option<&HeldKeys>,
    secret: Secret,
) -> Result<KeyReconcile, KeysError> {
    let key_set_err = |e| KeysError::KeySet(cfg.name.clone(), e);
    let (verifier_key, key_set) = match (parse_key_secret(&secret), held) {
        (Ok(parsed), _) => parsed,
        (Err(error), Some(h)) => {
            // Damaged by hand: restore what this controller holds.
            tracing::warn!(
                namespace = %cfg.namespace, name = %cfg.name, %error,
                "the operator key Secret is unreadable: restoring the keys this controller holds"
            );
            apply_key_secret(api, cfg, &h.verifier_key, &h.key_set, &secret).await?;
            (h.verifier_key.clone(), h.key_set.clone())
        }
        (Err(error), None) => return Err(error.into()),
    };
    let Some((plan, next)) = next_key_set(&key_set, &cfg.policy, now).map_err(key_set_err)? else {
        return Ok(KeyReconcile {
            verifier_key,
            next_due: next_due(&key_set, &cfg.policy),
            changed: false,
            key_set,
        });
    };
    apply_key_secret(api, cfg, &verifier_key, &next, &secret).await?;
    tracing::info!(
        namespace = %cfg.namespace, name = %cfg.name,
        rotated = plan.rotate.as_ref().map(|r| r.message()),
        pruned = ?plan.prune,
        kid = next.active().map(|k| k.kid.as_str()),
        "updated the signing keys"
    );
    Ok(KeyReconcile {
        verifier_key,
        next_due: next_due(&next, &cfg.policy),
        changed: true,
        key_set: next,
    })
}

/// Bring the key Secret to what `cfg` asks for at `now`; a missing or
/// unreadable Secret is rewritten from `held` when given.
pub(crate) async fn reconcile_keys_holding(
    client: &kube::Client,
    cfg: &KeySecretConfig,
    now: DateTime<Utc>,
    held: Option<&HeldKeys>,
) -> Result<KeyReconcile, KeysError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    // Two attempts: a lost creation race is resolved by reading the winner.
    for _ in 0..2 {
        let existing = api
            .get_opt(&cfg.name)
            .await
            .map_err(|e| KeysError::Get(cfg.name.clone(), e))?;
        match existing {
            None => {
                if let Some(done) = create_key_secret(&api, cfg, now, held).await? {
                    return Ok(done);
                }
            }
            Some(secret) => return update_key_secret(&api, cfg, now, held, secret).await,
        }
    }
    Err(KeysError::CreateRace(cfg.name.clone()))
}
