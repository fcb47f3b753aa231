//! Usage tracking (SPEC §8): when each credential, and each of its live
//! secret versions, last authenticated successfully, written to
//! `status.lastUsedTime` and `status.versionUsage` by server-side apply on
//! the status subresource (field manager [`FIELD_MANAGER`]).
//!
//! - [`UsageRecorder`] is what the request path touches: a sharded map of
//!   atomics, outside the immutable index snapshot. Recording a use is a
//!   shared (read) lock on one of [`SHARDS`] shards, two hash lookups and an
//!   `AtomicI64::fetch_max` (plus a flag store when the second changed);
//!   only the first use of a (credential, version) allocates. No API call,
//!   no write per request. The flusher looks only at credentials used
//!   since it last looked (or still holding unwritten news): idle
//!   credentials cost nothing per tick.
//! - [`SeenUsage`] is what this replica's watch last saw of a credential's
//!   usage status (and its `resourceVersion`).
//! - [`UsageWriter`] decides, purely, which credentials get a status write
//!   now; [`run_flusher`] carries the decisions out.
//!
//! # The write bound
//! A credential gets at most one write per resolution interval per replica:
//! [`UsageResolution::coarse`] (`--usage-resolution`, default 60 s), or
//! [`UsageResolution::fine`] (`--usage-resolution-in-grace`, default 5 s)
//! while one of its secret versions is in a grace period, where retirement
//! decisions need fresher data. Nothing is written for a credential whose
//! status is already within one interval of this replica's own record, so
//! replicas do not repeat each other's writes: with several replicas a busy
//! credential still gets about one write per interval in total. Each write
//! carries the `resourceVersion` the replica saw: a replica with an
//! outdated view gets a conflict instead of overwriting a newer time, and
//! retries on its next tick with the fresher view. The measured figures are
//! in `docs/rotation.md` (test `write_bound_at_1000_credentials`).
//!
//! # What a restart loses
//! Uses not yet written live only in memory. A graceful shutdown writes
//! them ([`run_flusher`] flushes once more when stopped); a crash loses at
//! most one resolution interval.
//!
//! # Metrics
//! `m2m_usage_writes_total{outcome}` and `m2m_usage_unwritten_credentials`.
//! There is deliberately no per-credential staleness series: its
//! cardinality would grow with the number of credentials. The per-credential
//! view is the status itself (`kubectl m2m status`, the Last Used column).

use super::index::{CredentialEntry, TokenState};
use crate::crd::{M2MCredential, M2MCredentialStatus, VersionUsage};
use crate::telemetry::Metrics;
use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// The field manager of the token server's usage writes.
pub use crate::labels::USAGE_FIELD_MANAGER as FIELD_MANAGER;

/// Shards of the recorder: requests for different credentials rarely
/// touch the same lock word.
pub(crate) const SHARDS: usize = 64;

/// Uses of one credential: secret version → last use (Unix seconds), and
/// whether one of them moved since the flusher last looked.
#[derive(Debug, Default)]
struct VersionTimes {
    dirty: AtomicBool,
    times: HashMap<i64, AtomicI64>,
}

impl VersionTimes {
    fn record(&self, t: &AtomicI64, at: i64) {
        // At most one store per second and version: times are in seconds.
        if t.fetch_max(at, Ordering::Relaxed) < at {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// The request path's record of successful authentications.
#[derive(Debug)]
pub struct UsageRecorder {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<String, VersionTimes>>]>,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl UsageRecorder {
    fn shard(&self, client_id: &str) -> &RwLock<HashMap<String, VersionTimes>> {
        let i = self.hasher.hash_one(client_id) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Record that `client_id` authenticated with secret `version` at `at`
    /// (Unix seconds). Lock-free apart from a shared lock on one shard,
    /// except on the first use of a (credential, version).
    pub(crate) fn record(&self, client_id: &str, version: i64, at: i64) {
        let shard = self.shard(client_id);
        {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(uses) = map.get(client_id)
                && let Some(t) = uses.times.get(&version)
            {
                uses.record(t, at);
                return;
            }
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        let uses = map.entry(client_id.to_owned()).or_default();
        uses.times
            .entry(version)
            .or_insert_with(|| AtomicI64::new(i64::MIN));
        if let Some(t) = uses.times.get(&version) {
            uses.record(t, at);
        }
    }

    /// The credentials with uses recorded since the last call (`all`:
    /// every credential with recorded uses): client id → version → last
    /// use. Idle credentials cost a flag check, nothing else.
    pub fn snapshot(&self, all: bool) -> Vec<(String, BTreeMap<i64, i64>)> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            for (id, uses) in map.iter() {
                if !uses.dirty.swap(false, Ordering::Relaxed) && !all {
                    continue;
                }
                let times = uses
                    .times
                    .iter()
                    .map(|(v, t)| (*v, t.load(Ordering::Relaxed)))
                    .collect();
                out.push((id.clone(), times));
            }
        }
        out
    }

    /// Hand `client_id` to the next [`UsageRecorder::snapshot`] again (its
    /// news was not written yet).
    pub(crate) fn mark_dirty(&self, client_id: &str) {
        let map = self
            .shard(client_id)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(uses) = map.get(client_id) {
            uses.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Keep only `live` versions of `client_id` (all of it goes when none is live).
    pub fn retain(&self, client_id: &str, live: &[i64]) {
        let mut map = self
            .shard(client_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(uses) = map.get_mut(client_id) {
            uses.times.retain(|v, _| live.contains(v));
            if uses.times.is_empty() {
                map.remove(client_id);
            }
        }
    }
}

/// What this replica's watch last saw of one credential's usage status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenUsage {
    /// The credential's `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `status.lastUsedTime`, Unix seconds.
    pub last_used: Option<i64>,
    /// `status.versionUsage`: version → Unix seconds.
    pub versions: BTreeMap<i64, i64>,
}

impl SeenUsage {
    /// The usage fields of `cred`.
    pub fn of(cred: &M2MCredential) -> Self {
        let status = cred.status.as_ref();
        Self {
            resource_version: cred.metadata.resource_version.clone(),
            last_used: status.and_then(|s| s.last_used_time).map(|t| t.timestamp()),
            versions: status
                .map(|s| {
                    s.version_usage
                        .iter()
                        .map(|u| (u.version, u.last_used_time.timestamp()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

impl SeenUsage {
    /// This usage without the times later than `now` plus
    /// [`crate::labels::USAGE_CLOCK_SKEW_SECS`].
    pub(crate) fn without_future(&self, now: i64) -> Self {
        let limit = now.saturating_add(crate::labels::USAGE_CLOCK_SKEW_SECS);
        Self {
            resource_version: self.resource_version.clone(),
            last_used: self.last_used.filter(|t| *t <= limit),
            versions: self
                .versions
                .iter()
                .filter(|(_, t)| **t <= limit)
                .map(|(v, t)| (*v, *t))
                .collect(),
        }
    }
}

/// The seen usage of every watched credential, by client id. Written by
/// the watch, read by the flusher; never on the request path.
#[derive(Debug, Default)]
pub struct SeenUsageMap(Mutex<HashMap<String, SeenUsage>>);

impl SeenUsageMap {
    /// Replace what was seen of `client_id`.
    pub fn set(&self, client_id: String, seen: SeenUsage) {
        self.lock().insert(client_id, seen);
    }

    /// Forget `client_id` (deleted).
    pub fn remove(&self, client_id: &str) {
        self.lock().remove(client_id);
    }

    /// Replace everything (after a relist).
    pub(crate) fn reset(&self, all: impl IntoIterator<Item = (String, SeenUsage)>) {
        *self.lock() = all.into_iter().collect();
    }

    /// What was seen of `client_id`.
    pub fn get(&self, client_id: &str) -> SeenUsage {
        self.lock().get(client_id).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SeenUsage>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The token server's usage state: the request path's recorder and the
/// watch's view of the written status.
#[derive(Debug, Default)]
pub struct UsageTracker {
    /// Uses recorded by this replica.
    pub recorder: UsageRecorder,
    /// The usage status as the watch saw it.
    pub seen: SeenUsageMap,
}

/// How fresh `lastUsedTime` and `versionUsage` are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageResolution {
    /// Outside grace periods (`--usage-resolution`).
    pub coarse: Duration,
    /// While a previous secret version is in its grace period
    /// (`--usage-resolution-in-grace`).
    pub fine: Duration,
}

impl Default for UsageResolution {
    fn default() -> Self {
        Self {
            coarse: Duration::from_secs(60),
            fine: Duration::from_secs(5),
        }
    }
}

/// The facts about one credential a write decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSubject {
    /// Secret versions the credential accepts now (`0` for workload identity).
    pub live: Vec<i64>,
    /// A previous version is in its grace period.
    pub in_grace: bool,
}

impl UsageSubject {
    /// The live versions and grace state of `entry` at `now`.
    pub fn of(entry: &CredentialEntry, now: DateTime<Utc>) -> Self {
        let live = match &entry.workload {
            Some(Ok(_)) => vec![crate::core::workload::WORKLOAD_IDENTITY_VERSION],
            Some(Err(_)) => vec![],
            None => entry
                .verifiers
                .iter()
                .filter(|v| crate::core::verifier::is_accepted(v, now))
                .map(|v| v.version)
                .collect(),
        };
        let in_grace = entry
            .verifiers
            .iter()
            .any(|v| v.not_after.is_some_and(|t| t > now));
        Self { live, in_grace }
    }
}

/// One status write: the merged usage of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageWrite {
    /// The `resourceVersion` the merge was based on (a precondition).
    pub resource_version: Option<String>,
    /// `status.lastUsedTime`, Unix seconds.
    pub last_used: i64,
    /// `status.versionUsage`: version → Unix seconds.
    pub versions: BTreeMap<i64, i64>,
}

impl UsageWrite {
    /// The apply body: the usage fields only, so the controller's fields
    /// (another field manager) are never touched.
    pub fn body(&self, name: &str, namespace: &str) -> serde_json::Value {
        let time = |t: i64| DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
        let status = M2MCredentialStatus {
            last_used_time: Some(time(self.last_used)),
            version_usage: self
                .versions
                .iter()
                .map(|(v, t)| VersionUsage {
                    version: *v,
                    last_used_time: time(*t),
                })
                .collect(),
            ..Default::default()
        };
        let mut metadata = serde_json::json!({ "name": name, "namespace": namespace });
        if let Some(rv) = &self.resource_version {
            metadata["resourceVersion"] = rv.clone().into();
        }
        serde_json::json!({
            "apiVersion": M2MCredential::api_version(&()),
            "kind": M2MCredential::kind(&()),
            "metadata": metadata,
            "status": {
                "lastUsedTime": status.last_used_time,
                "versionUsage": status.version_usage,
            },
        })
    }
}

/// What this replica wrote last for one credential.
#[derive(Debug, Clone, Default)]
struct Written {
    /// When (Unix seconds); `None` if never.
    at: Option<i64>,
    last_used: Option<i64>,
    versions: BTreeMap<i64, i64>,
}

/// Decides which credentials get a usage write, at most one per interval
/// per credential (pure apart from its own memory of past writes).
#[derive(Debug, Default)]
pub struct UsageWriter {
    resolution: UsageResolution,
    /// This replica's extra wait, in thousandths of an interval (0–499),
    /// chosen at random so that replicas holding the same news rarely
    /// write it at the same moment (one of them would get a conflict).
    spread: u16,
    written: HashMap<String, Written>,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)
}

impl UsageWriter {
    /// A writer with these intervals and a random spread.
    pub fn new(resolution: UsageResolution) -> Self {
        use rand::Rng;
        Self::with_spread(resolution, rand::rng().random_range(0..500))
    }

    /// A writer waiting `spread` thousandths of an interval (at most 499)
    /// longer than the interval before it repeats news another replica may hold.
    pub(crate) fn with_spread(resolution: UsageResolution, spread: u16) -> Self {
        Self {
            resolution,
            spread: spread.min(499),
            written: HashMap::new(),
        }
    }

    /// The write for `client_id` at `now` (Unix seconds), if one is due:
    /// this replica's uses (`own`) are newer than the status it saw
    /// (`seen`) and than its own last write by at least one interval (or
    /// the status has none yet), and its last write is an interval ago.
    /// `force` ignores the interval (the final flush at shutdown).
    pub fn plan(
        &self,
        client_id: &str,
        own: &BTreeMap<i64, i64>,
        seen: &SeenUsage,
        subject: &UsageSubject,
        now: i64,
        force: bool,
    ) -> Option<UsageWrite> {
        let interval = secs(if subject.in_grace {
            self.resolution.fine
        } else {
            self.resolution.coarse
        });
        // Never without the precondition: an unguarded write could move
        // another replica's newer time back. (The watch delivers a
        // credential's status before the index can authenticate it.)
        seen.resource_version.as_ref()?;
        // A time in the future (forged by a status writer) would win every
        // `max` below forever: treat it as absent, so this write replaces it.
        let seen = &seen.without_future(now);
        let written = self.written.get(client_id);
        if !force
            && written
                .and_then(|w| w.at)
                .is_some_and(|at| now - at < interval)
        {
            return None;
        }
        let known = |seen: Option<i64>, mine: Option<i64>| seen.max(mine);
        let lag = interval + interval * i64::from(self.spread) / 1000;
        let stale = |own: i64, known: Option<i64>| match known {
            None => true,
            // A use in the same second as the known one is nothing new.
            Some(k) if force => own > k,
            Some(k) => own >= k + lag,
        };
        let own_live: BTreeMap<i64, i64> = own
            .iter()
            .filter(|(v, _)| subject.live.contains(v))
            .map(|(v, t)| (*v, *t))
            .collect();
        let own_last = own_live.values().copied().max()?;
        let known_last = known(seen.last_used, written.and_then(|w| w.last_used));
        let version_new = own_live.iter().any(|(v, t)| {
            let k = known(
                seen.versions.get(v).copied(),
                written.and_then(|w| w.versions.get(v).copied()),
            );
            stale(*t, k)
        });
        if !version_new && !stale(own_last, known_last) {
            return None;
        }
        let mut versions = BTreeMap::new();
        for v in &subject.live {
            let t = [
                seen.versions.get(v).copied(),
                written.and_then(|w| w.versions.get(v).copied()),
                own_live.get(v).copied(),
            ]
            .into_iter()
            .flatten()
            .max();
            if let Some(t) = t {
                versions.insert(*v, t);
            }
        }
        Some(UsageWrite {
            resource_version: seen.resource_version.clone(),
            last_used: known_last.max(Some(own_last)).unwrap_or(own_last),
            versions,
        })
    }

    /// Whether this replica holds uses of `client_id` that neither the
    /// status it saw nor its own writes carry yet (written later, or by the
    /// final flush).
    pub fn pending(
        &self,
        client_id: &str,
        own: &BTreeMap<i64, i64>,
        seen: &SeenUsage,
        subject: &UsageSubject,
    ) -> bool {
        let written = self.written.get(client_id);
        own.iter()
            .filter(|(v, _)| subject.live.contains(v))
            .any(|(v, t)| {
                let known = seen
                    .versions
                    .get(v)
                    .copied()
                    .max(written.and_then(|w| w.versions.get(v).copied()));
                known.is_none_or(|k| *t > k)
            })
    }

    /// `write` for `client_id` succeeded at `now`.
    pub fn wrote(&mut self, client_id: &str, write: &UsageWrite, now: i64) {
        self.written.insert(
            client_id.to_owned(),
            Written {
                at: Some(now),
                last_used: Some(write.last_used),
                versions: write.versions.clone(),
            },
        );
    }

    /// A write for `client_id` failed (a conflict or an API error): the
    /// attempt counts, the next one comes an interval later.
    pub fn failed(&mut self, client_id: &str, now: i64) {
        self.written.entry(client_id.to_owned()).or_default().at = Some(now);
    }

    /// Forget a credential that is gone.
    pub(crate) fn forget(&mut self, client_id: &str) {
        self.written.remove(client_id);
    }
}

/// Why a usage write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UsageWriteError {
    /// The status changed since the replica saw it: retry with the fresher view.
    #[error("the credential changed since it was seen")]
    Conflict,
    /// The credential is gone.
    #[error("the credential no longer exists")]
    Gone,
    /// Any other API error.
    #[error("applying the usage status")]
    Api(#[source] kube::Error),
}

/// Apply one usage write to the status subresource.
pub async fn apply_usage(
    client: &Client,
    namespace: &str,
    name: &str,
    write: &UsageWrite,
) -> Result<(), UsageWriteError> {
    let api: Api<M2MCredential> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(name, &params, &Patch::Apply(write.body(name, namespace)))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(UsageWriteError::Conflict),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(UsageWriteError::Gone),
        Err(e) => Err(UsageWriteError::Api(e)),
    }
}

/// Write recorded usage to the credentials' status until `stop` resolves,
/// then once more for everything not written yet.
pub(crate) async fn run_flusher(
    client: Client,
    state: std::sync::Arc<TokenState>,
    resolution: UsageResolution,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut writer = UsageWriter::new(resolution);
    let tick = resolution.fine.min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => flush(&client, &state, &mut writer, &metrics, false).await,
            () = &mut stop => break,
        }
    }
    flush(&client, &state, &mut writer, &metrics, true).await;
}

/// One pass over the recorded credentials.
pub async fn flush(
    client: &Client,
    state: &TokenState,
    writer: &mut UsageWriter,
    metrics: &Metrics,
    force: bool,
) {
    let now = Utc::now();
    let index = state.credentials();
    let usage = state.usage();
    let mut unwritten = 0;
    for (client_id, own) in usage.recorder.snapshot(force) {
        let Some(entry) = index.get(&client_id) else {
            usage.recorder.retain(&client_id, &[]);
            writer.forget(&client_id);
            continue;
        };
        let subject = UsageSubject::of(entry, now);
        if own.keys().any(|v| !subject.live.contains(v)) {
            usage.recorder.retain(&client_id, &subject.live);
        }
        let seen = usage.seen.get(&client_id);
        let Some(write) = writer.plan(&client_id, &own, &seen, &subject, now.timestamp(), force)
        else {
            if writer.pending(&client_id, &own, &seen, &subject) {
                usage.recorder.mark_dirty(&client_id);
            }
            continue;
        };
        let outcome = match apply_usage(client, &entry.namespace, &entry.name, &write).await {
            Ok(()) => {
                writer.wrote(&client_id, &write, now.timestamp());
                "ok"
            }
            Err(UsageWriteError::Conflict) => {
                // Retry after one interval, with the fresher view: usually
                // the write that won already carries this news.
                writer.failed(&client_id, now.timestamp());
                usage.recorder.mark_dirty(&client_id);
                unwritten += 1;
                "conflict"
            }
            Err(UsageWriteError::Gone) => {
                writer.forget(&client_id);
                "gone"
            }
            Err(UsageWriteError::Api(error)) => {
                tracing::warn!(namespace = %entry.namespace, credential = %entry.name, %error, "could not write usage; retrying in one interval");
                writer.failed(&client_id, now.timestamp());
                usage.recorder.mark_dirty(&client_id);
                unwritten += 1;
                "error"
            }
        };
        metrics.observe_usage_write(outcome);
    }
    metrics.set_usage_unwritten(unwritten);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(live: &[i64], in_grace: bool) -> UsageSubject {
        UsageSubject {
            live: live.to_vec(),
            in_grace,
        }
    }

    fn own(pairs: &[(i64, i64)]) -> BTreeMap<i64, i64> {
        pairs.iter().copied().collect()
    }

    fn seen(last: Option<i64>, pairs: &[(i64, i64)]) -> SeenUsage {
        SeenUsage {
            resource_version: Some("7".into()),
            last_used: last,
            versions: pairs.iter().copied().collect(),
        }
    }

    fn res() -> UsageResolution {
        UsageResolution {
            coarse: Duration::from_secs(60),
            fine: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_recorder_keeps_the_latest_use_per_version() {
        let r = UsageRecorder::default();
        r.record("a", 1, 100);
        r.record("a", 1, 90);
        r.record("a", 2, 95);
        r.record("b", 0, 7);
        let mut snap = r.snapshot(false);
        snap.sort();
        assert_eq!(
            snap,
            vec![
                ("a".into(), own(&[(1, 100), (2, 95)])),
                ("b".into(), own(&[(0, 7)]))
            ]
        );
        assert!(r.snapshot(false).is_empty(), "nothing new since");
        r.record("a", 1, 100);
        assert!(
            r.snapshot(false).is_empty(),
            "a use in the same second is nothing new"
        );
        r.record("b", 0, 8);
        assert_eq!(r.snapshot(false), vec![("b".into(), own(&[(0, 8)]))]);
        r.mark_dirty("a");
        assert_eq!(r.snapshot(false).len(), 1);
        r.retain("a", &[2]);
        r.retain("b", &[]);
        assert_eq!(r.snapshot(true), vec![("a".into(), own(&[(2, 95)]))]);
    }

    /// A usage time in the future (forged by a status writer) would win
    /// every `max` merge forever: the token server treats it as absent and
    /// overwrites it with what it saw.
    #[test]
    fn future_usage_in_status_is_overwritten() {
        const Y2100: i64 = 4_102_444_800;
        let w = UsageWriter::with_spread(res(), 0);
        let write = w
            .plan(
                "a",
                &own(&[(1, 1000)]),
                &seen(Some(Y2100), &[(1, Y2100), (2, 900)]),
                &subject(&[1, 2], false),
                1000,
                false,
            )
            .expect("a write that replaces the future times");
        assert_eq!(write.last_used, 1000);
        assert_eq!(write.versions, own(&[(1, 1000), (2, 900)]));
    }

    #[test]
    fn write_decision_table() {
        let w = UsageWriter::with_spread(res(), 0);
        type Case = (
            &'static str,
            BTreeMap<i64, i64>,
            SeenUsage,
            UsageSubject,
            bool,
        );
        let cases: [Case; 10] = [
            (
                "first use",
                own(&[(1, 1000)]),
                seen(None, &[]),
                subject(&[1], false),
                true,
            ),
            (
                "nothing recorded for live versions",
                own(&[(9, 1000)]),
                seen(None, &[]),
                subject(&[1], false),
                false,
            ),
            (
                "status already within the interval",
                own(&[(1, 1000)]),
                seen(Some(950), &[(1, 950)]),
                subject(&[1], false),
                false,
            ),
            (
                "status an interval behind",
                own(&[(1, 1010)]),
                seen(Some(950), &[(1, 950)]),
                subject(&[1], false),
                true,
            ),
            (
                "in grace: fine interval",
                own(&[(1, 1000)]),
                seen(Some(990), &[(1, 990)]),
                subject(&[2, 1], true),
                true,
            ),
            (
                "in grace: within the fine interval",
                own(&[(1, 1000)]),
                seen(Some(997), &[(1, 997)]),
                subject(&[2, 1], true),
                false,
            ),
            (
                "first use of a new version",
                own(&[(2, 1000)]),
                seen(Some(999), &[(1, 999)]),
                subject(&[2, 1], false),
                true,
            ),
            (
                "another replica wrote newer",
                own(&[(1, 1000)]),
                seen(Some(1000), &[(1, 1000)]),
                subject(&[1], false),
                false,
            ),
            (
                "workload identity",
                own(&[(0, 1000)]),
                seen(None, &[]),
                subject(&[0], false),
                true,
            ),
            (
                "not seen by the watch yet",
                own(&[(1, 1000)]),
                SeenUsage::default(),
                subject(&[1], false),
                false,
            ),
        ];
        for (what, own, seen, subject, want) in cases {
            let got = w.plan("c", &own, &seen, &subject, 1000, false);
            assert_eq!(got.is_some(), want, "{what}: {got:?}");
        }
    }

    #[test]
    fn a_write_merges_what_was_seen_and_drops_retired_versions() {
        let w = UsageWriter::with_spread(res(), 0);
        let got = w
            .plan(
                "c",
                &own(&[(2, 1000)]),
                &seen(Some(900), &[(1, 900), (0, 5)]),
                &subject(&[2, 1], true),
                1000,
                false,
            )
            .expect("due");
        assert_eq!(got.versions, own(&[(1, 900), (2, 1000)]));
        assert_eq!(got.last_used, 1000);
        assert_eq!(got.resource_version.as_deref(), Some("7"));
        // Never moves a time backwards.
        let got = w
            .plan(
                "c",
                &own(&[(1, 800), (2, 1000)]),
                &seen(Some(1000), &[(1, 900)]),
                &subject(&[2, 1], false),
                1000,
                false,
            )
            .expect("version 2 is new");
        assert_eq!(got.versions, own(&[(1, 900), (2, 1000)]));
        let body = got.body("c", "ns");
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["status"]["versionUsage"][0]["version"], 1);
        assert_eq!(
            body["status"]["lastUsedTime"], "1970-01-01T00:16:40Z",
            "{body}"
        );
        assert!(body["status"].get("verifiers").is_none(), "{body}");
    }

    #[test]
    fn at_most_one_write_per_interval_and_nothing_without_news() {
        let mut w = UsageWriter::with_spread(res(), 0);
        let s = subject(&[1], false);
        let first = w.plan("c", &own(&[(1, 0)]), &seen(None, &[]), &s, 0, false);
        let first = first.expect("first use");
        w.wrote("c", &first, 0);
        // Before the watch echoes the write, the writer's memory stands in for it.
        for t in 1..60 {
            assert!(
                w.plan("c", &own(&[(1, t)]), &seen(None, &[]), &s, t, false)
                    .is_none()
            );
        }
        assert!(
            w.plan("c", &own(&[(1, 60)]), &seen(None, &[]), &s, 60, false)
                .is_some()
        );
        // Unused since the write: nothing to write, ever.
        assert!(
            w.plan("c", &own(&[(1, 0)]), &seen(None, &[]), &s, 600, false)
                .is_none()
        );
        // The final flush writes what the interval held back.
        assert!(
            w.plan("c", &own(&[(1, 30)]), &seen(None, &[]), &s, 31, true)
                .is_some()
        );
    }

    /// An in-memory apiserver for the bound: `resourceVersion` checked on
    /// write, the status echoed to every replica's watch.
    struct Store {
        rv: u64,
        last_used: Option<i64>,
        versions: BTreeMap<i64, i64>,
        writes: u64,
        conflicts: u64,
    }

    impl Store {
        fn seen(&self) -> SeenUsage {
            SeenUsage {
                resource_version: Some(self.rv.to_string()),
                last_used: self.last_used,
                versions: self.versions.clone(),
            }
        }
    }

    /// Simulate `credentials` credentials each used every second through
    /// each of `replicas` replicas for `minutes`, flushing every second;
    /// returns (writes per minute, conflicts per minute).
    fn simulate(credentials: usize, replicas: usize, minutes: i64, in_grace: bool) -> (f64, f64) {
        let mut stores: Vec<Store> = (0..credentials)
            .map(|_| Store {
                rv: 1,
                last_used: None,
                versions: BTreeMap::new(),
                writes: 0,
                conflicts: 0,
            })
            .collect();
        // Spreads as two replicas might draw them.
        let mut writers: Vec<UsageWriter> = (0..replicas)
            .map(|r| UsageWriter::with_spread(res(), 37 + 250 * r as u16))
            .collect();
        // Each replica's watch view; echoes arrive one tick later.
        let mut views: Vec<Vec<SeenUsage>> =
            vec![stores.iter().map(Store::seen).collect(); replicas];
        let s = subject(&[1], in_grace);
        for now in 0..minutes * 60 {
            for (r, writer) in writers.iter_mut().enumerate() {
                // Replicas tick at different offsets within the second.
                for (c, store) in stores.iter_mut().enumerate() {
                    let id = format!("c{c}");
                    let used = own(&[(1, now)]);
                    let seen = &views[r][c];
                    if let Some(w) = writer.plan(&id, &used, seen, &s, now, false) {
                        if w.resource_version == Some(store.rv.to_string()) {
                            store.rv += 1;
                            store.last_used = Some(w.last_used);
                            store.versions = w.versions.clone();
                            store.writes += 1;
                            writer.wrote(&id, &w, now);
                        } else {
                            store.conflicts += 1;
                            writer.failed(&id, now);
                        }
                    }
                }
            }
            for view in &mut views {
                *view = stores.iter().map(Store::seen).collect();
            }
        }
        let writes: u64 = stores.iter().map(|s| s.writes).sum();
        let conflicts: u64 = stores.iter().map(|s| s.conflicts).sum();
        (
            writes as f64 / minutes as f64,
            conflicts as f64 / minutes as f64,
        )
    }

    /// The stated bound, measured: 1,000 credentials used continuously
    /// through 2 replicas. Prints the figures `docs/rotation.md` quotes.
    #[test]
    fn write_bound_at_1000_credentials() {
        let (credentials, replicas, minutes) = (1000, 2, 10);
        let (steady, steady_conflicts) = simulate(credentials, replicas, minutes, false);
        let (grace, grace_conflicts) = simulate(credentials, replicas, minutes, true);
        println!(
            "usage writes/min at {credentials} credentials, {replicas} replicas: \
             {steady:.0} outside grace ({steady_conflicts:.0} conflicts/min), \
             {grace:.0} in grace ({grace_conflicts:.0} conflicts/min)"
        );
        // The hard bound: one write per credential per interval per replica.
        let hard = |interval: f64| credentials as f64 * replicas as f64 * 60.0 / interval;
        assert!(steady <= hard(60.0), "{steady}");
        assert!(grace <= hard(5.0), "{grace}");
        // Replicas do not repeat each other's writes: about one per
        // credential per interval in total (+ the first write).
        assert!(steady <= credentials as f64 * 1.2, "{steady}");
        assert!(grace <= credentials as f64 * 12.0 * 1.2, "{grace}");
    }
}
