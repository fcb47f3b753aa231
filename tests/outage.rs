//! An apiserver outage, for real: a `controller` and a `token-server`
//! process reach the local kube-apiserver only through a TCP proxy
//! (tests/support/proxy.rs) that the test cuts and restores. The test
//! itself talks to the apiserver directly, so it can change things while
//! the operator is cut off — and no other test is disturbed.
//!
//! While cut: the token server still issues tokens for the credentials it
//! knows and stays ready; revocation, which must persist to be honoured by
//! every replica, answers 503 `temporarily_unavailable` (RFC 6749 JSON).
//! After restore, without restarting anything: a rotation requested during
//! the outage is carried out by the controller and honoured by the token
//! server within a few seconds, with exactly one Secret for the credential
//! and no rotation lost.

#[path = "support/proxy.rs"]
mod proxy;
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use proxy::Proxy;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{
    Operator, OperatorOptions, TestNamespace, client_credentials_token, credential_secret,
    eventually,
};

/// How long the apiserver stays unreachable. Well inside any staleness
/// limit the token server documents, yet long enough for watch reconnects
/// to back off several times.
const OUTAGE: Duration = Duration::from_secs(20);
/// After the apiserver returns, how soon the rotation made during the
/// outage must be honoured. Every watch of both processes retries after at
/// most 5 s (bounded backoff), the controller re-takes the Lease it gave up
/// at its renew deadline within one retry period (2 s), then lists and
/// reconciles: about 1–3 s measured; before the backoff was bounded this
/// took 15–40 s (kube's default, capped at 30 s with jitter). The bound
/// leaves room for a loaded 2-core machine; the figure is printed.
const RESUME: Duration = Duration::from_secs(15);

async fn ready(http: &reqwest::Client, op: &Operator) -> bool {
    http.get(format!("{}/readyz", op.admin_url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test]
async fn token_server_and_controller_ride_out_an_apiserver_outage() {
    let ns = TestNamespace::new("outage").await;
    let direct = support::kubeconfig_path();
    let proxy = Proxy::for_kubeconfig(&direct).await;
    let via_proxy = proxy.write_kubeconfig(&direct, &ns.name);
    let through_proxy = |subcommand| OperatorOptions {
        subcommand,
        env: vec![("KUBECONFIG", via_proxy.display().to_string())],
        ..Default::default()
    };
    let controller = Operator::start_with(&ns, through_proxy("controller"));
    let server = Operator::start_with(&ns, through_proxy("token-server"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    controller.wait_ready().await;
    server.wait_ready().await;

    ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: ci-bot }\nspec: { scopes: [\"repo:read\"] }\n");
    let out = ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: { name: uploads }\nspec: { serviceAccountName: ci-bot }\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, secret1) = credential_secret(&ns, "uploads", 1, Duration::from_secs(30)).await;
    let t1 = eventually("a token for version 1", Duration::from_secs(5), || async {
        let (status, body) = client_credentials_token(&http, &server.url, &id, &secret1).await;
        (status == 200).then(|| body["access_token"].as_str().map(str::to_owned))?
    })
    .await;
    assert!(
        proxy.accepted() > 0,
        "the operator reached the apiserver through the proxy"
    );

    // The outage.
    proxy.cut().await;
    let cut_at = Instant::now();
    // A rotation requested while the operator cannot see it (no grace period).
    ns.api::<M2MCredential>()
        .patch(
            "uploads",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"m2m.dev/rotate": "during-outage"}}}),
            ),
        )
        .await
        .expect("the test reaches the apiserver directly");

    let revoke = http
        .post(format!("{}/oauth/revoke", server.url))
        .basic_auth(&id, Some(&secret1))
        .form(&[("token", t1.as_str())])
        .send()
        .await
        .expect("revocation endpoint reachable");
    assert_eq!(
        revoke.status().as_u16(),
        503,
        "a revocation that cannot be persisted is not acknowledged"
    );
    assert_eq!(
        revoke
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: Value = revoke.json().await.expect("a JSON error body");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");

    let mut issued = 0;
    while cut_at.elapsed() < OUTAGE {
        let (status, body) = client_credentials_token(&http, &server.url, &id, &secret1).await;
        assert_eq!(
            status,
            200,
            "token refused {:?} into the outage: {body}",
            cut_at.elapsed()
        );
        issued += 1;
        assert!(
            ready(&http, &server).await,
            "token server not ready {:?} into the outage",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(issued >= 10);

    // Back: nothing is restarted.
    proxy.restore().await;
    let restored_at = Instant::now();
    let (id2, secret2) = credential_secret(&ns, "uploads", 2, RESUME).await;
    assert_eq!(id2, id, "the client id is stable");
    let remaining = RESUME.saturating_sub(restored_at.elapsed());
    eventually(
        "the rotation made during the outage is honoured",
        remaining,
        || async {
            let (new, _) = client_credentials_token(&http, &server.url, &id, &secret2).await;
            let (old, _) = client_credentials_token(&http, &server.url, &id, &secret1).await;
            // Repeated failures of the old secret are answered 429 by the
            // per-client failure limiter, which never refuses a valid secret.
            (new == 200 && (old == 401 || old == 429)).then_some(())
        },
    )
    .await;
    let honoured_after = restored_at.elapsed();

    // The controller resumed exactly once: one Secret, version 2, the
    // annotation handled, one current verifier.
    let secrets = ns
        .api::<Secret>()
        .list(&ListParams::default().labels("m2m.dev/credential=uploads"))
        .await
        .unwrap();
    assert_eq!(
        secrets.items.len(),
        1,
        "exactly one Secret for the credential"
    );
    let status = ns
        .api::<M2MCredential>()
        .get("uploads")
        .await
        .unwrap()
        .status
        .expect("status");
    assert_eq!(status.secret_version, 2, "no rotation lost, none doubled");
    assert_eq!(
        status.last_handled_rotate_annotation.as_deref(),
        Some("during-outage")
    );
    assert_eq!(
        status
            .verifiers
            .iter()
            .filter(|v| v.not_after.is_none())
            .count(),
        1,
        "{:?}",
        status.verifiers
    );

    // Revocation works again once the apiserver is back.
    let t2 = client_credentials_token(&http, &server.url, &id, &secret2)
        .await
        .1["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    eventually("revocation succeeds again", RESUME, || async {
        let r = http
            .post(format!("{}/oauth/revoke", server.url))
            .basic_auth(&id, Some(&secret2))
            .form(&[("token", t2.as_str())])
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready(&http, &server).await && ready(&http, &controller).await);
    eprintln!(
        "outage {OUTAGE:?}: {issued} tokens issued while cut; rotation honoured {honoured_after:?} after restore"
    );
}

/// A token server whose apiserver hangs at start-up must not report ready
/// (a Service would route clients to an empty index, and their valid
/// secrets would be refused); once the apiserver answers, it becomes ready.
#[tokio::test]
async fn token_server_is_not_ready_before_its_first_sync() {
    let ns = TestNamespace::new("outage-start").await;
    let direct = support::kubeconfig_path();
    let proxy = Proxy::for_kubeconfig(&direct).await;
    let via_proxy = proxy.write_kubeconfig(&direct, &ns.name);
    // The controller (reaching the apiserver directly) writes the keys.
    let controller = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    controller.wait_ready().await;
    proxy.stall();
    let server = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "token-server",
            env: vec![("KUBECONFIG", via_proxy.display().to_string())],
            ..Default::default()
        },
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(r) = http
            .get(format!("{}/readyz", server.admin_url))
            .send()
            .await
        {
            answered += 1;
            assert!(
                !r.status().is_success(),
                "ready {:?} after start without ever reaching the apiserver",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered > 0, "the admin endpoint never answered");
    proxy.restore().await;
    server.wait_ready().await;
}

/// Issue 14, item 8: a leader cut off from the apiserver must stop acting
/// before a standby can take the Lease over, never overlap with it. The
/// leader reaches the apiserver through the proxy, the standby directly;
/// the proxy is cut. The leader's renew deadline (10 s) is shorter than
/// the Lease (15 s), so it stops its controllers while the standby still
/// waits; after the partition heals it stays a standby.
#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_steps_down_before_a_standby_takes_over() {
    let ns = TestNamespace::new("partition").await;
    let direct = support::kubeconfig_path();
    let proxy = Proxy::for_kubeconfig(&direct).await;
    let via_proxy = proxy.write_kubeconfig(&direct, &ns.name);
    let leader = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            env: vec![("KUBECONFIG", via_proxy.display().to_string())],
            ..Default::default()
        },
    );
    eventually(
        "the first replica leads",
        Duration::from_secs(30),
        || async {
            leader
                .log_text()
                .contains("controllers started")
                .then_some(())
        },
    )
    .await;
    let standby = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    standby.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !standby.log_text().contains("acquired leadership"),
        "one leader at a time"
    );

    proxy.cut().await;
    let cut_at = Instant::now();
    let (mut stopped, mut taken_over) = (None, None);
    while cut_at.elapsed() < Duration::from_secs(45) && (stopped.is_none() || taken_over.is_none())
    {
        if stopped.is_none() && leader.log_text().contains("controllers stopped") {
            stopped = Some(cut_at.elapsed());
        }
        if taken_over.is_none() && standby.log_text().contains("acquired leadership") {
            taken_over = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken_over = taken_over
        .unwrap_or_else(|| panic!("the standby never took over:\n{}", standby.log_text()));
    let stopped = stopped.unwrap_or_else(|| {
        panic!(
            "the cut-off leader kept its controllers running ({taken_over:?} after the cut the standby took over): two leaders"
        )
    });
    eprintln!(
        "partition: leader stopped {stopped:?} after the cut, standby took over {taken_over:?} after it"
    );
    assert!(
        stopped < taken_over,
        "the old leader stopped {stopped:?} after the cut, after the standby took over ({taken_over:?})"
    );

    // Healed: the old leader sees the new holder and stays a standby.
    proxy.restore().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        leader.log_text().matches("acquired leadership").count(),
        1,
        "the old leader took the Lease back from the new one"
    );
}
