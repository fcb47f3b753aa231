//! Wiring of the controllers: shared reflectors for the objects reconciles
//! read (so a trigger never sees an older cache than the event that caused
//! it), watch mappings (a ServiceAccount, Namespace or role change
//! re-reconciles what it affects), and leader election — only the Lease holder runs the
//! reconcilers, so exactly one replica writes.

use super::keys::reconcile_keys;
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
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARED_BUFFER: usize = 1024;

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
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear())
            .reflect_shared(cred_writer)
            .for_each(|_| future::ready(())),
        watcher(api_for::<ServiceAccount>(client, watch_ns), cfg)
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear())
            .reflect_shared(account_writer)
            .for_each(|_| future::ready(())),
        watcher(Api::<Namespace>::all(client.clone()), ns_cfg)
            .default_backoff()
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
        .default_backoff()
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
        .default_backoff()
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

/// Run the reconcilers until `stop` resolves. Call only while holding the Lease.
pub(crate) async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    keys: KeySecretConfig,
    metrics: Metrics,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let stop = stop.boxed().shared();
    let mut stop_rx = stop.clone();
    let first = tokio::select! {
        k = reconcile_keys_until_ok(&client, &keys, &metrics) => k,
        _ = stop_early(&mut stop_rx) => return Ok(()),
    };
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
        metrics: metrics.clone(),
    });
    let key_loop = tokio::spawn(maintain_keys(
        client.clone(),
        keys,
        ctx.clone(),
        first.next_due,
    ));
    let gauge_loop = tokio::spawn(export_credential_states(ctx.clone()));
    let reflector_task = r.task.abort_handle();
    let role_task = roles.task.abort_handle();
    let controllers = future::join(
        credential_controller(&ctx, &client, &r, stop.clone()),
        account_controller(&ctx, r, roles, stop.clone()),
    );
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
        .owns(
            api_for::<Secret>(client, watch_ns),
            watcher::Config::default().labels(&managed),
        )
        .watches_shared_stream(
            r.account_for_creds.clone(),
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
        .watches_shared_stream(r.cred_for_accounts, |cred: Arc<M2MCredential>| {
            let ns = cred.namespace().unwrap_or_default();
            Some(ObjectRef::new(&cred.spec.service_account_name).within(&ns))
        })
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

/// How often the key Secret is re-checked even when nothing is due, so a
/// hand-deleted or damaged key Secret is noticed.
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(300);

async fn reconcile_keys_until_ok(
    client: &Client,
    cfg: &KeySecretConfig,
    metrics: &Metrics,
) -> super::keys::KeyReconcile {
    let mut delay = Duration::from_millis(500);
    loop {
        let start = Instant::now();
        let result = reconcile_keys(client, cfg, Utc::now())
            .await
            .map_err(Error::from);
        observe(metrics, "keys", start, &result);
        match result {
            Ok(r) => return r,
            Err(error) => {
                tracing::warn!(%error, "could not reconcile the operator key Secret; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Rotate and prune signing keys exactly when due (and re-check now and
/// then), keeping the verifier key the credential reconciler uses current.
async fn maintain_keys(
    client: Client,
    cfg: KeySecretConfig,
    ctx: Arc<Context>,
    mut next_due: Option<chrono::DateTime<Utc>>,
) {
    loop {
        let wait = match next_due {
            Some(t) => (t - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(KEY_CHECK_INTERVAL),
            None => KEY_CHECK_INTERVAL,
        };
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        let r = reconcile_keys_until_ok(&client, &cfg, &ctx.metrics).await;
        if ctx.verifier_key.load().as_deref() != Some(&r.verifier_key) {
            tracing::warn!("the verifier key changed: every credential Secret will be re-issued");
            ctx.verifier_key.store(Some(Arc::new(r.verifier_key)));
        }
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

/// Lease timing: a standby takes over at most this long after the holder dies.
const LEASE_DURATION_SECS: u64 = 15;
const LEASE_GRACE_SECS: u64 = 5;

/// Run the controllers whenever this replica holds the Lease, until `shutdown`.
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
    let manager = LeaseManagerBuilder::new(client.clone(), lease_name)
        .with_namespace(&config.operator_namespace)
        .with_identity(&identity)
        .with_duration(LEASE_DURATION_SECS)
        .with_grace(LEASE_GRACE_SECS)
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby replica is healthy and ready: readiness must not depend on
    // leadership, or a PodDisruptionBudget could never let a node drain.
    ready.set(true);
    let shutdown = shutdown.shared();
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
            stop,
        )
        .await?;
        if shutdown.clone().now_or_never().is_some() {
            break;
        }
        tracing::warn!(lease = lease_name, "lost leadership; standing by");
    }
    // Dropping the receiver makes the lease task release the Lease.
    drop(leader);
    let _ = lease_task.await;
    Ok(())
}
