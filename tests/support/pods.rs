//! Pods on the local cluster's node (`tests/cluster/node.sh`): create one,
//! wait for its phase, read its logs and events, run a command in it. Used
//! by the tests that need a kubelet; include it next to `support` with
//! `#[path = "support/pods.rs"] mod pods;`.
#![allow(dead_code)]

use crate::support::{TestNamespace, eventually, kubectl};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, PostParams};
use std::time::Duration;

/// The image the examples use; the local registry serves it (built from
/// Debian's curl and busybox by `tests/cluster/install.sh`).
pub const CURL_IMAGE: &str = "curlimages/curl:8.11.1";

/// Create the Pod described by `spec` (a JSON Pod manifest without a
/// namespace) in `ns`.
pub async fn create_pod(ns: &TestNamespace, spec: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(spec).expect("a valid Pod manifest");
    let api = ns.api::<Pod>();
    // A new namespace's `default` ServiceAccount is created by the
    // controller manager a moment later; admission refuses Pods until then.
    eventually(
        "the Pod to be admitted",
        Duration::from_secs(30),
        || async {
            match api.create(&PostParams::default(), &pod).await {
                Ok(created) => Some(created),
                Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") => None,
                Err(e) => panic!("create Pod: {e}"),
            }
        },
    )
    .await
}

/// A Pod running `script` with `/bin/sh -c` in the curl image, as the
/// examples run theirs.
pub fn shell_pod(name: &str, script: &str, restart: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": CURL_IMAGE,
                "command": ["/bin/sh", "-c", script],
            }],
        },
    })
}

/// Wait until Pod `name` reports `phase`; panics with its status otherwise
/// (a Pod that reaches `Failed` while we wait for another phase fails at once).
pub async fn wait_phase(ns: &TestNamespace, name: &str, phase: &str, timeout: Duration) -> Pod {
    let api = ns.api::<Pod>();
    eventually(&format!("Pod {name} {phase}"), timeout, || async {
        let pod = api.get(name).await.ok()?;
        let now = pod.status.as_ref()?.phase.clone()?;
        if now == "Failed" && phase != "Failed" {
            panic!(
                "Pod {name} failed: {:?}\nlogs:\n{}",
                pod.status,
                logs(ns, name)
            );
        }
        (now == phase).then_some(pod)
    })
    .await
}

/// Wait until every container of Pod `name` is ready.
pub async fn wait_ready(ns: &TestNamespace, name: &str, timeout: Duration) -> Pod {
    let api = ns.api::<Pod>();
    eventually(&format!("Pod {name} Ready"), timeout, || async {
        let pod = api.get(name).await.ok()?;
        let ready = pod
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(pod)
    })
    .await
}

/// `kubectl logs` of Pod `name` (through the apiserver and the kubelet).
pub fn logs(ns: &TestNamespace, name: &str) -> String {
    let out = kubectl(&["-n", &ns.name, "logs", name]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl exec` into Pod `name`: stdout, or a panic with stderr.
pub fn exec(ns: &TestNamespace, name: &str, command: &[&str]) -> String {
    let mut args = vec!["-n", ns.name.as_str(), "exec", name, "--"];
    args.extend_from_slice(command);
    let out = kubectl(&args);
    assert!(
        out.status.success(),
        "kubectl exec {name} {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `reason: message` lines of the Events about Pod `name`.
pub async fn events(ns: &TestNamespace, name: &str) -> Vec<String> {
    let api = ns.api::<Event>();
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={name}"
    ));
    api.list(&lp)
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// How often the first container of Pod `name` was restarted.
pub async fn restart_count(ns: &TestNamespace, name: &str) -> i32 {
    ns.api::<Pod>()
        .get(name)
        .await
        .expect("get Pod")
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .expect("a container status")
        .restart_count
}
