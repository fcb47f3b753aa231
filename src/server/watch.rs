//! The watches that keep [`TokenState`] current: M2MCredentials,
//! ServiceAccounts (m2m.dev), M2MRoles and ClusterM2MRoles cluster-wide
//! (or in the watched namespace, except cluster roles), Namespace metadata (for the
//! `m2m.dev/allowed-scopes` policy), the operator key Secret (watched by
//! name with a field selector, so RBAC can restrict it with
//! `resourceNames`) and the per-client revocation ConfigMaps (by label).
//!
//! Each watch lists in pages, then watches from the list's resource version.
//! Objects are converted where they arrive into the few fields the index
//! needs ([`CredentialSource`], …) and dropped, so no store ever holds a
//! whole object (nor its `managedFields`). One task applies every change to
//! the [`CredentialIndexer`] — O(affected credentials) per change — and
//! publishes a snapshot per burst of queued events.
//!
//! Resilience: when the apiserver is unreachable the last state keeps being
//! served. Every failed list or watch is retried after a bounded backoff
//! (200 ms doubling to at most [`MAX_BACKOFF`], with jitter), not kube's
//! growing default, so the state catches up seconds after the apiserver
//! returns. A resource version the apiserver no longer has (410 Gone)
//! triggers a relist, applied as a reset that changes only what differs.
//!
//! Age of the served state: a watch confirms it is current with every
//! event, every bookmark and every (re)start of its watch request, which the
//! apiserver ends after [`WATCH_TIMEOUT_SECS`]; so in a healthy cluster
//! the age stays under about 30 s. `m2m_token_server_state_age_seconds` is
//! the age of the least recently confirmed watch. Readiness:
//! `token-server-watches` once every watch has listed,
//! `token-server-signing-key` once a signing key is loaded, and
//! `token-server-state-fresh` while the age is under [`STALENESS_LIMIT`] —
//! a replica cut off from the apiserver leaves the Service's endpoints
//! while others can serve; during a full apiserver outage no endpoint
//! changes (those updates need the apiserver too), so every replica goes on
//! serving its last state.

use super::index::{
    AccountSource, CredentialIndexer, CredentialSource, KeyMaterial, NamespaceSource, RoleSource,
    TokenState,
};
use super::revocation::REVOCATION_SELECTOR;
use crate::admin::ReadyFlag;
use crate::core::grant::ScopePolicy;
use crate::crd::{ClusterM2MRole, M2MCredential, M2MRole, RoleKind, ServiceAccount};
use crate::signing::store::KEY_SECRET_NAME;
use crate::telemetry::Metrics;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ListParams, ObjectList, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest wait before retrying a failed list or watch.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Duration of one watch request; its end and restart confirm the state.
pub(crate) const WATCH_TIMEOUT_SECS: u32 = 30;
/// A watch that delivers nothing (not even its end) for this long past its
/// timeout is taken for a dead connection.
const WATCH_IDLE_MARGIN: Duration = Duration::from_secs(5);
/// Objects per list page: bounds the memory a relist needs at once.
pub(crate) const PAGE_SIZE: u32 = 500;
/// Served state older than this makes the replica not ready.
pub(crate) const STALENESS_LIMIT: Duration = Duration::from_secs(60);
/// Most changes applied before a snapshot is published.
const MAX_BATCH: usize = 1024;

/// Which watch a message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Credentials = 0,
    Accounts = 1,
    Namespaces = 2,
    Keys = 3,
    Revocations = 4,
    Roles = 5,
    ClusterRoles = 6,
}

const SOURCES: usize = 7;

/// What one watch reports.
#[derive(Debug)]
enum WatchItem<T> {
    /// A complete list: replaces everything of this kind.
    Reset(Vec<T>),
    /// An object was added or changed.
    Apply(T),
    /// An object was deleted.
    Delete(T),
    /// The watch is connected and current (bookmark or watch start).
    Current,
}

/// A watch's report, by kind of object.
#[derive(Debug)]
// One update at a time passes through a channel: the size of the
// credential variant (its spec, with senderConstraint and mtls) costs nothing.
#[allow(clippy::large_enum_variant)]
enum Update {
    Credentials(WatchItem<CredentialSource>),
    Accounts(WatchItem<AccountSource>),
    Namespaces(WatchItem<NamespaceSource>),
    Keys(WatchItem<Secret>),
    Revocations(WatchItem<ConfigMap>),
    Roles(WatchItem<RoleSource>),
    ClusterRoles(WatchItem<RoleSource>),
}

impl Update {
    fn source(&self) -> Source {
        match self {
            Update::Credentials(_) => Source::Credentials,
            Update::Accounts(_) => Source::Accounts,
            Update::Namespaces(_) => Source::Namespaces,
            Update::Keys(_) => Source::Keys,
            Update::Revocations(_) => Source::Revocations,
            Update::Roles(_) => Source::Roles,
            Update::ClusterRoles(_) => Source::ClusterRoles,
        }
    }
}

/// Where and what to watch.
#[derive(Debug, Clone)]
pub(crate) struct WatchConfig {
    /// The operator namespace (key Secret, revocation ConfigMap).
    pub operator_namespace: String,
    /// Scope policy of namespaces without the annotation.
    pub default_policy: ScopePolicy,
    /// The `ClusterM2MRole` granted to every ServiceAccount, if any.
    pub default_role: Option<String>,
    /// Watch credentials and ServiceAccounts of this namespace only
    /// (`--watch-namespace`); `None`: the whole cluster.
    pub watch_namespace: Option<String>,
}

/// Readiness flags and metrics the watches drive.
#[derive(Debug, Clone)]
pub(crate) struct WatchReadiness {
    /// Every watch completed its initial list.
    pub synced: ReadyFlag,
    /// A signing key is loaded.
    pub signing_key: ReadyFlag,
    /// The served state is younger than [`STALENESS_LIMIT`].
    pub fresh: ReadyFlag,
    /// Where the state's age is exported.
    pub metrics: Metrics,
}

/// Bounded exponential backoff with jitter: 200 ms doubling up to
/// [`MAX_BACKOFF`], each wait drawn between half and all of the step.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { step: MIN_BACKOFF }
    }

    fn reset(&mut self) {
        self.step = MIN_BACKOFF;
    }

    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(MAX_BACKOFF);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }
}

type EventStream<K> = BoxStream<'static, kube::Result<WatchEvent<K>>>;

/// List and watch one kind of object (whole objects or metadata only).
trait ListWatch: Send + Sync + 'static {
    type Object: Resource + Clone + Send + 'static;
    fn list<'a>(
        &'a self,
        lp: &'a ListParams,
    ) -> BoxFuture<'a, kube::Result<ObjectList<Self::Object>>>;
    fn watch<'a>(
        &'a self,
        wp: &'a WatchParams,
        version: &'a str,
    ) -> BoxFuture<'a, kube::Result<EventStream<Self::Object>>>;
}

struct Full<K>(Api<K>);

impl<K> ListWatch for Full<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    type Object = K;
    fn list<'a>(&'a self, lp: &'a ListParams) -> BoxFuture<'a, kube::Result<ObjectList<K>>> {
        self.0.list(lp).boxed()
    }
    fn watch<'a>(
        &'a self,
        wp: &'a WatchParams,
        version: &'a str,
    ) -> BoxFuture<'a, kube::Result<EventStream<K>>> {
        async move { Ok(self.0.watch(wp, version).await?.boxed()) }.boxed()
    }
}

struct MetadataOnly<K>(Api<K>);

impl<K> ListWatch for MetadataOnly<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    type Object = PartialObjectMeta<K>;
    fn list<'a>(
        &'a self,
        lp: &'a ListParams,
    ) -> BoxFuture<'a, kube::Result<ObjectList<PartialObjectMeta<K>>>> {
        self.0.list_metadata(lp).boxed()
    }
    fn watch<'a>(
        &'a self,
        wp: &'a WatchParams,
        version: &'a str,
    ) -> BoxFuture<'a, kube::Result<EventStream<PartialObjectMeta<K>>>> {
        async move { Ok(self.0.watch_metadata(wp, version).await?.boxed()) }.boxed()
    }
}

/// Which objects of a kind a watch selects.
#[derive(Debug, Clone, Default)]
struct Selector {
    fields: Option<String>,
    labels: Option<String>,
}

impl Selector {
    fn fields(fields: Option<String>) -> Self {
        Self {
            fields,
            labels: None,
        }
    }
}

fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 410)
}

/// List (in pages) then watch one kind of object forever, sending what
/// `convert` keeps of each object; on errors, retry after a bounded backoff.
/// Returns when the receiver is gone.
async fn watch_kind<L, T>(
    lw: L,
    name: &'static str,
    selector: Selector,
    convert: fn(L::Object) -> Option<T>,
    wrap: fn(WatchItem<T>) -> Update,
    tx: mpsc::Sender<Update>,
) where
    L: ListWatch,
{
    let send = |item| tx.send(wrap(item));
    let mut backoff = Backoff::new();
    'relist: loop {
        let mut items = Vec::new();
        let mut continue_token = None;
        let mut version = loop {
            let lp = ListParams {
                field_selector: selector.fields.clone(),
                label_selector: selector.labels.clone(),
                limit: Some(PAGE_SIZE),
                continue_token: continue_token.take(),
                ..Default::default()
            };
            match lw.list(&lp).await {
                Ok(list) => {
                    items.extend(list.items.into_iter().filter_map(convert));
                    match list.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => continue_token = Some(token),
                        None => break list.metadata.resource_version.unwrap_or_default(),
                    }
                }
                Err(error) => {
                    tracing::warn!(watch = name, %error, "list failed; serving the last state, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue 'relist;
                }
            }
        };
        if send(WatchItem::Reset(items)).await.is_err() {
            return;
        }
        backoff.reset();
        loop {
            let wp = WatchParams {
                field_selector: selector.fields.clone(),
                label_selector: selector.labels.clone(),
                timeout: Some(WATCH_TIMEOUT_SECS),
                bookmarks: true,
                ..Default::default()
            };
            let mut stream = match lw.watch(&wp, &version).await {
                Ok(stream) => stream,
                Err(error) if is_gone(&error) => continue 'relist,
                Err(error) => {
                    tracing::warn!(watch = name, %error, "watch failed; serving the last state, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if send(WatchItem::Current).await.is_err() {
                return;
            }
            let started = Instant::now();
            let mut events = 0usize;
            let idle = Duration::from_secs(WATCH_TIMEOUT_SECS.into()) + WATCH_IDLE_MARGIN;
            loop {
                let item = match tokio::time::timeout(idle, stream.next()).await {
                    // Ended by the server, or a dead connection: watch again.
                    Ok(None) | Err(_) => break,
                    Ok(Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)))) => {
                        version = o.resource_version().unwrap_or(version);
                        convert(o).map(WatchItem::Apply)
                    }
                    Ok(Some(Ok(WatchEvent::Deleted(o)))) => {
                        version = o.resource_version().unwrap_or(version);
                        convert(o).map(WatchItem::Delete)
                    }
                    Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                        version = b.metadata.resource_version;
                        Some(WatchItem::Current)
                    }
                    Ok(Some(Ok(WatchEvent::Error(status)))) if status.code == 410 => {
                        continue 'relist;
                    }
                    Ok(Some(Ok(WatchEvent::Error(status)))) => {
                        tracing::warn!(watch = name, code = status.code, reason = %status.reason, "watch error; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                    Ok(Some(Err(error))) => {
                        tracing::warn!(watch = name, %error, "watch broke; serving the last state, retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                };
                events += 1;
                backoff.reset();
                if let Some(item) = item
                    && send(item).await.is_err()
                {
                    return;
                }
            }
            // A watch the server keeps ending at once must not spin.
            if events == 0 && started.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn strip<K: Resource>(mut object: K) -> Option<K> {
    object.meta_mut().managed_fields = None;
    Some(object)
}

/// One task per watched kind, each sending its changes to `tx`.
fn spawn_watches(
    client: &kube::Client,
    cfg: &WatchConfig,
    tx: mpsc::Sender<Update>,
) -> [tokio::task::JoinHandle<()>; SOURCES] {
    let ns = cfg.operator_namespace.as_str();
    let by_name = |name: &str| Some(format!("metadata.name={name}"));
    let (credential_api, account_api, namespace_fields): (
        Api<M2MCredential>,
        Api<ServiceAccount>,
        _,
    ) = match &cfg.watch_namespace {
        Some(watched) => (
            Api::namespaced(client.clone(), watched),
            Api::namespaced(client.clone(), watched),
            by_name(watched),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), None),
    };
    let role_api: Api<M2MRole> = match &cfg.watch_namespace {
        Some(watched) => Api::namespaced(client.clone(), watched),
        None => Api::all(client.clone()),
    };
    [
        tokio::spawn(watch_kind(
            Full(credential_api),
            "m2mcredentials",
            Selector::default(),
            |c| CredentialSource::new(&c),
            Update::Credentials,
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            Full(account_api),
            "serviceaccounts.m2m.dev",
            Selector::default(),
            |a| AccountSource::new(&a),
            Update::Accounts,
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            MetadataOnly(Api::<Namespace>::all(client.clone())),
            "namespaces",
            Selector::fields(namespace_fields),
            |n| NamespaceSource::new(&n.metadata),
            Update::Namespaces,
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            Full(Api::<Secret>::namespaced(client.clone(), ns)),
            "key secret",
            Selector::fields(by_name(KEY_SECRET_NAME)),
            strip,
            Update::Keys,
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            Full(Api::<ConfigMap>::namespaced(client.clone(), ns)),
            "revocation configmaps",
            Selector {
                fields: None,
                labels: Some(REVOCATION_SELECTOR.to_owned()),
            },
            strip,
            Update::Revocations,
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            Full(role_api),
            "m2mroles",
            Selector::default(),
            |r| RoleSource::namespaced(&r),
            Update::Roles,
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            Full(Api::<ClusterM2MRole>::all(client.clone())),
            "clusterm2mroles",
            Selector::default(),
            |r| RoleSource::cluster(&r),
            Update::ClusterRoles,
            tx,
        )),
    ]
}

/// Publish what a batch changed: a new index snapshot, reloaded keys, the
/// revocation entries re-read (they are verified with the key).
fn publish(applier: &Applier, state: &TokenState, dirty: &[bool; SOURCES], ns: &str) {
    if dirty[Source::Credentials as usize]
        || dirty[Source::Accounts as usize]
        || dirty[Source::Namespaces as usize]
        || dirty[Source::Roles as usize]
        || dirty[Source::ClusterRoles as usize]
    {
        state.set_credentials(applier.indexer.snapshot());
    }
    if dirty[Source::Keys as usize] {
        match &applier.keys {
            None => {
                if applier.synced[Source::Keys as usize] {
                    tracing::warn!(
                        namespace = ns,
                        name = KEY_SECRET_NAME,
                        "the operator key Secret does not exist (yet)"
                    );
                }
                state.set_keys(None);
            }
            Some(secret) => match KeyMaterial::from_secret(secret, Utc::now()) {
                Ok(material) => {
                    tracing::info!(
                        active_kid = material.ring.active().map(|s| s.kid()),
                        "loaded the operator keys"
                    );
                    state.set_keys(Some(material));
                }
                Err(error) => {
                    tracing::error!(%error, "the operator key Secret is unusable; keeping the previous keys");
                }
            },
        }
    }
    // Entries are verified with the key: re-read them when it changes.
    if dirty[Source::Revocations as usize] || dirty[Source::Keys as usize] {
        let keys = state.keys();
        state.revocations().observe(
            applier.revocations.values(),
            keys.as_ref().map(|k| &k.verifier_key),
            Utc::now().timestamp(),
        );
    }
}

/// Run the watches forever, keeping `state` current.
pub(crate) async fn run_watches(
    client: kube::Client,
    cfg: WatchConfig,
    state: Arc<TokenState>,
    ready: WatchReadiness,
) {
    let ns = cfg.operator_namespace.as_str();
    let (tx, mut rx) = mpsc::channel(MAX_BATCH);
    let tasks = spawn_watches(&client, &cfg, tx);
    // Abort the watch tasks when this future is dropped (the server stops).
    struct AbortOnDrop<const N: usize>([tokio::task::JoinHandle<()>; N]);
    impl<const N: usize> Drop for AbortOnDrop<N> {
        fn drop(&mut self) {
            self.0.iter().for_each(|t| t.abort());
        }
    }
    let _tasks = AbortOnDrop(tasks);

    let mut applier = Applier {
        indexer: CredentialIndexer::new(cfg.default_policy.clone())
            .with_default_role(cfg.default_role.clone()),
        keys: None,
        revocations: BTreeMap::new(),
        synced: [false; SOURCES],
        confirmed: [None; SOURCES],
        started: Instant::now(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let first = tokio::select! {
            update = rx.recv() => match update {
                Some(update) => update,
                None => return,
            },
            _ = tick.tick() => {
                applier.report_age(&ready);
                continue;
            }
        };
        // Apply everything already queued, then publish once.
        let mut dirty = [false; SOURCES];
        let now = Utc::now();
        let mut pending = Some(first);
        let mut batch = 0;
        while let Some(update) = pending {
            observe_usage(&state, &update);
            let source = update.source();
            dirty[source as usize] |= applier.apply(update, now);
            batch += 1;
            pending = if batch < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        publish(&applier, &state, &dirty, ns);
        ready.synced.set(applier.synced.iter().all(|s| *s));
        ready
            .signing_key
            .set(state.keys().is_some_and(|k| k.ring.active().is_some()));
        applier.report_age(&ready);
    }
}

/// Keep the usage status the watch delivered for the usage flusher.
fn observe_usage(state: &TokenState, update: &Update) {
    let seen = &state.usage().seen;
    let id = |c: &CredentialSource| crate::core::client_secret::client_id_for_uid(&c.uid);
    match update {
        Update::Credentials(WatchItem::Reset(items)) => {
            seen.reset(items.iter().map(|c| (id(c), c.usage.clone())));
        }
        Update::Credentials(WatchItem::Apply(c)) => seen.set(id(c), c.usage.clone()),
        Update::Credentials(WatchItem::Delete(c)) => seen.remove(&id(c)),
        _ => {}
    }
}

/// A watch of roles of one kind: into the index.
fn apply_role(
    ix: &mut CredentialIndexer,
    kind: RoleKind,
    item: WatchItem<RoleSource>,
    now: chrono::DateTime<Utc>,
) -> bool {
    match item {
        WatchItem::Reset(items) => ix.reset_roles(kind, items, now),
        WatchItem::Apply(r) => ix.apply_role(r, now),
        WatchItem::Delete(r) => ix.delete_role(r.kind, &r.namespace, &r.name, now),
        WatchItem::Current => false,
    }
}

/// A watch of one named object: keep the latest.
fn apply_single<K>(slot: &mut Option<K>, item: WatchItem<K>) -> bool {
    match item {
        WatchItem::Reset(items) => {
            *slot = items.into_iter().next();
            true
        }
        WatchItem::Apply(object) => {
            *slot = Some(object);
            true
        }
        WatchItem::Delete(_) => slot.take().is_some(),
        WatchItem::Current => false,
    }
}

/// A watch of several objects: keep each by name.
fn apply_named<K: Resource>(objects: &mut BTreeMap<String, K>, item: WatchItem<K>) -> bool {
    let name = |o: &K| o.meta().name.clone().unwrap_or_default();
    match item {
        WatchItem::Reset(items) => {
            *objects = items.into_iter().map(|o| (name(&o), o)).collect();
            true
        }
        WatchItem::Apply(object) => {
            objects.insert(name(&object), object);
            true
        }
        WatchItem::Delete(object) => objects.remove(&name(&object)).is_some(),
        WatchItem::Current => false,
    }
}

/// The writer side of the state: applies the watches' reports.
struct Applier {
    indexer: CredentialIndexer,
    keys: Option<Secret>,
    /// The revocation ConfigMaps by name.
    revocations: BTreeMap<String, ConfigMap>,
    /// Which watches completed their first list.
    synced: [bool; SOURCES],
    /// When each watch last confirmed it is current.
    confirmed: [Option<Instant>; SOURCES],
    started: Instant,
}

impl Applier {
    /// Apply one report; returns whether the state of its kind changed
    /// (a first list always counts as a change, even when empty).
    fn apply(&mut self, update: Update, now: chrono::DateTime<Utc>) -> bool {
        let source = update.source() as usize;
        self.confirmed[source] = Some(Instant::now());
        let first_list = !self.synced[source]
            && matches!(
                &update,
                Update::Credentials(WatchItem::Reset(_))
                    | Update::Accounts(WatchItem::Reset(_))
                    | Update::Namespaces(WatchItem::Reset(_))
                    | Update::Keys(WatchItem::Reset(_))
                    | Update::Revocations(WatchItem::Reset(_))
                    | Update::Roles(WatchItem::Reset(_))
                    | Update::ClusterRoles(WatchItem::Reset(_))
            );
        self.synced[source] |= first_list;
        let ix = &mut self.indexer;
        let changed = match update {
            Update::Credentials(item) => match item {
                WatchItem::Reset(items) => ix.reset_credentials(items, now),
                WatchItem::Apply(c) => ix.apply_credential(c, now),
                WatchItem::Delete(c) => ix.delete_credential(&c.namespace, &c.name),
                WatchItem::Current => false,
            },
            Update::Accounts(item) => match item {
                WatchItem::Reset(items) => ix.reset_accounts(items, now),
                WatchItem::Apply(a) => ix.apply_account(a, now),
                WatchItem::Delete(a) => ix.delete_account(&a.namespace, &a.name, now),
                WatchItem::Current => false,
            },
            Update::Namespaces(item) => match item {
                WatchItem::Reset(items) => ix.reset_namespaces(items, now),
                WatchItem::Apply(n) => ix.apply_namespace(n, now),
                WatchItem::Delete(n) => ix.delete_namespace(&n.name, now),
                WatchItem::Current => false,
            },
            Update::Roles(item) => apply_role(ix, RoleKind::M2MRole, item, now),
            Update::ClusterRoles(item) => apply_role(ix, RoleKind::ClusterM2MRole, item, now),
            Update::Keys(item) => apply_single(&mut self.keys, item),
            Update::Revocations(item) => apply_named(&mut self.revocations, item),
        };
        changed || first_list
    }

    /// Age of the served state: since the least recently confirmed watch
    /// last confirmed (since start while one never has).
    fn age(&self) -> Duration {
        self.confirmed
            .iter()
            .map(|c| c.unwrap_or(self.started).elapsed())
            .max()
            .unwrap_or_default()
    }

    fn report_age(&self, ready: &WatchReadiness) {
        let age = self.age();
        ready.metrics.set_token_server_state_age(age.as_secs_f64());
        ready
            .metrics
            .set_token_server_credentials(self.indexer.len() as i64);
        let fresh = age < STALENESS_LIMIT;
        if ready.fresh.get() && !fresh && self.synced.iter().all(|s| *s) {
            tracing::warn!(
                age_seconds = age.as_secs(),
                "the served state is stale: the apiserver has not confirmed it for too long"
            );
        }
        ready.fresh.set(fresh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(delays[0] >= MIN_BACKOFF / 2 && delays[0] <= MIN_BACKOFF);
        // After a few failures it waits between half and all of MAX_BACKOFF.
        assert!(delays[10..].iter().all(|d| *d >= MAX_BACKOFF / 2));
        b.reset();
        assert!(b.next_delay() <= MIN_BACKOFF);
    }
}
