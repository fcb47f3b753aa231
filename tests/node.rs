//! The local cluster's node (`tests/cluster/node.sh`) behaves as a node of
//! any cluster: Pods run and exit, images come from the local registry,
//! Services answer by DNS name from Pods and by ClusterIP from the host, the
//! kubelet writes and refreshes projected service-account tokens, and an
//! updated Secret reaches the files of a running Pod.

#[path = "support/pods.rs"]
mod pods;
mod support;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use pods::{create_pod, events, exec, logs, shell_pod, wait_phase, wait_ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{TestNamespace, eventually};

const NODE_NAME: &str = "m2m-node";
const NODE_IP: &str = "10.244.0.1";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn the_node_is_ready_with_the_documented_name_labels_and_address() {
    let client = support::client().await;
    let node = Api::<Node>::all(client.clone())
        .get(NODE_NAME)
        .await
        .expect("node m2m-node is registered (tests/cluster/up.sh starts it unless M2M_NODE=0)");
    let status = node.status.expect("node status");
    let ready = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "True", "node Ready: {ready:?}");
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(NODE_NAME)
    );
    assert_eq!(
        labels.get("m2m.dev/local-node").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty(),
        "the node has no taints: ordinary Pods schedule on it"
    );
    let internal: Vec<String> = status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .collect();
    assert_eq!(internal, vec![NODE_IP.to_owned()]);

    let dns = Api::<Pod>::namespaced(client, "kube-system")
        .list(&kube::api::ListParams::default().labels("k8s-app=kube-dns"))
        .await
        .expect("list CoreDNS Pods");
    assert!(
        dns.items
            .iter()
            .any(|p| { p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") }),
        "CoreDNS runs in kube-system"
    );
}

#[tokio::test]
async fn a_pod_pulls_its_image_from_the_local_registry_runs_and_exits_zero() {
    let ns = TestNamespace::new("node-run").await;
    let mut pod = shell_pod(
        "hello",
        "echo \"hello from $(hostname) as $(id -u)\"",
        "Never",
    );
    pod["spec"]["containers"][0]["imagePullPolicy"] = "Always".into();
    create_pod(&ns, pod).await;
    let done = wait_phase(&ns, "hello", "Succeeded", Duration::from_secs(120)).await;
    let terminated = done.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("terminated");
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(logs(&ns, "hello").trim(), "hello from hello as 100");

    let events = events(&ns, "hello").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Pulled: Successfully pulled image \"curlimages/curl:8.11.1\"")),
        "the kubelet pulled the image: {events:#?}"
    );
    // ...and the bytes came from the local registry, the docker.io mirror.
    let registry_log = std::fs::read_to_string(support::cluster_dir().join("logs/registry.log"))
        .expect("registry log");
    assert!(
        registry_log.contains("/v2/curlimages/curl/manifests/8.11.1"),
        "the registry served the manifest"
    );
}

#[tokio::test]
async fn a_service_answers_by_dns_name_from_a_pod_and_by_cluster_ip_from_the_host() {
    let ns = TestNamespace::new("node-dns").await;
    let mut server = shell_pod(
        "echo",
        "mkdir -p /tmp/www && echo \"hello from $(hostname)\" > /tmp/www/index.html \
         && exec httpd -f -p 8080 -h /tmp/www",
        "Always",
    );
    server["spec"]["containers"][0]["readinessProbe"] =
        serde_json::json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1});
    create_pod(&ns, server).await;
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let service = ns
        .api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .expect("create Service");
    wait_ready(&ns, "echo", Duration::from_secs(120)).await;

    let script = format!(
        "set -e
         nslookup echo.{ns}.svc.cluster.local
         curl --silent --show-error --fail --retry 5 --retry-all-errors http://echo/
         curl --silent --show-error --fail http://echo.{ns}.svc:80/
         if nslookup example.com >/dev/null 2>&1; then echo 'resolved a name outside the cluster'; exit 1; fi
         echo 'outside names: not resolved'",
        ns = ns.name
    );
    create_pod(&ns, shell_pod("client", &script, "Never")).await;
    wait_phase(&ns, "client", "Succeeded", Duration::from_secs(120)).await;
    let out = logs(&ns, "client");
    let cluster_ip = service.spec.unwrap().cluster_ip.expect("ClusterIP");
    assert!(out.contains(&format!("Address: {cluster_ip}")), "{out}");
    assert_eq!(out.matches("hello from echo").count(), 2, "{out}");
    assert!(out.contains("outside names: not resolved"), "{out}");

    // From the host, through kube-proxy's rules.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = eventually(
        "the ClusterIP from the host",
        Duration::from_secs(30),
        || {
            let ip = cluster_ip.clone();
            async move {
                let mut s = tokio::net::TcpStream::connect((ip.as_str(), 80))
                    .await
                    .ok()?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).await.ok()?;
                buf.contains("hello from echo").then_some(buf)
            }
        },
    )
    .await;
    assert!(body.starts_with("HTTP/1."), "{body}");
}

/// The `iat` values a Pod printed for its projected token, in order.
fn printed_iats(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("iat=")?.split(' ').next()?.parse().ok())
        .collect()
}

async fn review(client: &kube::Client, token: &str, audience: &str) -> Option<String> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("TokenReview");
    let status = answer.status?;
    status.authenticated?.then_some(status.user?.username?)
}

#[tokio::test]
#[ignore = "waits ~8 minutes for the kubelet's refresh: scripts/test.sh runs it beside the other tests"]
async fn the_kubelet_writes_a_projected_token_and_refreshes_it_before_expiry() {
    const EXPIRATION: u64 = 600; // the apiserver's minimum
    const AUDIENCE: &str = "m2m-node-test";
    let ns = TestNamespace::new("node-token").await;
    let mut pod = shell_pod(
        "holder",
        "while true; do
           t=$(cat /var/run/secrets/tokens/token); p=${t#*.}; p=${p%%.*}
           p=$(printf %s \"$p\" | tr '_-' '/+'); while [ $(( ${#p} % 4 )) -ne 0 ]; do p=\"$p=\"; done
           echo \"iat=$(printf %s \"$p\" | base64 -d | sed -n 's/.*\"iat\":\\([0-9]*\\).*/\\1/p') at=$(date +%s)\"
           sleep 5
         done",
        "Always",
    );
    pod["spec"]["containers"][0]["volumeMounts"] =
        serde_json::json!([{"name": "tokens", "mountPath": "/var/run/secrets/tokens"}]);
    pod["spec"]["volumes"] = serde_json::json!([{
        "name": "tokens",
        "projected": {"sources": [{"serviceAccountToken": {
            "path": "token", "audience": AUDIENCE, "expirationSeconds": EXPIRATION,
        }}]},
    }]);
    create_pod(&ns, pod).await;
    wait_ready(&ns, "holder", Duration::from_secs(120)).await;
    let first = eventually("the first token", Duration::from_secs(30), || async {
        printed_iats(&logs(&ns, "holder")).first().copied()
    })
    .await;
    let token = exec(&ns, "holder", &["cat", "/var/run/secrets/tokens/token"]);
    let user = format!("system:serviceaccount:{}:default", ns.name);
    assert_eq!(
        review(&ns.client, &token, AUDIENCE).await.as_deref(),
        Some(user.as_str())
    );

    // The kubelet renews at 80 % of the lifetime (plus up to 10 s of jitter).
    let second = eventually(
        "the kubelet to refresh the projected token",
        Duration::from_secs(EXPIRATION),
        || async {
            printed_iats(&logs(&ns, "holder"))
                .into_iter()
                .find(|&i| i != first)
        },
    )
    .await;
    let age = second - first;
    eprintln!("projected token refreshed {age} s after issue (lifetime {EXPIRATION} s)");
    assert!(
        (EXPIRATION * 7 / 10..EXPIRATION).contains(&age),
        "refreshed before expiry, not early: after {age} s of {EXPIRATION} s"
    );
    assert!(second <= unix_now());
    let renewed = exec(&ns, "holder", &["cat", "/var/run/secrets/tokens/token"]);
    assert_ne!(renewed, token);
    assert_eq!(
        review(&ns.client, &renewed, AUDIENCE).await.as_deref(),
        Some(user.as_str())
    );
}

#[tokio::test]
async fn an_updated_secret_reaches_the_files_of_a_running_pod() {
    let ns = TestNamespace::new("node-secret").await;
    let secrets = ns.api::<Secret>();
    let secret = |value: &str| -> Secret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "app-config"},
            "stringData": {"value": value},
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("v1"))
        .await
        .expect("create Secret");
    let mut pod = shell_pod(
        "reader",
        "while true; do echo \"$(date +%s) $(cat /config/value)\"; sleep 1; done",
        "Always",
    );
    pod["spec"]["containers"][0]["volumeMounts"] =
        serde_json::json!([{"name": "config", "mountPath": "/config", "readOnly": true}]);
    pod["spec"]["volumes"] =
        serde_json::json!([{"name": "config", "secret": {"secretName": "app-config"}}]);
    create_pod(&ns, pod).await;
    wait_ready(&ns, "reader", Duration::from_secs(120)).await;
    eventually("the Pod to read v1", Duration::from_secs(30), || async {
        logs(&ns, "reader").contains(" v1").then_some(())
    })
    .await;

    let updated_at = unix_now();
    secrets
        .patch(
            "app-config",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"value": "v2"}})),
        )
        .await
        .expect("update Secret");
    let seen_at: u64 = eventually("the Pod to read v2", Duration::from_secs(120), || async {
        logs(&ns, "reader")
            .lines()
            .find(|l| l.ends_with(" v2"))?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
    .await;
    let delay = seen_at.saturating_sub(updated_at);
    eprintln!(
        "Secret update visible in the running Pod after {delay} s (kubelet syncFrequency 10s)"
    );
    // The kubelet resyncs a Pod's volumes every syncFrequency (+ jitter):
    // well within three periods, never "at the next restart".
    assert!(delay <= 30, "took {delay} s");
    let restarts = pods::restart_count(&ns, "reader").await;
    assert_eq!(restarts, 0, "the same process saw the change");
}
