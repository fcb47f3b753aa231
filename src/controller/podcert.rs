//! The `m2m.dev/workload-identity` signer of Kubernetes Pod certificates
//! (SPEC §10): the kubelet asks, with a `PodCertificateRequest`, for a
//! certificate for a key it generated in a Pod's `podCertificate` projected
//! volume; this controller signs it when a workload-identity
//! `M2MCredential` binds the Pod's core ServiceAccount, and denies it (a
//! `Denied` condition with a reason, and a Warning Event on the Pod)
//! otherwise. The decisions are [`crate::core::podcert`]; the certificates
//! are made by [`crate::core::pod_ca`].
//!
//! Two loops, both only while this replica leads:
//!
//! - [`maintain_ca`]: the CA in its own Secret in the operator namespace
//!   (`--pod-certificate-ca-secret`; only the controller's Role reads it),
//!   created once, rotated every `--pod-certificate-ca-rotation`, and
//!   published as the `ClusterTrustBundle` `m2m.dev:workload-identity:<operator
//!   namespace>` with `spec.signerName: m2m.dev/workload-identity`. A
//!   rotated CA stays in the bundle (and in the Secret, without its key)
//!   until the last certificate it signed has expired; the new CA signs
//!   only [`BUNDLE_PROPAGATION`] after the bundle that holds it was written,
//!   so token servers watching the bundle trust it before any Pod presents
//!   a certificate it signed. Write order: the Secret, then the bundle, then
//!   the in-memory signer.
//! - the request controller: requests with `spec.signerName` this signer
//!   (field selector), each decided once: a request with an `Issued`,
//!   `Denied` or `Failed` condition is final (the API makes them so).
//!
//! Types: `k8s-openapi` 0.29 (pinned) has neither `PodCertificateRequest`
//! nor `certificates.k8s.io/v1` `ClusterTrustBundle` (both became v1 in
//! Kubernetes 1.37), so the request is a small typed
//! [`kube::core::Object`] over an [`ApiResource`] and the bundle is
//! applied as JSON.

use super::Context;
use crate::core::pod_ca::{CaError, PodCa};
use crate::core::podcert::{
    self, BindingState, CaPolicy, Denial, Issuance, RequestFacts, RetiredCa, SIGNER_NAME,
};
use crate::core::workload::resolve_binding;
use crate::labels::FIELD_MANAGER;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::core::Object;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a new CA is in the published bundle before it signs.
pub const BUNDLE_PROPAGATION: Duration = Duration::from_secs(10);

/// The Secret data keys of the CA.
mod keys {
    pub const CERT: &str = "ca.crt";
    pub const KEY: &str = "ca.key";
    pub const NAME: &str = "ca.name";
    pub const RETIRED: &str = "retired.json";
}

/// The signer's settings (`--pod-certificates*`), resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCertConfig {
    /// Whether this controller signs at all.
    pub enabled: bool,
    /// The SPIFFE trust domain of the URI SANs.
    pub trust_domain: String,
    /// Name of the CA Secret in the operator namespace.
    pub ca_secret: String,
    /// How long a CA signs.
    pub rotate_every: Duration,
}

/// Flags of the Pod-certificate signer (part of the controller's).
#[derive(Debug, Clone, clap::Args)]
pub struct PodCertificateArgs {
    /// Act as the `PodCertificateRequest` signer `m2m.dev/workload-identity`
    /// (needs Kubernetes 1.37, where `certificates.k8s.io/v1` serves
    /// PodCertificateRequests and ClusterTrustBundles).
    #[arg(long, env = "M2M_POD_CERTIFICATES")]
    pub pod_certificates: bool,

    /// SPIFFE trust domain of Pod certificates (`spiffe://<it>/ns/<ns>/sa/<name>`)
    /// [default: the issuer URL's host].
    #[arg(long, env = "M2M_POD_CERTIFICATE_TRUST_DOMAIN", value_parser = trust_domain)]
    pub pod_certificate_trust_domain: Option<String>,

    /// The Secret (in the operator namespace) holding the Pod-certificate CA key.
    #[arg(
        long,
        env = "M2M_POD_CERTIFICATE_CA_SECRET",
        default_value = "m2m-operator-pod-ca"
    )]
    pub pod_certificate_ca_secret: String,

    /// How long a Pod-certificate CA signs before a new one replaces it
    /// (the old one stays trusted until its last certificate expires, 24 h later).
    #[arg(long, env = "M2M_POD_CERTIFICATE_CA_ROTATION", default_value = "720h", value_parser = rotation)]
    pub pod_certificate_ca_rotation: Duration,
}

fn trust_domain(value: &str) -> Result<String, String> {
    if podcert::is_trust_domain(value) {
        Ok(value.to_owned())
    } else {
        Err("a SPIFFE trust domain: lowercase letters, digits, '.', '-', '_'".into())
    }
}

/// At least a minute (tests rotate fast), at most ten years.
fn rotation(value: &str) -> Result<Duration, String> {
    let d = crate::core::duration::parse_duration(value).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(10 * 366 * 86_400) {
        return Err("between 1m and 10 years".into());
    }
    Ok(d)
}

impl PodCertificateArgs {
    /// The settings, with the issuer URL for the default trust domain.
    pub fn resolve(&self, issuer: &str) -> PodCertConfig {
        PodCertConfig {
            enabled: self.pod_certificates,
            trust_domain: self
                .pod_certificate_trust_domain
                .clone()
                .or_else(|| podcert::trust_domain_of_issuer(issuer))
                .unwrap_or_else(|| "cluster.local".to_owned()),
            ca_secret: self.pod_certificate_ca_secret.clone(),
            rotate_every: self.pod_certificate_ca_rotation,
        }
    }
}

/// `spec` of a `certificates.k8s.io/v1` `PodCertificateRequest` (the
/// fields this signer reads).
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodCertificateRequestSpec {
    /// The signer asked.
    pub signer_name: String,
    /// The Pod.
    pub pod_name: String,
    /// Its UID.
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// The Pod's core ServiceAccount.
    pub service_account_name: String,
    /// Its UID.
    #[serde(rename = "serviceAccountUID")]
    pub service_account_uid: String,
    /// The Pod's node.
    pub node_name: String,
    /// Its UID.
    #[serde(rename = "nodeUID")]
    pub node_uid: String,
    /// The longest lifetime the Pod accepts.
    #[serde(default)]
    pub max_expiration_seconds: Option<i32>,
    /// DER PKCS#10 request, signed by the Pod's key (checked by the apiserver).
    #[serde(rename = "stubPKCS10Request", default)]
    pub stub_pkcs10_request: Option<ByteString>,
    /// Free-form input from the Pod author.
    #[serde(default)]
    pub unverified_user_annotations: Option<BTreeMap<String, String>>,
}

/// `status` of a `PodCertificateRequest` (what this signer reads).
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodCertificateRequestStatus {
    /// `Issued`, `Denied` or `Failed` once decided.
    #[serde(default)]
    pub conditions: Option<Vec<Condition>>,
}

/// A `certificates.k8s.io/v1` `PodCertificateRequest`.
pub type PodCertificateRequest = Object<PodCertificateRequestSpec, PodCertificateRequestStatus>;

/// The API resource of `PodCertificateRequest`s.
pub fn request_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("certificates.k8s.io", "v1", "PodCertificateRequest");
    ApiResource::from_gvk_with_plural(&gvk, "podcertificaterequests")
}

fn bundle_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("certificates.k8s.io", "v1", "ClusterTrustBundle");
    ApiResource::from_gvk_with_plural(&gvk, "clustertrustbundles")
}

/// The name of the bundle this operator publishes: bundles of a signer
/// must be named `<signer with ':' for '/'>:<anything>`.
pub fn bundle_name(operator_namespace: &str) -> String {
    format!("{}:{operator_namespace}", SIGNER_NAME.replace('/', ":"))
}

/// Everything that can fail in the signer, by step.
#[derive(Debug, thiserror::Error)]
pub enum PodCertError {
    /// An API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// What was being done.
        step: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// No CA yet (first start-up, or the CA Secret is unusable).
    #[error("the Pod-certificate CA is not loaded yet")]
    CaNotReady,
    /// Making or loading a CA failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The CA Secret exists but is not what this controller writes; it is
    /// never overwritten (delete it to start over with a new CA).
    #[error("the CA Secret {0} is malformed: {1}")]
    MalformedSecret(String, &'static str),
}

fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> PodCertError {
    move |source| PodCertError::Kube { step, source }
}

/// State shared by the two loops.
struct Signer {
    ctx: Arc<Context>,
    config: PodCertConfig,
    ca: arc_swap::ArcSwapOption<PodCa>,
}

/// Run the signer until `stop` (while leading).
pub(crate) async fn run(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let config = ctx.config.pod_certificates.clone();
    if !config.enabled {
        return;
    }
    let signer = Arc::new(Signer {
        ctx: ctx.clone(),
        config,
        ca: Default::default(),
    });
    let ca_loop = tokio::spawn(maintain_ca(signer.clone()));
    let api: Api<PodCertificateRequest> = match &ctx.config.watch_namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &request_resource()),
        None => Api::all_with(ctx.client.clone(), &request_resource()),
    };
    let selector = watcher::Config::default().fields(&format!("spec.signerName={SIGNER_NAME}"));
    tracing::info!(signer = SIGNER_NAME, trust_domain = %signer.config.trust_domain, "signing Pod certificates");
    Controller::new_with(api, selector, request_resource())
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, signer)
        .for_each(|_| futures::future::ready(()))
        .await;
    ca_loop.abort();
}

/// Whether a request is decided (its status is final).
fn decided(request: &PodCertificateRequest) -> bool {
    request
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                matches!(c.type_.as_str(), "Issued" | "Denied" | "Failed") && c.status == "True"
            })
        })
}

/// Whether a workload-identity credential in `namespace` binds the core
/// ServiceAccount `name`, from the controller's credential store.
fn binding_state(ctx: &Context, namespace: &str, name: &str) -> BindingState {
    let mut bound = vec![];
    let mut refused = false;
    for cred in ctx.credentials.state() {
        if cred.namespace().as_deref() != Some(namespace)
            || cred.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(wi) = &cred.spec.workload_identity else {
            continue;
        };
        if wi.kubernetes_service_account != name {
            continue;
        }
        match resolve_binding(namespace, wi) {
            Ok(_) => bound.push(cred.name_any()),
            Err(_) => refused = true,
        }
    }
    match (bound.is_empty(), refused) {
        (false, _) => BindingState::Bound(bound),
        (true, true) => BindingState::DefaultNotAllowed,
        (true, false) => BindingState::NotBound,
    }
}

async fn reconcile(
    request: Arc<PodCertificateRequest>,
    signer: Arc<Signer>,
) -> Result<Action, PodCertError> {
    if request.spec.signer_name != SIGNER_NAME || decided(&request) {
        return Ok(Action::await_change());
    }
    let ns = request.namespace().unwrap_or_default();
    let spec = &request.spec;
    let binding = binding_state(&signer.ctx, &ns, &spec.service_account_name);
    let stub = spec.stub_pkcs10_request.as_ref().map(|b| b.0.as_slice());
    let facts = RequestFacts {
        namespace: &ns,
        pod_name: &spec.pod_name,
        pod_uid: &spec.pod_uid,
        service_account_name: &spec.service_account_name,
        service_account_uid: &spec.service_account_uid,
        node_name: &spec.node_name,
        node_uid: &spec.node_uid,
        max_expiration_seconds: spec.max_expiration_seconds,
        stub_pkcs10: stub.unwrap_or_default(),
        user_annotations: spec.unverified_user_annotations.as_ref(),
        pod_owners: request
            .owner_references()
            .iter()
            .filter(|o| o.kind == "Pod" && o.api_version == "v1")
            .map(|o| (o.name.as_str(), o.uid.as_str()))
            .collect(),
    };
    let now = Utc::now();
    match podcert::decide(&facts, &binding, &signer.config.trust_domain, now) {
        Ok(issuance) => {
            let ca = signer.ca.load_full().ok_or(PodCertError::CaNotReady)?;
            match ca.sign(&issuance) {
                Ok(pem) => {
                    issue(&signer, &request, &issuance, &pem, now).await?;
                    tracing::info!(
                        namespace = %ns, request = %request.name_any(), pod = %spec.pod_name,
                        spiffe_id = %issuance.spiffe_id, key_type = issuance.key.key_type.as_str(),
                        not_after = %issuance.not_after, credentials = ?binding,
                        "Pod certificate issued"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, namespace = %ns, request = %request.name_any(), "signing a Pod certificate failed");
                    let failure = Denial {
                        reason: "SigningFailed",
                        message: error.to_string(),
                    };
                    conclude(&signer, &request, "Failed", &failure, now).await?;
                }
            }
        }
        Err(denial) => {
            conclude(&signer, &request, "Denied", &denial, now).await?;
            tracing::info!(
                namespace = %ns, request = %request.name_any(), pod = %spec.pod_name,
                reason = denial.reason, message = %denial.message, "Pod certificate denied"
            );
            deny_event(&signer.ctx, &request, &denial).await;
        }
    }
    Ok(Action::await_change())
}

fn error_policy(
    _request: Arc<PodCertificateRequest>,
    error: &PodCertError,
    _signer: Arc<Signer>,
) -> Action {
    tracing::warn!(%error, "Pod certificate request not decided; retrying");
    match error {
        PodCertError::CaNotReady => Action::requeue(Duration::from_secs(1)),
        PodCertError::Kube {
            source: kube::Error::Api(s),
            ..
        } if s.code == 409 => Action::requeue(Duration::from_millis(500)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

fn condition(
    type_: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> serde_json::Value {
    serde_json::json!({
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn apply_status(
    signer: &Signer,
    request: &PodCertificateRequest,
    status: serde_json::Value,
) -> Result<(), PodCertError> {
    let ns = request.namespace().unwrap_or_default();
    let api: Api<PodCertificateRequest> =
        Api::namespaced_with(signer.ctx.client.clone(), &ns, &request_resource());
    let patch = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "PodCertificateRequest",
        "status": status,
    });
    match api
        .patch_status(
            &request.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile (its Pod went away): nothing to answer.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err("apply PodCertificateRequest status")(e)),
    }
}

async fn issue(
    signer: &Signer,
    request: &PodCertificateRequest,
    issuance: &Issuance,
    chain: &str,
    now: DateTime<Utc>,
) -> Result<(), PodCertError> {
    let message = format!(
        "issued {} until {}",
        issuance.spiffe_id,
        rfc3339(issuance.not_after)
    );
    let status = serde_json::json!({
        "conditions": [condition("Issued", "Issued", &message, request.metadata.generation, now)],
        "certificateChain": chain,
        "notBefore": rfc3339(issuance.not_before),
        "beginRefreshAt": rfc3339(issuance.begin_refresh_at),
        "notAfter": rfc3339(issuance.not_after),
    });
    apply_status(signer, request, status).await
}

async fn conclude(
    signer: &Signer,
    request: &PodCertificateRequest,
    type_: &str,
    denial: &Denial,
    now: DateTime<Utc>,
) -> Result<(), PodCertError> {
    let status = serde_json::json!({
        "conditions": [condition(type_, denial.reason, &denial.message, request.metadata.generation, now)],
    });
    apply_status(signer, request, status).await
}

/// A Warning Event on the Pod (where `kubectl describe pod` shows it),
/// naming the request. Failures are logged, never fatal.
async fn deny_event(ctx: &Context, request: &PodCertificateRequest, denial: &Denial) {
    let ns = request.namespace();
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(request.spec.pod_name.clone()),
        namespace: ns.clone(),
        uid: Some(request.spec.pod_uid.clone()),
        ..Default::default()
    };
    let pcr = ObjectReference {
        api_version: Some("certificates.k8s.io/v1".into()),
        kind: Some("PodCertificateRequest".into()),
        name: Some(request.name_any()),
        namespace: ns,
        uid: request.uid(),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "PodCertificateDenied".into(),
        note: Some(format!(
            "{SIGNER_NAME} denied {}: {}: {}",
            request.name_any(),
            denial.reason,
            denial.message
        )),
        action: "Sign".into(),
        secondary: Some(pcr),
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod).await {
        tracing::warn!(error = %e, "could not publish the denial event");
    }
}

/// What the CA Secret holds.
struct StoredCa {
    current: PodCa,
    retired: Vec<RetiredCa>,
    resource_version: Option<String>,
}

fn read_stored(secret: &Secret) -> Result<StoredCa, PodCertError> {
    let name = secret.name_any();
    let data = secret.data.as_ref();
    let get = |k: &'static str| -> Result<String, PodCertError> {
        let bytes = data
            .and_then(|d| d.get(k))
            .ok_or_else(|| PodCertError::MalformedSecret(name.clone(), k))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| PodCertError::MalformedSecret(name.clone(), k))
    };
    let current = PodCa::load(&get(keys::CERT)?, &get(keys::KEY)?, &get(keys::NAME)?)?;
    let retired = match data.and_then(|d| d.get(keys::RETIRED)) {
        None => vec![],
        Some(b) => serde_json::from_slice(&b.0)
            .map_err(|_| PodCertError::MalformedSecret(name.clone(), keys::RETIRED))?,
    };
    Ok(StoredCa {
        current,
        retired,
        resource_version: secret.resource_version(),
    })
}

fn secret_of(config: &PodCertConfig, namespace: &str, stored: &StoredCa) -> Secret {
    let data = BTreeMap::from([
        (
            keys::CERT.to_owned(),
            ByteString(stored.current.certificate.clone().into_bytes()),
        ),
        (
            keys::KEY.to_owned(),
            ByteString(stored.current.key_pem().into_bytes()),
        ),
        (
            keys::NAME.to_owned(),
            ByteString(stored.current.common_name.clone().into_bytes()),
        ),
        (
            keys::RETIRED.to_owned(),
            ByteString(serde_json::to_vec(&stored.retired).unwrap_or_default()),
        ),
    ]);
    let mut secret = Secret {
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    secret.metadata.name = Some(config.ca_secret.clone());
    secret.metadata.namespace = Some(namespace.to_owned());
    secret.metadata.resource_version = stored.resource_version.clone();
    secret.metadata.labels = Some(BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "m2m-operator".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "pod-certificate-ca".to_owned(),
        ),
    ]));
    secret
}

/// The bundle's PEM: the signing CA first, then the retired ones.
fn bundle_pem(stored: &StoredCa) -> String {
    std::iter::once(stored.current.certificate.as_str())
        .chain(stored.retired.iter().map(|r| r.certificate.as_str()))
        .map(|p| p.trim_end().to_owned() + "\n")
        .collect()
}

/// Keep the CA current for ever: one round, then wait until the next one
/// is due (at most a minute, so a deleted bundle comes back soon).
async fn maintain_ca(signer: Arc<Signer>) {
    loop {
        let wait = match reconcile_ca(&signer, Utc::now()).await {
            Ok(next) => (next - Utc::now())
                .to_std()
                .unwrap_or_default()
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            Err(error) => {
                tracing::warn!(%error, "reconciling the Pod-certificate CA failed; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One round of the CA: create or rotate it, drop retired CAs no longer
/// needed, write the Secret (optimistically: with its resourceVersion),
/// publish the bundle, then sign with it. Returns when to look again.
async fn reconcile_ca(signer: &Signer, now: DateTime<Utc>) -> Result<DateTime<Utc>, PodCertError> {
    let ctx = &signer.ctx;
    let ns = &ctx.config.operator_namespace;
    let config = &signer.config;
    let policy = CaPolicy {
        rotate_every: chrono::Duration::from_std(config.rotate_every)
            .unwrap_or(chrono::Duration::days(30)),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = secrets
        .get_opt(&config.ca_secret)
        .await
        .map_err(kube_err("read the CA Secret"))?;
    let mut stored;
    let mut write = false;
    let mut rotated = false;
    match existing {
        None => {
            let (nb, na) = policy.ca_validity(now);
            stored = StoredCa {
                current: PodCa::generate(nb, na)?,
                retired: vec![],
                resource_version: None,
            };
            let secret = secret_of(config, ns, &stored);
            // Created, never applied over: a concurrent creator wins and
            // this round starts again from what it wrote.
            let created = secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(kube_err("create the CA Secret"))?;
            stored.resource_version = created.resource_version();
            tracing::info!(secret = %config.ca_secret, ca = %stored.current.common_name, "Pod-certificate CA created");
        }
        Some(secret) => {
            stored = read_stored(&secret)?;
            if let Err((reason, message)) =
                policy.rotation(stored.current.not_before, stored.current.not_after, now)
            {
                let (nb, na) = policy.ca_validity(now);
                let next = PodCa::generate(nb, na)?;
                let old = std::mem::replace(&mut stored.current, next);
                stored.retired.insert(
                    0,
                    RetiredCa {
                        certificate: old.certificate.clone(),
                        // It may sign until the new CA takes over.
                        retired_at: now
                            + chrono::Duration::from_std(BUNDLE_PROPAGATION).unwrap_or_default(),
                    },
                );
                // Until then the old one signs (it is valid for an hour past
                // its last 24 h certificate).
                signer.ca.store(Some(Arc::new(old)));
                tracing::info!(reason, %message, ca = %stored.current.common_name, "Pod-certificate CA rotated");
                write = true;
                rotated = true;
            }
            let kept = podcert::retired_still_needed(&stored.retired, now);
            if kept.len() != stored.retired.len() {
                stored.retired = kept;
                write = true;
            }
        }
    }
    if write {
        let secret = secret_of(config, ns, &stored);
        secrets
            .patch(
                &config.ca_secret,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(kube_err("update the CA Secret"))?;
    }
    publish_bundle(ctx, &stored).await?;
    if rotated {
        tokio::time::sleep(BUNDLE_PROPAGATION).await;
    }
    let next = policy
        .rotation(
            stored.current.not_before,
            stored.current.not_after,
            Utc::now(),
        )
        .unwrap_or(now);
    let next = stored
        .retired
        .iter()
        .map(RetiredCa::needed_until)
        .fold(next, DateTime::min);
    signer.ca.store(Some(Arc::new(stored.current)));
    Ok(next)
}

async fn publish_bundle(ctx: &Context, stored: &StoredCa) -> Result<(), PodCertError> {
    let name = bundle_name(&ctx.config.operator_namespace);
    let api: Api<kube::api::DynamicObject> = Api::all_with(ctx.client.clone(), &bundle_resource());
    let bundle = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "ClusterTrustBundle",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "m2m-operator",
                "app.kubernetes.io/component": "pod-certificate-ca",
            },
        },
        "spec": { "signerName": SIGNER_NAME, "trustBundle": bundle_pem(stored) },
    });
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&bundle),
    )
    .await
    .map_err(kube_err("apply the ClusterTrustBundle"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        pod: PodCertificateArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let f = Flags::try_parse_from(["x"]).unwrap();
        let c = f.pod.resolve("http://m2m-operator.m2m-system.svc:8080");
        assert!(!c.enabled);
        assert_eq!(c.trust_domain, "m2m-operator.m2m-system.svc");
        assert_eq!(c.ca_secret, "m2m-operator-pod-ca");
        assert_eq!(c.rotate_every, Duration::from_secs(720 * 3600));
        let f = Flags::try_parse_from([
            "x",
            "--pod-certificates",
            "--pod-certificate-trust-domain",
            "cluster.local",
            "--pod-certificate-ca-rotation",
            "2m",
        ])
        .unwrap();
        let c = f.pod.resolve("https://id.example");
        assert!(c.enabled);
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.rotate_every, Duration::from_secs(120));
        for bad in [
            ["x", "--pod-certificate-trust-domain", "Cluster.Local"],
            ["x", "--pod-certificate-ca-rotation", "10s"],
        ] {
            assert!(Flags::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            bundle_name("m2m-system"),
            "m2m.dev:workload-identity:m2m-system"
        );
    }

    #[test]
    fn the_bundle_lists_the_signing_ca_first() {
        let now = Utc::now();
        let ca = PodCa::generate(now, now + chrono::Duration::days(2)).unwrap();
        let stored = StoredCa {
            retired: vec![RetiredCa {
                certificate: "-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----".into(),
                retired_at: now,
            }],
            current: ca,
            resource_version: None,
        };
        let pem = bundle_pem(&stored);
        assert!(pem.starts_with(&stored.current.certificate));
        assert!(pem.ends_with("old\n-----END CERTIFICATE-----\n"));
        let secret = secret_of(
            &PodCertificateArgs::try_parse_from_flags().resolve("https://a"),
            "ops",
            &stored,
        );
        let back = read_stored(&secret).unwrap();
        assert_eq!(back.current.certificate, stored.current.certificate);
        assert_eq!(back.retired, stored.retired);
    }

    impl PodCertificateArgs {
        fn try_parse_from_flags() -> Self {
            Flags::try_parse_from(["x"]).unwrap().pod
        }
    }

    #[test]
    fn a_request_is_read_as_the_apiserver_serves_it() {
        let json = serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "PodCertificateRequest",
            "metadata": {"name": "r", "namespace": "team-a", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "pu"}]},
            "spec": {
                "signerName": SIGNER_NAME, "podName": "p", "podUID": "pu",
                "serviceAccountName": "s", "serviceAccountUID": "su",
                "nodeName": "n", "nodeUID": "nu", "maxExpirationSeconds": 3600,
                "stubPKCS10Request": "AAEC"
            },
            "status": {"conditions": [{"type": "Denied", "status": "True", "reason": "X",
                "message": "m", "lastTransitionTime": "2026-12-02T00:00:00Z"}]}
        });
        let r: PodCertificateRequest = serde_json::from_value(json).unwrap();
        assert_eq!(r.spec.pod_uid, "pu");
        assert_eq!(r.spec.max_expiration_seconds, Some(3600));
        assert_eq!(r.spec.stub_pkcs10_request.as_ref().unwrap().0, [0, 1, 2]);
        assert!(decided(&r));
        let r2: PodCertificateRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "PodCertificateRequest",
            "metadata": {"name": "r"}, "spec": {"signerName": SIGNER_NAME, "podName": "p",
            "podUID": "pu", "serviceAccountName": "s", "serviceAccountUID": "su",
            "nodeName": "n", "nodeUID": "nu"}
        }))
        .unwrap();
        assert!(!decided(&r2));
    }
}
