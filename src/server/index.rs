//! The token server's in-memory state, fed by watches: a
//! [`CredentialIndex`] keyed by client id with each credential's grant
//! resolved ahead of time, the operator keys ([`KeyMaterial`]) and the
//! revocation list. Requests read it through lock-free `ArcSwap` loads.
//!
//! The index is maintained by a [`CredentialIndexer`], one change at a time:
//! an M2MCredential, ServiceAccount, Namespace, M2MRole or ClusterM2MRole
//! applied, deleted, or all of one kind reset after a relist — the only code path, used by the watches
//! and (through [`CredentialIndex::build`]) by tests alike. The work per
//! change is proportional to the credentials it affects, not to the size of
//! the cluster: the published index is a persistent map, so a new snapshot
//! shares every entry that did not change. Only the fields a credential
//! needs are kept ([`CredentialSource`], [`AccountSource`],
//! [`NamespaceSource`], [`RoleSource`]), never the watched objects.
//!
//! Nothing in a credential's status is trusted except the verifiers (keyed
//! hashes that cannot be forged without the verifier key): the grant is
//! recomputed from the credential spec, its ServiceAccount, the account's
//! roles and the namespace's scope policy, and the client id is derived from the
//! credential's UID.

use super::revocation::Revocations;
use crate::core::client_secret::client_id_for_uid;
use crate::core::grant::{Grant, GrantError, ScopePolicy, ScopePolicyError, resolve_grant};
use crate::core::policy::annotated_policy;
use crate::core::roles::{RoleGrant, RoleResolution, resolve_roles};
use crate::core::verifier::{SecretBinding, VerifierKey, is_accepted};
use crate::core::workload::{WorkloadBinding, WorkloadError};
use crate::crd::{
    ClusterM2MRole, CredentialType, M2MCredential, M2MCredentialSpec, M2MRole, RoleKind, RoleRef,
    SecretVerifier, ServiceAccount, ServiceAccountSpec,
};
use crate::signing::store::{KeySecretError, parse_key_secret};
use crate::signing::{KeyRing, KeyRingError};
use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// One credential as the token endpoint sees it.
#[derive(Debug, Clone, PartialEq)]
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
    /// The accepted secret versions, as keyed hashes (none in
    /// workload-identity mode).
    pub verifiers: Vec<SecretVerifier>,
    /// Workload identity: the bound Kubernetes ServiceAccount, or why the
    /// binding is refused; `None` for a secret-based credential.
    pub workload: Option<Result<WorkloadBinding, WorkloadError>>,
    /// `spec.type: APIToken`: the verifiers are of API tokens, which
    /// authenticate only as `subject_token` or are introspected, never as
    /// a client secret (see [`super::api_token`]).
    pub api_token: bool,
    /// For an API token replaced on a schedule: when the current token is
    /// due to stop working (`status.nextRotationTime` plus the grace
    /// period), reported as introspection's `exp`. Informational only —
    /// acceptance rests on the sealed verifiers.
    pub api_token_end: Option<DateTime<Utc>>,
    /// Which verifiers carry a valid seal, computed on first use.
    pub seals: SealCache,
    /// Workload identity: `status.workloadIdentity` as a sealed epoch
    /// ([`crate::core::workload::epoch_verifier`]) when it names the
    /// binding the spec declares; `None` until the controller confirmed it.
    pub workload_epoch: Option<SecretVerifier>,
    /// Federation (SPEC §9): the bound issuer and subject; `None` otherwise.
    pub federation: Option<Arc<crate::core::federation::FederationBinding>>,
    /// Federation: `status.federation` as a sealed epoch.
    pub federation_epoch: Option<SecretVerifier>,
    /// Sender-constraint hook: `spec.senderConstraint` and `spec.mtls`
    /// ([`super::binding`]).
    pub sender: crate::core::sender::SenderPolicy,
}

/// Which of an entry's verifiers carry a valid seal under a verifier key,
/// computed once per entry and key: a seal depends on neither the request
/// nor the time, so checking it per request only cost two MACs each. Not
/// part of an entry's identity: a clone starts empty and all caches
/// compare equal.
#[derive(Default)]
pub struct SealCache(std::sync::OnceLock<(u64, Vec<bool>)>);

impl Clone for SealCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for SealCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for SealCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealCache")
    }
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
    pub(crate) fn grant_at(&self, now: DateTime<Utc>) -> Result<&Grant, GrantError> {
        match &self.grant {
            Ok(g) => match g.expires_at {
                Some(at) if at <= now => Err(GrantError::Expired(at)),
                _ => Ok(g),
            },
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether each verifier carries a valid seal under `key`: cached for
    /// the key first used, recomputed for any other.
    fn seals(&self, key: &impl super::secret_check::SecretCheck) -> std::borrow::Cow<'_, [bool]> {
        let compute = || -> Vec<bool> {
            self.verifiers
                .iter()
                .map(|v| key.is_sealed(&self.binding(v.version), v))
                .collect()
        };
        let (id, sealed) = self.seals.0.get_or_init(|| (key.key_id(), compute()));
        if *id == key.key_id() {
            std::borrow::Cow::Borrowed(sealed)
        } else {
            std::borrow::Cow::Owned(compute())
        }
    }

    /// The current workload-identity epoch: the one the controller sealed
    /// for the ServiceAccount the spec binds. (The audience in status is
    /// the controller's default; the token server checks the assertion's
    /// audience itself, and the controller renews the epoch when it changes.)
    pub(crate) fn workload_epoch(&self, key: &VerifierKey) -> Option<i64> {
        let Some(Ok(binding)) = &self.workload else {
            return None;
        };
        let epoch = self.workload_epoch.as_ref()?;
        let names_binding = epoch
            .digest
            .strip_prefix(crate::core::workload::EPOCH_DIGEST_PREFIX)
            .and_then(|rest| rest.strip_prefix(binding.subject().as_str()))
            .is_some_and(|rest| rest.starts_with(':'));
        (names_binding && key.is_sealed(&self.binding(epoch.version), epoch))
            .then_some(epoch.version)
    }

    /// The current federation epoch: the one the controller sealed for the
    /// issuer and subject the spec binds.
    pub(crate) fn federation_epoch(&self, key: &VerifierKey) -> Option<i64> {
        let binding = self.federation.as_ref()?;
        let epoch = self.federation_epoch.as_ref()?;
        (epoch.digest == binding.epoch_digest()
            && key.is_sealed(&self.binding(epoch.version), epoch))
        .then_some(epoch.version)
    }

    /// Whether secret `version` is accepted at `now`. A workload-identity
    /// credential accepts only its current epoch.
    pub(crate) fn accepts_version(
        &self,
        key: &VerifierKey,
        version: i64,
        now: DateTime<Utc>,
    ) -> bool {
        // workload-identity hook: tokens carry the binding's current epoch.
        if self.workload.is_some() {
            return self.workload_epoch(key) == Some(version);
        }
        // Federation hook: likewise the binding's current epoch.
        if self.federation.is_some() {
            return self.federation_epoch(key) == Some(version);
        }
        let sealed = self.seals(key);
        self.verifiers
            .iter()
            .zip(sealed.iter())
            .any(|(v, sealed)| v.version == version && *sealed && is_accepted(v, now))
    }

    /// The secret version `secret` authenticates at `now`, if any.
    ///
    /// Equal work whatever the credential: every slot up to
    /// [`super::secret_check::MAX_VERIFIERS`] costs one digest check (a MAC and a
    /// constant-time comparison), padded with a verifier nothing matches,
    /// so the time does not tell how many verifiers a credential has — nor,
    /// with the padded dummy entry the token endpoint uses for unknown ids,
    /// whether the id exists. Seals are checked once per entry and key
    /// ([`SealCache`]); they do not depend on what the client sent.
    pub fn authenticate(
        &self,
        key: &impl super::secret_check::SecretCheck,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Option<i64> {
        let pad = super::secret_check::padding_verifier();
        let slots = self.verifiers.len().max(super::secret_check::MAX_VERIFIERS);
        let seals = self.seals(key);
        let mut matched = None;
        for slot in 0..slots {
            let (v, sealed) = match self.verifiers.get(slot) {
                Some(v) => (v, seals.get(slot).copied().unwrap_or(false)),
                None => (pad, false),
            };
            let binding = self.binding(v.version);
            let digest_ok = key.verify(&binding, secret, &v.digest);
            if sealed && digest_ok && is_accepted(v, now) && matched.is_none() {
                matched = Some(v.version);
            }
        }
        matched
    }
}

/// Remove `client_id` from the ids listed under `key` (and the key once empty).
fn remove_id<K: std::hash::Hash + Eq + Clone>(
    map: &mut imbl::HashMap<K, Vec<String>>,
    key: K,
    client_id: &str,
) {
    if let Some(ids) = map.get(&key) {
        let ids: Vec<String> = ids.iter().filter(|id| *id != client_id).cloned().collect();
        if ids.is_empty() {
            map.remove(&key);
        } else {
            map.insert(key, ids);
        }
    }
}

/// A scope policy as a Namespace annotation states it.
pub(crate) type PolicyResult = Result<ScopePolicy, ScopePolicyError>;

/// An object's namespace and name.
type ObjectKey = (String, String);

/// What the token server keeps of an M2MCredential: the fields a
/// [`CredentialEntry`] is made of, nothing else. The watched object (with
/// its `managedFields`, annotations and the rest) is dropped as soon as it
/// has been converted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CredentialSource {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (the client id derives from it).
    pub uid: String,
    /// The spec fields a grant depends on; the others are left empty.
    pub spec: M2MCredentialSpec,
    /// `status.verifiers`.
    pub verifiers: Vec<SecretVerifier>,
    /// `status.workloadIdentity` as a sealed epoch.
    pub workload_epoch: Option<SecretVerifier>,
    /// `status.federation` as a sealed epoch (boxed: most credentials have none).
    pub federation_epoch: Option<Box<SecretVerifier>>,
    /// `status.nextRotationTime` (API tokens' `exp` in introspection).
    pub next_rotation: Option<DateTime<Utc>>,
    /// It has a `deletionTimestamp`: treated as absent (deletion revokes at once).
    pub deleting: bool,
    /// The usage status the token servers wrote (not part of the index:
    /// the usage flusher merges with it).
    pub usage: super::usage::SeenUsage,
}

impl CredentialSource {
    /// The parts of `cred` the index needs; `None` without namespace, name or UID.
    pub fn new(cred: &M2MCredential) -> Option<Self> {
        let meta = &cred.metadata;
        let spec = &cred.spec;
        // A binding's epoch counts only while the controller may keep it.
        let current_status = cred.status.as_ref().filter(|s| {
            crate::core::workload::epoch_may_stand(s.observed_generation, meta.generation)
        });
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            spec: M2MCredentialSpec {
                service_account_name: spec.service_account_name.clone(),
                scopes: spec.scopes.clone(),
                audiences: spec.audiences.clone(),
                token_ttl: spec.token_ttl.clone(),
                expires_at: spec.expires_at,
                workload_identity: spec.workload_identity.clone(),
                federation: spec.federation.clone(),
                type_: spec.type_,
                sender_constraint: spec.sender_constraint,
                mtls: spec.mtls.clone(),
                rotation: match spec.type_ {
                    CredentialType::ApiToken => spec.rotation.clone(),
                    CredentialType::ClientSecret => Default::default(),
                },
                ..Default::default()
            },
            verifiers: cred
                .status
                .as_ref()
                .map(|s| s.verifiers.clone())
                .unwrap_or_default(),
            workload_epoch: current_status
                .and_then(|s| s.workload_identity.as_ref())
                .map(crate::core::workload::epoch_verifier),
            federation_epoch: current_status
                .and_then(|s| s.federation.as_ref())
                .map(|f| Box::new(crate::core::federation::epoch_verifier(f))),
            next_rotation: match spec.type_ {
                CredentialType::ApiToken => cred.status.as_ref().and_then(|s| s.next_rotation_time),
                CredentialType::ClientSecret => None,
            },
            deleting: meta.deletion_timestamp.is_some(),
            usage: super::usage::SeenUsage::of(cred),
        })
    }
}

/// What the token server keeps of a ServiceAccount (m2m.dev).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AccountSource {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec without its description.
    pub spec: ServiceAccountSpec,
    /// It has a `deletionTimestamp`: treated as absent.
    pub deleting: bool,
}

impl AccountSource {
    /// The parts of `account` the index needs; `None` without namespace or name.
    pub fn new(account: &ServiceAccount) -> Option<Self> {
        let meta = &account.metadata;
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            spec: ServiceAccountSpec {
                description: None,
                ..account.spec.clone()
            },
            deleting: meta.deletion_timestamp.is_some(),
        })
    }
}

/// A Namespace's scope policy (`m2m.dev/allowed-scopes`), parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NamespaceSource {
    /// The namespace.
    pub name: String,
    /// The annotation's policy; `None` without the annotation (the
    /// operator-wide default applies).
    pub policy: Option<PolicyResult>,
}

impl NamespaceSource {
    /// The policy a Namespace's metadata states; `None` without a name.
    pub fn new(meta: &ObjectMeta) -> Option<Self> {
        Some(Self {
            name: meta.name.clone()?,
            policy: annotated_policy(meta),
        })
    }
}

/// A role's kind, namespace (empty for a `ClusterM2MRole`) and name.
type RoleKey = (RoleKind, String, String);

/// The key of the role `r` referenced from `namespace`.
fn role_key(namespace: &str, r: &RoleRef) -> RoleKey {
    match r.kind {
        RoleKind::M2MRole => (r.kind, namespace.to_owned(), r.name.clone()),
        RoleKind::ClusterM2MRole => (r.kind, String::new(), r.name.clone()),
    }
}

/// What the token server keeps of an `M2MRole` or a `ClusterM2MRole`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoleSource {
    /// Which kind.
    pub kind: RoleKind,
    /// Namespace of an `M2MRole`; empty for a `ClusterM2MRole`.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The scopes it grants.
    pub scopes: BTreeSet<String>,
    /// It has a `deletionTimestamp`: treated as absent.
    pub deleting: bool,
}

impl RoleSource {
    /// The parts of an `M2MRole` the index needs; `None` without namespace or name.
    pub fn namespaced(role: &M2MRole) -> Option<Self> {
        let meta = &role.metadata;
        Some(Self {
            kind: RoleKind::M2MRole,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            scopes: role.spec.scopes.iter().cloned().collect(),
            deleting: meta.deletion_timestamp.is_some(),
        })
    }

    /// The parts of a `ClusterM2MRole` the index needs; `None` without a name.
    pub fn cluster(role: &ClusterM2MRole) -> Option<Self> {
        let meta = &role.metadata;
        Some(Self {
            kind: RoleKind::ClusterM2MRole,
            namespace: String::new(),
            name: meta.name.clone()?,
            scopes: role.spec.scopes.iter().cloned().collect(),
            deleting: meta.deletion_timestamp.is_some(),
        })
    }

    fn key(&self) -> RoleKey {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
}

/// Every live credential by client id: the snapshot requests read.
///
/// A persistent map, so that publishing a new snapshot after a change
/// shares everything that did not change instead of copying every entry.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CredentialIndex {
    by_client_id: imbl::HashMap<String, Arc<CredentialEntry>>,
    /// Workload identity: client ids of the credentials validly binding a
    /// Kubernetes ServiceAccount, by its subject `system:serviceaccount:<ns>:<name>`.
    by_subject: imbl::HashMap<String, Vec<String>>,
    /// Federation: client ids of the credentials binding (issuer, subject).
    by_federated: imbl::HashMap<(crate::core::federation::IssuerId, String), Vec<String>>,
}

impl CredentialIndex {
    /// Build the index from the watched objects, through the same
    /// [`CredentialIndexer`] operations the watches use. Credentials being
    /// deleted (with a `deletionTimestamp`) are left out: deletion revokes
    /// at once.
    pub fn build<'a>(
        credentials: impl IntoIterator<Item = &'a M2MCredential>,
        accounts: impl IntoIterator<Item = &'a ServiceAccount>,
        namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
        default_policy: &ScopePolicy,
        now: DateTime<Utc>,
    ) -> Self {
        Self::build_with_roles(
            credentials,
            accounts,
            namespaces,
            [],
            default_policy,
            None,
            now,
        )
    }

    /// [`CredentialIndex::build`] with roles and the operator's default role.
    pub(crate) fn build_with_roles<'a>(
        credentials: impl IntoIterator<Item = &'a M2MCredential>,
        accounts: impl IntoIterator<Item = &'a ServiceAccount>,
        namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
        roles: impl IntoIterator<Item = RoleSource>,
        default_policy: &ScopePolicy,
        default_role: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut indexer = CredentialIndexer::new(default_policy.clone())
            .with_default_role(default_role.map(str::to_owned));
        let (namespaced, cluster): (Vec<_>, Vec<_>) =
            roles.into_iter().partition(|r| r.kind == RoleKind::M2MRole);
        indexer.reset_roles(RoleKind::M2MRole, namespaced, now);
        indexer.reset_roles(RoleKind::ClusterM2MRole, cluster, now);
        indexer.reset_namespaces(namespaces.into_iter().filter_map(NamespaceSource::new), now);
        indexer.reset_accounts(accounts.into_iter().filter_map(AccountSource::new), now);
        indexer.reset_credentials(
            credentials.into_iter().filter_map(CredentialSource::new),
            now,
        );
        indexer.snapshot()
    }

    /// Client ids of the credentials binding the Kubernetes ServiceAccount
    /// with this subject (workload identity).
    pub(crate) fn by_subject(&self, subject: &str) -> &[String] {
        self.by_subject.get(subject).map_or(&[], Vec::as_slice)
    }

    /// Client ids of the credentials binding `subject` of `issuer` (federation).
    pub(crate) fn by_federated(
        &self,
        issuer: &crate::core::federation::IssuerId,
        subject: &str,
    ) -> &[String] {
        self.by_federated
            .get(&(issuer.clone(), subject.to_owned()))
            .map_or(&[], Vec::as_slice)
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

/// A credential as the indexer holds it: the spec its grant is resolved
/// from, and the entry published in the index.
#[derive(Debug, Clone)]
struct CredentialRecord {
    spec: M2MCredentialSpec,
    entry: Arc<CredentialEntry>,
}

/// The writer side of the [`CredentialIndex`]: applies one watched change
/// at a time (apply, delete, or reset after a relist, as linkerd's policy
/// index does) and updates only the credentials the change affects. A
/// ServiceAccount change re-resolves the credentials bound to it, a
/// Namespace policy change those of its namespace, a role change those of
/// the accounts referencing it — found through the secondary maps, never by
/// scanning every credential. Only a change of the operator's default role
/// touches every credential, as it is every account's role.
///
/// The watches and [`CredentialIndex::build`] (tests, the bench server)
/// both go through these operations.
#[derive(Debug, Clone)]
pub(crate) struct CredentialIndexer {
    default_policy: ScopePolicy,
    credentials: HashMap<ObjectKey, CredentialRecord>,
    /// Live ServiceAccounts (those being deleted are absent).
    accounts: HashMap<ObjectKey, ServiceAccountSpec>,
    /// Namespaces with the policy annotation.
    policies: HashMap<String, PolicyResult>,
    /// (namespace, ServiceAccount name) → names of its credentials.
    by_account: HashMap<ObjectKey, BTreeSet<String>>,
    /// namespace → names of its credentials.
    by_namespace: HashMap<String, BTreeSet<String>>,
    /// The `ClusterM2MRole` every account is granted (`--default-role`).
    default_role: Option<String>,
    /// Live roles of both kinds → their scopes.
    roles: HashMap<RoleKey, BTreeSet<String>>,
    /// role → the accounts whose `roleRefs` name it.
    by_role: HashMap<RoleKey, BTreeSet<ObjectKey>>,
    index: CredentialIndex,
}

impl CredentialIndexer {
    /// An empty index; namespaces without the annotation get `default_policy`.
    pub fn new(default_policy: ScopePolicy) -> Self {
        Self {
            default_policy,
            credentials: HashMap::new(),
            accounts: HashMap::new(),
            policies: HashMap::new(),
            by_account: HashMap::new(),
            by_namespace: HashMap::new(),
            default_role: None,
            roles: HashMap::new(),
            by_role: HashMap::new(),
            index: CredentialIndex::default(),
        }
    }

    /// Grant `role` (a `ClusterM2MRole`) to every account; set before the
    /// first change is applied.
    pub(crate) fn with_default_role(mut self, role: Option<String>) -> Self {
        self.default_role = role.filter(|r| !r.is_empty());
        self
    }

    /// The roles of `account` in `namespace`.
    fn account_roles(&self, namespace: &str, account: &ServiceAccountSpec) -> RoleResolution {
        resolve_roles(account, self.default_role.as_deref(), |r| {
            self.roles.get(&role_key(namespace, r)).cloned()
        })
    }

    /// The current index, to publish (cheap: structure is shared).
    pub fn snapshot(&self) -> CredentialIndex {
        self.index.clone()
    }

    /// Number of credentials in the index.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn grant(
        &self,
        namespace: &str,
        spec: &M2MCredentialSpec,
        now: DateTime<Utc>,
    ) -> Result<Grant, GrantError> {
        let account = self
            .accounts
            .get(&(namespace.to_owned(), spec.service_account_name.clone()));
        let policy = match self.policies.get(namespace) {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(e),
            None => Ok(&self.default_policy),
        };
        let roles = match account {
            Some(a) => self.account_roles(namespace, a),
            None => Ok(RoleGrant::none()),
        };
        resolve_grant(spec, account, &roles, policy, now)
    }

    /// Add or replace a credential. Returns whether the index changed.
    pub(crate) fn apply_credential(
        &mut self,
        source: CredentialSource,
        now: DateTime<Utc>,
    ) -> bool {
        if source.deleting {
            return self.delete_credential(&source.namespace, &source.name);
        }
        let key = (source.namespace, source.name);
        let api_token_end = api_token_end(&source.spec, source.next_rotation);
        if let Some(record) = self.credentials.get(&key)
            && record.spec == source.spec
            && record.entry.uid == source.uid
            && record.entry.verifiers == source.verifiers
            && record.entry.workload_epoch == source.workload_epoch
            && record.entry.federation_epoch.as_ref() == source.federation_epoch.as_deref()
            && record.entry.api_token_end == api_token_end
        {
            return false;
        }
        self.delete_credential(&key.0, &key.1);
        let (namespace, name) = key;
        let grant = self.grant(&namespace, &source.spec, now);
        let account_name = source.spec.service_account_name.clone();
        let client_id = client_id_for_uid(&source.uid);
        let api_token = source.spec.type_ == CredentialType::ApiToken;
        // An API token never authenticates through workload identity.
        let workload = source
            .spec
            .workload_identity
            .as_ref()
            .filter(|_| !api_token)
            .map(|wi| crate::core::workload::resolve_binding(&namespace, wi));
        // No secret works with workload identity set (an APIToken with
        // workloadIdentity is refused as a whole), nor an API token without
        // an end (the controller also drops its verifiers).
        // Federation hook: neither an API token nor a workload-identity
        // credential authenticates through an external issuer.
        let federation = source
            .spec
            .federation
            .as_ref()
            .filter(|_| !api_token && workload.is_none())
            .map(|f| {
                Arc::new(crate::core::federation::FederationBinding::resolve(
                    &namespace, f,
                ))
            });
        if let Some(f) = &federation {
            let key = (f.issuer.clone(), f.subject.clone());
            let mut ids = self
                .index
                .by_federated
                .get(&key)
                .cloned()
                .unwrap_or_default();
            ids.push(client_id.clone());
            self.index.by_federated.insert(key, ids);
        }
        let no_secret = source.spec.workload_identity.is_some()
            || source.spec.federation.is_some()
            || (api_token
                && source.spec.expires_at.is_none()
                && source.spec.rotation.every.is_none());
        if let Some(Ok(binding)) = &workload {
            let subject = binding.subject();
            let mut ids = self
                .index
                .by_subject
                .get(&subject)
                .cloned()
                .unwrap_or_default();
            ids.push(client_id.clone());
            self.index.by_subject.insert(subject, ids);
        }
        let entry = Arc::new(CredentialEntry {
            subject: format!("m2m:{namespace}:{account_name}"),
            default_scope: default_scope(&grant),
            grant,
            namespace: namespace.clone(),
            name: name.clone(),
            uid: source.uid,
            client_id: client_id.clone(),
            service_account: account_name.clone(),
            // A credential switched to workload identity accepts no
            // secret, even before the controller clears its verifiers.
            verifiers: if no_secret { vec![] } else { source.verifiers },
            seals: SealCache::default(),
            workload_epoch: if workload.is_some() {
                source.workload_epoch
            } else {
                None
            },
            sender: crate::core::sender::SenderPolicy::of(&source.spec),
            workload,
            federation_epoch: federation.as_ref().and(source.federation_epoch.map(|b| *b)),
            federation,
            api_token,
            api_token_end,
        });
        self.index.by_client_id.insert(client_id, entry.clone());
        self.by_account
            .entry((namespace.clone(), account_name))
            .or_default()
            .insert(name.clone());
        self.by_namespace
            .entry(namespace.clone())
            .or_default()
            .insert(name.clone());
        self.credentials.insert(
            (namespace, name),
            CredentialRecord {
                spec: source.spec,
                entry,
            },
        );
        true
    }

    /// Remove a credential. Returns whether the index changed.
    pub(crate) fn delete_credential(&mut self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(record) = self.credentials.remove(&key) else {
            return false;
        };
        let entry = &record.entry;
        if self
            .index
            .by_client_id
            .get(&entry.client_id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            self.index.by_client_id.remove(&entry.client_id);
        }
        if let Some(Ok(binding)) = &entry.workload {
            remove_id(
                &mut self.index.by_subject,
                binding.subject(),
                &entry.client_id,
            );
        }
        if let Some(f) = &entry.federation {
            let key = (f.issuer.clone(), f.subject.clone());
            remove_id(&mut self.index.by_federated, key, &entry.client_id);
        }
        let account_key = (key.0, entry.service_account.clone());
        if let Some(names) = self.by_account.get_mut(&account_key) {
            names.remove(name);
            if names.is_empty() {
                self.by_account.remove(&account_key);
            }
        }
        if let Some(names) = self.by_namespace.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
        true
    }

    /// Replace every credential with `sources` (after a relist): removes
    /// the ones no longer listed, applies the others (unchanged ones cost a
    /// comparison only).
    pub(crate) fn reset_credentials(
        &mut self,
        sources: impl IntoIterator<Item = CredentialSource>,
        now: DateTime<Utc>,
    ) -> bool {
        let sources: Vec<_> = sources.into_iter().collect();
        let gone = unlisted(
            &self.credentials,
            sources
                .iter()
                .filter(|s| !s.deleting)
                .map(|s| (s.namespace.as_str(), s.name.as_str())),
        );
        let mut changed = false;
        for (ns, name) in gone {
            changed |= self.delete_credential(&ns, &name);
        }
        for source in sources {
            changed |= self.apply_credential(source, now);
        }
        changed
    }

    /// Add or replace a ServiceAccount; re-resolves its credentials only.
    pub(crate) fn apply_account(&mut self, source: AccountSource, now: DateTime<Utc>) -> bool {
        if source.deleting {
            return self.delete_account(&source.namespace, &source.name, now);
        }
        let key = (source.namespace, source.name);
        if self.accounts.get(&key) == Some(&source.spec) {
            return false;
        }
        self.link_roles(&key, &source.spec.role_refs);
        if let Some(previous) = self.accounts.insert(key.clone(), source.spec) {
            self.unlink_roles(&key, &previous.role_refs);
        }
        self.refresh(&key.0, self.by_account.get(&key).cloned(), now)
    }

    /// Remove a ServiceAccount; re-resolves its credentials only.
    pub(crate) fn delete_account(
        &mut self,
        namespace: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(previous) = self.accounts.remove(&key) else {
            return false;
        };
        self.unlink_roles(&key, &previous.role_refs);
        self.refresh(namespace, self.by_account.get(&key).cloned(), now)
    }

    /// Record that `account` references `refs`.
    fn link_roles(&mut self, account: &ObjectKey, refs: &[RoleRef]) {
        for r in refs {
            self.by_role
                .entry(role_key(&account.0, r))
                .or_default()
                .insert(account.clone());
        }
    }

    /// Forget `account`'s references `old`, except those its current spec
    /// (if any) still has.
    fn unlink_roles(&mut self, account: &ObjectKey, old: &[RoleRef]) {
        let current = self.accounts.get(account).map(|a| a.role_refs.clone());
        for r in old {
            if current.as_ref().is_some_and(|c| c.contains(r)) {
                continue;
            }
            let key = role_key(&account.0, r);
            if let Some(accounts) = self.by_role.get_mut(&key) {
                accounts.remove(account);
                if accounts.is_empty() {
                    self.by_role.remove(&key);
                }
            }
        }
    }

    /// Add or replace a role; re-resolves the credentials of the accounts
    /// granted it only.
    pub(crate) fn apply_role(&mut self, source: RoleSource, now: DateTime<Utc>) -> bool {
        if source.deleting {
            return self.delete_role(source.kind, &source.namespace, &source.name, now);
        }
        let key = source.key();
        if self.roles.get(&key) == Some(&source.scopes) {
            return false;
        }
        self.roles.insert(key.clone(), source.scopes);
        self.refresh_role(&key, now)
    }

    /// Remove a role (`namespace` is ignored for a `ClusterM2MRole`);
    /// re-resolves the credentials of the accounts granted it only.
    pub(crate) fn delete_role(
        &mut self,
        kind: RoleKind,
        namespace: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> bool {
        let key = role_key(
            namespace,
            &RoleRef {
                kind,
                name: name.to_owned(),
            },
        );
        if self.roles.remove(&key).is_none() {
            return false;
        }
        self.refresh_role(&key, now)
    }

    /// Replace every role of `kind` with `sources` (after a relist).
    pub(crate) fn reset_roles(
        &mut self,
        kind: RoleKind,
        sources: impl IntoIterator<Item = RoleSource>,
        now: DateTime<Utc>,
    ) -> bool {
        let sources: Vec<_> = sources.into_iter().filter(|s| s.kind == kind).collect();
        let listed: HashSet<RoleKey> = sources
            .iter()
            .filter(|s| !s.deleting)
            .map(RoleSource::key)
            .collect();
        let gone: Vec<RoleKey> = self
            .roles
            .keys()
            .filter(|k| k.0 == kind && !listed.contains(*k))
            .cloned()
            .collect();
        let mut changed = false;
        for (kind, ns, name) in gone {
            changed |= self.delete_role(kind, &ns, &name, now);
        }
        for source in sources {
            changed |= self.apply_role(source, now);
        }
        changed
    }

    /// Re-resolve the credentials of the accounts granted the role `key`:
    /// those referencing it, or every account for the default role.
    fn refresh_role(&mut self, key: &RoleKey, now: DateTime<Utc>) -> bool {
        let is_default = key.0 == RoleKind::ClusterM2MRole
            && self.default_role.as_deref() == Some(key.2.as_str());
        let accounts: Vec<ObjectKey> = if is_default {
            self.accounts.keys().cloned().collect()
        } else {
            self.by_role
                .get(key)
                .map(|a| a.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut changed = false;
        for account in accounts {
            let names = self.by_account.get(&account).cloned();
            changed |= self.refresh(&account.0, names, now);
        }
        changed
    }

    /// Replace every ServiceAccount with `sources` (after a relist).
    pub(crate) fn reset_accounts(
        &mut self,
        sources: impl IntoIterator<Item = AccountSource>,
        now: DateTime<Utc>,
    ) -> bool {
        let sources: Vec<_> = sources.into_iter().collect();
        let gone = unlisted(
            &self.accounts,
            sources
                .iter()
                .filter(|s| !s.deleting)
                .map(|s| (s.namespace.as_str(), s.name.as_str())),
        );
        let mut changed = false;
        for (ns, name) in gone {
            changed |= self.delete_account(&ns, &name, now);
        }
        for source in sources {
            changed |= self.apply_account(source, now);
        }
        changed
    }

    /// Set a namespace's policy; re-resolves that namespace's credentials only.
    pub(crate) fn apply_namespace(&mut self, source: NamespaceSource, now: DateTime<Utc>) -> bool {
        let previous = match source.policy {
            Some(policy) => {
                if self.policies.get(&source.name) == Some(&policy) {
                    return false;
                }
                self.policies.insert(source.name.clone(), policy)
            }
            None => match self.policies.remove(&source.name) {
                Some(previous) => Some(previous),
                None => return false,
            },
        };
        drop(previous);
        let names = self.by_namespace.get(&source.name).cloned();
        self.refresh(&source.name, names, now)
    }

    /// A namespace is gone: its credentials fall back to the default policy.
    pub(crate) fn delete_namespace(&mut self, name: &str, now: DateTime<Utc>) -> bool {
        self.apply_namespace(
            NamespaceSource {
                name: name.to_owned(),
                policy: None,
            },
            now,
        )
    }

    /// Replace every namespace policy with `sources` (after a relist).
    pub(crate) fn reset_namespaces(
        &mut self,
        sources: impl IntoIterator<Item = NamespaceSource>,
        now: DateTime<Utc>,
    ) -> bool {
        let sources: Vec<_> = sources.into_iter().filter(|s| s.policy.is_some()).collect();
        let listed: HashSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .policies
            .keys()
            .filter(|ns| !listed.contains(ns.as_str()))
            .cloned()
            .collect();
        drop(listed);
        let mut changed = false;
        for ns in gone {
            changed |= self.delete_namespace(&ns, now);
        }
        for source in sources {
            changed |= self.apply_namespace(source, now);
        }
        changed
    }

    /// Re-resolve the grants of the named credentials of `namespace`.
    fn refresh(
        &mut self,
        namespace: &str,
        names: Option<BTreeSet<String>>,
        now: DateTime<Utc>,
    ) -> bool {
        let mut changed = false;
        for name in names.into_iter().flatten() {
            let key = (namespace.to_owned(), name);
            let Some(record) = self.credentials.get(&key) else {
                continue;
            };
            let grant = self.grant(namespace, &record.spec, now);
            if grant == record.entry.grant {
                continue;
            }
            let entry = Arc::new(CredentialEntry {
                default_scope: default_scope(&grant),
                grant,
                ..CredentialEntry::clone(&record.entry)
            });
            let client_id = entry.client_id.clone();
            if let Some(record) = self.credentials.get_mut(&key) {
                record.entry = entry.clone();
            }
            self.index.by_client_id.insert(client_id, entry);
            changed = true;
        }
        changed
    }
}

/// The keys of `known` that a relist no longer shows (`listed`).
fn unlisted<'a, V>(
    known: &HashMap<ObjectKey, V>,
    listed: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<ObjectKey> {
    let listed: HashSet<(&str, &str)> = listed.collect();
    known
        .keys()
        .filter(|(ns, name)| !listed.contains(&(ns.as_str(), name.as_str())))
        .cloned()
        .collect()
}

/// When a scheduled API token stops working: the published next rotation
/// plus the grace period; `None` for anything else.
fn api_token_end(
    spec: &M2MCredentialSpec,
    next_rotation: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    if spec.type_ != CredentialType::ApiToken {
        return None;
    }
    let grace = match spec.rotation.grace_period.as_deref() {
        Some(g) => crate::core::duration::parse_duration(g).ok()?,
        None => std::time::Duration::ZERO,
    };
    next_rotation?.checked_add_signed(chrono::Duration::from_std(grace).ok()?)
}

/// The space-separated default scopes: all of the grant's.
fn default_scope(grant: &Result<Grant, GrantError>) -> String {
    grant
        .as_ref()
        .map(|g| {
            g.scopes
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
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
    Secret(#[from] KeySecretError),
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

/// Everything the handlers read, swapped atomically by the watches.
#[derive(Debug, Default)]
pub struct TokenState {
    credentials: ArcSwap<CredentialIndex>,
    keys: ArcSwapOption<KeyMaterial>,
    revocations: Revocations,
    usage: super::usage::UsageTracker,
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

    /// Revoked tokens (this replica's knowledge and the stored lists).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Recorded and written usage (outside the index snapshot: recording
    /// a use never republishes the index).
    pub fn usage(&self) -> &super::usage::UsageTracker {
        &self.usage
    }

    /// Replace the credential index.
    pub(crate) fn set_credentials(&self, index: CredentialIndex) {
        self.credentials.store(Arc::new(index));
    }

    /// Replace (or clear) the keys.
    pub(crate) fn set_keys(&self, keys: Option<KeyMaterial>) {
        self.keys.store(keys.map(Arc::new));
    }
}

/// The credential unknown client ids are checked against: no verifiers,
/// fields of typical length, so the work equals a real credential's.
pub(crate) fn unknown_client() -> &'static CredentialEntry {
    static UNKNOWN: std::sync::LazyLock<CredentialEntry> = std::sync::LazyLock::new(|| {
        let uid = "00000000-0000-4000-8000-000000000000";
        CredentialEntry {
            namespace: "unknown-namespace".into(),
            name: "unknown-credential".into(),
            uid: uid.into(),
            client_id: crate::core::client_secret::client_id_for_uid(uid),
            service_account: String::new(),
            subject: String::new(),
            grant: Err(GrantError::Expired(DateTime::<Utc>::MIN_UTC)),
            default_scope: String::new(),
            verifiers: Vec::new(),
            workload: None,
            workload_epoch: None,
            federation: None,
            federation_epoch: None,
            api_token: false,
            api_token_end: None,
            seals: Default::default(),
            sender: Default::default(),
        }
    });
    &UNKNOWN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ALLOWED_SCOPES_ANNOTATION;
    use crate::crd::M2MCredentialStatus;
    use chrono::TimeZone;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    const NAMESPACES: [&str; 3] = ["a", "b", "c"];
    const ACCOUNTS: [&str; 3] = ["bot", "ci", "web"];
    const CREDENTIALS: [&str; 4] = ["one", "two", "three", "four"];
    const SCOPES: [&str; 4] = ["read", "write", "admin", "repo:read"];
    const ROLES: [&str; 3] = ["base", "ops", "audit"];

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
    }

    fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
        from[rng.random_range(0..from.len())]
    }

    fn scopes(rng: &mut StdRng) -> Vec<String> {
        SCOPES
            .iter()
            .filter(|_| rng.random_bool(0.5))
            .map(|s| s.to_string())
            .collect()
    }

    fn meta(ns: Option<&str>, name: &str, rng: &mut StdRng) -> ObjectMeta {
        ObjectMeta {
            namespace: ns.map(str::to_owned),
            name: Some(name.to_owned()),
            deletion_timestamp: rng.random_bool(0.1).then(|| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )
            }),
            ..Default::default()
        }
    }

    /// The cluster as the watches would see it.
    #[derive(Default)]
    struct World {
        credentials: BTreeMap<ObjectKey, M2MCredential>,
        accounts: BTreeMap<ObjectKey, ServiceAccount>,
        namespaces: BTreeMap<String, ObjectMeta>,
        roles: BTreeMap<RoleKey, RoleSource>,
        default_role: Option<String>,
        incarnation: u64,
    }

    impl World {
        fn credential(&mut self, rng: &mut StdRng) -> M2MCredential {
            let ns = pick(rng, &NAMESPACES);
            let name = pick(rng, &CREDENTIALS);
            // Same object updated, or deleted and created again (new UID).
            let uid = match self.credentials.get(&(ns.into(), name.into())) {
                Some(c) if rng.random_bool(0.8) => c.metadata.uid.clone(),
                _ => {
                    self.incarnation += 1;
                    Some(format!("uid-{ns}-{name}-{}", self.incarnation))
                }
            };
            let mut metadata = meta(Some(ns), name, rng);
            metadata.uid = uid;
            let verifiers = (0..rng.random_range(0..3))
                .map(|v| SecretVerifier {
                    version: v,
                    digest: format!("d{}", rng.random_range(0..3)),
                    not_after: None,
                    seal: Some("s".into()),
                })
                .collect();
            let api_token = rng.random_bool(0.3);
            M2MCredential {
                metadata,
                spec: M2MCredentialSpec {
                    service_account_name: pick(rng, &ACCOUNTS).into(),
                    scopes: scopes(rng),
                    description: Some("ignored".into()),
                    token_ttl: rng.random_bool(0.2).then(|| "30m".into()),
                    type_: if api_token {
                        crate::crd::CredentialType::ApiToken
                    } else {
                        crate::crd::CredentialType::ClientSecret
                    },
                    rotation: crate::crd::CredentialRotation {
                        every: rng.random_bool(0.5).then(|| "720h".into()),
                        grace_period: rng.random_bool(0.5).then(|| "1h".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                status: Some(M2MCredentialStatus {
                    verifiers,
                    next_rotation_time: rng
                        .random_bool(0.5)
                        .then(|| now() + chrono::Duration::hours(rng.random_range(1..3))),
                    ..Default::default()
                }),
            }
        }

        fn account(&self, rng: &mut StdRng) -> ServiceAccount {
            ServiceAccount {
                metadata: meta(Some(pick(rng, &NAMESPACES)), pick(rng, &ACCOUNTS), rng),
                spec: ServiceAccountSpec {
                    scopes: scopes(rng),
                    disabled: rng.random_bool(0.1),
                    token_ttl: rng.random_bool(0.2).then(|| "15m".into()),
                    role_refs: (0..rng.random_range(0..3))
                        .map(|_| role_ref(rng))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
                status: None,
            }
        }

        fn namespace(&self, rng: &mut StdRng) -> ObjectMeta {
            let mut m = meta(None, pick(rng, &NAMESPACES), rng);
            m.deletion_timestamp = None;
            let policy = match rng.random_range(0..4) {
                0 => None,
                1 => Some("*".to_owned()),
                2 => Some("read, repo:*".to_owned()),
                _ => Some("not a [policy".to_owned()),
            };
            m.annotations = policy.map(|p| [(ALLOWED_SCOPES_ANNOTATION.to_owned(), p)].into());
            m
        }

        fn role(&self, rng: &mut StdRng) -> RoleSource {
            let r = role_ref(rng);
            RoleSource {
                kind: r.kind,
                namespace: match r.kind {
                    RoleKind::M2MRole => pick(rng, &NAMESPACES).into(),
                    RoleKind::ClusterM2MRole => String::new(),
                },
                name: r.name,
                scopes: scopes(rng).into_iter().collect(),
                deleting: rng.random_bool(0.1),
            }
        }

        fn build(&self, default_policy: &ScopePolicy) -> CredentialIndex {
            CredentialIndex::build_with_roles(
                self.credentials.values(),
                self.accounts.values(),
                self.namespaces.values(),
                self.roles.values().filter(|r| !r.deleting).cloned(),
                default_policy,
                self.default_role.as_deref(),
                now(),
            )
        }
    }

    fn role_ref(rng: &mut StdRng) -> RoleRef {
        RoleRef {
            kind: if rng.random_bool(0.5) {
                RoleKind::M2MRole
            } else {
                RoleKind::ClusterM2MRole
            },
            name: pick(rng, &ROLES).into(),
        }
    }

    fn key(meta: &ObjectMeta) -> ObjectKey {
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }

    /// Any sequence of watch events leaves the index equal to a full build
    /// from the objects that exist afterwards.
    #[test]
    fn incremental_updates_equal_a_full_build() {
        let default_policy = ScopePolicy::parse("read, write, repo:*").unwrap();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut world = World {
                default_role: (seed % 2 == 0).then(|| "base".to_owned()),
                ..Default::default()
            };
            let mut indexer = CredentialIndexer::new(default_policy.clone())
                .with_default_role(world.default_role.clone());
            for step in 0..60 {
                match rng.random_range(0..12) {
                    9 => {
                        let r = world.role(&mut rng);
                        indexer.apply_role(r.clone(), now());
                        world.roles.insert(r.key(), r);
                    }
                    10 => {
                        let r = world.role(&mut rng);
                        indexer.delete_role(r.kind, &r.namespace, &r.name, now());
                        world.roles.remove(&r.key());
                    }
                    11 => {
                        let kind = role_ref(&mut rng).kind;
                        world
                            .roles
                            .retain(|k, _| k.0 != kind || rng.random_bool(0.6));
                        let r = world.role(&mut rng);
                        if r.kind == kind {
                            world.roles.insert(r.key(), r);
                        }
                        indexer.reset_roles(kind, world.roles.values().cloned(), now());
                    }
                    0 | 1 => {
                        let c = world.credential(&mut rng);
                        indexer.apply_credential(CredentialSource::new(&c).unwrap(), now());
                        world.credentials.insert(key(&c.metadata), c);
                    }
                    2 => {
                        let c = world.credential(&mut rng);
                        let (ns, name) = key(&c.metadata);
                        indexer.delete_credential(&ns, &name);
                        world.credentials.remove(&(ns, name));
                    }
                    3 => {
                        let a = world.account(&mut rng);
                        indexer.apply_account(AccountSource::new(&a).unwrap(), now());
                        world.accounts.insert(key(&a.metadata), a);
                    }
                    4 => {
                        let a = world.account(&mut rng);
                        let (ns, name) = key(&a.metadata);
                        indexer.delete_account(&ns, &name, now());
                        world.accounts.remove(&(ns, name));
                    }
                    5 => {
                        let n = world.namespace(&mut rng);
                        indexer.apply_namespace(NamespaceSource::new(&n).unwrap(), now());
                        world.namespaces.insert(n.name.clone().unwrap(), n);
                    }
                    6 => {
                        let n = world.namespace(&mut rng);
                        let name = n.name.clone().unwrap();
                        indexer.delete_namespace(&name, now());
                        world.namespaces.remove(&name);
                    }
                    7 => {
                        // A relist: some objects changed or vanished meanwhile.
                        world.credentials.retain(|_, _| rng.random_bool(0.7));
                        for _ in 0..rng.random_range(0..4) {
                            let c = world.credential(&mut rng);
                            world.credentials.insert(key(&c.metadata), c);
                        }
                        indexer.reset_credentials(
                            world.credentials.values().filter_map(CredentialSource::new),
                            now(),
                        );
                    }
                    _ => {
                        if rng.random_bool(0.5) {
                            world.accounts.retain(|_, _| rng.random_bool(0.7));
                            let a = world.account(&mut rng);
                            world.accounts.insert(key(&a.metadata), a);
                            indexer.reset_accounts(
                                world.accounts.values().filter_map(AccountSource::new),
                                now(),
                            );
                        } else {
                            world.namespaces.retain(|_, _| rng.random_bool(0.7));
                            let n = world.namespace(&mut rng);
                            world.namespaces.insert(n.name.clone().unwrap(), n);
                            indexer.reset_namespaces(
                                world.namespaces.values().filter_map(NamespaceSource::new),
                                now(),
                            );
                        }
                    }
                }
                let expected = world.build(&default_policy);
                assert_eq!(
                    indexer.snapshot(),
                    expected,
                    "seed {seed}, step {step}: incremental index differs from a full build"
                );
            }
        }
    }

    fn credential(ns: &str, name: &str, account: &str) -> M2MCredential {
        M2MCredential {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{ns}-{name}")),
                ..Default::default()
            },
            spec: M2MCredentialSpec {
                service_account_name: account.into(),
                ..Default::default()
            },
            status: None,
        }
    }

    fn account(ns: &str, name: &str, scopes: &[&str]) -> AccountSource {
        AccountSource {
            namespace: ns.into(),
            name: name.into(),
            spec: ServiceAccountSpec {
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            deleting: false,
        }
    }

    /// A role change replaces the entries of the credentials of the accounts
    /// granted that role (every account for the default role) and shares
    /// every other one; a deleted role refuses their grant.
    #[test]
    fn a_role_change_touches_only_the_credentials_granted_it() {
        let mut indexer = CredentialIndexer::new(ScopePolicy::parse("read, write, ping").unwrap())
            .with_default_role(Some("base".into()));
        let role = |kind, ns: &str, name: &str, scopes: &[&str]| RoleSource {
            kind,
            namespace: ns.into(),
            name: name.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            deleting: false,
        };
        indexer.apply_role(role(RoleKind::ClusterM2MRole, "", "base", &[]), now());
        indexer.apply_role(role(RoleKind::M2MRole, "a", "writer", &["write"]), now());
        for ns in ["a", "b"] {
            for acct in ["x", "y"] {
                let mut source = account(ns, acct, &["read"]);
                if acct == "x" {
                    source.spec.role_refs = vec![RoleRef {
                        kind: RoleKind::M2MRole,
                        name: "writer".into(),
                    }];
                }
                indexer.apply_account(source, now());
                let c = credential(ns, &format!("{acct}0"), acct);
                indexer.apply_credential(CredentialSource::new(&c).unwrap(), now());
            }
        }
        let entry = |ix: &CredentialIndexer, ns: &str, name: &str| {
            ix.snapshot()
                .get(&client_id_for_uid(&format!("uid-{ns}-{name}")))
                .cloned()
                .unwrap()
        };
        assert_eq!(entry(&indexer, "a", "x0").default_scope, "read write");
        assert_eq!(
            entry(&indexer, "a", "x0")
                .grant
                .as_ref()
                .unwrap()
                .roles
                .names("a"),
            ["a/writer", "base"]
        );
        // b/x references a role its namespace does not have.
        assert_eq!(
            entry(&indexer, "b", "x0")
                .grant
                .as_ref()
                .unwrap_err()
                .to_string(),
            "roles not found: M2MRole/writer"
        );
        let changed = |before: &CredentialIndex, after: &CredentialIndex| {
            let mut ids: Vec<String> = after
                .by_client_id
                .iter()
                .filter(|(id, e)| !before.get(id).is_some_and(|b| Arc::ptr_eq(b, e)))
                .map(|(_, e)| format!("{}/{}", e.namespace, e.name))
                .collect();
            ids.sort();
            ids
        };

        let before = indexer.snapshot();
        let same = role(RoleKind::M2MRole, "a", "writer", &["write"]);
        assert!(
            !indexer.apply_role(same, now()),
            "an unchanged role changes nothing"
        );
        let edited = role(RoleKind::M2MRole, "a", "writer", &["ping"]);
        assert!(indexer.apply_role(edited, now()));
        assert_eq!(changed(&before, &indexer.snapshot()), ["a/x0"]);
        assert_eq!(entry(&indexer, "a", "x0").default_scope, "ping read");

        // The default role reaches every account.
        let before = indexer.snapshot();
        assert!(indexer.apply_role(role(RoleKind::ClusterM2MRole, "", "base", &["ping"]), now()));
        assert_eq!(
            changed(&before, &indexer.snapshot()),
            ["a/x0", "a/y0", "b/y0"],
            "b/x0 stays refused"
        );
        // Deleting a role refuses the grants of its accounts only.
        let before = indexer.snapshot();
        assert!(indexer.delete_role(RoleKind::M2MRole, "a", "writer", now()));
        assert_eq!(changed(&before, &indexer.snapshot()), ["a/x0"]);
        assert_eq!(
            entry(&indexer, "a", "x0")
                .grant_at(now())
                .unwrap_err()
                .reason(),
            "RoleNotFound"
        );
        // A deleted default role refuses everyone, never a narrower grant.
        assert!(indexer.delete_role(RoleKind::ClusterM2MRole, "", "base", now()));
        for (ns, name) in [("a", "y0"), ("b", "y0")] {
            assert_eq!(
                entry(&indexer, ns, name)
                    .grant
                    .as_ref()
                    .unwrap_err()
                    .to_string(),
                "roles not found: ClusterM2MRole/base (the operator's default role)"
            );
        }
    }

    /// A ServiceAccount or namespace-policy change replaces the entries of
    /// the credentials it governs and shares every other one.
    #[test]
    fn a_change_touches_only_the_credentials_it_affects() {
        let mut indexer = CredentialIndexer::new(ScopePolicy::allow_all());
        for ns in ["a", "b"] {
            for acct in ["x", "y"] {
                indexer.apply_account(account(ns, acct, &["read"]), now());
                for i in 0..3 {
                    let c = credential(ns, &format!("{acct}{i}"), acct);
                    indexer.apply_credential(CredentialSource::new(&c).unwrap(), now());
                }
            }
        }
        assert_eq!(indexer.len(), 12);
        let changed_ids = |before: &CredentialIndex, after: &CredentialIndex| {
            let mut ids: Vec<String> = after
                .by_client_id
                .iter()
                .filter(|(id, e)| !before.get(id).is_some_and(|b| Arc::ptr_eq(b, e)))
                .map(|(_, e)| format!("{}/{}", e.namespace, e.name))
                .collect();
            ids.sort();
            ids
        };

        let before = indexer.snapshot();
        assert!(indexer.apply_account(account("a", "x", &["read", "write"]), now()));
        assert_eq!(
            changed_ids(&before, &indexer.snapshot()),
            ["a/x0", "a/x1", "a/x2"]
        );
        let entry = indexer.snapshot();
        let entry = entry.get(&client_id_for_uid("uid-a-x0")).unwrap();
        assert_eq!(entry.default_scope, "read write");

        let before = indexer.snapshot();
        let policy = NamespaceSource {
            name: "b".into(),
            policy: Some(ScopePolicy::parse("write")),
        };
        assert!(indexer.apply_namespace(policy.clone(), now()));
        assert_eq!(
            changed_ids(&before, &indexer.snapshot()),
            ["b/x0", "b/x1", "b/x2", "b/y0", "b/y1", "b/y2"]
        );
        // The same policy again changes nothing.
        let before = indexer.snapshot();
        assert!(!indexer.apply_namespace(policy, now()));
        assert_eq!(indexer.snapshot(), before);

        // Deleting a credential removes it at once; unknown deletes are no-ops.
        assert!(indexer.delete_credential("a", "y1"));
        assert!(!indexer.delete_credential("a", "y1"));
        assert!(
            indexer
                .snapshot()
                .get(&client_id_for_uid("uid-a-y1"))
                .is_none()
        );
        assert_eq!(indexer.len(), 11);
    }
}
