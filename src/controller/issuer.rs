//! Reconcile `ClusterTrustedIssuer` and `TrustedIssuer` (SPEC §9): compile
//! the claim rules, fetch the keys (discovery, `jwksURL` or a ConfigMap,
//! over the CA bundle or ClusterTrustBundle), and report what was found —
//! `status.keys` (kid and algorithm, public data), `lastRefreshTime`,
//! `jwksURL` and the conditions `RulesValid`, `KeysAvailable` and
//! `Ready` — with an Event on every change of readiness.
//!
//! The status is for people: every token-server replica fetches and
//! compiles the same way itself ([`crate::core::federation`]) and never
//! trusts what status says. After each reconcile the credentials binding
//! the issuer are reconciled as well (their readiness depends on it).
//!
//! Refresh: every [`DEFAULT_REFRESH_INTERVAL`] (30 s after a failure).
//! When a refresh fails, the last good keys stay in status with their
//! `lastRefreshTime`, `KeysAvailable` turns `False` with the error.

use super::credential::{READY, cond_at};
use super::{Context, Error, Step, kube_err};
use crate::core::federation::fetch::{FetchError, Fetched};
use crate::core::federation::{CompiledIssuer, DEFAULT_REFRESH_INTERVAL, IssuerId};
use crate::crd::{
    ClusterTrustedIssuer, IssuerKey, IssuerKind, M2MCredential, TrustedIssuer, TrustedIssuerStatus,
    set_condition,
};
use crate::labels::FIELD_MANAGER;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Condition: every claim rule compiles.
pub const RULES_VALID: &str = "RulesValid";
/// Condition: the last key refresh succeeded with at least one usable key.
pub const KEYS_AVAILABLE: &str = "KeysAvailable";
/// Retry delay after a failed refresh.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// The issuer stores the credential reconciles read.
#[derive(Clone)]
pub(crate) struct IssuerStores {
    /// ClusterTrustedIssuers.
    pub cluster: Store<ClusterTrustedIssuer>,
    /// TrustedIssuers (in the watched namespace, or all).
    pub namespaced: Store<TrustedIssuer>,
    /// Whether each has listed once. (Not `Store::wait_until_ready`: its
    /// one-shot channel wakes only the last of several concurrent waiters,
    /// and many credential reconciles wait at once.)
    synced: [Arc<std::sync::atomic::AtomicBool>; 2],
}

impl IssuerStores {
    /// Both have listed once: a missing issuer is really missing.
    pub fn synced(&self) -> bool {
        self.synced
            .iter()
            .all(|s| s.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The issuer a credential in `namespace` binds, compiled, and whether
    /// its status says it is ready; `None` if it does not exist.
    pub fn lookup(&self, id: &IssuerId, operator_namespace: &str) -> Option<LookedUp> {
        match id.kind {
            IssuerKind::ClusterTrustedIssuer => {
                let o = self.cluster.get(&ObjectRef::new(&id.name))?;
                Some(LookedUp {
                    compiled: CompiledIssuer::compile(
                        id.clone(),
                        &o.spec.issuer,
                        o.spec.allowed_namespaces.clone(),
                        operator_namespace,
                    ),
                    ready: is_ready(o.status.as_ref()),
                })
            }
            IssuerKind::TrustedIssuer => {
                let o = self
                    .namespaced
                    .get(&ObjectRef::new(&id.name).within(&id.namespace))?;
                Some(LookedUp {
                    compiled: CompiledIssuer::compile(
                        id.clone(),
                        &o.spec.issuer,
                        None,
                        &id.namespace,
                    ),
                    ready: is_ready(o.status.as_ref()),
                })
            }
        }
    }
}

/// An issuer as a credential reconcile sees it.
pub(crate) struct LookedUp {
    /// Its compiled spec.
    pub compiled: Result<CompiledIssuer, crate::core::federation::IssuerError>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
}

fn is_ready(status: Option<&TrustedIssuerStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == READY && c.status == crate::crd::ConditionStatus::True)
    })
}

/// The two issuer controllers, built before the shared context so that
/// their stores can be part of it.
pub(crate) struct IssuerControllers {
    cluster: Controller<ClusterTrustedIssuer>,
    namespaced: Controller<TrustedIssuer>,
    synced: [Arc<std::sync::atomic::AtomicBool>; 2],
}

/// Sends the credentials binding a changed issuer to their controller.
type OnChange = Arc<dyn Fn(IssuerId) + Send + Sync>;

/// A controller over `api` whose first complete list sets `synced`, and
/// whose every change or deletion (after the store has it) calls `on_change`.
fn controller_marking<K>(
    api: Api<K>,
    synced: Arc<std::sync::atomic::AtomicBool>,
    on_change: OnChange,
) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + HasIssuerStatus
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .inspect(move |event| match event {
            Ok(watcher::Event::InitDone) => {
                synced.store(true, std::sync::atomic::Ordering::Release);
            }
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                on_change(o.issuer_id());
            }
            _ => {}
        })
        .applied_objects();
    Controller::for_stream(stream, reader)
}

impl IssuerControllers {
    /// Watch ClusterTrustedIssuers, and TrustedIssuers in `watch_ns` (or
    /// all). Every change or deletion of an issuer sends the credentials
    /// of `credentials` that bind it to the returned stream (for the
    /// credential controller: their readiness depends on the issuer).
    pub fn new(
        client: &Client,
        watch_ns: Option<&str>,
        credentials: Store<M2MCredential>,
    ) -> (
        Self,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<M2MCredential>>,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let on_change: OnChange = Arc::new(move |id: IssuerId| {
            for c in credentials.state() {
                let Some(f) = &c.spec.federation else {
                    continue;
                };
                let ns = c.namespace().unwrap_or_default();
                if IssuerId::referenced(&ns, &f.issuer_ref) == id {
                    let _ = tx.unbounded_send(ObjectRef::from_obj(&*c));
                }
            }
        });
        let namespaced_api: Api<TrustedIssuer> = match watch_ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let synced: [Arc<std::sync::atomic::AtomicBool>; 2] = [Arc::default(), Arc::default()];
        let controllers = Self {
            cluster: controller_marking(
                Api::all(client.clone()),
                synced[0].clone(),
                on_change.clone(),
            ),
            namespaced: controller_marking(namespaced_api, synced[1].clone(), on_change),
            synced,
        };
        (controllers, rx)
    }

    /// Their stores.
    pub fn stores(&self) -> IssuerStores {
        IssuerStores {
            cluster: self.cluster.store(),
            namespaced: self.namespaced.store(),
            synced: self.synced.clone(),
        }
    }

    /// Run both until `stop`.
    pub async fn run(
        self,
        ctx: Arc<Context>,
        stop: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
    ) {
        let cluster = self
            .cluster
            .graceful_shutdown_on(stop.clone())
            .run(reconcile_cluster, error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));
        let namespaced = self
            .namespaced
            .graceful_shutdown_on(stop)
            .run(reconcile_namespaced, error_policy, ctx)
            .for_each(|_| futures::future::ready(()));
        futures::future::join(cluster, namespaced).await;
    }
}

fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "issuer reconcile failed");
    Action::requeue(error.retry_after())
}

async fn reconcile_cluster(
    issuer: Arc<ClusterTrustedIssuer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let id = IssuerId {
        kind: IssuerKind::ClusterTrustedIssuer,
        namespace: String::new(),
        name: issuer.name_any(),
    };
    let compiled = CompiledIssuer::compile(
        id,
        &issuer.spec.issuer,
        issuer.spec.allowed_namespaces.clone(),
        &ctx.config.operator_namespace,
    );
    let api: Api<ClusterTrustedIssuer> = Api::all(ctx.client.clone());
    reconcile_one(&*issuer, &api, compiled, &ctx).await
}

async fn reconcile_namespaced(
    issuer: Arc<TrustedIssuer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = issuer
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let id = IssuerId {
        kind: IssuerKind::TrustedIssuer,
        namespace: ns.clone(),
        name: issuer.name_any(),
    };
    let compiled = CompiledIssuer::compile(id, &issuer.spec.issuer, None, &ns);
    let api: Api<TrustedIssuer> = Api::namespaced(ctx.client.clone(), &ns);
    reconcile_one(&*issuer, &api, compiled, &ctx).await
}

/// Reconcile one issuer of either kind.
async fn reconcile_one<K>(
    object: &K,
    api: &Api<K>,
    compiled: Result<CompiledIssuer, crate::core::federation::IssuerError>,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + HasIssuerStatus,
{
    let now = Utc::now();
    let generation = object.meta().generation;
    let old = object.issuer_status().cloned().unwrap_or_default();
    // Our own status write triggers a reconcile too: refresh only when the
    // spec changed, the last attempt failed, or the refresh is due — so a
    // steady issuer costs one fetch and one status write per interval.
    if let Some(wait) = refresh_not_due(&old, generation, now) {
        return Ok(Action::requeue(wait));
    }
    let fetched = match &compiled {
        Ok(c) => Some(crate::issuer_keys::fetch_issuer_keys(&ctx.client, c).await),
        Err(_) => None,
    };
    let plan = plan(
        &old,
        compiled.as_ref().err(),
        fetched.as_ref(),
        generation,
        now,
    );
    if plan.status != old {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": plan.status,
        });
        match api
            .patch_status(
                &object.meta().name.clone().unwrap_or_default(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(Step::PatchIssuerStatus)(e)),
        }
    }
    for (type_, reason, note) in plan.events {
        ctx.event(object, type_, reason, note).await;
    }
    Ok(Action::requeue(plan.requeue))
}

/// How long until the next refresh, when the status is of this
/// generation, ready, and refreshed less than an interval ago.
fn refresh_not_due(
    old: &TrustedIssuerStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let last = old.last_refresh_time?;
    let ready = is_ready(Some(old));
    let age = (now - last).to_std().unwrap_or_default();
    (ready && old.observed_generation == generation && age < DEFAULT_REFRESH_INTERVAL)
        .then(|| DEFAULT_REFRESH_INTERVAL - age)
}

/// The identity and status of either issuer kind.
pub(crate) trait HasIssuerStatus {
    /// The status, if any.
    fn issuer_status(&self) -> Option<&TrustedIssuerStatus>;
    /// Which object it is.
    fn issuer_id(&self) -> IssuerId;
}

impl HasIssuerStatus for ClusterTrustedIssuer {
    fn issuer_status(&self) -> Option<&TrustedIssuerStatus> {
        self.status.as_ref()
    }
    fn issuer_id(&self) -> IssuerId {
        IssuerId {
            kind: IssuerKind::ClusterTrustedIssuer,
            namespace: String::new(),
            name: self.name_any(),
        }
    }
}

impl HasIssuerStatus for TrustedIssuer {
    fn issuer_status(&self) -> Option<&TrustedIssuerStatus> {
        self.status.as_ref()
    }
    fn issuer_id(&self) -> IssuerId {
        IssuerId {
            kind: IssuerKind::TrustedIssuer,
            namespace: self.namespace().unwrap_or_default(),
            name: self.name_any(),
        }
    }
}

/// What one issuer reconcile writes.
#[derive(Debug, PartialEq)]
pub(crate) struct IssuerPlan {
    /// The status.
    pub status: TrustedIssuerStatus,
    /// Events to publish.
    pub events: Vec<(EventType, &'static str, String)>,
    /// When to refresh again.
    pub requeue: Duration,
}

/// Decide an issuer's status from the compile result and the fetch.
pub(crate) fn plan(
    old: &TrustedIssuerStatus,
    compile_error: Option<&crate::core::federation::IssuerError>,
    fetched: Option<&Result<Fetched, FetchError>>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> IssuerPlan {
    let mut status = old.clone();
    status.observed_generation = generation;
    let rules = match compile_error {
        Some(e) => cond_at(
            RULES_VALID,
            false,
            e.reason(),
            &e.to_string(),
            generation,
            now,
        ),
        None => cond_at(
            RULES_VALID,
            true,
            "Compiled",
            "every claim rule compiles",
            generation,
            now,
        ),
    };
    let keys = match fetched {
        None => None,
        Some(Ok(f)) => {
            status.keys = f
                .keys
                .summary()
                .into_iter()
                .map(|(kid, alg)| IssuerKey { kid, alg })
                .collect();
            status.jwks_url = Some(f.jwks_url.clone());
            // Only moved when the keys changed or by the refresh interval,
            // so a steady issuer costs one status write per interval.
            status.last_refresh_time = Some(now);
            Some(cond_at(
                KEYS_AVAILABLE,
                true,
                "KeysFetched",
                &format!("{} usable key(s) from {}", f.keys.keys.len(), f.jwks_url),
                generation,
                now,
            ))
        }
        Some(Err(e)) => {
            let kept = match old.last_refresh_time {
                Some(t) if !old.keys.is_empty() => format!(
                    "; the token servers keep the keys of {} for at most {}h",
                    t.to_rfc3339(),
                    crate::core::federation::DEFAULT_MAX_KEY_STALENESS.as_secs() / 3600
                ),
                _ => String::new(),
            };
            Some(cond_at(
                KEYS_AVAILABLE,
                false,
                e.reason(),
                &format!("{e}{kept}"),
                generation,
                now,
            ))
        }
    };
    let ready = match (&compile_error, &keys) {
        (Some(e), _) => cond_at(READY, false, e.reason(), &e.to_string(), generation, now),
        (None, Some(k)) if k.status == crate::crd::ConditionStatus::False => {
            cond_at(READY, false, &k.reason, &k.message, generation, now)
        }
        _ => cond_at(
            READY,
            true,
            "Trusted",
            "keys fetched and rules compiled: tokens of this issuer are accepted for the subjects credentials bind",
            generation,
            now,
        ),
    };
    let mut events = vec![];
    let previous = old.conditions.iter().find(|c| c.type_ == READY);
    if previous.is_none_or(|p| p.status != ready.status || p.reason != ready.reason) {
        events.push(if ready.status == crate::crd::ConditionStatus::True {
            (EventType::Normal, "Trusted", ready.message.clone())
        } else {
            (
                EventType::Warning,
                leak(&ready.reason),
                ready.message.clone(),
            )
        });
    }
    let requeue = if ready.status == crate::crd::ConditionStatus::True {
        DEFAULT_REFRESH_INTERVAL
    } else {
        RETRY_AFTER_FAILURE
    };
    set_condition(&mut status.conditions, rules);
    match keys {
        Some(k) => set_condition(&mut status.conditions, k),
        None => status.conditions.retain(|c| c.type_ != KEYS_AVAILABLE),
    }
    set_condition(&mut status.conditions, ready);
    IssuerPlan {
        status,
        events,
        requeue,
    }
}

/// The static reason strings conditions carry (Events need `&'static str`).
fn leak(reason: &str) -> &'static str {
    const REASONS: &[&str] = &[
        "InvalidClaimValidationRule",
        "InvalidSpec",
        "InvalidCABundle",
        "NoUsableKeys",
        "JWKSConfigMapUnavailable",
        "DiscoveryFailed",
        "KeysUnreachable",
    ];
    REASONS
        .iter()
        .copied()
        .find(|r| *r == reason)
        .unwrap_or("NotReady")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::federation::keys::parse_jwks;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    fn fetched() -> Fetched {
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
        Fetched {
            keys: parse_jwks(jwks.to_string().as_bytes()).unwrap(),
            jwks_url: "https://ci.example/jwks".into(),
        }
    }

    fn ready(p: &IssuerPlan) -> (crate::crd::ConditionStatus, String) {
        let c = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        (c.status, c.reason.clone())
    }

    #[test]
    fn keys_and_rules_make_it_ready_and_failures_keep_the_last_keys() {
        use crate::crd::ConditionStatus::{False, True};
        let ok = plan(
            &Default::default(),
            None,
            Some(&Ok(fetched())),
            Some(1),
            at(100),
        );
        assert_eq!(ready(&ok), (True, "Trusted".into()));
        assert_eq!(
            ok.status.keys,
            [IssuerKey {
                kid: "k1".into(),
                alg: "ES256".into()
            }]
        );
        assert_eq!(ok.status.last_refresh_time, Some(at(100)));
        assert_eq!(ok.events.len(), 1);
        let down = Err(FetchError::Request {
            url: "https://ci.example/.well-known/openid-configuration".into(),
            reason: "connection refused".into(),
        });
        let failed = plan(&ok.status, None, Some(&down), Some(1), at(400));
        assert_eq!(ready(&failed), (False, "KeysUnreachable".into()));
        assert_eq!(failed.status.keys, ok.status.keys, "last good keys kept");
        assert_eq!(failed.status.last_refresh_time, Some(at(100)));
        assert_eq!(failed.events[0].0, EventType::Warning);
        assert_eq!(failed.requeue, RETRY_AFTER_FAILURE);
        // The same failure again: no new Event.
        assert!(
            plan(&failed.status, None, Some(&down), Some(1), at(430))
                .events
                .is_empty()
        );
    }

    #[test]
    fn a_refresh_is_due_after_the_interval_a_change_or_a_failure() {
        let ok = plan(
            &Default::default(),
            None,
            Some(&Ok(fetched())),
            Some(1),
            at(100),
        )
        .status;
        assert_eq!(
            refresh_not_due(&ok, Some(1), at(160)),
            Some(DEFAULT_REFRESH_INTERVAL - Duration::from_secs(60))
        );
        assert_eq!(refresh_not_due(&ok, Some(1), at(100 + 300)), None, "due");
        assert_eq!(refresh_not_due(&ok, Some(2), at(160)), None, "spec changed");
        let down = Err(FetchError::TooLarge("x".into()));
        let failed = plan(&ok, None, Some(&down), Some(1), at(130)).status;
        assert_eq!(
            refresh_not_due(&failed, Some(1), at(160)),
            None,
            "retry after a failure"
        );
    }

    #[test]
    fn a_rule_that_does_not_compile_is_not_ready_with_the_compilers_message() {
        let e = crate::core::federation::IssuerError::Rule {
            index: 0,
            error: crate::core::federation::rules::RuleError::Syntax("unexpected end".into()),
        };
        let p = plan(&Default::default(), Some(&e), None, Some(2), at(100));
        let c = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(c.reason, "InvalidClaimValidationRule");
        assert!(
            c.message
                .contains("claimValidationRules[0]: compiling: unexpected end")
        );
        assert_eq!(p.events[0].1, "InvalidClaimValidationRule");
    }
}
