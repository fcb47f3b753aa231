//! Rotation that never breaks a consumer (SPEC §8, issue 11) against the
//! real local control plane: the real controller and token-server
//! processes (tests/support), with short usage resolutions set by flags.
//!
//! - usage: `status.lastUsedTime` / `status.versionUsage` appear within the
//!   resolution and only for the version used; two replicas each serving
//!   another credential both report; a token-server restart loses at most
//!   one resolution interval;
//! - adoption-aware retirement, `StaleSecretInUse`, restart targets and
//!   `Dormant` (further down).

mod support;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use serde_json::json;
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, credential_secret, eventually};

/// `--usage-resolution` in these tests.
const COARSE: Duration = Duration::from_secs(3);
/// `--usage-resolution-in-grace` in these tests.
const FINE: Duration = Duration::from_secs(1);
/// One flush tick plus the watch and apply round trips.
const SLACK: Duration = Duration::from_secs(3);

fn usage_flags(coarse: Duration, fine: Duration) -> Vec<String> {
    vec![
        "--usage-resolution".into(),
        format!("{}s", coarse.as_secs()),
        "--usage-resolution-in-grace".into(),
        format!("{}s", fine.as_secs()),
    ]
}

fn controller(ns: &TestNamespace) -> Operator {
    Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    )
}

fn token_server(ns: &TestNamespace, coarse: Duration) -> Operator {
    Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "token-server",
            issuer: Some(format!("https://m2m.{}.test", ns.name)),
            args: usage_flags(coarse, FINE),
            ..Default::default()
        },
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn apply(ns: &TestNamespace, yaml: &str) {
    let out = ns.apply_yaml(yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An m2m ServiceAccount `bot` and a credential `name` with `spec` (YAML flow mapping body).
fn credential(ns: &TestNamespace, name: &str, extra_spec: &str) {
    apply(
        ns,
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: bot }\nspec: { scopes: [\"read\"] }\n",
    );
    apply(
        ns,
        &format!(
            "apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{ name: {name} }}\nspec: {{ serviceAccountName: bot{extra_spec} }}\n"
        ),
    );
}

async fn get(ns: &TestNamespace, name: &str) -> M2MCredential {
    ns.api::<M2MCredential>().get(name).await.unwrap()
}

/// A token from `base` with a client secret (`None` when refused).
async fn use_secret(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> bool {
    http.post(format!("{base}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Use until the token server accepts the secret (its watch caught up).
async fn use_until_accepted(http: &reqwest::Client, base: &str, id: &str, secret: &str) {
    eventually("secret accepted", Duration::from_secs(10), || async {
        use_secret(http, base, id, secret).await.then_some(())
    })
    .await;
}

fn version_usage(cred: &M2MCredential) -> Vec<(i64, DateTime<Utc>)> {
    cred.status
        .as_ref()
        .map(|s| {
            s.version_usage
                .iter()
                .map(|u| (u.version, u.last_used_time))
                .collect()
        })
        .unwrap_or_default()
}

fn last_used(cred: &M2MCredential) -> Option<DateTime<Utc>> {
    cred.status.as_ref()?.last_used_time
}

/// Wait until `status.lastUsedTime` is at least `since` (second precision).
async fn last_used_reaches(
    ns: &TestNamespace,
    name: &str,
    since: DateTime<Utc>,
    within: Duration,
) -> M2MCredential {
    eventually(
        &format!("{name} lastUsedTime >= {since}"),
        within,
        || async {
            let cred = ns.api::<M2MCredential>().get(name).await.ok()?;
            (last_used(&cred)?.timestamp() >= since.timestamp()).then_some(cred)
        },
    )
    .await
}

fn rotate(value: &str) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"metadata": {"annotations": {"m2m.dev/rotate": value}}}))
}

#[tokio::test]
async fn last_used_reaches_status_for_the_version_used_only() {
    let ns = TestNamespace::new("usage-ver").await;
    let _controller = controller(&ns);
    let server = token_server(&ns, COARSE);
    server.wait_ready().await;
    let http = http();
    credential(&ns, "app", ", rotation: { gracePeriod: 10m }");
    let (id, s1) = credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;
    assert_eq!(last_used(&get(&ns, "app").await), None, "unused so far");

    let before = Utc::now();
    use_until_accepted(&http, &server.url, &id, &s1).await;
    // A first use is written on the next flush; a later one within the resolution.
    let cred = last_used_reaches(&ns, "app", before, FINE + SLACK).await;
    let usage = version_usage(&cred);
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].0, 1);
    assert!(usage[0].1.timestamp() >= before.timestamp());
    // The usage fields belong to the token server's field manager only.
    let managers: Vec<String> = cred
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:versionUsage"))
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["m2m-token-server".to_owned()]);
    let v1_time = usage[0].1;

    // Rotate with a grace period and use only the new version.
    ns.api::<M2MCredential>()
        .patch("app", &PatchParams::default(), &rotate("r1"))
        .await
        .unwrap();
    let (_, s2) = credential_secret(&ns, "app", 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_rotation = Utc::now();
    use_until_accepted(&http, &server.url, &id, &s2).await;
    // In a grace period the fine resolution applies.
    let cred = eventually("version 2 reported", FINE + SLACK, || async {
        let cred = ns.api::<M2MCredential>().get("app").await.ok()?;
        version_usage(&cred)
            .iter()
            .any(|(v, t)| *v == 2 && t.timestamp() >= after_rotation.timestamp())
            .then_some(cred)
    })
    .await;
    let usage = version_usage(&cred);
    assert_eq!(
        usage,
        vec![
            (1, v1_time),
            (2, usage.iter().find(|u| u.0 == 2).unwrap().1)
        ],
        "version 1 keeps its last use"
    );
    let status = cred.status.unwrap();
    assert_eq!(
        status.secret_version, 2,
        "the controller's fields are intact"
    );
    assert_eq!(status.verifiers.len(), 2);

    // `kubectl m2m status` shows the real usage: the current version's and
    // the previous one's, in its grace period.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-m2m"))
        .args(["status", "-n", &ns.name, "-o", "json"])
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = &json["items"][0];
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        item["lastUsedTime"],
        t(status.last_used_time.unwrap()),
        "{item}"
    );
    assert_eq!(item["previousVersions"][0]["version"], 1, "{item}");
    assert_eq!(
        item["previousVersions"][0]["lastUsedTime"],
        t(v1_time),
        "{item}"
    );

    // Nothing new, nothing written: the object stays as it is.
    tokio::time::sleep(COARSE + SLACK).await;
    let rv = get(&ns, "app").await.metadata.resource_version;
    tokio::time::sleep(COARSE * 2).await;
    assert_eq!(get(&ns, "app").await.metadata.resource_version, rv);
}

#[tokio::test]
async fn two_replicas_each_serving_another_credential_both_report() {
    let ns = TestNamespace::new("usage-two").await;
    let _controller = controller(&ns);
    let servers = [token_server(&ns, COARSE), token_server(&ns, COARSE)];
    for s in &servers {
        s.wait_ready().await;
    }
    let http = http();
    credential(&ns, "left", "");
    credential(&ns, "right", "");
    credential(&ns, "both", "");
    let left = credential_secret(&ns, "left", 1, Duration::from_secs(30)).await;
    let right = credential_secret(&ns, "right", 1, Duration::from_secs(30)).await;
    let both = credential_secret(&ns, "both", 1, Duration::from_secs(30)).await;
    let start = Utc::now();
    use_until_accepted(&http, &servers[0].url, &left.0, &left.1).await;
    use_until_accepted(&http, &servers[1].url, &right.0, &right.1).await;
    last_used_reaches(&ns, "left", start, FINE + SLACK).await;
    last_used_reaches(&ns, "right", start, FINE + SLACK).await;

    // One credential used through both replicas for a while: the status
    // follows the latest use and neither replica writes more than once
    // per interval.
    let until = std::time::Instant::now() + COARSE * 3;
    let mut last = start;
    while std::time::Instant::now() < until {
        for s in &servers {
            assert!(use_secret(&http, &s.url, &both.0, &both.1).await || last == start);
        }
        last = Utc::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cred = last_used_reaches(&ns, "both", last - COARSE, COARSE + SLACK).await;
    assert_eq!(version_usage(&cred).len(), 1);
    let mut writes = 0.0;
    for s in &servers {
        let m = http
            .get(format!("{}/metrics", s.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let ok: f64 = m
            .lines()
            .find(|l| l.starts_with("m2m_usage_writes_total{outcome=\"ok\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0);
        writes += ok;
    }
    // 3 credentials, first use each, then "both" at most once per interval
    // per replica over ~3 intervals (+ a tick).
    println!("usage writes by both replicas: {writes}");
    assert!(writes <= 3.0 + 2.0 * 4.0, "{writes} writes");
}

#[tokio::test]
async fn a_token_server_restart_loses_at_most_one_interval() {
    let ns = TestNamespace::new("usage-restart").await;
    let _controller = controller(&ns);
    let http = http();
    credential(&ns, "app", "");
    let (id, secret) = credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;

    // Graceful stop: the use the interval held back is written on the way out.
    let mut server = token_server(&ns, Duration::from_secs(600));
    server.wait_ready().await;
    let first = Utc::now();
    use_until_accepted(&http, &server.url, &id, &secret).await;
    last_used_reaches(&ns, "app", first, FINE + SLACK).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held_back = Utc::now();
    assert!(use_secret(&http, &server.url, &id, &secret).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        last_used(&get(&ns, "app").await).unwrap().timestamp() < held_back.timestamp(),
        "within the 600s interval nothing more is written"
    );
    server.terminate();
    server.wait_exit(Duration::from_secs(15)).await;
    last_used_reaches(&ns, "app", held_back, SLACK).await;

    // A crash (SIGKILL) loses at most the last interval.
    let mut server = token_server(&ns, COARSE);
    server.wait_ready().await;
    let until = std::time::Instant::now() + COARSE * 3;
    let mut last = Utc::now();
    while std::time::Instant::now() < until {
        if use_secret(&http, &server.url, &id, &secret).await {
            last = Utc::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
    tokio::time::sleep(SLACK).await;
    let kept = last_used(&get(&ns, "app").await).unwrap();
    // The interval plus its spread (at most half an interval) plus one tick.
    let bound = COARSE + COARSE / 2 + FINE + Duration::from_secs(1);
    assert!(
        (last - kept).to_std().unwrap_or_default() <= bound,
        "last use {last}, status {kept}"
    );
}

#[tokio::test]
async fn a_usage_write_from_an_outdated_view_conflicts_instead_of_clobbering() {
    use m2m_operator::server::usage::{UsageWrite, UsageWriteError, apply_usage};
    let ns = TestNamespace::new("usage-rv").await;
    credential(&ns, "app", "");
    let seen = get(&ns, "app").await;
    let write = |rv: Option<String>, t: i64| UsageWrite {
        resource_version: rv,
        last_used: t,
        versions: [(1, t)].into(),
    };
    let rv = seen.metadata.resource_version.clone();
    apply_usage(
        &ns.client,
        &ns.name,
        "app",
        &write(rv.clone(), 2_000_000_000),
    )
    .await
    .expect("first write");
    // Another replica, still holding the old view, must not move it back.
    let stale = apply_usage(&ns.client, &ns.name, "app", &write(rv, 1_900_000_000)).await;
    assert!(matches!(stale, Err(UsageWriteError::Conflict)), "{stale:?}");
    let cred = get(&ns, "app").await;
    assert_eq!(last_used(&cred).unwrap().timestamp(), 2_000_000_000);
    let gone = apply_usage(&ns.client, &ns.name, "nope", &write(None, 1)).await;
    assert!(matches!(gone, Err(UsageWriteError::Gone)), "{gone:?}");
}

async fn events(ns: &TestNamespace, reason: &str) -> Vec<Event> {
    ns.api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn verifier_versions(ns: &TestNamespace, name: &str) -> Vec<i64> {
    get(ns, name)
        .await
        .status
        .map(|s| s.verifiers.iter().map(|v| v.version).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn retirement_comes_early_when_the_old_version_goes_unused_and_not_while_used() {
    let ns = TestNamespace::new("usage-retire").await;
    let _controller = controller(&ns);
    let server = token_server(&ns, COARSE);
    server.wait_ready().await;
    let http = http();
    let spec = ", rotation: { gracePeriod: 10m, retireWhenUnusedFor: 6s }";
    credential(&ns, "idle", spec);
    credential(&ns, "busy", spec);
    let (idle_id, idle_old) = credential_secret(&ns, "idle", 1, Duration::from_secs(30)).await;
    let (busy_id, busy_old) = credential_secret(&ns, "busy", 1, Duration::from_secs(30)).await;
    use_until_accepted(&http, &server.url, &busy_id, &busy_old).await;
    for name in ["idle", "busy"] {
        ns.api::<M2MCredential>()
            .patch(name, &PatchParams::default(), &rotate("r1"))
            .await
            .unwrap();
    }
    credential_secret(&ns, "idle", 2, Duration::from_secs(30)).await;
    credential_secret(&ns, "busy", 2, Duration::from_secs(30)).await;
    let rotated = std::time::Instant::now();

    // "busy" keeps presenting its old secret for 12s: twice retireWhenUnusedFor.
    while rotated.elapsed() < Duration::from_secs(12) {
        assert!(
            use_secret(&http, &server.url, &busy_id, &busy_old).await,
            "the old secret of a credential in use keeps working"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(verifier_versions(&ns, "busy").await, vec![2, 1]);
    // "idle" was retired 6s after the rotation, long before its 10m grace.
    assert_eq!(verifier_versions(&ns, "idle").await, vec![2]);
    // The token server refuses it as soon as its watch has the retirement.
    refused_soon(&http, &server.url, &idle_id, &idle_old).await;
    assert!(!events(&ns, "PreviousSecretRetired").await.is_empty());

    // Once "busy" stops using it, its old version goes too.
    let stopped = std::time::Instant::now();
    eventually(
        "busy retires its old version",
        Duration::from_secs(20),
        || async { (verifier_versions(&ns, "busy").await == vec![2]).then_some(()) },
    )
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(4),
        "not before it went unused"
    );
    refused_soon(&http, &server.url, &busy_id, &busy_old).await;
    assert!(events(&ns, "StaleSecretInUse").await.is_empty());
}

/// A secret the status no longer holds is refused once the token server's
/// watch has caught up with the status (milliseconds; 5 s under load).
async fn refused_soon(http: &reqwest::Client, url: &str, id: &str, secret: &str) {
    eventually(
        "the token server refuses the retired secret",
        Duration::from_secs(5),
        || async { (!use_secret(http, url, id, secret).await).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn stale_secret_in_use_fires_when_the_grace_period_ends_in_use() {
    let ns = TestNamespace::new("usage-stale").await;
    let controller = controller(&ns);
    let server = token_server(&ns, COARSE);
    server.wait_ready().await;
    let http = http();
    credential(&ns, "app", ", rotation: { gracePeriod: 8s }");
    let (id, old) = credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;
    use_until_accepted(&http, &server.url, &id, &old).await;
    ns.api::<M2MCredential>()
        .patch("app", &PatchParams::default(), &rotate("r1"))
        .await
        .unwrap();
    credential_secret(&ns, "app", 2, Duration::from_secs(30)).await;
    // A consumer that never re-reads its Secret.
    while use_secret(&http, &server.url, &id, &old).await {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let warning = eventually("StaleSecretInUse", Duration::from_secs(15), || async {
        events(&ns, "StaleSecretInUse").await.into_iter().next()
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.message.unwrap_or_default();
    assert!(
        note.contains(&format!("{}/app", ns.name)) && note.contains("secret version 1"),
        "{note}"
    );
    let metrics = http
        .get(format!("{}/metrics", controller.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("m2m_stale_secret_in_use_total 1"),
        "{metrics}"
    );
}

fn condition(cred: &M2MCredential, type_: &str) -> Option<(String, String)> {
    cred.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (format!("{:?}", c.status), c.reason.clone()))
}

#[tokio::test]
async fn dormant_appears_when_unused_and_clears_on_use() {
    let ns = TestNamespace::new("usage-dormant").await;
    let _controller = controller(&ns);
    let server = token_server(&ns, COARSE);
    server.wait_ready().await;
    let http = http();
    credential(&ns, "app", ", dormantAfter: 5s");
    let (id, secret) = credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;
    assert_eq!(
        condition(&get(&ns, "app").await, "Dormant"),
        Some(("False".into(), "InUse".into()))
    );
    eventually("Dormant=True", Duration::from_secs(15), || async {
        let c = condition(&get(&ns, "app").await, "Dormant")?;
        (c == ("True".into(), "Unused".into())).then_some(())
    })
    .await;
    let warning = eventually("Dormant event", Duration::from_secs(5), || async {
        events(&ns, "Dormant").await.into_iter().next()
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    use_until_accepted(&http, &server.url, &id, &secret).await;
    eventually("Dormant clears on use", FINE + SLACK + SLACK, || async {
        let c = condition(&get(&ns, "app").await, "Dormant")?;
        (c == ("False".into(), "InUse".into())).then_some(())
    })
    .await;
}

/// The controller's "zero writes when converged" with every feature of
/// this issue in use: usage written by the token server wakes the
/// controller, which writes nothing; a controller restart (a full resync)
/// writes nothing either.
#[tokio::test]
async fn a_converged_cluster_resync_writes_nothing() {
    let ns = TestNamespace::new("usage-quiet").await;
    let mut ctrl = controller(&ns);
    let server = token_server(&ns, COARSE);
    server.wait_ready().await;
    let http = http();
    credential(
        &ns,
        "app",
        ", dormantAfter: 1h, rotation: { gracePeriod: 10m, retireWhenUnusedFor: 5m }",
    );
    let (id, s1) = credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;
    ns.api::<M2MCredential>()
        .patch("app", &PatchParams::default(), &rotate("r1"))
        .await
        .unwrap();
    let (_, s2) = credential_secret(&ns, "app", 2, Duration::from_secs(30)).await;
    // Usage of both versions, written by the token server, several times.
    let start = Utc::now();
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        use_secret(&http, &server.url, &id, &s1).await;
        use_secret(&http, &server.url, &id, &s2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cred = last_used_reaches(&ns, "app", start + chrono::Duration::seconds(2), SLACK).await;
    assert_eq!(version_usage(&cred).len(), 2);
    tokio::time::sleep(SLACK).await;
    // Nothing the controller manages moved because of the usage writes.
    let by_operator = |cred: &M2MCredential| {
        cred.metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some("m2m-operator"))
            .map(|m| {
                (
                    m.subresource.clone(),
                    m.time.clone().map(|t| t.0.to_string()),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = get(&ns, "app").await;
    let secret_rv = |s: Secret| s.metadata.resource_version;
    let secret_before = secret_rv(ns.api::<Secret>().get("app-credentials").await.unwrap());
    drop(server);
    tokio::time::sleep(SLACK).await;
    let quiet = get(&ns, "app").await;
    ctrl.kill();
    let _ctrl = controller(&ns);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = get(&ns, "app").await;
    assert_eq!(by_operator(&after), by_operator(&before));
    assert_eq!(
        after.metadata.resource_version,
        quiet.metadata.resource_version
    );
    assert_eq!(
        secret_rv(ns.api::<Secret>().get("app-credentials").await.unwrap()),
        secret_before
    );
}

/// The `kubectl.kubernetes.io/restartedAt` pod-template annotation of a
/// Deployment: set by a rollout restart.
fn restarted_at(d: &k8s_openapi::api::apps::v1::Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("kubectl.kubernetes.io/restartedAt")
        .cloned()
}

#[tokio::test]
async fn a_restart_target_is_restarted_exactly_once_per_rotation() {
    use k8s_openapi::api::apps::v1::Deployment;
    let ns = TestNamespace::new("usage-restart-targets").await;
    let mut ctrl = controller(&ns);
    apply(
        &ns,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web, annotations: { m2m.dev/restart-on-rotation: app } }\nspec:\n  selector: { matchLabels: { app: web } }\n  template:\n    metadata: { labels: { app: web } }\n    spec: { containers: [{ name: app, image: example.invalid/app }] }\n",
    );
    credential(
        &ns,
        "app",
        ", rotation: { gracePeriod: 1m, restartTargets: [{ kind: Deployment, name: web }, { kind: StatefulSet, name: missing }] }",
    );
    credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;
    let deployments = ns.api::<Deployment>();
    let web = deployments.get("web").await.unwrap();
    assert_eq!(
        restarted_at(&web),
        None,
        "creating a credential restarts nothing"
    );
    let generation = web.metadata.generation;

    ns.api::<M2MCredential>()
        .patch("app", &PatchParams::default(), &rotate("r1"))
        .await
        .unwrap();
    credential_secret(&ns, "app", 2, Duration::from_secs(30)).await;
    let web = eventually("web restarted", Duration::from_secs(15), || async {
        let d = deployments.get("web").await.ok()?;
        restarted_at(&d).is_some().then_some(d)
    })
    .await;
    assert_eq!(web.metadata.generation, generation.map(|g| g + 1));
    assert_eq!(
        web.metadata.annotations.as_ref().unwrap()["m2m.dev/restarted-for"],
        r#"{"app":2}"#
    );
    eventually(
        "restartedVersion recorded",
        Duration::from_secs(10),
        || async { (get(&ns, "app").await.status?.restarted_version == Some(2)).then_some(()) },
    )
    .await;
    let restarted = events(&ns, "RolloutRestarted").await;
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert!(
        restarted[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Deployment/web") && m.contains("secret version 2"))
    );
    assert_eq!(events(&ns, "RestartTargetNotFound").await.len(), 1);

    // A controller restart (a full resync) restarts nothing.
    ctrl.kill();
    let _ctrl = controller(&ns);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = deployments.get("web").await.unwrap();
    // The spec is untouched (the Deployment's status may move: with a node,
    // the deployment controller rolls the restart out).
    assert_eq!(again.metadata.generation, web.metadata.generation);
    assert_eq!(restarted_at(&again), restarted_at(&web));
    assert_eq!(events(&ns, "RolloutRestarted").await.len(), 1);

    // The next rotation restarts it once more.
    ns.api::<M2MCredential>()
        .patch("app", &PatchParams::default(), &rotate("r2"))
        .await
        .unwrap();
    credential_secret(&ns, "app", 3, Duration::from_secs(30)).await;
    eventually("web restarted again", Duration::from_secs(15), || async {
        let d = deployments.get("web").await.ok()?;
        (d.metadata.generation == generation.map(|g| g + 2)).then_some(())
    })
    .await;
}

/// Sum of `m2m_usage_writes_total{outcome=…}` over `servers`.
async fn usage_writes(http: &reqwest::Client, servers: &[Operator], outcome: &str) -> f64 {
    let mut sum = 0.0;
    for s in servers {
        let m = http
            .get(format!("{}/metrics", s.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("m2m_usage_writes_total{{outcome=\"{outcome}\"}}");
        sum += m
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    sum
}

/// The write bound against the real apiserver: 1,000 credentials (or
/// `M2M_USAGE_BENCH_CREDENTIALS`) each used every few seconds through both
/// of 2 token-server replicas at the default resolution (60s), measured
/// over `M2M_USAGE_BENCH_MINUTES` (default 3) after a warm-up. Prints the
/// figures docs/rotation.md quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "several minutes; run with: cargo test --features test-hooks --test usage -- --ignored --nocapture"]
async fn usage_writes_per_minute_at_1000_credentials_and_2_replicas() {
    use futures::StreamExt;
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("M2M_USAGE_BENCH_CREDENTIALS", 1000);
    let minutes = env("M2M_USAGE_BENCH_MINUTES", 3) as u64;
    let ns = TestNamespace::new("usage-bound").await;
    let _controller = controller(&ns);
    apply(
        &ns,
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: bot }\nspec: { scopes: [\"read\"] }\n",
    );
    let creds = ns.api::<M2MCredential>();
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let creds = creds.clone();
            async move {
                let c: M2MCredential = serde_json::from_value(json!({
                    "apiVersion": "m2m.dev/v1alpha1", "kind": "M2MCredential",
                    "metadata": { "name": format!("c{i}") },
                    "spec": { "serviceAccountName": "bot" },
                }))
                .unwrap();
                creds.create(&Default::default(), &c).await.unwrap();
            }
        })
        .await;
    let secrets: Vec<(String, String)> = eventually(
        "every credential Secret",
        Duration::from_secs(600),
        || async {
            let list = ns.api::<Secret>().list(&ListParams::default()).await.ok()?;
            let found: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter_map(|s| {
                    let d = s.data?;
                    let get = |k: &str| String::from_utf8(d.get(k)?.0.clone()).ok();
                    Some((get("client_id")?, get("client_secret")?))
                })
                .collect();
            (found.len() >= n).then_some(found)
        },
    )
    .await;
    let servers = [
        token_server(&ns, Duration::from_secs(60)),
        token_server(&ns, Duration::from_secs(60)),
    ];
    for s in &servers {
        s.wait_ready().await;
    }
    let http = http();
    let start = std::time::Instant::now();
    let warmup = Duration::from_secs(70);
    let end = warmup + Duration::from_secs(60 * minutes);
    let mut at_warmup = None;
    let mut requests = 0u64;
    while start.elapsed() < end {
        if at_warmup.is_none() && start.elapsed() >= warmup {
            at_warmup = Some((
                usage_writes(&http, &servers, "ok").await,
                usage_writes(&http, &servers, "conflict").await,
                std::time::Instant::now(),
            ));
        }
        // Every credential through both replicas, then the next round.
        let round: Vec<_> = secrets
            .iter()
            .flat_map(|c| servers.iter().map(move |s| (s.url.clone(), c)))
            .collect();
        let ok = futures::stream::iter(round)
            .map(|(url, (id, secret))| {
                let http = http.clone();
                async move { use_secret(&http, &url, id, secret).await }
            })
            .buffer_unordered(32)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        requests += ok as u64;
    }
    let (ok0, conflict0, t0) = at_warmup.expect("warm-up passed");
    let elapsed = t0.elapsed().as_secs_f64() / 60.0;
    let ok = usage_writes(&http, &servers, "ok").await - ok0;
    let conflicts = usage_writes(&http, &servers, "conflict").await - conflict0;
    let per_min = ok / elapsed;
    println!(
        "{n} credentials, 2 replicas, resolution 60s: {per_min:.0} usage writes/min, \
         {:.0} conflicts/min over {elapsed:.1} min ({requests} successful token requests in all)",
        conflicts / elapsed
    );
    assert!(per_min <= 2.0 * n as f64 * 1.05, "{per_min} writes/min");
}

/// A restart target must consent: a workload is restarted only if its
/// `m2m.dev/restart-on-rotation` annotation names the credential. A
/// workload that does not is reported exactly like a missing one (Events
/// must not tell a tenant which Deployments exist).
#[tokio::test]
async fn only_a_consenting_workload_is_restarted_and_others_look_missing() {
    use k8s_openapi::api::apps::v1::Deployment;
    let ns = TestNamespace::new("usage-restart-consent").await;
    let _ctrl = controller(&ns);
    let deployment = |name: &str, annotations: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: {name}, annotations: {{ {annotations} }} }}\nspec:\n  selector: {{ matchLabels: {{ app: {name} }} }}\n  template:\n    metadata: {{ labels: {{ app: {name} }} }}\n    spec: {{ containers: [{{ name: app, image: example.invalid/app }}] }}\n"
        )
    };
    apply(&ns, &deployment("web", ""));
    apply(
        &ns,
        &deployment("api", "m2m.dev/restart-on-rotation: \"other,app\""),
    );
    credential(
        &ns,
        "app",
        ", rotation: { gracePeriod: 1m, restartTargets: [{ kind: Deployment, name: web }, { kind: Deployment, name: api }, { kind: Deployment, name: missing }] }",
    );
    credential_secret(&ns, "app", 1, Duration::from_secs(30)).await;
    let deployments = ns.api::<Deployment>();
    ns.api::<M2MCredential>()
        .patch("app", &PatchParams::default(), &rotate("r1"))
        .await
        .unwrap();
    credential_secret(&ns, "app", 2, Duration::from_secs(30)).await;
    eventually("api restarted", Duration::from_secs(15), || async {
        restarted_at(&deployments.get("api").await.ok()?).map(|_| ())
    })
    .await;
    eventually(
        "restartedVersion recorded",
        Duration::from_secs(10),
        || async { (get(&ns, "app").await.status?.restarted_version == Some(2)).then_some(()) },
    )
    .await;
    let web = deployments.get("web").await.unwrap();
    assert_eq!(
        restarted_at(&web),
        None,
        "a Deployment that does not consent was restarted"
    );
    // The refusing and the missing target alike: one Event reason, one
    // message template (the recorder folds them into one series).
    let missing = events(&ns, "RestartTargetNotFound").await;
    assert!(!missing.is_empty());
    let template = |m: &str| {
        m.replace("Deployment/web", "Deployment/X")
            .replace("Deployment/missing", "Deployment/X")
    };
    let expected = "Deployment/X (rotation.restartTargets) was not restarted for secret version 2: no such workload in this namespace carries the annotation m2m.dev/restart-on-rotation listing \"app\"";
    for e in &missing {
        assert_eq!(
            template(e.message.as_deref().unwrap_or_default()),
            expected,
            "the Events tell a missing target from a refusing one"
        );
    }
}
