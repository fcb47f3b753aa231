//! Federation at the token endpoint (SPEC §9): a JWT of a trusted external
//! issuer — another cluster's service-account token, a CI system's OIDC
//! token, a SPIFFE JWT-SVID — authenticates the credential that binds its
//! issuer and exact `sub`, as the RFC 7523 §2.2 `client_assertion` of a
//! `client_credentials` request or as the RFC 8693 `subject_token` with
//! `subject_token_type=urn:ietf:params:oauth:token-type:jwt`.
//!
//! **Offline.** Every replica watches `ClusterTrustedIssuer`s,
//! `TrustedIssuer`s and Namespace labels itself and fetches each issuer's
//! keys itself ([`crate::core::federation::fetch`]): at start (a new or
//! changed issuer object), every `--federation-refresh-interval` (5 min),
//! and on a token whose `kid` is unknown — at most once per 10 s per
//! issuer, the request waiting up to 2 s for it. When a refresh fails the
//! last good keys are kept, for at most `--federation-max-key-staleness`
//! (24 h) after their last success; after that the issuer's tokens get
//! `503 temporarily_unavailable` until a refresh succeeds. No request
//! makes an API call or a fetch except that rate-limited unknown-`kid` one.
//!
//! **Routing.** The assertion's unverified `iss` picks the issuer objects
//! with that exact issuer URL; the credential is the one named by
//! `client_id`, else the only one binding (issuer, unverified `sub`).
//! Then, in order: the namespace may bind the issuer (a `TrustedIssuer`
//! only its own; a `ClusterTrustedIssuer` by `allowedNamespaces`), the
//! signature and claims verify ([`crate::core::federation::verify`]), `sub`
//! is exactly the bound subject, every `claimValidationRules` rule and the
//! credential's `condition` hold. Any failure is the same `401
//! invalid_client` (repeated failures: `429`), with the reason in the
//! `m2m_federation_assertions_total{issuer, result}` metric and a debug log.
//!
//! **Cache.** A verified token (signature, claims and the issuer's rules)
//! is remembered under the SHA-256 of the token — never the token — until
//! its `exp`, at most `--assertion-cache-ttl`, at most
//! `--assertion-cache-entries` per issuer. The issuer's keys changing or
//! its spec changing empties it. The credential's own checks (binding,
//! namespace, condition, epoch) run on every request.

use super::TokenServer;
use super::error::OAuthError;
use super::index::{CredentialEntry, KeyMaterial};
use crate::admin::ReadyFlag;
use crate::core::federation::fetch::{self, FetchError, Fetched, KeySource};
use crate::core::federation::keys::KeySet;
use crate::core::federation::rules::Claims;
use crate::core::federation::verify::{self, ClaimPolicy, Refused};
use crate::core::federation::{
    CompiledIssuer, DEFAULT_MAX_KEY_STALENESS, DEFAULT_REFRESH_INTERVAL, IssuerError, IssuerId,
    UNKNOWN_KID_REFRESH_MIN_INTERVAL,
};
use crate::crd::{ClusterTrustedIssuer, IssuerKind, IssuerSpec, TrustedIssuer};
use crate::telemetry::Metrics;
use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The client authentication method's name in metrics and audit lines.
pub(crate) const METHOD: &str = "federated_jwt";
/// RFC 8693 `subject_token_type` of a federated JWT.
pub(crate) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// How long a request waits for an unknown-`kid` refresh.
const KID_REFRESH_WAIT: Duration = Duration::from_secs(2);
/// First retry delay after a failed refresh (doubling up to the interval).
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(5);

/// The bounds of federation on one replica.
#[derive(Debug, Clone, Copy)]
pub struct FederationBounds {
    /// Scheduled key refresh.
    pub refresh_interval: Duration,
    /// Keys are used at most this long after their last successful refresh.
    pub max_key_staleness: Duration,
    /// A verified token is reused at most this long (never past `exp`).
    pub cache_ttl: Duration,
    /// Most verified tokens cached per issuer.
    pub cache_entries: usize,
    /// An unknown `kid` refreshes at most this often per issuer.
    pub unknown_kid_interval: Duration,
}

impl Default for FederationBounds {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            max_key_staleness: DEFAULT_MAX_KEY_STALENESS,
            cache_ttl: crate::core::workload::DEFAULT_CACHE_TTL,
            cache_entries: crate::core::workload::DEFAULT_CACHE_ENTRIES,
            unknown_kid_interval: UNKNOWN_KID_REFRESH_MIN_INTERVAL,
        }
    }
}

/// Keys of one issuer and when they were fetched.
struct LoadedKeys {
    set: KeySet,
    fetched: Instant,
}

/// A verified token remembered by hash.
#[derive(Clone)]
struct Cached {
    subject: String,
    claims: Claims,
    /// `Err(why)` when a claim rule failed.
    rules: Result<(), String>,
    until: i64,
}

/// One issuer object on this replica: compiled spec, keys, refresher, cache.
pub(crate) struct IssuerRuntime {
    compiled: Result<CompiledIssuer, IssuerError>,
    /// What it was compiled from, to notice changes.
    source: (IssuerSpec, Option<LabelSelector>),
    keys: ArcSwapOption<LoadedKeys>,
    /// Wakes the refresher early (unknown `kid`).
    wake: tokio::sync::Notify,
    /// Counts finished refresh attempts (requests wait on it).
    attempts: tokio::sync::watch::Sender<u64>,
    last_kid_refresh: Mutex<Option<Instant>>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for IssuerRuntime {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

impl IssuerRuntime {
    /// The keys if fresh enough.
    fn usable_keys(&self, bounds: &FederationBounds) -> Option<Arc<LoadedKeys>> {
        self.keys
            .load_full()
            .filter(|k| k.fetched.elapsed() <= bounds.max_key_staleness)
    }

    fn cached(&self, key: &[u8; 32], now: i64) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache.get(key).filter(|c| c.until > now).cloned()
    }

    fn remember(&self, key: [u8; 32], value: Cached, now: i64, capacity: usize) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if capacity == 0 {
            return;
        }
        if cache.len() >= capacity && !cache.contains_key(&key) {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= capacity {
                let drop: Vec<[u8; 32]> =
                    cache.keys().take((capacity / 8).max(1)).copied().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key, value);
    }

    /// Ask for a refresh because of an unknown `kid` (rate limited) and
    /// wait for it; whether one ran.
    async fn refresh_for_unknown_kid(&self, bounds: &FederationBounds) -> bool {
        {
            let Ok(mut last) = self.last_kid_refresh.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < bounds.unknown_kid_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut attempts = self.attempts.subscribe();
        attempts.mark_unchanged();
        self.wake.notify_one();
        tokio::time::timeout(KID_REFRESH_WAIT, attempts.changed())
            .await
            .is_ok()
    }
}

/// Every issuer this replica trusts, by object and by issuer URL.
#[derive(Default)]
struct IssuerTable {
    by_id: HashMap<IssuerId, Arc<IssuerRuntime>>,
    by_url: HashMap<String, Vec<IssuerId>>,
}

impl IssuerTable {
    fn rebuild_urls(&mut self) {
        self.by_url.clear();
        for (id, rt) in &self.by_id {
            if let Ok(c) = &rt.compiled {
                self.by_url
                    .entry(c.issuer.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
    }
}

/// The federation state of one token-server replica.
pub(crate) struct FederationState {
    issuers: ArcSwap<IssuerTable>,
    namespaces: ArcSwap<HashMap<String, BTreeMap<String, String>>>,
    client: Option<kube::Client>,
    operator_namespace: String,
    bounds: FederationBounds,
    metrics: Metrics,
}

impl std::fmt::Debug for FederationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationState")
            .field("issuers", &self.issuers.load().by_id.len())
            .finish_non_exhaustive()
    }
}

impl FederationState {
    /// A state that trusts nothing until [`run_watches`] fills it.
    pub fn new(
        client: Option<kube::Client>,
        operator_namespace: &str,
        bounds: FederationBounds,
        metrics: Metrics,
    ) -> Self {
        Self {
            issuers: ArcSwap::from_pointee(IssuerTable::default()),
            namespaces: ArcSwap::from_pointee(HashMap::new()),
            client,
            operator_namespace: operator_namespace.to_owned(),
            bounds,
            metrics,
        }
    }

    /// Whether some issuer object has exactly this issuer URL.
    pub fn trusts(&self, iss: &str) -> bool {
        self.issuers.load().by_url.contains_key(iss)
    }

    /// Apply an issuer object (added or changed): a changed spec replaces
    /// its runtime (new keys, empty cache); an unchanged one is kept.
    fn apply(self: &Arc<Self>, id: IssuerId, spec: IssuerSpec, allowed: Option<LabelSelector>) {
        let current = self.issuers.load();
        if current
            .by_id
            .get(&id)
            .is_some_and(|rt| rt.source.0 == spec && rt.source.1 == allowed)
        {
            return;
        }
        let cm_ns = match id.kind {
            IssuerKind::ClusterTrustedIssuer => self.operator_namespace.clone(),
            IssuerKind::TrustedIssuer => id.namespace.clone(),
        };
        let compiled = CompiledIssuer::compile(id.clone(), &spec, allowed.clone(), &cm_ns);
        if let Err(e) = &compiled {
            tracing::warn!(issuer = %id, error = %e, "trusted issuer is invalid: its tokens are refused");
        }
        let (attempts, _) = tokio::sync::watch::channel(0);
        let runtime = Arc::new(IssuerRuntime {
            compiled,
            source: (spec, allowed),
            keys: ArcSwapOption::empty(),
            wake: tokio::sync::Notify::new(),
            attempts,
            last_kid_refresh: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            task: Mutex::new(None),
        });
        if runtime.compiled.is_ok() {
            let task = tokio::spawn(refresh_loop(Arc::downgrade(self), Arc::downgrade(&runtime)));
            if let Ok(mut t) = runtime.task.lock() {
                *t = Some(task.abort_handle());
            }
        }
        let mut table = IssuerTable {
            by_id: current.by_id.clone(),
            by_url: HashMap::new(),
        };
        table.by_id.insert(id, runtime);
        table.rebuild_urls();
        self.issuers.store(Arc::new(table));
    }

    /// Remove an issuer object: its tokens are refused at once.
    fn delete(&self, id: &IssuerId) {
        let current = self.issuers.load();
        if !current.by_id.contains_key(id) {
            return;
        }
        let mut table = IssuerTable {
            by_id: current.by_id.clone(),
            by_url: HashMap::new(),
        };
        table.by_id.remove(id);
        table.rebuild_urls();
        self.issuers.store(Arc::new(table));
    }

    /// Replace every issuer of `kind` (after a relist).
    fn reset(
        self: &Arc<Self>,
        kind: IssuerKind,
        items: Vec<(IssuerId, IssuerSpec, Option<LabelSelector>)>,
    ) {
        let listed: std::collections::HashSet<IssuerId> =
            items.iter().map(|(id, _, _)| id.clone()).collect();
        let gone: Vec<IssuerId> = self
            .issuers
            .load()
            .by_id
            .keys()
            .filter(|id| id.kind == kind && !listed.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.delete(&id);
        }
        for (id, spec, allowed) in items {
            self.apply(id, spec, allowed);
        }
    }

    /// Fetch `issuer`'s keys once (with its CA or ClusterTrustBundle).
    async fn fetch(&self, issuer: &CompiledIssuer) -> Result<Fetched, FetchError> {
        match &self.client {
            Some(client) => crate::issuer_keys::fetch_issuer_keys(client, issuer).await,
            None => match &issuer.key_source {
                KeySource::ConfigMap(..) => {
                    Err(FetchError::ConfigMap("no cluster connection".into()))
                }
                source => {
                    let http = fetch::client(issuer.ca_bundle.as_deref())?;
                    fetch::fetch_keys(&http, &issuer.issuer, source).await
                }
            },
        }
    }

    fn observe(&self, issuer: &str, result: &'static str) {
        self.metrics.observe_federation(issuer, result);
    }
}

/// Keep one issuer's keys current until it is replaced or deleted.
async fn refresh_loop(state: Weak<FederationState>, runtime: Weak<IssuerRuntime>) {
    let mut failures = 0u32;
    loop {
        let (Some(state), Some(rt)) = (state.upgrade(), runtime.upgrade()) else {
            return;
        };
        let Ok(issuer) = &rt.compiled else {
            return;
        };
        let name = issuer.id.to_string();
        let result = state.fetch(issuer).await;
        let wait = match result {
            Ok(fetched) => {
                let changed = rt
                    .keys
                    .load()
                    .as_ref()
                    .is_none_or(|k| k.set.summary() != fetched.keys.summary());
                if changed {
                    tracing::info!(issuer = %name, keys = ?fetched.keys.summary(), from = %fetched.jwks_url, "trusted issuer keys loaded");
                    // Tokens verified with a key that is gone must be checked again.
                    if let Ok(mut c) = rt.cache.lock() {
                        c.clear();
                    }
                }
                rt.keys.store(Some(Arc::new(LoadedKeys {
                    set: fetched.keys,
                    fetched: Instant::now(),
                })));
                state.metrics.observe_federation_refresh(&name, "ok");
                failures = 0;
                state.bounds.refresh_interval
            }
            Err(error) => {
                let kept = rt.keys.load().as_ref().map(|k| k.fetched.elapsed());
                tracing::warn!(issuer = %name, %error, kept_keys_age_seconds = kept.map(|d| d.as_secs()), "trusted issuer key refresh failed; keeping the last good keys within their bound");
                state
                    .metrics
                    .observe_federation_refresh(&name, error.label());
                failures = failures.saturating_add(1);
                (FAILED_REFRESH_RETRY * 2u32.saturating_pow(failures.min(6) - 1))
                    .min(state.bounds.refresh_interval)
            }
        };
        rt.attempts.send_modify(|n| *n += 1);
        let wake = async { rt.wake.notified().await };
        // Drop the strong references while sleeping.
        let sleeping = {
            let rt = rt.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake => {}
                }
                drop(rt);
            }
        };
        drop(state);
        sleeping.await;
    }
}

/// The id and spec of a watched issuer object.
fn cluster_item(o: &ClusterTrustedIssuer) -> (IssuerId, IssuerSpec, Option<LabelSelector>) {
    (
        IssuerId {
            kind: IssuerKind::ClusterTrustedIssuer,
            namespace: String::new(),
            name: o.name_any(),
        },
        o.spec.issuer.clone(),
        o.spec.allowed_namespaces.clone(),
    )
}

fn namespaced_item(o: &TrustedIssuer) -> (IssuerId, IssuerSpec, Option<LabelSelector>) {
    (
        IssuerId {
            kind: IssuerKind::TrustedIssuer,
            namespace: o.namespace().unwrap_or_default(),
            name: o.name_any(),
        },
        o.spec.issuer.clone(),
        None,
    )
}

enum Change {
    Cluster(watcher::Event<ClusterTrustedIssuer>),
    Namespaced(watcher::Event<TrustedIssuer>),
    Namespace(watcher::Event<PartialObjectMeta<Namespace>>),
}

/// Watch issuers and Namespace labels forever, keeping `state` current;
/// `ready` once all three have listed.
pub(crate) async fn run_watches(
    client: kube::Client,
    state: Arc<FederationState>,
    watch_namespace: Option<String>,
    ready: ReadyFlag,
) {
    let cfg = watcher::Config::default;
    let cluster = watcher(Api::<ClusterTrustedIssuer>::all(client.clone()), cfg())
        .default_backoff()
        .map(|e| e.map(Change::Cluster));
    let namespaced_api: Api<TrustedIssuer> = match &watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let namespaced = watcher(namespaced_api, cfg())
        .default_backoff()
        .map(|e| e.map(Change::Namespaced));
    let ns_cfg = match &watch_namespace {
        Some(ns) => cfg().fields(&format!("metadata.name={ns}")),
        None => cfg(),
    };
    let namespaces = watcher(Api::<PartialObjectMeta<Namespace>>::all(client), ns_cfg)
        .default_backoff()
        .map(|e| e.map(Change::Namespace));
    let mut changes = std::pin::pin!(futures::stream::select(
        futures::stream::select(cluster, namespaced),
        namespaces,
    ));
    let mut synced = [false; 3];
    let mut pending_cluster = vec![];
    let mut pending_namespaced = vec![];
    let mut pending_ns = HashMap::new();
    while let Some(change) = changes.next().await {
        let change = match change {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "federation watch failed; serving the last state, retrying");
                continue;
            }
        };
        use watcher::Event;
        match change {
            Change::Cluster(Event::Apply(o)) => {
                let (id, spec, allowed) = cluster_item(&o);
                state.apply(id, spec, allowed);
            }
            Change::Cluster(Event::Delete(o)) => state.delete(&cluster_item(&o).0),
            Change::Cluster(Event::Init) => pending_cluster.clear(),
            Change::Cluster(Event::InitApply(o)) => pending_cluster.push(cluster_item(&o)),
            Change::Cluster(Event::InitDone) => {
                state.reset(
                    IssuerKind::ClusterTrustedIssuer,
                    std::mem::take(&mut pending_cluster),
                );
                synced[0] = true;
            }
            Change::Namespaced(Event::Apply(o)) => {
                let (id, spec, allowed) = namespaced_item(&o);
                state.apply(id, spec, allowed);
            }
            Change::Namespaced(Event::Delete(o)) => state.delete(&namespaced_item(&o).0),
            Change::Namespaced(Event::Init) => pending_namespaced.clear(),
            Change::Namespaced(Event::InitApply(o)) => pending_namespaced.push(namespaced_item(&o)),
            Change::Namespaced(Event::InitDone) => {
                state.reset(
                    IssuerKind::TrustedIssuer,
                    std::mem::take(&mut pending_namespaced),
                );
                synced[1] = true;
            }
            Change::Namespace(Event::Apply(n)) => {
                let mut map = (**state.namespaces.load()).clone();
                map.insert(n.name_any(), n.metadata.labels.clone().unwrap_or_default());
                state.namespaces.store(Arc::new(map));
            }
            Change::Namespace(Event::Delete(n)) => {
                let mut map = (**state.namespaces.load()).clone();
                map.remove(&n.name_any());
                state.namespaces.store(Arc::new(map));
            }
            Change::Namespace(Event::Init) => pending_ns.clear(),
            Change::Namespace(Event::InitApply(n)) => {
                pending_ns.insert(n.name_any(), n.metadata.labels.clone().unwrap_or_default());
            }
            Change::Namespace(Event::InitDone) => {
                state
                    .namespaces
                    .store(Arc::new(std::mem::take(&mut pending_ns)));
                synced[2] = true;
            }
        }
        ready.set(synced.iter().all(|s| *s));
    }
}

/// `true` when an RFC 8693 request's subject token is a federated JWT.
pub(crate) fn is_jwt_subject(form: &super::form::Form) -> bool {
    form.get("subject_token_type") == Some(JWT_TOKEN_TYPE)
}

impl TokenServer {
    /// Whether `token` names (unverified `iss`) an issuer some object trusts.
    pub(super) fn is_federated(&self, token: &str) -> bool {
        verify::peek(token).is_some_and(|p| self.inner.federation.trusts(&p.issuer))
    }

    /// RFC 8693 with a federated JWT as `subject_token`.
    pub(super) async fn authenticate_federated_exchange(
        &self,
        form: &super::form::Form,
        source: Option<std::net::IpAddr>,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        super::api_token::check_exchange(form)?;
        let token = form
            .get("subject_token")
            .ok_or_else(|| OAuthError::invalid_request("missing subject_token"))?;
        self.authenticate_federated(token, form.get("client_id"), source, keys, now)
            .await
    }

    /// Authenticate by a federated JWT: the credential and its epoch.
    pub(super) async fn authenticate_federated(
        &self,
        token: &str,
        client_id: Option<&str>,
        source: Option<std::net::IpAddr>,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        let fed = &self.inner.federation;
        let peeked = verify::peek(token);
        let limiter_key = client_id
            .map(str::to_owned)
            .or_else(|| peeked.as_ref().and_then(|p| p.subject.clone()))
            .unwrap_or_default();
        let refuse = |issuer: &str, result: &'static str, detail: &str| {
            fed.observe(issuer, result);
            tracing::debug!(issuer, result, detail, "federated assertion refused");
            match self
                .inner
                .limiter
                .failed(&limiter_key, source, Instant::now())
            {
                Ok(()) => OAuthError::invalid_client(false),
                Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
            }
        };
        let Some(peeked) = peeked else {
            return Err(refuse("unknown", "malformed", "not a JWT"));
        };
        let table = fed.issuers.load();
        let Some(candidates) = table.by_url.get(&peeked.issuer) else {
            return Err(refuse(
                "unknown",
                "unknown_issuer",
                "no trusted issuer has this iss",
            ));
        };
        let index = self.inner.state.credentials();
        let claimed = peeked.subject.clone().unwrap_or_default();
        let entry = match client_id {
            Some(id) => index.get(id).cloned(),
            None => {
                let mut found = candidates
                    .iter()
                    .flat_map(|id| index.by_federated(id, &claimed).iter());
                match (found.next(), found.next()) {
                    (Some(only), None) => index.get(only).cloned(),
                    _ => None,
                }
            }
        };
        let Some((entry, binding)) = entry.and_then(|e| {
            let b = e.federation.clone()?;
            candidates.contains(&b.issuer).then_some((e, b))
        }) else {
            return Err(refuse(
                "unknown",
                "no_binding",
                "no credential binds this issuer and subject",
            ));
        };
        let issuer_name = binding.issuer.to_string();
        let Some(runtime) = table.by_id.get(&binding.issuer) else {
            return Err(refuse(&issuer_name, "unknown_issuer", "issuer gone"));
        };
        let Ok(issuer) = &runtime.compiled else {
            return Err(refuse(
                &issuer_name,
                "invalid_issuer",
                "the issuer's spec does not compile",
            ));
        };
        let labels = fed.namespaces.load();
        let empty = BTreeMap::new();
        let ns_labels = labels.get(&entry.namespace).unwrap_or(&empty);
        if !issuer.binds_from(&entry.namespace, ns_labels) {
            return Err(refuse(
                &issuer_name,
                "namespace_not_allowed",
                "the credential's namespace may not bind this issuer",
            ));
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let ts = now.timestamp();
        let verified = match runtime.cached(&hash, ts) {
            Some(c) => {
                fed.observe(&issuer_name, "cache_hit");
                c
            }
            None => {
                let default_audience = [self.inner.config.issuer.clone()];
                let audiences: &[String] = if issuer.audiences.is_empty() {
                    &default_audience
                } else {
                    &issuer.audiences
                };
                let policy = ClaimPolicy {
                    issuer: &issuer.issuer,
                    audiences,
                    max_lifetime_secs: i64::try_from(issuer.max_lifetime.as_secs())
                        .unwrap_or(i64::MAX),
                };
                let mut attempt = 0;
                let verified = loop {
                    attempt += 1;
                    let Some(keys) = runtime.usable_keys(&fed.bounds) else {
                        if attempt == 1 && runtime.refresh_for_unknown_kid(&fed.bounds).await {
                            continue;
                        }
                        fed.observe(&issuer_name, "no_keys");
                        return Err(OAuthError::unavailable(
                            "the issuer's keys are not available; retry",
                        ));
                    };
                    match verify::verify(token, &keys.set, &policy, ts) {
                        Err(Refused::UnknownKey)
                            if attempt == 1
                                && runtime.refresh_for_unknown_kid(&fed.bounds).await => {}
                        other => break other,
                    }
                };
                let verified = match verified {
                    Ok(v) => v,
                    Err(r) => return Err(refuse(&issuer_name, r.label(), &r.to_string())),
                };
                let rules = match issuer.failing_rule(&verified.claims) {
                    None => Ok(()),
                    Some(why) => Err(why),
                };
                let cache_until = verified.exp.min(
                    ts.saturating_add(i64::try_from(fed.bounds.cache_ttl.as_secs()).unwrap_or(0)),
                );
                let cached = Cached {
                    subject: verified.subject,
                    claims: verified.claims,
                    rules,
                    until: cache_until,
                };
                runtime.remember(hash, cached.clone(), ts, fed.bounds.cache_entries);
                fed.observe(&issuer_name, "verified");
                cached
            }
        };
        if verified.subject != binding.subject {
            return Err(refuse(
                &issuer_name,
                "subject",
                "sub is not the bound subject",
            ));
        }
        if let Err(why) = &verified.rules {
            return Err(refuse(&issuer_name, "claim_rule", why));
        }
        if let Err(why) = binding.condition_holds(&verified.claims) {
            return Err(refuse(&issuer_name, "condition", &why));
        }
        let Some(epoch) = entry.federation_epoch(&keys.verifier_key) else {
            return Err(OAuthError::unavailable(
                "the credential's federation binding is not confirmed by the controller yet; retry",
            ));
        };
        fed.observe(&issuer_name, "ok");
        let usage = &self.inner.state.usage().recorder;
        usage.record(
            &entry.client_id,
            crate::core::workload::WORKLOAD_IDENTITY_VERSION,
            ts,
        );
        Ok((entry, epoch))
    }
}
