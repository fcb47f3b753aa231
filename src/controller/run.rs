//! Wiring of the controllers: shared reflectors for the objects reconciles
//! read (so a trigger never sees an older cache than the event that caused
//! it), watch mappings (a ServiceAccount, Namespace or role change
//! re-reconciles what it affects), and leader election — only the Lease holder runs the
//! reconcilers, so exactly one replica writes.

use super::keys::{HeldKeys, reconcile_keys_holding};
use super::lease::{LeaderElector, LeaseTimings};
use super::{Context, ControllerConfig, Error, credential, reporter, service_account};
use crate::admin::ReadyFlag;
use crate::crd::{ClusterM2MRole, M2MCredential, M2MRole, RoleKind, ServiceAccount};
use crate::labels::MANAGED_BY;
use crate::signing::store::KeySecretConfig;
use crate::telemetry::Metrics;
use chrono::Utc;
use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARED_BUFFER: usize = 1024;

/// Longest wait before a failed list or watch is retried (and before the
/// key Secret is re-read after a failure): after an apiserver outage the
/// controller resumes within seconds, not after kube's default backoff
/// (which grows to 30 s). The same bound as the token server's watches.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Bounded exponential backoff with jitter for watches: 200 ms doubling to
/// at most [`MAX_BACKOFF`], each wait drawn between half and all of the
/// step; reset by the first successful event.
#[derive(Debug, Clone)]
pub(crate) struct WatchBackoff {
    step: Duration,
}

impl WatchBackoff {
    /// A backoff at its first step.
    pub fn new() -> Self {
        Self { step: MIN_BACKOFF }
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let step = self.step;
        self.step = (step * 2).min(MAX_BACKOFF);
        Some(step.mul_f64(rand::random_range(0.5..=1.0)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.step = MIN_BACKOFF;
    }
}

fn api_for<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn stop_early<F: Future<Output = ()> + Unpin>(stop: &mut F) {
    stop.await
}

/// The shared reflector stores the reconcilers read, and one event stream
/// per consumer.
struct Reflectors {
    credentials: Store<M2MCredential>,
    accounts: Store<ServiceAccount>,
    namespaces: Store<Namespace>,
    cred_for_creds: ReflectHandle<M2MCredential>,
    cred_for_accounts: ReflectHandle<M2MCredential>,
    account_for_creds: ReflectHandle<ServiceAccount>,
    account_for_accounts: ReflectHandle<ServiceAccount>,
    ns_for_creds: ReflectHandle<Namespace>,
    ns_for_accounts: ReflectHandle<Namespace>,
    task: tokio::task::JoinHandle<((), (), ())>,
}

/// Start the reflectors of credentials, ServiceAccounts and Namespaces.
fn start_reflectors(client: &Client, watch_ns: Option<&str>) -> anyhow::Result<Reflectors> {
    // Paginated lists (the default): with `any_semantic()` (resourceVersion=0)
    // the apiserver ignores the page size and sends every object at once.
    let cfg = watcher::Config::default();
    let ns_cfg = match watch_ns {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (credentials, cred_writer) = reflector::store_shared::<M2MCredential>(SHARED_BUFFER);
    let (accounts, account_writer) = reflector::store_shared::<ServiceAccount>(SHARED_BUFFER);
    let (namespaces, ns_writer) = reflector::store_shared::<Namespace>(SHARED_BUFFER);
    let subscribe_err = || anyhow::anyhow!("shared reflector without dispatcher");
    let cred_for_creds = cred_writer.subscribe().ok_or_else(subscribe_err)?;
    let cred_for_accounts = cred_writer.subscribe().ok_or_else(subscribe_err)?;
    let account_for_creds = account_writer.subscribe().ok_or_else(subscribe_err)?;
    let account_for_accounts = account_writer.subscribe().ok_or_else(subscribe_err)?;
    let ns_for_creds = ns_writer.subscribe().ok_or_else(subscribe_err)?;
    let ns_for_accounts = ns_writer.subscribe().ok_or_else(subscribe_err)?;
    let reflectors = future::join3(
        watcher(api_for::<M2MCredential>(client, watch_ns), cfg.clone())
            .backoff(WatchBackoff::new())
            // Only the token server's entry is kept: it says which usage
            // fields the controller may believe (super::usage).
            .modify(|o| {
                o.managed_fields_mut().retain(|m| {
                    m.manager.as_deref() == Some(crate::labels::USAGE_FIELD_MANAGER)
                        && m.subresource.as_deref() == Some("status")
                })
            })
            .reflect_shared(cred_writer)
            .for_each(|_| future::ready(())),
        watcher(api_for::<ServiceAccount>(client, watch_ns), cfg)
            .backoff(WatchBackoff::new())
            .modify(|o| o.managed_fields_mut().clear())
            .reflect_shared(account_writer)
            .for_each(|_| future::ready(())),
        watcher(Api::<Namespace>::all(client.clone()), ns_cfg)
            .backoff(WatchBackoff::new())
            .modify(|o| o.managed_fields_mut().clear())
            .reflect_shared(ns_writer)
            .for_each(|_| future::ready(())),
    );
    Ok(Reflectors {
        credentials,
        accounts,
        namespaces,
        cred_for_creds,
        cred_for_accounts,
        account_for_creds,
        account_for_accounts,
        ns_for_creds,
        ns_for_accounts,
        task: tokio::spawn(reflectors),
    })
}

/// A role that was applied or deleted (kind, namespace of an `M2MRole`,
/// name), or `None` after a relist (a role may have vanished unseen).
type RoleChange = Option<(RoleKind, Option<String>, String)>;

/// The role stores, and the changes the ServiceAccount controller maps to
/// the accounts granted each role.
struct RoleReflectors {
    roles: Store<M2MRole>,
    cluster_roles: Store<ClusterM2MRole>,
    changes: futures::channel::mpsc::UnboundedReceiver<RoleChange>,
    task: tokio::task::JoinHandle<((), ())>,
}

/// Start the reflectors of M2MRoles (in the watched namespace) and
/// ClusterM2MRoles (cluster-scoped: always all of them). Changes are
/// reported after the store has applied them (so a reconcile they trigger
/// sees them), deletions included — which a shared reflector's
/// subscribers never see.
fn start_role_reflectors(client: &Client, watch_ns: Option<&str>) -> RoleReflectors {
    let (roles, role_writer) = reflector::store::<M2MRole>();
    let (cluster_roles, cluster_writer) = reflector::store::<ClusterM2MRole>();
    let (tx, changes) = futures::channel::mpsc::unbounded::<RoleChange>();
    fn report<K: kube::Resource>(
        tx: &futures::channel::mpsc::UnboundedSender<RoleChange>,
        kind: RoleKind,
        event: &watcher::Event<K>,
    ) {
        let change = match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => Some((
                kind,
                o.meta().namespace.clone(),
                o.meta().name.clone().unwrap_or_default(),
            )),
            watcher::Event::InitDone => None,
            watcher::Event::Init | watcher::Event::InitApply(_) => return,
        };
        let _ = tx.unbounded_send(change);
    }
    let tx2 = tx.clone();
    let reflectors = future::join(
        watcher(
            api_for::<M2MRole>(client, watch_ns),
            watcher::Config::default(),
        )
        .backoff(WatchBackoff::new())
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(role_writer)
        .for_each(move |e| {
            if let Ok(e) = e {
                report(&tx, RoleKind::M2MRole, &e);
            }
            future::ready(())
        }),
        watcher(
            Api::<ClusterM2MRole>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(WatchBackoff::new())
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(cluster_writer)
        .for_each(move |e| {
            if let Ok(e) = e {
                report(&tx2, RoleKind::ClusterM2MRole, &e);
            }
            future::ready(())
        }),
    );
    RoleReflectors {
        roles,
        cluster_roles,
        changes,
        task: tokio::spawn(reflectors),
    }
}

/// The keys this process last read from the key Secret, kept across
/// leadership terms (see [`super::keys::HeldKeys`]).
pub(crate) type KeyMemory = Arc<arc_swap::ArcSwapOption<HeldKeys>>;

/// Run the reconcilers until `stop` resolves. Call only while holding the
/// Lease. `held` is what this process knew of the keys before (restored if
/// the key Secret is gone) and is kept current.
pub(crate) async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    keys: KeySecretConfig,
    metrics: Metrics,
    held: KeyMemory,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let stop = stop.boxed().shared();
    let mut stop_rx = stop.clone();
    let known = held.load_full();
    let first = tokio::select! {
        k = reconcile_keys_until_ok(&client, &keys, &metrics, known.as_deref()) => k,
        _ = stop_early(&mut stop_rx) => return Ok(()),
    };
    held.store(Some(Arc::new(HeldKeys::from(&first))));
    let r = start_reflectors(&client, config.watch_namespace.as_deref())?;
    let roles = start_role_reflectors(&client, config.watch_namespace.as_deref());
    // Reconciles start only once every store has listed, so no reconcile
    // mistakes an unsynced cache for absence (and writes a wrong status on
    // every restart).
    let ready = future::try_join3(
        r.credentials.wait_until_ready(),
        r.accounts.wait_until_ready(),
        r.namespaces.wait_until_ready(),
    );
    let roles_ready = future::try_join(
        roles.roles.wait_until_ready(),
        roles.cluster_roles.wait_until_ready(),
    );
    tokio::select! {
        r = future::try_join(ready, roles_ready) => { r?; }
        _ = stop_early(&mut stop_rx) => return Ok(()),
    }

    // Federation hook: the issuer controllers, whose stores the credential
    // reconciles read (see super::issuer).
    let (issuers, issuer_triggered) = super::issuer::IssuerControllers::new(
        &client,
        config.watch_namespace.as_deref(),
        r.credentials.clone(),
    );
    let recorder = Recorder::new(client.clone(), reporter(config.instance.clone()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        recorder,
        accounts: r.accounts.clone(),
        credentials: r.credentials.clone(),
        namespaces: r.namespaces.clone(),
        roles: roles.roles.clone(),
        cluster_roles: roles.cluster_roles.clone(),
        verifier_key: arc_swap::ArcSwapOption::from_pointee(first.verifier_key.clone()),
        former_key_ids: arc_swap::ArcSwap::from_pointee(
            known
                .filter(|k| k.verifier_key != first.verifier_key)
                .map(|k| vec![k.verifier_key.key_id()])
                .unwrap_or_default(),
        ),
        metrics: metrics.clone(),
        usage_memory: Default::default(),
        issuers: issuers.stores(),
    });
    let (key_changed, key_changes) = futures::channel::mpsc::unbounded();
    let key_loop = tokio::spawn(maintain_keys(
        client.clone(),
        keys,
        ctx.clone(),
        first,
        held,
        key_changed,
    ));
    let gauge_loop = tokio::spawn(export_credential_states(ctx.clone()));
    let reflector_task = r.task.abort_handle();
    let role_task = roles.task.abort_handle();
    let controllers = future::join3(
        credential_controller(
            &ctx,
            &client,
            &r,
            key_changes,
            issuer_triggered,
            stop.clone(),
        ),
        account_controller(&ctx, r, roles, stop.clone()),
        issuers.run(ctx.clone(), stop.clone()),
    );
    // Pod-certificate hook: the PodCertificateRequest signer (super::podcert).
    let controllers = future::join(controllers, super::podcert::run(ctx.clone(), stop.clone()));
    tracing::info!("controllers started");
    tokio::select! {
        _ = controllers => {}
        _ = stop => {}
    }
    reflector_task.abort();
    role_task.abort();
    key_loop.abort();
    gauge_loop.abort();
    tracing::info!("controllers stopped");
    Ok(())
}

/// The credential controller: a credential reconciles when it, its Secret,
/// its ServiceAccount or its Namespace changes.
fn credential_controller<S>(
    ctx: &Arc<Context>,
    client: &Client,
    r: &Reflectors,
    key_changes: futures::channel::mpsc::UnboundedReceiver<()>,
    issuer_triggered: futures::channel::mpsc::UnboundedReceiver<ObjectRef<M2MCredential>>,
    stop: S,
) -> impl Future<Output = ()> + use<S>
where
    S: Future<Output = ()> + Send + Sync + 'static,
{
    let watch_ns = ctx.config.watch_namespace.as_deref();
    let creds = r.credentials.clone();
    let creds2 = r.credentials.clone();
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    Controller::for_shared_stream(r.cred_for_creds.clone(), r.credentials.clone())
        .with_config(controller_config())
        .owns(
            api_for::<Secret>(client, watch_ns),
            watcher::Config::default().labels(&managed),
        )
        .watches_shared_stream(
            changed_only(
                r.account_for_creds.clone(),
                r.accounts.clone(),
                account_fingerprint,
            ),
            move |account: Arc<ServiceAccount>| {
                let ns = account.namespace();
                let name = account.name_any();
                creds
                    .state()
                    .into_iter()
                    .filter(move |c| c.namespace() == ns && c.spec.service_account_name == name)
                    .map(|c| ObjectRef::from_obj(&*c))
            },
        )
        .watches_shared_stream(r.ns_for_creds.clone(), move |ns: Arc<Namespace>| {
            let name = ns.name_any();
            creds2
                .state()
                .into_iter()
                .filter(move |c| c.namespace().as_deref() == Some(name.as_str()))
                .map(|c| ObjectRef::from_obj(&*c))
        })
        .reconcile_all_on(key_changes)
        // Federation hook: a changed issuer reconciles the credentials binding it.
        .reconcile_on(issuer_triggered)
        .trigger_backoff(WatchBackoff::new())
        .graceful_shutdown_on(stop)
        .run(
            |cred, ctx: Arc<Context>| async move {
                let start = Instant::now();
                let result = credential::reconcile(cred, ctx.clone()).await;
                observe(&ctx.metrics, "credential", start, &result);
                result
            },
            credential::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
}

/// The ServiceAccount controller: an account reconciles when it, one of
/// its credentials, its Namespace or one of its roles changes (the
/// default role: every account).
fn account_controller(
    ctx: &Arc<Context>,
    r: Reflectors,
    roles: RoleReflectors,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let accounts = r.accounts.clone();
    let role_accounts = r.accounts.clone();
    let default_role = ctx.config.default_role.clone();
    Controller::for_shared_stream(r.account_for_accounts, r.accounts)
        .with_config(controller_config())
        .watches_shared_stream(
            changed_only(
                r.cred_for_accounts,
                r.credentials.clone(),
                |c: &M2MCredential| fingerprint(&(&c.metadata.uid, &c.spec.service_account_name)),
            ),
            |cred: Arc<M2MCredential>| {
                let ns = cred.namespace().unwrap_or_default();
                Some(ObjectRef::new(&cred.spec.service_account_name).within(&ns))
            },
        )
        .watches_shared_stream(r.ns_for_accounts, move |ns: Arc<Namespace>| {
            let name = ns.name_any();
            accounts
                .state()
                .into_iter()
                .filter(move |a| a.namespace().as_deref() == Some(name.as_str()))
                .map(|a| ObjectRef::from_obj(&*a))
        })
        .reconcile_on(roles.changes.flat_map(move |change| {
            futures::stream::iter(granted(&role_accounts, default_role.as_deref(), change))
        }))
        .trigger_backoff(WatchBackoff::new())
        .graceful_shutdown_on(stop)
        .run(
            |account, ctx: Arc<Context>| async move {
                let start = Instant::now();
                let result = service_account::reconcile(account, ctx.clone()).await;
                observe(&ctx.metrics, "serviceaccount", start, &result);
                result
            },
            service_account::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
}

/// Reconciles one controller runs at once. kube's default is unbounded:
/// with 50,000 credentials listed at start-up, every reconcile ran at once,
/// each with its own apiserver connection, until connections failed, the
/// Lease could not be renewed (so leadership was lost) and the controller
/// held 1.3 GB. Each reconcile is a few API calls; 32 keep the apiserver
/// busy without queueing the world in memory.
const RECONCILE_CONCURRENCY: u16 = 32;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// Only the events of objects whose `key` changed since the last event of
/// the same object (a relist re-sends every object; unchanged ones are
/// dropped). Without it, every status write of every credential
/// re-reconciled its ServiceAccount (an O(credentials) count), and every
/// ServiceAccount status write (its credential count) re-reconciled all of
/// its credentials: quadratic work that made 50,000 credentials converge
/// at a quarter of the rate of 5,000.
///
/// What it remembers is pruned to the objects still in `store` whenever it
/// has grown to twice their number (deletions are not seen here).
fn changed_only<K>(
    stream: impl futures::Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    key: impl Fn(&K) -> u64 + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let seen = std::sync::Mutex::new(std::collections::HashMap::<(String, String), u64>::new());
    stream.filter(move |obj| {
        let id = (obj.namespace().unwrap_or_default(), obj.name_any());
        let k = key(obj);
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let changed = seen.insert(id, k) != Some(k);
        if seen.len() > 1024 && seen.len() > 2 * store.len() {
            seen.retain(|(ns, name), _| {
                let r = ObjectRef::<K>::new(name);
                let r = if ns.is_empty() { r } else { r.within(ns) };
                store.get(&r).is_some()
            });
        }
        future::ready(changed)
    })
}

/// A hash of `value` (in-memory change detection only).
fn fingerprint(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// What a credential's reconcile reads of its ServiceAccount: the spec
/// (its generation), the roles it resolved and its Ready verdict — not
/// `status.credentialCount`, which every credential of it changes.
fn account_fingerprint(account: &ServiceAccount) -> u64 {
    let status = account.status.as_ref();
    let ready = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == credential::READY)
            .map(|c| (format!("{:?}", c.status), c.reason.clone()))
    });
    fingerprint(&(
        &account.metadata.uid,
        account.metadata.generation,
        account.metadata.deletion_timestamp.is_some(),
        status.map(|s| (&s.effective_scopes, &s.roles)),
        ready,
    ))
}

/// The accounts a role change affects: those whose `roleRefs` name the
/// role, every account for the default role or after a relist.
fn granted(
    accounts: &Store<ServiceAccount>,
    default_role: Option<&str>,
    change: RoleChange,
) -> Vec<ObjectRef<ServiceAccount>> {
    accounts
        .state()
        .into_iter()
        .filter(|a| match &change {
            None => true,
            Some((RoleKind::ClusterM2MRole, _, name)) if default_role == Some(name.as_str()) => {
                true
            }
            Some((kind, ns, name)) => {
                (*kind == RoleKind::ClusterM2MRole || a.namespace() == *ns)
                    && a.spec
                        .role_refs
                        .iter()
                        .any(|r| r.kind == *kind && r.name == *name)
            }
        })
        .map(|a| ObjectRef::from_obj(&*a))
        .collect()
}

fn observe<T>(metrics: &Metrics, controller: &str, start: Instant, result: &Result<T, Error>) {
    let error = result.as_ref().err().map(Error::metric_label);
    metrics.observe_reconcile(controller, start.elapsed().as_secs_f64(), error);
}

/// How often the key Secret is re-checked even when nothing is due and no
/// watch event came (a safety net: the watch below notices a deleted or
/// edited key Secret within a second).
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(300);

async fn reconcile_keys_until_ok(
    client: &Client,
    cfg: &KeySecretConfig,
    metrics: &Metrics,
    held: Option<&HeldKeys>,
) -> super::keys::KeyReconcile {
    let mut delay = WatchBackoff::new();
    loop {
        let start = Instant::now();
        let result = reconcile_keys_holding(client, cfg, Utc::now(), held)
            .await
            .map_err(Error::from);
        observe(metrics, "keys", start, &result);
        match result {
            Ok(r) => return r,
            Err(error) => {
                tracing::warn!(%error, "could not reconcile the operator key Secret; retrying");
                tokio::time::sleep(delay.next().unwrap_or(MAX_BACKOFF)).await;
            }
        }
    }
}

/// Rotate and prune signing keys exactly when due, and repair the key
/// Secret as soon as a watch reports it deleted or changed — from the keys
/// this controller holds, so a deleted Secret comes back with the same keys
/// and no credential is re-issued. Keeps the verifier key the credential
/// reconciler uses current.
async fn maintain_keys(
    client: Client,
    cfg: KeySecretConfig,
    ctx: Arc<Context>,
    first: super::keys::KeyReconcile,
    memory: KeyMemory,
    key_changed: futures::channel::mpsc::UnboundedSender<()>,
) {
    let mut held = HeldKeys::from(&first);
    let mut next_due = first.next_due;
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={}", cfg.name));
    let mut changes = watcher(api, wc).backoff(WatchBackoff::new()).boxed();
    loop {
        let wait = match next_due {
            Some(t) => (t - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(KEY_CHECK_INTERVAL),
            None => KEY_CHECK_INTERVAL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait + Duration::from_millis(50)) => {}
            event = changes.next() => match event {
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => {}
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                // Retried by the watcher's bounded backoff.
                Some(Err(_)) => continue,
                None => {
                    tracing::warn!("the key Secret watch ended; polling only");
                    changes = futures::stream::pending().boxed();
                    continue;
                }
            },
        }
        let r = reconcile_keys_until_ok(&client, &cfg, &ctx.metrics, Some(&held)).await;
        if ctx.verifier_key.load().as_deref() != Some(&r.verifier_key) {
            tracing::warn!(
                "the key Secret holds a different verifier key (replaced by hand?): credentials sealed under the previous key report VerifierKeyConflict until the keys match again"
            );
            if let Some(old) = ctx
                .verifier_key
                .swap(Some(Arc::new(r.verifier_key.clone())))
            {
                let mut former = ctx.former_key_ids.load().to_vec();
                former.push(old.key_id());
                ctx.former_key_ids.store(Arc::new(former));
            }
            // Every credential re-checks its seals against the new key now.
            let _ = key_changed.unbounded_send(());
        }
        held = HeldKeys::from(&r);
        memory.store(Some(Arc::new(held.clone())));
        next_due = r.next_due;
    }
}

/// Publish how many credentials are in each state, from the reflector.
async fn export_credential_states(ctx: Arc<Context>) {
    let mut last: std::collections::BTreeMap<String, i64> = Default::default();
    loop {
        let mut counts: std::collections::BTreeMap<String, i64> = ["ready", "not_ready", "pending"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for cred in ctx.credentials.state() {
            let ready = cred
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == credential::READY));
            let state = match ready {
                None => "pending",
                Some(c) if c.status == crate::crd::ConditionStatus::True => "ready",
                Some(_) => "not_ready",
            };
            *counts.entry(state.to_owned()).or_default() += 1;
        }
        if counts != last {
            for (state, n) in &counts {
                ctx.metrics.set_credentials(state, *n);
            }
            last = counts;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Run the controllers whenever this replica holds the Lease, until
/// `shutdown`. Leadership and its timings: [`super::lease`]; the
/// controllers are dropped (in-flight requests cancelled, not awaited) the
/// moment leadership is lost, so nothing is written after the renew deadline.
pub(crate) async fn run_with_leader_election(
    client: Client,
    config: ControllerConfig,
    keys: KeySecretConfig,
    lease_name: &str,
    metrics: Metrics,
    ready: ReadyFlag,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let identity = match &config.instance {
        Some(h) => format!("{h}-{}", uuid::Uuid::new_v4().simple()),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let elector = LeaderElector::new(
        client.clone(),
        &config.operator_namespace,
        lease_name,
        &identity,
        LeaseTimings::DEFAULT,
    );
    let (leader_tx, mut leader) = tokio::sync::watch::channel(false);
    let held = KeyMemory::default();
    let shutdown = shutdown.shared();
    let lease_task = tokio::spawn(elector.run(leader_tx, shutdown.clone()));
    // A standby replica is healthy and ready: readiness must not depend on
    // leadership, or a PodDisruptionBudget could never let a node drain.
    ready.set(true);
    tracing::info!(lease = lease_name, identity, "waiting for leadership");
    loop {
        tokio::select! {
            _ = shutdown.clone() => break,
            changed = leader.wait_for(|is| *is) => {
                if changed.is_err() { break; }
            }
        }
        tracing::info!(lease = lease_name, "acquired leadership");
        let mut lost = leader.clone();
        let stop_shutdown = shutdown.clone();
        let stop = async move {
            tokio::select! {
                _ = lost.wait_for(|is| !*is) => {}
                _ = stop_shutdown => {}
            }
        };
        run_controllers(
            client.clone(),
            config.clone(),
            keys.clone(),
            metrics.clone(),
            held.clone(),
            stop,
        )
        .await?;
        if shutdown.clone().now_or_never().is_some() {
            break;
        }
        tracing::warn!(lease = lease_name, "lost leadership; standing by");
    }
    // The elector releases a held Lease when it sees the shutdown.
    let _ = lease_task.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    type Calls = Arc<Mutex<Vec<(Instant, String)>>>;

    fn account(name: &str, generation: i64, count: i32) -> Arc<ServiceAccount> {
        let mut a = ServiceAccount::new(name, Default::default());
        a.metadata.namespace = Some("ns".into());
        a.metadata.uid = Some(format!("uid-{name}"));
        a.metadata.generation = Some(generation);
        a.status = Some(crate::crd::ServiceAccountStatus {
            credential_count: count,
            ..Default::default()
        });
        Arc::new(a)
    }

    /// A ServiceAccount's credential count changes with every credential;
    /// only a spec (generation) change re-reconciles its credentials, and
    /// a relist of unchanged accounts triggers nothing.
    #[tokio::test]
    async fn only_what_credentials_read_of_an_account_triggers_them() {
        let (store, mut writer) = reflector::store::<ServiceAccount>();
        for name in ["a", "b"] {
            writer.apply_watcher_event(&watcher::Event::Apply((*account(name, 1, 0)).clone()));
        }
        let events = vec![
            account("a", 1, 0),
            account("a", 1, 1), // count only: dropped
            account("b", 1, 0),
            account("a", 1, 2), // count only: dropped
            account("a", 2, 2), // spec changed
            account("b", 1, 0), // relist, unchanged: dropped
        ];
        let passed: Vec<(String, i64)> =
            changed_only(futures::stream::iter(events), store, account_fingerprint)
                .map(|a| (a.name_any(), a.metadata.generation.unwrap_or_default()))
                .collect()
                .await;
        assert_eq!(
            passed,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 1),
                ("a".to_owned(), 2)
            ]
        );
    }

    /// An apiserver that answers the initial lists (empty) and then
    /// becomes unreachable: every watch request fails at once. Records
    /// when each watch was tried, by path.
    fn apiserver_gone_after_listing() -> (Client, Calls) {
        let calls = Calls::default();
        let seen = calls.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            if watch && let Ok(mut seen) = seen.lock() {
                seen.push((Instant::now(), req.uri().path().to_owned()));
            }
            async move {
                if watch {
                    return Err(std::io::Error::other("connection refused"));
                }
                let list = br#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":[]}"#;
                Ok(http::Response::new(kube::client::Body::from(list.to_vec())))
            }
        });
        (Client::new(svc, "default"), calls)
    }

    /// Issue 12: while the apiserver is unreachable every reflector keeps
    /// retrying its watch at least every [`MAX_BACKOFF`] (plus slack), so it
    /// resumes within that bound once the apiserver is back. kube's default
    /// backoff (0.8 s doubling, with jitter, up to 30 s) leaves a gap of at
    /// least 6.4 s within the first 20 s. Real time: 20 s.
    #[tokio::test]
    async fn reflectors_retry_within_the_bounded_backoff_during_an_outage() {
        const WINDOW: Duration = Duration::from_secs(20);
        let (client, calls) = apiserver_gone_after_listing();
        let r = start_reflectors(&client, None).unwrap();
        tokio::time::sleep(WINDOW).await;
        r.task.abort();
        let end = Instant::now();
        let calls = calls.lock().unwrap();
        for kind in ["m2mcredentials", "serviceaccounts", "namespaces"] {
            let times: Vec<Instant> = calls
                .iter()
                .filter(|(_, p)| p.ends_with(kind))
                .map(|(t, _)| *t)
                .chain([end])
                .collect();
            let longest = times
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            // One second of slack for a loaded machine; still below 6.4 s.
            assert!(
                times.len() > 4 && longest <= MAX_BACKOFF + Duration::from_secs(1),
                "{kind}: {longest:?} without a watch attempt ({} attempts)",
                times.len() - 1
            );
        }
    }

    #[test]
    fn the_watch_backoff_is_bounded_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::new();
        let delays: Vec<Duration> = (0..20).map(|_| b.next().unwrap()).collect();
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(delays[0] <= MIN_BACKOFF && delays[19] >= MAX_BACKOFF / 2);
        b.reset();
        assert!(b.next().unwrap() <= MIN_BACKOFF);
    }
}
