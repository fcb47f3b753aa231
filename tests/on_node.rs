//! The product as users run it, on the local cluster's node: the image
//! (`scripts/image.sh`) and the chart (`scripts/chart.sh`) from the local
//! registry, `helm install --wait`, the examples applied unchanged as Pods,
//! a rotation seen by a running client, and operations (deleting a token
//! server Pod, the leading controller Pod, `helm upgrade` to another image)
//! with a client sending token requests all along and counting failures,
//! and a Pod certificate from the operator's signer used for bound tokens.
//!
//! The installed operator watches every namespace, so these tests must not
//! run beside the others: `scripts/test.sh` runs them last, one at a time
//! (`--ignored --test-threads=1`, in name order), after pushing the image
//! and the chart, and uninstalls the release afterwards.

#[path = "support/pods.rs"]
mod pods;
mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use pods::{logs, wait_ready};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{TestNamespace, eventually, kubectl, kubectl_stdin};

const RELEASE: &str = "m2m-operator";
const SYSTEM: &str = "m2m-system";
const DEMO: &str = "m2m-demo";
const REGISTRY: &str = "127.0.0.1:15000";
const TOKEN_URL: &str = "http://m2m-operator.m2m-system.svc:8080/oauth/token";

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_version() -> String {
    let chart =
        std::fs::read_to_string(repo_root().join("charts/m2m-operator/Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .expect("Chart.yaml version")
        .trim()
        .to_owned()
}

/// Run helm against the local cluster; panics with its output on failure.
fn helm(args: &[&str]) -> String {
    let out = Command::new(support::bin_dir().join("helm"))
        .args(args)
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm install` (or upgrade, when installed) of the pushed chart with the
/// pushed image, exactly as docs/install.md shows it, waiting for readiness.
fn install(extra: &[&str]) {
    let version = chart_version();
    let chart = format!("oci://{REGISTRY}/charts/m2m-operator");
    let image = format!("image.repository={REGISTRY}/m2m-operator");
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        &chart,
        "--version",
        &version,
        "--plain-http",
        "--namespace",
        SYSTEM,
        "--create-namespace",
        "--set",
        &image,
        "--wait",
        "--timeout",
        "5m",
    ];
    args.extend_from_slice(extra);
    helm(&args);
}

fn installed() -> bool {
    let out = Command::new(support::bin_dir().join("helm"))
        .args(["status", RELEASE, "-n", SYSTEM])
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .expect("run helm");
    out.status.success()
}

async fn ensure_installed() {
    if !installed() {
        install(&[]);
    }
}

async fn pods_of(component: &str) -> Vec<Pod> {
    let client = support::client().await;
    Api::<Pod>::namespaced(client, SYSTEM)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
        .await
        .expect("list pods")
        .items
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready_count(component: &str) -> usize {
    pods_of(component)
        .await
        .iter()
        .filter(|p| is_ready(p))
        .count()
}

async fn leader() -> Option<String> {
    let client = support::client().await;
    Api::<Lease>::namespaced(client, SYSTEM)
        .get("m2m-operator-controller")
        .await
        .ok()?
        .spec?
        .holder_identity
}

/// The process of a container on this node, as the runtime started it.
fn container_process(pod: &Pod) -> String {
    let id = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let id = id.trim_start_matches("containerd://");
    // runc keeps each container's init PID in its state directory.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat /run/containerd/runc/k8s.io/{id}/state.json 2>/dev/null | sed -n 's/.*\"init_process_pid\":\\([0-9]*\\).*/\\1/p'"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The commands of the first `sh` block under `## Install` in
/// docs/install.md, continuation lines joined, for `registry`.
fn install_md_commands(registry: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/install.md")).unwrap();
    let section = doc
        .split("\n## Install\n")
        .nth(1)
        .expect("## Install in docs/install.md");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block under ## Install");
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .map(|l| l.replace("<your-registry>", registry))
        .collect()
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s1_helm_install_from_the_registry_runs_every_component_ready() {
    // Exactly what docs/install.md tells users to run (the local registry
    // serves plain HTTP, hence helm's --plain-http).
    let commands = install_md_commands(REGISTRY);
    assert_eq!(
        commands.len(),
        3,
        "image, chart, helm install: {commands:?}"
    );
    let path = format!(
        "{}:{}",
        support::bin_dir().display(),
        std::env::var("PATH").unwrap()
    );
    let start = Instant::now();
    for command in &commands {
        let command = if command.starts_with("helm ") {
            format!("{command} --plain-http --timeout 5m")
        } else {
            command.clone()
        };
        let out = Command::new("sh")
            .args(["-c", &command])
            .current_dir(repo_root())
            .env("PATH", &path)
            .env("KUBECONFIG", support::kubeconfig_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "docs/install.md's three commands (image build + push, chart push, helm install --wait): {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        ready_count("controller").await,
        2,
        "two controller replicas Ready"
    );
    assert_eq!(
        ready_count("token-server").await,
        2,
        "two token servers Ready"
    );
    // One leader among the controllers (a Lease left by an earlier release
    // names a Pod that is gone until it expires: wait that out).
    eventually(
        "a leader among the controller Pods",
        Duration::from_secs(60),
        || async {
            let holder = leader().await?;
            let names: Vec<String> = pods_of("controller")
                .await
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names
                .iter()
                .any(|n| holder.contains(n.as_str()))
                .then_some(())
        },
    )
    .await;
    // Both token servers behind the Service.
    let client = support::client().await;
    let slices = Api::<EndpointSlice>::namespaced(client, SYSTEM)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={RELEASE}")))
        .await
        .unwrap();
    let ready: usize = slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count();
    assert_eq!(ready, 2, "the Service has two ready endpoints");
    // The chart's security context is what the runtime enforced.
    for pod in pods_of("token-server")
        .await
        .iter()
        .chain(pods_of("controller").await.iter())
    {
        let pid = container_process(pod);
        assert!(
            !pid.is_empty(),
            "container process of {:?}",
            pod.metadata.name
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid:"), vec!["65532"; 4], "runs as 65532");
        assert_eq!(
            field("CapEff:"),
            vec!["0000000000000000"],
            "no capabilities"
        );
        assert_eq!(
            field("Seccomp:"),
            vec!["2"],
            "seccomp filter (RuntimeDefault)"
        );
        assert_eq!(field("NoNewPrivs:"), vec!["1"], "no privilege escalation");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .unwrap();
        assert!(
            root.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "read-only root: {root}"
        );
    }
    // `helm test`, as docs/install.md shows it: discovery, the JWKS and a
    // token through the Service's DNS name, with a credential of its own
    // that the running controller reconciles.
    let out = helm(&["test", RELEASE, "-n", SYSTEM, "--logs", "--timeout", "3m"]);
    let issuer = format!("http://{RELEASE}.{SYSTEM}.svc:8080");
    for expected in [
        "Succeeded".to_owned(),
        format!("discovery: issuer {issuer}"),
        format!("jwks: {issuer}/.well-known/jwks.json serves "),
        "token: issued to m2mc_".to_owned(),
        format!("by {issuer}/oauth/token"),
    ] {
        assert!(
            out.contains(&expected),
            "helm test: no {expected:?} in\n{out}"
        );
    }
    // Its hook objects are gone after the passing run (the Secret with its
    // credential).
    eventually(
        "helm test's credential deleted",
        Duration::from_secs(60),
        || async {
            let out = kubectl(&[
                "-n",
                SYSTEM,
                "get",
                "m2mcred,m2msa,pods,secrets",
                "-o",
                "name",
            ]);
            let names = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && !names.contains("helm-test")).then_some(())
        },
    )
    .await;
}

/// Once example Pod `pod` is Ready, its log as soon as it contains `marker`.
async fn example_log(demo: &TestNamespace, pod: &str, marker: &str) -> String {
    wait_ready(demo, pod, Duration::from_secs(120)).await;
    eventually(
        &format!("{pod} to log {marker:?}"),
        Duration::from_secs(60),
        || async {
            let l = logs(demo, pod);
            l.contains(marker).then_some(l)
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s2_the_examples_run_as_pods_unchanged() {
    ensure_installed().await;
    let dir = repo_root().join("examples");
    let out = kubectl(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let demo = TestNamespace::existing(DEMO).await;

    // 04: the token client logs a token issued through the Service's DNS name.
    let log = example_log(
        &demo,
        "token-client",
        &format!("token issued by {TOKEN_URL}"),
    )
    .await;
    assert!(log.contains("\"sub\":\"m2m:m2m-demo:ci-bot\""), "{log}");
    assert!(
        log.contains("\"access_token\":\"<redacted>\""),
        "the token is never printed: {log}"
    );

    // 05: the workload-identity Pod authenticates with the token the kubelet
    // wrote into its projected volume: no Secret exists for it.
    let log = example_log(&demo, "report-publisher", "token issued:").await;
    assert!(log.contains("\"scope\":\"reports:read\""), "{log}");
    assert!(!log.contains("token request failed"), "{log}");

    // 06: the API token's holder exchanges it for a JWT (RFC 8693).
    let log = example_log(
        &demo,
        "grafana-token-exchange",
        "exchanged the API token for a JWT",
    )
    .await;
    assert!(log.contains("\"sub\":\"m2m:m2m-demo:grafana\""), "{log}");
    assert!(log.contains("\"access_token\":\"<redacted>\""), "{log}");
    assert!(
        !log.contains("m2mt_"),
        "the API token is never printed: {log}"
    );

    // 07: the release bot's token carries its roles' scopes and the role.
    let log = example_log(&demo, "release-bot", "token: scope").await;
    assert!(
        log.contains("deploy:staging") && log.contains("artifacts:read"),
        "{log}"
    );
    assert!(
        log.contains("release-manager"),
        "the roles claim names the role: {log}"
    );
}

/// Seconds since boot: the same clock inside containers (they share the
/// node's kernel) and here, at 10 ms resolution (busybox's `date` has no
/// sub-second format).
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A client Pod in `ns` sending a token request every 100 ms with the
/// credential Secret `secret` re-read each time, printing
/// `<uptime s> <HTTP status> <m2m_sv>` per request.
fn load_client(ns: &str, name: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 100
    runAsGroup: 101
    fsGroup: 101
    seccompProfile: {{ type: RuntimeDefault }}
  containers:
    - name: curl
      image: curlimages/curl:8.11.1
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{ drop: [ALL] }}
      command: ["/bin/sh", "-c"]
      args:
        - |
          d=/var/run/secrets/m2m
          while true; do
            out="$(printf 'user = "%s:%s"\n' "$(cat $d/client_id)" "$(cat $d/client_secret)" |
              curl --silent --config - --max-time 5 -w '\n%{{http_code}}' \
                --data-urlencode grant_type=client_credentials "$(cat $d/token_url)")"
            code="$(printf '%s' "$out" | tail -n 1)"
            sv="$(printf '%s' "$out" | head -n 1 | cut -d. -f2 | tr '_-' '/+' | base64 -d 2>/dev/null | sed -n 's/.*"m2m_sv":\([0-9]*\).*/\1/p')"
            read -r up _ </proc/uptime
            echo "$up $code ${{sv:-none}}"
            sleep 0.1
          done
      volumeMounts: [{{ name: credentials, mountPath: /var/run/secrets/m2m, readOnly: true }}]
  volumes:
    - name: credentials
      secret: {{ secretName: {secret}, defaultMode: 0440 }}
"#
    )
}

/// `(uptime s, status, secret version)` lines a load client printed.
fn load_lines(ns: &TestNamespace, pod: &str) -> Vec<(f64, String, String)> {
    logs(ns, pod)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((
                f.next()?.parse().ok()?,
                f.next()?.to_owned(),
                f.next()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s3_a_running_client_picks_up_a_rotated_secret_without_a_restart() {
    ensure_installed().await;
    let demo = TestNamespace::existing(DEMO).await;
    let out = kubectl_stdin(
        &["apply", "-f", "-"],
        &load_client(DEMO, "rotation-watcher", "ci-bot-uploads-credentials"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&demo, "rotation-watcher", Duration::from_secs(120)).await;
    let before = eventually("tokens of version 1", Duration::from_secs(60), || async {
        let l = load_lines(&demo, "rotation-watcher");
        l.iter()
            .any(|(_, code, _)| code == "200")
            .then_some(l.len())
    })
    .await;
    let current: i64 = String::from_utf8_lossy(
        &kubectl(&[
            "-n",
            DEMO,
            "get",
            "m2mcred",
            "ci-bot-uploads",
            "-o",
            "jsonpath={.status.secretVersion}",
        ])
        .stdout,
    )
    .parse()
    .expect("secretVersion");
    let next = (current + 1).to_string();
    // A grace period, as a user rotating a live credential would set: the
    // old secret keeps working until the kubelet has delivered the new one
    // to the Pod's volume (example 02 explains what happens without one).
    let out = kubectl(&[
        "-n",
        DEMO,
        "patch",
        "m2mcred",
        "ci-bot-uploads",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"rotation":{"gracePeriod":"2m"}}}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requested = uptime();
    let out = kubectl(&[
        "-n",
        DEMO,
        "annotate",
        "--overwrite",
        "m2mcred",
        "ci-bot-uploads",
        &format!("m2m.dev/rotate=on-node-{}", requested as u64),
    ]);
    assert!(out.status.success());
    let switched = eventually(
        "the client to use the new version",
        Duration::from_secs(120),
        || async {
            load_lines(&demo, "rotation-watcher")
                .into_iter()
                .find(|(t, code, sv)| *t > requested && code == "200" && *sv == next)
                .map(|(t, _, _)| t)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = load_lines(&demo, "rotation-watcher");
    let during: Vec<_> = lines[before..].iter().collect();
    let failed: Vec<_> = during.iter().filter(|(_, code, _)| code != "200").collect();
    eprintln!(
        "rotation to version {next}: the running client used it {:.2} s after the request; {} requests during the switch, {} failed",
        switched - requested,
        during.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "no request failed during the rotation: {failed:?}"
    );
    let restarts = pods::restart_count(&demo, "rotation-watcher").await;
    assert_eq!(restarts, 0, "picked up without a restart");
}

/// Runs `operation` while a load client sends token requests, then checks
/// that none failed. Prints the operation's figures.
async fn with_load<F, Fut>(what: &str, operation: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ns = TestNamespace::new("on-node-load").await;
    let setup = format!(
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {{ name: load, namespace: {n} }}\nspec: {{ scopes: [\"load:run\"] }}\n---\napiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{ name: load, namespace: {n} }}\nspec: {{ serviceAccountName: load }}\n---\n{}",
        load_client(&ns.name, "load", "load-credentials"),
        n = ns.name
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &setup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&ns, "load", Duration::from_secs(120)).await;
    eventually(
        "the load client's first token",
        Duration::from_secs(60),
        || async {
            load_lines(&ns, "load")
                .iter()
                .any(|(_, c, _)| c == "200")
                .then_some(())
        },
    )
    .await;
    let before = load_lines(&ns, "load").len();
    operation().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = load_lines(&ns, "load");
    let during = &lines[before..];
    let mut statuses = std::collections::BTreeMap::<&str, usize>::new();
    for (_, code, _) in during {
        *statuses.entry(code.as_str()).or_default() += 1;
    }
    eprintln!(
        "{what}: {} token requests during the operation, statuses {statuses:?}",
        during.len()
    );
    assert!(
        during.len() > 20,
        "the client kept sending: {}",
        during.len()
    );
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec!["200"],
        "{what}: every request answered 200"
    );
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s4_deleting_a_token_server_pod_fails_no_request() {
    ensure_installed().await;
    with_load("token-server Pod deleted", || async {
        let victim = pods_of("token-server").await[0]
            .metadata
            .name
            .clone()
            .unwrap();
        let client = support::client().await;
        Api::<Pod>::namespaced(client, SYSTEM)
            .delete(&victim, &DeleteParams::default())
            .await
            .unwrap();
        let start = Instant::now();
        eventually(
            "two token servers Ready again",
            Duration::from_secs(120),
            || async {
                let pods = pods_of("token-server").await;
                (pods.iter().filter(|p| is_ready(p)).count() == 2
                    && pods
                        .iter()
                        .all(|p| p.metadata.name.as_deref() != Some(victim.as_str())))
                .then_some(())
            },
        )
        .await;
        eprintln!(
            "replacement token server Ready after {:.1} s",
            start.elapsed().as_secs_f64()
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s5_the_standby_controller_takes_over_and_completes_a_rotation() {
    ensure_installed().await;
    let ns = TestNamespace::new("on-node-failover").await;
    let setup = format!(
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {{ name: bot, namespace: {n} }}\nspec: {{ scopes: [\"a:b\"] }}\n---\napiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{ name: bot, namespace: {n} }}\nspec: {{ serviceAccountName: bot }}\n",
        n = ns.name
    );
    assert!(
        kubectl_stdin(&["apply", "-f", "-"], &setup)
            .status
            .success()
    );
    support::credential_secret(&ns, "bot", 1, Duration::from_secs(60)).await;
    let holder = eventually("a leader", Duration::from_secs(30), || async {
        leader().await
    })
    .await;
    let leader_pod = pods_of("controller")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .find(|n| holder.contains(n.as_str()))
        .expect("the leader's Pod");
    let client = support::client().await;
    let start = Instant::now();
    Api::<Pod>::namespaced(client, SYSTEM)
        .delete(&leader_pod, &DeleteParams::default())
        .await
        .unwrap();
    // A rotation requested while the leader is going away.
    assert!(
        kubectl(&[
            "-n",
            &ns.name,
            "annotate",
            "--overwrite",
            "m2mcred",
            "bot",
            "m2m.dev/rotate=failover"
        ])
        .status
        .success()
    );
    let new_leader = eventually(
        "another controller to lead",
        Duration::from_secs(90),
        || async { leader().await.filter(|h| !h.contains(leader_pod.as_str())) },
    )
    .await;
    let takeover = start.elapsed();
    support::credential_secret(&ns, "bot", 2, Duration::from_secs(90)).await;
    eprintln!(
        "leader {leader_pod} deleted: {new_leader} took over after {:.1} s; the rotation requested in the gap completed after {:.1} s",
        takeover.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s6_helm_upgrade_to_another_image_fails_no_request() {
    ensure_installed().await;
    // The second build: scripts/test.sh pushes the same binary under a
    // second tag with another revision label (M2M_TEST_SECOND_TAG).
    let tag = std::env::var("M2M_TEST_SECOND_TAG").unwrap_or_else(|_| "0.1.0-next".to_owned());
    with_load("helm upgrade to a second image", || async {
        let start = Instant::now();
        install(&["--set", &format!("image.tag={tag}")]);
        eprintln!(
            "helm upgrade --wait: {:.1} s",
            start.elapsed().as_secs_f64()
        );
    })
    .await;
    for component in ["controller", "token-server"] {
        for pod in pods_of(component).await.iter().filter(|p| is_ready(p)) {
            let image = &pod.spec.as_ref().unwrap().containers[0].image;
            assert!(
                image
                    .as_deref()
                    .unwrap_or_default()
                    .ends_with(&format!(":{tag}")),
                "{image:?}"
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s7_uninstall_keeps_the_credentials_secrets_and_a_reinstall_serves_them() {
    ensure_installed().await;
    let demo = TestNamespace::existing(DEMO).await;
    let (id, secret) =
        support::credential_secret(&demo, "ci-bot-reader", 1, Duration::from_secs(60)).await;
    helm(&["uninstall", RELEASE, "-n", SYSTEM, "--wait"]);
    let kept = kubectl(&[
        "-n",
        DEMO,
        "get",
        "secret",
        "ci-bot-reader-credentials",
        "-o",
        "jsonpath={.data.client_id}",
    ]);
    assert!(
        kept.status.success(),
        "the credential Secret outlives the release"
    );
    install(&[]);
    let (id2, secret2) =
        support::credential_secret(&demo, "ci-bot-reader", 1, Duration::from_secs(60)).await;
    assert_eq!(
        (id2, secret2),
        (id, secret),
        "the same credential, not a new one"
    );
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s8_a_restart_target_is_restarted_once_and_the_old_secret_retired_when_its_pods_are_gone() {
    use k8s_openapi::api::apps::v1::Deployment;
    use m2m_operator::crd::M2MCredential;
    // The controller may patch workloads only with rbac.restartTargets.
    install(&["--set", "rbac.restartTargets=true"]);
    let ns = TestNamespace::new("on-node-restart").await;
    // Pods that copy the secret into environment variables: they see a new
    // one only when restarted, which is what restartTargets is for.
    let manifests = format!(
        r#"apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: {{ name: app, namespace: {n} }}
spec: {{ scopes: ["app:run"] }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: app, namespace: {n} }}
spec:
  serviceAccountName: app
  rotation:
    gracePeriod: 10m
    retireWhenUnusedFor: 20s
    restartTargets: [{{ kind: Deployment, name: web }}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {n}
  annotations: {{ m2m.dev/restart-on-rotation: app }}
spec:
  replicas: 2
  selector: {{ matchLabels: {{ app: web }} }}
  template:
    metadata: {{ labels: {{ app: web }} }}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: client
          image: curlimages/curl:8.11.1
          env:
            - {{ name: CLIENT_ID, valueFrom: {{ secretKeyRef: {{ name: app-credentials, key: client_id }} }} }}
            - {{ name: CLIENT_SECRET, valueFrom: {{ secretKeyRef: {{ name: app-credentials, key: client_secret }} }} }}
            - {{ name: TOKEN_URL, valueFrom: {{ secretKeyRef: {{ name: app-credentials, key: token_url }} }} }}
          command: ["/bin/sh", "-c"]
          args:
            - |
              while true; do
                code="$(printf 'user = "%s:%s"\n' "$CLIENT_ID" "$CLIENT_SECRET" |
                  curl --silent --config - -o /dev/null -w '%{{http_code}}' -d grant_type=client_credentials "$TOKEN_URL")"
                echo "HTTP $code"
                sleep 1
              done
"#,
        n = ns.name
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifests);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = ns.api::<M2MCredential>();
    eventually(
        "version 1 in use by the Pods",
        Duration::from_secs(120),
        || async {
            creds
                .get("app")
                .await
                .ok()?
                .status?
                .last_used_time
                .map(|_| ())
        },
    )
    .await;
    let deployments = ns.api::<Deployment>();
    let generation = deployments
        .get("web")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let old_pods: Vec<String> = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();

    let start = Instant::now();
    assert!(
        kubectl(&[
            "-n",
            &ns.name,
            "annotate",
            "--overwrite",
            "m2mcred",
            "app",
            "m2m.dev/rotate=on-node"
        ])
        .status
        .success()
    );
    // Restarted once: the new Pods start with the new secret in their env.
    eventually(
        "the rollout to finish",
        Duration::from_secs(120),
        || async {
            let d = deployments.get("web").await.ok()?;
            let s = d.status?;
            (d.metadata.generation == Some(generation + 1)
                && s.observed_generation == Some(generation + 1)
                && s.updated_replicas == Some(2)
                && s.ready_replicas == Some(2)
                && s.replicas == Some(2))
            .then_some(())
        },
    )
    .await;
    let restarted = start.elapsed();
    // Nothing uses version 1 any more: retired after retireWhenUnusedFor,
    // long before the 10m grace period ends.
    eventually("version 1 retired", Duration::from_secs(120), || async {
        let versions: Vec<i64> = creds
            .get("app")
            .await
            .ok()?
            .status?
            .verifiers
            .iter()
            .map(|v| v.version)
            .collect();
        (versions == vec![2]).then_some(())
    })
    .await;
    eprintln!(
        "restart target: rollout with the new secret done {:.1} s after the rotation; version 1 retired after {:.1} s (grace 10m, retireWhenUnusedFor 20s)",
        restarted.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        d.metadata.generation,
        Some(generation + 1),
        "restarted exactly once"
    );
    // The new Pods get tokens with the new secret.
    let pods = eventually("two new Pods Ready", Duration::from_secs(60), || async {
        let pods: Vec<Pod> = ns
            .api::<Pod>()
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let fresh = pods
            .iter()
            .all(|p| !old_pods.contains(p.metadata.name.as_ref().unwrap()));
        (fresh && pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods)
    })
    .await;
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        let log = eventually(
            "a token with the new secret",
            Duration::from_secs(30),
            || async {
                let l = logs(&ns, &name);
                l.contains("HTTP 200").then_some(l)
            },
        )
        .await;
        assert!(!log.contains("HTTP 401"), "{name}: {log}");
    }
}

/// A serving certificate for the token-server Service (DNS SANs), signed
/// by a CA of its own; (CA PEM, certificate PEM, key PEM).
fn service_pki(dir: &std::path::Path) -> (String, String, String) {
    let (ca, crt, key) = support::make_pki_for(
        dir,
        "token-server",
        &format!("DNS:{RELEASE}.{SYSTEM}.svc,DNS:{RELEASE}.{SYSTEM}.svc.cluster.local"),
    );
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap();
    (read(&ca), read(&crt), read(&key))
}

#[tokio::test]
#[ignore = "needs the image and chart in the local registry: scripts/test.sh runs it last"]
async fn s9_a_pod_certificate_gets_certificate_bound_tokens_and_an_unbound_pod_is_denied() {
    // TLS on the token server, trusting the signer's bundles; the
    // controller as the PodCertificateRequest signer.
    let dir = std::env::temp_dir().join(format!("m2m-on-node-podcert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, crt, key) = service_pki(&dir);
    let _ = kubectl(&["create", "namespace", SYSTEM]);
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": { "name": "m2m-operator-tls", "namespace": SYSTEM },
        "stringData": { "tls.crt": crt, "tls.key": key },
    });
    let out = kubectl_stdin(&["apply", "-f", "-"], &secret.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    install(&[
        "--set",
        "podCertificates.enabled=true",
        "--set",
        "tokenServer.tls.secretName=m2m-operator-tls",
        "--set",
        "tokenServer.tls.clientCASigner=m2m.dev/workload-identity",
    ]);
    let demo = TestNamespace::existing(DEMO).await;
    let _ = kubectl(&["create", "namespace", DEMO]);
    let _ = kubectl(&[
        "-n",
        DEMO,
        "delete",
        "pod",
        "inventory-sync",
        "--ignore-not-found",
    ]);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "m2m-token-server-ca", "namespace": DEMO },
        "data": { "ca.crt": ca },
    });
    let out = kubectl_stdin(&["apply", "-f", "-"], &cm.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The example, unchanged.
    let example = repo_root().join("examples/09-pod-certificate.yaml");
    let out = kubectl(&["apply", "-f", example.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kubelet got a certificate from our signer; curl got a token bound
    // to it (its claims carry cnf["x5t#S256"]).
    let log = example_log(&demo, "inventory-sync", "token issued:").await;
    assert!(log.contains("x5t#S256"), "{log}");
    assert!(log.contains("\"sub\":\"m2m:m2m-demo:inventory\""), "{log}");
    assert!(!log.contains("token request failed"), "{log}");
    let pcrs = kubectl(&["get", "podcertificaterequests", "-n", DEMO, "-o", "json"]);
    let pcrs: serde_json::Value = serde_json::from_slice(&pcrs.stdout).unwrap();
    assert!(
        pcrs["items"].as_array().unwrap().iter().any(|r| {
            r["spec"]["podName"] == "inventory-sync"
                && r["status"]["conditions"][0]["type"] == "Issued"
        }),
        "{pcrs}"
    );

    // A Pod whose ServiceAccount no credential binds: its request is
    // denied with the reason, an Event says why, and the Pod never starts.
    let unbound = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{ name: not-bound, namespace: {DEMO} }}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Pod
metadata: {{ name: not-bound, namespace: {DEMO} }}
spec:
  serviceAccountName: not-bound
  automountServiceAccountToken: false
  # Restricted, as the examples' namespace enforces (examples/00-namespace.yaml).
  securityContext:
    runAsNonRoot: true
    runAsUser: 100
    seccompProfile: {{ type: RuntimeDefault }}
  containers:
    - name: c
      image: curlimages/curl:8.11.1
      command: ["sleep", "3600"]
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {{ drop: [ALL] }}
      volumeMounts: [{{ name: id, mountPath: /var/run/m2m }}]
  volumes:
    - name: id
      projected:
        sources:
          - podCertificate:
              signerName: m2m.dev/workload-identity
              keyType: ED25519
              credentialBundlePath: bundle.pem
"#
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &unbound);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the unbound Pod's request denied",
        Duration::from_secs(60),
        || async {
            let out = kubectl(&["get", "podcertificaterequests", "-n", DEMO, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["items"]
                .as_array()?
                .iter()
                .any(|r| {
                    r["spec"]["podName"] == "not-bound"
                        && r["status"]["conditions"][0]["type"] == "Denied"
                        && r["status"]["conditions"][0]["reason"] == "ServiceAccountNotBound"
                })
                .then_some(())
        },
    )
    .await;
    eventually(
        "a denial Event on the Pod",
        Duration::from_secs(30),
        || async {
            pods::events(&demo, "not-bound")
                .await
                .iter()
                .any(|e| e.starts_with("PodCertificateDenied"))
                .then_some(())
        },
    )
    .await;
    let pod = demo.api::<Pod>().get("not-bound").await.unwrap();
    assert!(
        !is_ready(&pod),
        "a Pod without its certificate does not start"
    );
    let _ = kubectl(&[
        "-n",
        DEMO,
        "delete",
        "pod/not-bound",
        "serviceaccount/not-bound",
    ]);
    // Back to the default install for whatever runs next.
    install(&[]);
    let _ = std::fs::remove_dir_all(&dir);
}
