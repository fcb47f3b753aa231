//! A multi-replica soak against the local control plane: 2 `controller`
//! and 3 `token-server` processes, steady token load on every server,
//! rotations with and without a grace period, the leading controller
//! killed (SIGKILL) and replaced, and a token server restarted. An
//! invariant checker then replays every request against the history of
//! every credential's Secret:
//!
//! - never a retired secret accepted more than 2 s after its grace ended;
//! - never a current secret refused more than 2 s after it was written;
//! - never a 5xx;
//! - never two current secrets for one credential (status verifiers), never
//!   two Secrets for one credential.
//!
//! ```sh
//! cargo test --test soak                                  # short, ~45 s (in the normal suite)
//! M2M_SOAK_SECS=600 cargo test --test soak -- --ignored --nocapture   # the full soak
//! ```

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use m2m_operator::crd::M2MCredential;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Operator, OperatorOptions, TestNamespace, eventually};

/// Slack for propagation (watch → index) in every timed invariant.
const SLACK: Duration = Duration::from_secs(2);
const GRACE: &str = "4s";
const CREDENTIALS: usize = 6;

/// One version of a credential's secret, as the Secret showed it.
#[derive(Debug, Clone)]
struct Version {
    secret: String,
    /// When the controller generated it (`m2m.dev/rotated-at`): from then
    /// on the previous secret is being replaced.
    rotated_at: chrono::DateTime<chrono::Utc>,
    /// When the test first saw the Secret hold it (a workload cannot use
    /// it earlier).
    seen_at: chrono::DateTime<chrono::Utc>,
    /// Grace end of the previous version (`m2m.dev/previous-not-after`).
    previous_not_after: Option<chrono::DateTime<chrono::Utc>>,
}

/// One token request and its answer.
#[derive(Debug, Clone)]
struct Probe {
    credential: usize,
    version: i64,
    sent: chrono::DateTime<chrono::Utc>,
    received: chrono::DateTime<chrono::Utc>,
    /// HTTP status, or `None` when the server could not be reached.
    status: Option<u16>,
    server: String,
}

#[derive(Default)]
struct History {
    /// Per credential: version → what the Secret held.
    versions: Vec<BTreeMap<i64, Version>>,
    client_ids: Vec<Option<String>>,
    probes: Vec<Probe>,
    /// Status snapshots with more than one current verifier.
    two_current: Vec<String>,
    /// Times more than one Secret was listed for a credential.
    duplicate_secrets: Vec<String>,
}

fn cred_name(i: usize) -> String {
    format!("soak-{i}")
}

fn annotation_time(s: &Secret, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let v = s.metadata.annotations.as_ref()?.get(key)?;
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Record every version every credential Secret holds, as the watch shows it.
async fn observe_secrets(ns: String, client: kube::Client, history: Arc<Mutex<History>>) {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &ns);
    let cfg = watcher::Config::default().labels("m2m.dev/credential");
    let mut stream = watcher::watcher(api, cfg).boxed();
    while let Some(event) = stream.next().await {
        let objs = match event {
            Ok(Event::Apply(s)) | Ok(Event::InitApply(s)) => vec![s],
            _ => continue,
        };
        let now = chrono::Utc::now();
        for s in objs {
            let Some(name) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("m2m.dev/credential"))
            else {
                continue;
            };
            let Some(i) = (0..CREDENTIALS).find(|i| cred_name(*i) == *name) else {
                continue;
            };
            let ann = |k: &str| s.metadata.annotations.as_ref()?.get(k).cloned();
            let Some(version) = ann("m2m.dev/secret-version").and_then(|v| v.parse::<i64>().ok())
            else {
                continue;
            };
            let data = s.data.clone().unwrap_or_default();
            let get = |k: &str| {
                data.get(k)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
            };
            let (Some(id), Some(secret)) = (get("client_id"), get("client_secret")) else {
                continue;
            };
            let Some(rotated_at) = annotation_time(&s, "m2m.dev/rotated-at") else {
                continue;
            };
            let mut h = history.lock().unwrap();
            h.client_ids[i] = Some(id);
            h.versions[i].entry(version).or_insert(Version {
                secret,
                rotated_at,
                seen_at: now,
                previous_not_after: annotation_time(&s, "m2m.dev/previous-not-after"),
            });
        }
    }
}

/// Check, over and over, that no credential has two current verifiers or
/// two Secrets.
async fn check_status(ns: TestNamespaceRef, history: Arc<Mutex<History>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = ns.creds.list(&ListParams::default()).await {
            for c in list.items {
                let current = c
                    .status
                    .as_ref()
                    .map(|s| s.verifiers.iter().filter(|v| v.not_after.is_none()).count())
                    .unwrap_or(0);
                if current > 1 {
                    history.lock().unwrap().two_current.push(format!(
                        "{}: {:?}",
                        c.metadata.name.unwrap_or_default(),
                        c.status.map(|s| s.verifiers)
                    ));
                }
            }
        }
        if let Ok(list) = ns
            .secrets
            .list(&ListParams::default().labels("m2m.dev/credential"))
            .await
        {
            let mut per: HashMap<String, usize> = HashMap::new();
            for s in &list.items {
                if let Some(n) = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("m2m.dev/credential"))
                {
                    *per.entry(n.clone()).or_default() += 1;
                }
            }
            for (n, count) in per.into_iter().filter(|(_, c)| *c > 1) {
                history
                    .lock()
                    .unwrap()
                    .duplicate_secrets
                    .push(format!("{n}: {count} Secrets"));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[derive(Clone)]
struct TestNamespaceRef {
    creds: kube::Api<M2MCredential>,
    secrets: kube::Api<Secret>,
}

/// Steady token load on the live servers: mostly the newest known secret of
/// a credential, sometimes an older one (to catch retired secrets accepted).
async fn load(
    worker: usize,
    servers: Arc<Mutex<Vec<String>>>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n: u64 = worker as u64 * 7919;
    while !stop.load(Ordering::Relaxed) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let credential = (n >> 33) as usize % CREDENTIALS;
        let pick = {
            let h = history.lock().unwrap();
            let id = h.client_ids[credential].clone();
            let versions = &h.versions[credential];
            let newest = versions.keys().next_back().copied();
            let version = if (n >> 20) % 5 == 0 && versions.len() > 1 {
                // An older version: the one just before the newest or earlier.
                let back = 1 + ((n >> 40) as usize % (versions.len() - 1).min(3));
                versions.keys().rev().nth(back).copied()
            } else {
                newest
            };
            id.zip(version)
                .and_then(|(id, v)| Some((id, v, versions.get(&v)?.secret.clone())))
        };
        let server = {
            let s = servers.lock().unwrap();
            if s.is_empty() {
                None
            } else {
                Some(s[(n >> 12) as usize % s.len()].clone())
            }
        };
        let (Some((id, version, secret)), Some(server)) = (pick, server) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let sent = chrono::Utc::now();
        let status = http
            .post(format!("{server}/oauth/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        let received = chrono::Utc::now();
        history.lock().unwrap().probes.push(Probe {
            credential,
            version,
            sent,
            received,
            status,
            server,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leading controller among `controllers` (its log says it acquired
/// leadership and it is still running).
fn leader(controllers: &mut [Operator]) -> Option<usize> {
    controllers
        .iter_mut()
        .position(|c| c.is_running() && c.log_text().contains("acquired leadership"))
}

#[derive(Default, Debug)]
struct Counts {
    requests: usize,
    ok: usize,
    refused: usize,
    rate_limited: usize,
    unreachable: usize,
    other_4xx: usize,
    rotations: u64,
    versions_seen: usize,
    leader_kills: usize,
    server_restarts: usize,
    retired_probes_checked: usize,
    current_probes_checked: usize,
}

/// Replay every probe against the Secret history; return the violations.
fn check(h: &History, counts: &mut Counts) -> Vec<String> {
    let slack = chrono::Duration::from_std(SLACK).unwrap();
    let mut violations = Vec::new();
    for p in &h.probes {
        counts.requests += 1;
        match p.status {
            None => counts.unreachable += 1,
            Some(200) => counts.ok += 1,
            Some(401) => counts.refused += 1,
            Some(429) => counts.rate_limited += 1,
            Some(s) if s >= 500 => violations.push(format!("{s} from {}: {p:?}", p.server)),
            Some(_) => counts.other_4xx += 1,
        }
        let versions = &h.versions[p.credential];
        let next = versions.get(&(p.version + 1));
        // Retired: the next version replaced this one; its grace ended at
        // previous-not-after (or at once, without a grace period).
        if let Some(next) = next {
            let grace_end = next.previous_not_after.unwrap_or(next.rotated_at);
            if p.sent > grace_end + slack {
                counts.retired_probes_checked += 1;
                if p.status == Some(200) {
                    violations.push(format!(
                        "retired secret accepted {} after its grace ended: {p:?}",
                        p.sent - grace_end
                    ));
                }
            }
        }
        // Current: written (seen in the Secret) more than SLACK before the
        // request, and no newer version generated before the answer.
        if let Some(this) = versions.get(&p.version) {
            let still_current = next.is_none_or(|n| n.rotated_at > p.received);
            if still_current && p.sent > this.seen_at + slack && p.status.is_some() {
                counts.current_probes_checked += 1;
                if p.status != Some(200) {
                    violations.push(format!(
                        "current secret refused {} after it was written: {p:?}",
                        p.sent - this.seen_at
                    ));
                }
            }
        }
    }
    counts.versions_seen = h.versions.iter().map(|v| v.len()).sum();
    violations.extend(
        h.two_current
            .iter()
            .map(|s| format!("two current verifiers: {s}")),
    );
    violations.extend(
        h.duplicate_secrets
            .iter()
            .map(|s| format!("duplicate Secrets: {s}")),
    );
    violations
}

async fn soak(total: Duration) {
    let ns = TestNamespace::new("soak").await;
    let controller = || {
        Operator::start_with(
            &ns,
            OperatorOptions {
                subcommand: "controller",
                ..Default::default()
            },
        )
    };
    let issuer = format!("https://m2m.{}.test", ns.name);
    let token_server = || {
        Operator::start_with(
            &ns,
            OperatorOptions {
                subcommand: "token-server",
                issuer: Some(issuer.clone()),
                ..Default::default()
            },
        )
    };
    let mut controllers: Vec<Operator> = (0..2).map(|_| controller()).collect();
    let mut servers: Vec<Operator> = (0..3).map(|_| token_server()).collect();
    for s in &servers {
        s.wait_ready().await;
    }
    ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: ci-bot }\nspec: { scopes: [\"repo:read\"] }\n");
    for i in 0..CREDENTIALS {
        let rotation = if i % 2 == 0 {
            format!(", rotation: {{ gracePeriod: {GRACE} }}")
        } else {
            String::new()
        };
        let out = ns.apply_yaml(&format!(
            "apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{ name: {} }}\nspec: {{ serviceAccountName: ci-bot{rotation} }}\n",
            cred_name(i)
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let history = Arc::new(Mutex::new(History {
        versions: vec![BTreeMap::new(); CREDENTIALS],
        client_ids: vec![None; CREDENTIALS],
        ..Default::default()
    }));
    let observer = tokio::spawn(observe_secrets(
        ns.name.clone(),
        ns.client.clone(),
        history.clone(),
    ));
    eventually(
        "every credential has a Secret",
        Duration::from_secs(60),
        || async {
            let h = history.lock().unwrap();
            h.versions.iter().all(|v| !v.is_empty()).then_some(())
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let live: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(servers.iter().map(|s| s.url.clone()).collect()));
    let refs = TestNamespaceRef {
        creds: ns.api(),
        secrets: ns.api(),
    };
    let checker = tokio::spawn(check_status(refs, history.clone(), stop.clone()));
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(load(w, live.clone(), history.clone(), stop.clone())))
        .collect();

    // Chaos, on a fixed plan relative to the duration.
    let rotations = Arc::new(AtomicU64::new(0));
    let requested: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; CREDENTIALS]));
    let rotator = {
        let creds = ns.api::<M2MCredential>();
        let rotations = rotations.clone();
        let requested = requested.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = cred_name(n % CREDENTIALS);
                let value = format!("r{n}");
                let patch = json!({"metadata": {"annotations": {"m2m.dev/rotate": &value}}});
                if creds
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .is_ok()
                {
                    rotations.fetch_add(1, Ordering::Relaxed);
                    requested.lock().unwrap()[n % CREDENTIALS] = Some(value);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        })
    };
    let start = Instant::now();
    let mut counts = Counts::default();
    // A leader kill every ~40 % of the run (at least once), a token-server
    // restart in the middle.
    let kill_every = (total * 2 / 5).max(Duration::from_secs(15));
    let mut next_kill = Duration::from_secs(8).min(total / 4);
    let restart_at = total / 2;
    let mut restarted = false;
    while start.elapsed() < total {
        if start.elapsed() >= next_kill {
            if let Some(i) = leader(&mut controllers) {
                controllers[i].kill();
                controllers.remove(i);
                controllers.push(controller());
                counts.leader_kills += 1;
            }
            next_kill += kill_every;
        }
        if !restarted && start.elapsed() >= restart_at {
            let mut old = servers.remove(0);
            live.lock().unwrap().retain(|u| *u != old.url);
            old.terminate();
            old.wait_exit(Duration::from_secs(30)).await;
            let fresh = token_server();
            fresh.wait_ready().await;
            live.lock().unwrap().push(fresh.url.clone());
            servers.push(fresh);
            counts.server_restarts += 1;
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the last rotations settle before judging.
    stop.store(true, Ordering::Relaxed);
    rotator.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
    checker.await.unwrap();
    // No rotation lost: the last one requested for each credential is
    // carried out (a leader may just have been killed: allow a takeover).
    let requested = requested.lock().unwrap().clone();
    let creds = ns.api::<M2MCredential>();
    eventually(
        "every credential handled its last rotate annotation",
        Duration::from_secs(45),
        || async {
            for (i, want) in requested.iter().enumerate() {
                let Some(want) = want else { continue };
                let c = creds.get(&cred_name(i)).await.ok()?;
                (c.status?.last_handled_rotate_annotation.as_ref() == Some(want)).then_some(())?;
            }
            Some(())
        },
    )
    .await;
    tokio::time::sleep(SLACK).await;
    observer.abort();
    counts.rotations = rotations.load(Ordering::Relaxed);

    let h = history.lock().unwrap();
    let violations = check(&h, &mut counts);
    eprintln!("soak {total:?}: {counts:#?}");
    let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &h.probes {
        *per_server.entry(p.server.as_str()).or_default() += 1;
    }
    eprintln!("requests per server: {per_server:?}");
    assert!(
        violations.is_empty(),
        "{} invariant violations (first 20):\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(counts.leader_kills >= 1, "no leader was killed: {counts:?}");
    assert!(
        counts.versions_seen > CREDENTIALS,
        "no rotation was carried out: {counts:?}"
    );
    assert!(counts.retired_probes_checked > 0 && counts.current_probes_checked > 0);
}

/// The short soak, part of the normal test suite (~45 s of load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak_keeps_every_invariant() {
    soak(Duration::from_secs(45)).await;
}

/// The full soak: `M2M_SOAK_SECS` seconds of load (default 600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10 minutes; run with: M2M_SOAK_SECS=600 cargo test --test soak -- --ignored --nocapture"]
async fn full_soak_keeps_every_invariant() {
    let secs = std::env::var("M2M_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    soak(Duration::from_secs(secs)).await;
}
