//! The token server's in-memory state, fed by watches: a
//! [`CredentialIndex`] keyed by client id with each credential's grant
//! resolved ahead of time, the operator keys ([`KeyMaterial`]) and the
//! revocation list. Requests read it through lock-free `ArcSwap` loads; a
//! watch event builds a new value and swaps it in.
//!
//! The index is built from the watched objects by [`CredentialIndex::build`]
//! — the only code path, used by the watches and by tests alike. Nothing in
//! a credential's status is trusted except the verifiers (keyed hashes that
//! cannot be forged without the verifier key): the grant is recomputed from
//! the credential spec, its ServiceAccount and the namespace's scope policy,
//! and the client id is derived from the credential's UID.

use crate::controller::keys::{KeysError, parse_key_secret};
use crate::core::client_secret::client_id_for_uid;
use crate::core::grant::{Grant, GrantError, ScopePolicy, ScopePolicyError, resolve_grant};
use crate::core::verifier::{SecretBinding, VerifierKey, is_accepted};
use crate::crd::{ALLOWED_SCOPES_ANNOTATION, M2MCredential, SecretVerifier, ServiceAccount};
use crate::signing::{KeyRing, KeyRingError};
use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One credential as the token endpoint sees it.
#[derive(Debug, Clone)]
pub struct CredentialEntry {
    /// Namespace.
    pub namespace: String,
    /// Credential name.
    pub name: String,
    /// Credential UID.
    pub uid: String,
    /// Client id, derived from the UID.
    pub client_id: String,
    /// The ServiceAccount (m2m.dev) it authenticates as.
    pub service_account: String,
    /// The token subject, `m2m:<namespace>:<serviceaccount>`.
    pub subject: String,
    /// What it may be granted (resolved when the index was built; expiry
    /// is re-checked per request).
    pub grant: Result<Grant, GrantError>,
    /// Space-separated default scopes (all of the grant's).
    pub default_scope: String,
    /// The accepted secret versions, as keyed hashes.
    pub verifiers: Vec<SecretVerifier>,
}

impl CredentialEntry {
    /// What the verifiers of this credential are bound to.
    pub fn binding(&self, version: i64) -> SecretBinding<'_> {
        SecretBinding {
            namespace: &self.namespace,
            name: &self.name,
            uid: &self.uid,
            client_id: &self.client_id,
            version,
        }
    }

    /// The grant at `now`: the resolved one unless the credential expired since.
    pub fn grant_at(&self, now: DateTime<Utc>) -> Result<&Grant, GrantError> {
        match &self.grant {
            Ok(g) => match g.expires_at {
                Some(at) if at <= now => Err(GrantError::Expired(at)),
                _ => Ok(g),
            },
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether a verifier is usable at `now`: sealed by the operator and
    /// current or within its grace period.
    fn usable(&self, key: &VerifierKey, v: &SecretVerifier, now: DateTime<Utc>) -> bool {
        is_accepted(v, now) && key.is_sealed(&self.binding(v.version), v)
    }

    /// Whether secret `version` is accepted at `now`.
    pub fn accepts_version(&self, key: &VerifierKey, version: i64, now: DateTime<Utc>) -> bool {
        self.verifiers
            .iter()
            .any(|v| v.version == version && self.usable(key, v, now))
    }

    /// The secret version `secret` authenticates at `now`, if any.
    ///
    /// Equal work whatever the credential: every slot up to
    /// [`super::oauth::MAX_VERIFIERS`] costs one seal check and one digest
    /// check (constant-time comparisons), padded with a verifier nothing
    /// matches, so the time does not tell how many verifiers a credential
    /// has — nor, with the padded dummy entry the token endpoint uses for
    /// unknown ids, whether the id exists.
    pub fn authenticate(
        &self,
        key: &impl super::oauth::SecretCheck,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Option<i64> {
        let pad = super::oauth::padding_verifier();
        let slots = self.verifiers.len().max(super::oauth::MAX_VERIFIERS);
        let mut matched = None;
        for slot in 0..slots {
            let (v, real) = match self.verifiers.get(slot) {
                Some(v) => (v, true),
                None => (pad, false),
            };
            let binding = self.binding(v.version);
            let sealed = key.is_sealed(&binding, v);
            let digest_ok = key.verify(&binding, secret, &v.digest);
            if real && sealed && digest_ok && is_accepted(v, now) && matched.is_none() {
                matched = Some(v.version);
            }
        }
        matched
    }
}

/// The namespace scope policies, from Namespace annotations.
fn namespace_policies<'a>(
    namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
) -> HashMap<&'a str, Result<ScopePolicy, ScopePolicyError>> {
    namespaces
        .into_iter()
        .filter_map(|meta| {
            let name = meta.name.as_deref()?;
            let value = meta.annotations.as_ref()?.get(ALLOWED_SCOPES_ANNOTATION)?;
            Some((name, ScopePolicy::parse(value)))
        })
        .collect()
}

/// Every live credential by client id.
#[derive(Debug, Default, Clone)]
pub struct CredentialIndex {
    by_client_id: HashMap<String, Arc<CredentialEntry>>,
}

impl CredentialIndex {
    /// Build the index from the watched objects. Credentials being deleted
    /// (with a `deletionTimestamp`) are left out: deletion revokes at once.
    pub fn build<'a>(
        credentials: impl IntoIterator<Item = &'a M2MCredential>,
        accounts: impl IntoIterator<Item = &'a ServiceAccount>,
        namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
        default_policy: &ScopePolicy,
        now: DateTime<Utc>,
    ) -> Self {
        let policies = namespace_policies(namespaces);
        let accounts: HashMap<(&str, &str), &ServiceAccount> = accounts
            .into_iter()
            .filter_map(|a| {
                Some((
                    (
                        a.metadata.namespace.as_deref()?,
                        a.metadata.name.as_deref()?,
                    ),
                    a,
                ))
            })
            .collect();
        let mut by_client_id = HashMap::new();
        for cred in credentials {
            let meta = &cred.metadata;
            let (Some(namespace), Some(name), Some(uid)) = (
                meta.namespace.as_deref(),
                meta.name.as_deref(),
                meta.uid.as_deref(),
            ) else {
                continue;
            };
            if meta.deletion_timestamp.is_some() {
                continue;
            }
            let account_name = cred.spec.service_account_name.as_str();
            let account = accounts
                .get(&(namespace, account_name))
                .filter(|a| a.metadata.deletion_timestamp.is_none())
                .map(|a| &a.spec);
            let policy = match policies.get(namespace) {
                Some(Ok(p)) => Ok(p),
                Some(Err(e)) => Err(e),
                None => Ok(default_policy),
            };
            let grant = resolve_grant(&cred.spec, account, policy, now);
            let default_scope = grant
                .as_ref()
                .map(|g| {
                    g.scopes
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let client_id = client_id_for_uid(uid);
            let entry = CredentialEntry {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
                client_id: client_id.clone(),
                service_account: account_name.to_owned(),
                subject: format!("m2m:{namespace}:{account_name}"),
                grant,
                default_scope,
                verifiers: cred
                    .status
                    .as_ref()
                    .map(|s| s.verifiers.clone())
                    .unwrap_or_default(),
            };
            by_client_id.insert(client_id, Arc::new(entry));
        }
        Self { by_client_id }
    }

    /// The credential with this client id.
    pub fn get(&self, client_id: &str) -> Option<&Arc<CredentialEntry>> {
        self.by_client_id.get(client_id)
    }

    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.by_client_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_client_id.is_empty()
    }
}

/// The operator keys the token server uses: the verifier key and the
/// parsed signing keys.
#[derive(Debug)]
pub struct KeyMaterial {
    /// HMAC key of the verification state.
    pub verifier_key: VerifierKey,
    /// Signer, public keys and JWKS.
    pub ring: KeyRing,
}

/// Why the key Secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyMaterialError {
    /// The Secret's content.
    #[error(transparent)]
    Secret(#[from] KeysError),
    /// The signing keys.
    #[error(transparent)]
    Ring(#[from] KeyRingError),
}

impl KeyMaterial {
    /// Parse the operator key Secret.
    pub fn from_secret(secret: &Secret, now: DateTime<Utc>) -> Result<Self, KeyMaterialError> {
        let (verifier_key, key_set) = parse_key_secret(secret)?;
        Ok(Self {
            verifier_key,
            ring: KeyRing::new(&key_set, now)?,
        })
    }
}

/// Revoked token ids and their expiry (unix seconds).
#[derive(Debug, Default, Clone)]
pub struct RevocationList {
    revoked: HashMap<String, i64>,
}

impl RevocationList {
    /// Read the revocation ConfigMap (`<jti>: <exp>`); values that are not
    /// integers were not written by the operator and are ignored.
    pub fn from_config_map(cm: Option<&ConfigMap>) -> Self {
        let revoked = cm
            .and_then(|cm| cm.data.as_ref())
            .map(|data| {
                data.iter()
                    .filter_map(|(jti, exp)| Some((jti.clone(), exp.trim().parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        Self { revoked }
    }

    /// Whether `jti` was revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    /// Entries whose token has expired at `now` (unix seconds): safe to drop.
    pub fn expired(&self, now: i64) -> impl Iterator<Item = &str> {
        self.revoked
            .iter()
            .filter(move |(_, exp)| **exp < now)
            .map(|(jti, _)| jti.as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// Everything the handlers read, swapped atomically by the watches.
#[derive(Debug, Default)]
pub struct TokenState {
    credentials: ArcSwap<CredentialIndex>,
    keys: ArcSwapOption<KeyMaterial>,
    revoked: ArcSwap<RevocationList>,
    /// Revocations made by this replica and not yet seen through the watch.
    local_revoked: Mutex<HashMap<String, i64>>,
}

impl TokenState {
    /// Empty state: no credentials, no keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current credential index.
    pub fn credentials(&self) -> Arc<CredentialIndex> {
        self.credentials.load_full()
    }

    /// The current keys, if loaded.
    pub fn keys(&self) -> Option<Arc<KeyMaterial>> {
        self.keys.load_full()
    }

    /// The current revocation list.
    pub fn revoked(&self) -> Arc<RevocationList> {
        self.revoked.load_full()
    }

    /// Replace the credential index.
    pub fn set_credentials(&self, index: CredentialIndex) {
        self.credentials.store(Arc::new(index));
    }

    /// Replace (or clear) the keys.
    pub fn set_keys(&self, keys: Option<KeyMaterial>) {
        self.keys.store(keys.map(Arc::new));
    }

    /// Replace the revocation list with what the ConfigMap holds, keeping
    /// this replica's own revocations until the watch shows them.
    pub fn set_revocations(&self, mut list: RevocationList, now: i64) {
        if let Ok(mut local) = self.local_revoked.lock() {
            local.retain(|jti, exp| *exp >= now && !list.revoked.contains_key(jti));
            for (jti, exp) in local.iter() {
                list.revoked.insert(jti.clone(), *exp);
            }
        }
        self.revoked.store(Arc::new(list));
    }

    /// Record a revocation made by this replica, effective immediately here.
    pub fn revoke_locally(&self, jti: &str, exp: i64) {
        if let Ok(mut local) = self.local_revoked.lock() {
            local.insert(jti.to_owned(), exp);
        }
        self.revoked.rcu(|current| {
            let mut next = RevocationList::clone(current);
            next.revoked.insert(jti.to_owned(), exp);
            next
        });
    }
}
