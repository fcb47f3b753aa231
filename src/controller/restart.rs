//! Rollout restarts of `spec.rotation.restartTargets` (SPEC §8): workloads
//! that read their secret once (environment variables, clients built at
//! start-up) are restarted once per rotation, the way `kubectl rollout
//! restart` does it — a new `kubectl.kubernetes.io/restartedAt` annotation
//! on the pod template.
//!
//! Once per rotation, never on an operator restart or a resync:
//! - the credential's `status.restartedVersion` says which secret version
//!   the restarts are done for; a new version above it (a rotation, or a
//!   repair of a deleted or edited Secret) is what triggers them
//!   ([`restart_due`], pure);
//! - each target records the versions it was restarted for in its
//!   `m2m.dev/restarted-for` annotation, written in the same patch as the
//!   pod-template annotation (with a `resourceVersion` precondition), so a
//!   crash between the restarts and the status write never restarts a
//!   target twice.
//!
//! The target must consent: the controller restarts a workload only if its
//! own annotation [`RESTART_CONSENT`] lists the credential's name. Whoever
//! may create M2MCredentials but not patch Deployments must not be able to
//! restart them (the controller would be a confused deputy), and a target
//! that does not consent is reported exactly like a missing one, so Events
//! do not reveal which workloads exist.
//!
//! Restarts are rate-limited per namespace ([`RestartLimiter`], one bucket
//! per namespace): a rotation of many credentials sharing targets must not
//! restart a fleet at once, and one namespace's rotations must not delay
//! another's. RBAC for it (`get`, `patch` on the three kinds) is the chart
//! value `rbac.restartTargets`, off by default; without it the controller
//! reports `RestartTargetForbidden` and moves on.

use super::{Context, Error, Step, kube_err};
use crate::crd::{M2MCredential, RestartKind, RestartTarget};
use crate::labels::FIELD_MANAGER;
use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Annotation on a restarted workload: credential name → secret version it
/// was last restarted for (a JSON object).
pub(crate) const RESTARTED_FOR: &str = "m2m.dev/restarted-for";

/// Annotation on a workload that consents to rollout restarts by
/// credentials of its namespace: a comma-separated list of M2MCredential
/// names.
pub const RESTART_CONSENT: &str = "m2m.dev/restart-on-rotation";

/// Whether a workload with these annotations consents to restarts by `credential`.
pub(crate) fn consents(annotations: &BTreeMap<String, String>, credential: &str) -> bool {
    annotations
        .get(RESTART_CONSENT)
        .is_some_and(|v| v.split(',').any(|n| n.trim() == credential))
}

/// The pod-template annotation `kubectl rollout restart` sets.
pub(crate) const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// What to record in `status.restartedVersion`, and which secret version
/// the targets must be restarted for now (if any).
///
/// `before` is the secret version at the start of this reconcile, `now`
/// the one it ends with. Without a record yet (targets just added, or an
/// operator upgrade) the version before this reconcile counts as done: a
/// rotation in the same reconcile still restarts, an old one does not. A
/// credential's first secret never restarts anything.
pub(crate) fn restart_due(
    has_targets: bool,
    recorded: Option<i64>,
    before: i64,
    now: i64,
) -> (Option<i64>, Option<i64>) {
    if !has_targets {
        return (recorded, None);
    }
    let done = recorded.unwrap_or(if before == 0 { now } else { before });
    (Some(done), (done < now).then_some(now))
}

/// The version `credential` last restarted the workload with these
/// annotations for.
pub(crate) fn recorded_version(
    annotations: &BTreeMap<String, String>,
    credential: &str,
) -> Option<i64> {
    let map: BTreeMap<String, i64> = serde_json::from_str(annotations.get(RESTARTED_FOR)?).ok()?;
    map.get(credential).copied()
}

/// The `m2m.dev/restarted-for` value recording `version` for `credential`,
/// keeping other credentials' entries (an unreadable value is replaced).
pub(crate) fn restarted_for_value(
    annotations: &BTreeMap<String, String>,
    credential: &str,
    version: i64,
) -> String {
    let mut map: BTreeMap<String, i64> = annotations
        .get(RESTARTED_FOR)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    map.insert(credential.to_owned(), version);
    serde_json::to_string(&map).unwrap_or_default()
}

/// A token bucket: `burst` restarts at once, then one per `every`.
#[derive(Debug)]
pub(crate) struct RestartLimiter {
    burst: f64,
    every: Duration,
    state: Mutex<(f64, Instant)>,
}

impl RestartLimiter {
    /// A full bucket.
    pub fn new(burst: u32, every: Duration, now: Instant) -> Self {
        Self {
            burst: f64::from(burst),
            every,
            state: Mutex::new((f64::from(burst), now)),
        }
    }

    /// Whether the bucket has refilled completely by `now` (it carries no
    /// information any more).
    fn is_full(&self, now: Instant) -> bool {
        let (tokens, last) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(last).as_secs_f64() / self.every.as_secs_f64();
        tokens + refill >= self.burst
    }

    /// Take one restart at `now`, or say how long to wait for one.
    pub(crate) fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let refill = now.saturating_duration_since(last).as_secs_f64() / self.every.as_secs_f64();
        let tokens = (tokens + refill).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(self.every.mul_f64(1.0 - tokens))
        }
    }
}

/// Per namespace: at most 10 restarts at once, then one every 6 s (10 a
/// minute). The map holds a bucket per namespace that restarted anything
/// since its bucket last refilled (full buckets are dropped).
fn try_acquire(namespace: &str, now: Instant) -> Result<(), Duration> {
    static LIMITERS: std::sync::LazyLock<Mutex<BTreeMap<String, RestartLimiter>>> =
        std::sync::LazyLock::new(Default::default);
    let mut limiters = LIMITERS.lock().unwrap_or_else(|e| e.into_inner());
    limiters.retain(|_, l| !l.is_full(now));
    limiters
        .entry(namespace.to_owned())
        .or_insert_with(|| RestartLimiter::new(10, Duration::from_secs(6), now))
        .try_acquire(now)
}

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartOutcome {
    /// Its pod template was patched.
    Restarted,
    /// It already records this version (an earlier, interrupted attempt).
    AlreadyDone,
    /// It does not exist, or does not consent ([`RESTART_CONSENT`]): the
    /// two are reported alike.
    NotFound,
    /// The controller may not read or patch it (chart value off).
    Forbidden,
}

/// Restart every target for `version`, publishing an Event per target.
/// Returns `Ok(None)` when all are handled, `Ok(Some(wait))` when the rate
/// limit held some back.
pub(crate) async fn restart_targets(
    ctx: &Context,
    cred: &M2MCredential,
    version: i64,
    targets: &[RestartTarget],
    now: DateTime<Utc>,
) -> Result<Option<Duration>, Error> {
    let ns = cred.namespace().unwrap_or_default();
    let name = cred.name_any();
    for target in targets {
        let attempt = match target.kind {
            RestartKind::Deployment => {
                restart::<Deployment>(ctx, &ns, &name, &target.name, version, now).await?
            }
            RestartKind::StatefulSet => {
                restart::<StatefulSet>(ctx, &ns, &name, &target.name, version, now).await?
            }
            RestartKind::DaemonSet => {
                restart::<DaemonSet>(ctx, &ns, &name, &target.name, version, now).await?
            }
        };
        match attempt {
            Attempt::Handled(outcome) => report(ctx, cred, target, version, outcome).await,
            Attempt::RateLimited(wait) => {
                let kind = kind_name(target.kind);
                tracing::info!(namespace = %ns, credential = %name, kind, target = %target.name, "restart rate limit reached; retrying");
                return Ok(Some(wait));
            }
        }
    }
    Ok(None)
}

fn kind_name(kind: RestartKind) -> &'static str {
    match kind {
        RestartKind::Deployment => "Deployment",
        RestartKind::StatefulSet => "StatefulSet",
        RestartKind::DaemonSet => "DaemonSet",
    }
}

async fn report(
    ctx: &Context,
    cred: &M2MCredential,
    target: &RestartTarget,
    version: i64,
    outcome: RestartOutcome,
) {
    let what = format!("{}/{}", kind_name(target.kind), target.name);
    let (type_, reason, note) = match outcome {
        RestartOutcome::Restarted => (
            EventType::Normal,
            "RolloutRestarted",
            format!("restarted {what} for secret version {version}"),
        ),
        RestartOutcome::NotFound => (
            EventType::Warning,
            "RestartTargetNotFound",
            format!(
                "{what} (rotation.restartTargets) was not restarted for secret version {version}: no such workload in this namespace carries the annotation {RESTART_CONSENT} listing {:?}",
                cred.name_any()
            ),
        ),
        RestartOutcome::Forbidden => (
            EventType::Warning,
            "RestartTargetForbidden",
            format!(
                "the operator may not restart {what}: enable the chart value rbac.restartTargets; not restarted for secret version {version}"
            ),
        ),
        RestartOutcome::AlreadyDone => return,
    };
    ctx.event(cred, type_, reason, note).await;
}

/// A missing or forbidden target is handled (reported); any other error
/// fails the reconcile, to be retried.
fn handled(e: kube::Error) -> Result<Attempt, Error> {
    match &e {
        kube::Error::Api(s) if s.code == 403 => Ok(Attempt::Handled(RestartOutcome::Forbidden)),
        kube::Error::Api(s) if s.code == 404 => Ok(Attempt::Handled(RestartOutcome::NotFound)),
        _ => Err(kube_err(Step::RestartTarget)(e)),
    }
}

/// What became of one target: handled (restarted, already restarted for
/// this version, missing, forbidden), or held back by the rate limit.
enum Attempt {
    Handled(RestartOutcome),
    RateLimited(Duration),
}

/// Restart one target for `version` unless it already records it: read it
/// once, then (if the rate limit allows) patch the pod template and the
/// record in one request, guarded by the `resourceVersion` just read (a
/// concurrent change is a conflict, retried).
async fn restart<K>(
    ctx: &Context,
    ns: &str,
    credential: &str,
    name: &str,
    version: i64,
    now: DateTime<Utc>,
) -> Result<Attempt, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let obj = match api.get(name).await {
        Ok(obj) => obj,
        Err(e) => return handled(e),
    };
    let annotations = obj.meta().annotations.clone().unwrap_or_default();
    // Reported as missing: Events must not reveal which workloads exist.
    if !consents(&annotations, credential) {
        return Ok(Attempt::Handled(RestartOutcome::NotFound));
    }
    if recorded_version(&annotations, credential).is_some_and(|v| v >= version) {
        return Ok(Attempt::Handled(RestartOutcome::AlreadyDone));
    }
    if let Err(wait) = try_acquire(ns, Instant::now()) {
        return Ok(Attempt::RateLimited(wait));
    }
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": obj.meta().resource_version,
            "annotations": { RESTARTED_FOR: restarted_for_value(&annotations, credential, version) },
        },
        "spec": { "template": { "metadata": { "annotations": {
            RESTARTED_AT: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        } } } },
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Attempt::Handled(RestartOutcome::Restarted)),
        Err(e) => handled(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_names_the_credential_exactly() {
        let a = |v: &str| BTreeMap::from([(RESTART_CONSENT.to_owned(), v.to_owned())]);
        assert!(consents(&a("app"), "app"));
        assert!(consents(&a("other, app"), "app"));
        assert!(!consents(&a("application"), "app"));
        assert!(!consents(&a(""), "app"));
        assert!(!consents(&BTreeMap::new(), "app"));
    }

    #[test]
    fn restart_limits_are_per_namespace() {
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(try_acquire("busy-tenant-test", t0).is_ok());
        }
        assert!(try_acquire("busy-tenant-test", t0).is_err());
        assert!(
            try_acquire("quiet-tenant-test", t0).is_ok(),
            "another namespace waits for nobody"
        );
    }

    #[test]
    fn restart_due_table() {
        let cases = [
            ("no targets", false, Some(1), 1, 2, (Some(1), None)),
            (
                "no targets, no record: nothing recorded",
                false,
                None,
                1,
                2,
                (None, None),
            ),
            (
                "first secret: recorded, no restart",
                true,
                None,
                0,
                1,
                (Some(1), None),
            ),
            (
                "targets added later: recorded, no restart",
                true,
                None,
                3,
                3,
                (Some(3), None),
            ),
            (
                "targets added with a rotation: restart",
                true,
                None,
                3,
                4,
                (Some(3), Some(4)),
            ),
            ("rotation: restart", true, Some(3), 3, 4, (Some(3), Some(4))),
            (
                "interrupted earlier: restart",
                true,
                Some(3),
                4,
                4,
                (Some(3), Some(4)),
            ),
            (
                "done: resync restarts nothing",
                true,
                Some(4),
                4,
                4,
                (Some(4), None),
            ),
        ];
        for (what, has, recorded, before, now, want) in cases {
            assert_eq!(restart_due(has, recorded, before, now), want, "{what}");
        }
    }

    #[test]
    fn the_target_records_versions_per_credential() {
        let mut ann = BTreeMap::new();
        assert_eq!(recorded_version(&ann, "a"), None);
        ann.insert(RESTARTED_FOR.into(), restarted_for_value(&ann, "a", 3));
        ann.insert(RESTARTED_FOR.into(), restarted_for_value(&ann, "b", 7));
        assert_eq!(recorded_version(&ann, "a"), Some(3));
        assert_eq!(recorded_version(&ann, "b"), Some(7));
        assert_eq!(ann[RESTARTED_FOR], r#"{"a":3,"b":7}"#);
        ann.insert(RESTARTED_FOR.into(), "garbage".into());
        assert_eq!(recorded_version(&ann, "a"), None);
        assert_eq!(restarted_for_value(&ann, "a", 4), r#"{"a":4}"#);
    }

    #[test]
    fn the_limiter_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let l = RestartLimiter::new(2, Duration::from_secs(6), t0);
        assert!(l.try_acquire(t0).is_ok());
        assert!(l.try_acquire(t0).is_ok());
        let wait = l.try_acquire(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert!(l.try_acquire(t0 + Duration::from_secs(3)).is_err());
        assert!(l.try_acquire(t0 + Duration::from_secs(6)).is_ok());
    }
}
