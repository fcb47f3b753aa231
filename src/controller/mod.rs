//! The reconcilers: `M2MCredential` → Secret + verification state,
//! `ServiceAccount` → status, and the operator's own key Secret. They run
//! only while this replica holds the leader Lease. [`keys`] maintains the
//! operator key Secret (verifier key and JWT signing keys).

pub mod credential;
pub mod federation;
pub mod issuer;
pub mod keys;
pub mod lease;
pub mod podcert;
pub mod restart;
pub mod run;
pub mod secret;
pub mod service_account;
pub(crate) mod usage;
pub mod workload;

use crate::core::grant::{ScopePolicy, ScopePolicyError};
use crate::core::policy::namespace_policy;
use crate::core::roles::{RoleResolution, resolve_roles};
use crate::core::verifier::VerifierKey;
use crate::crd::{
    ClusterM2MRole, M2MCredential, M2MRole, RoleKind, ServiceAccount, ServiceAccountSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use std::time::Duration;

/// Everything that can fail in a reconcile, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{}: {source}", step.description())]
    Kube {
        /// What the controller was doing.
        step: Step,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object lacks a field the apiserver always sets.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// The verifier key is not loaded yet.
    #[error("the operator key Secret is not loaded yet")]
    KeysNotReady,
    /// The operator key Secret could not be reconciled.
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    /// The OS random generator failed.
    #[error(transparent)]
    Randomness(#[from] crate::core::client_secret::RandomnessError),
}

impl Error {
    /// Short label for the reconcile-errors metric.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { step, .. } => step.metric_label(),
            Self::MissingField(_) => "missing_field",
            Self::KeysNotReady => "keys_not_ready",
            Self::Keys(_) => "keys",
            Self::Randomness(_) => "randomness",
        }
    }

    /// How long to wait before retrying: conflicts resolve fast, the key
    /// Secret appears within seconds, anything else backs off further.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            Self::Kube {
                source: kube::Error::Api(s),
                ..
            } if s.code == 409 => Duration::from_millis(500),
            Self::KeysNotReady | Self::Keys(_) => Duration::from_secs(1),
            Self::Kube { .. } => Duration::from_secs(5),
            Self::MissingField(_) | Self::Randomness(_) => Duration::from_secs(30),
        }
    }
}

/// The API call a reconcile was making when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading a credential's Secret.
    ReadSecret,
    /// Applying a credential's Secret.
    ApplySecret,
    /// Reading the Secret under a credential's previous `secretName`.
    ReadOldSecret,
    /// Deleting the Secret under a credential's previous `secretName`.
    DeleteOldSecret,
    /// Applying a credential's status.
    PatchCredentialStatus,
    /// Applying a ServiceAccount's status.
    PatchServiceAccountStatus,
    /// Reading or patching a `rotation.restartTargets` workload.
    RestartTarget,
    /// Applying a ClusterTrustedIssuer's or TrustedIssuer's status.
    PatchIssuerStatus,
}

impl Step {
    /// The `reason` label of `m2m_reconcile_errors_total`.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Self::ReadSecret => "read_secret",
            Self::ApplySecret => "apply_secret",
            Self::ReadOldSecret => "read_old_secret",
            Self::DeleteOldSecret => "delete_old_secret",
            Self::PatchCredentialStatus => "patch_credential_status",
            Self::PatchServiceAccountStatus => "patch_serviceaccount_status",
            Self::RestartTarget => "restart_target",
            Self::PatchIssuerStatus => "patch_issuer_status",
        }
    }

    /// What the controller was doing, for logs.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::ReadSecret => "read Secret",
            Self::ApplySecret => "apply Secret",
            Self::ReadOldSecret => "read old Secret",
            Self::DeleteOldSecret => "delete old Secret",
            Self::PatchCredentialStatus => "patch credential status",
            Self::PatchServiceAccountStatus => "patch ServiceAccount status",
            Self::RestartTarget => "restart a rotation.restartTargets workload",
            Self::PatchIssuerStatus => "patch issuer status",
        }
    }
}

/// Wrap a kube error with the step that produced it.
pub(crate) fn kube_err(step: Step) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// Static configuration of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Namespace of the key Secret and the Lease.
    pub operator_namespace: String,
    /// Only this namespace is reconciled, if set.
    pub watch_namespace: Option<String>,
    /// Issuer URL written into Secrets.
    pub issuer: String,
    /// Token endpoint URL written into Secrets.
    pub token_url: String,
    /// Policy for namespaces without the allowed-scopes annotation.
    pub default_policy: ScopePolicy,
    /// This replica's name (Events, Lease identity).
    pub instance: Option<String>,
    /// Longest life of an API token (`--max-api-token-lifetime`).
    pub max_api_token_lifetime: Duration,
    /// The `ClusterM2MRole` granted to every ServiceAccount (`--default-role`).
    pub default_role: Option<String>,
    /// The Pod-certificate signer (`--pod-certificates*`, [`podcert`]).
    pub pod_certificates: podcert::PodCertConfig,
}

/// Shared state of the reconcilers.
pub(crate) struct Context {
    /// API client.
    pub client: Client,
    /// Configuration.
    pub config: ControllerConfig,
    /// Event publisher.
    pub recorder: Recorder,
    /// m2m ServiceAccounts, kept current by a reflector.
    pub accounts: Store<ServiceAccount>,
    /// Credentials, kept current by the credential controller's reflector.
    pub credentials: Store<M2MCredential>,
    /// Namespaces (for the scope policy annotation).
    pub namespaces: Store<Namespace>,
    /// M2MRoles, kept current by a reflector.
    pub roles: Store<M2MRole>,
    /// ClusterM2MRoles, kept current by a reflector.
    pub cluster_roles: Store<ClusterM2MRole>,
    /// The HMAC key of the verification state.
    pub verifier_key: arc_swap::ArcSwapOption<VerifierKey>,
    /// Fingerprints of verifier keys this process held before the current
    /// one (the key Secret was replaced while it ran).
    pub former_key_ids: arc_swap::ArcSwap<Vec<String>>,
    /// Reconcile and credential metrics.
    pub metrics: crate::telemetry::Metrics,
    /// The latest trusted usage seen per credential ([`usage`]).
    pub usage_memory: usage::UsageMemory,
    /// Trusted issuers (federation, [`issuer`]).
    pub issuers: issuer::IssuerStores,
}

impl Context {
    /// The scope policy of `namespace`: its annotation, else the default.
    pub(crate) fn policy_for(&self, namespace: &str) -> Result<ScopePolicy, ScopePolicyError> {
        let ns = self.namespaces.get(&ObjectRef::new(namespace));
        namespace_policy(
            ns.as_ref().map(|n| &n.metadata),
            &self.config.default_policy,
        )
    }

    /// The roles of `account` in `namespace`: its `roleRefs` and the
    /// default role, from the reflector stores.
    pub(crate) fn roles_for(
        &self,
        namespace: &str,
        account: &ServiceAccountSpec,
    ) -> RoleResolution {
        resolve_roles(account, self.config.default_role.as_deref(), |r| {
            match r.kind {
                RoleKind::M2MRole => self
                    .roles
                    .get(&ObjectRef::new(&r.name).within(namespace))
                    .map(|role| role.spec.scopes.iter().cloned().collect()),
                RoleKind::ClusterM2MRole => self
                    .cluster_roles
                    .get(&ObjectRef::new(&r.name))
                    .map(|role| role.spec.scopes.iter().cloned().collect()),
            }
        })
    }

    /// Publish an event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// The event reporter identity of replica `instance`.
pub(crate) fn reporter(instance: Option<String>) -> Reporter {
    Reporter {
        controller: "m2m-operator".into(),
        instance,
    }
}

/// Test-only crash injection (cargo feature `test-hooks`, which the
/// integration tests build with; release builds compile it out): when
/// `M2M_TEST_FAILPOINT` names this point, the process aborts here as a
/// crash would (no cleanup, no status write).
#[cfg(feature = "test-hooks")]
pub(crate) fn failpoint(name: &str) {
    if std::env::var("M2M_TEST_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint hit: aborting");
        std::process::abort();
    }
}

/// Without the `test-hooks` feature a failpoint is nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn failpoint(_name: &str) {}
