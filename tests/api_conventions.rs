//! Modern API conventions against the real apiserver (Kubernetes >= 1.34):
//! `kubectl explain` from the OpenAPI v3 document shows every field of both
//! kinds with its type, `kubectl get --watch` and `kubectl wait
//! --for=condition=Ready` work on both kinds, and `--show-managed-fields`
//! shows which field manager owns what (server-side apply); the control
//! plane issues audience- and Pod-bound service-account tokens.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually, kubectl, kubectl_bin};

/// The type `kubectl explain` prints for a schema node (`string`, `Object`,
/// `[]string`, `map[string]string`, ...).
fn explain_type(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", explain_type(&schema["items"])),
        Some("object") if schema.get("properties").is_some() => "Object".into(),
        Some("object") => match schema.get("additionalProperties") {
            Some(inner) => format!("map[string]{}", explain_type(inner)),
            None => "Object".into(),
        },
        Some(t) => t.into(),
        None => "Object".into(),
    }
}

/// Every field below `spec` and `status`, as `path -> type`.
fn schema_fields(schema: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let props = schema
        .get("properties")
        .or_else(|| schema["items"].get("properties"));
    let Some(Value::Object(props)) = props else {
        return;
    };
    for (name, child) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        out.insert(path.clone(), explain_type(child));
        schema_fields(child, &path, out);
    }
}

/// `kubectl explain --recursive` output as `path -> type`, from its
/// indentation (two spaces a level).
fn explained_fields(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<String> = vec![];
    let mut in_fields = false;
    for line in text.lines() {
        if line.starts_with("FIELDS:") {
            in_fields = true;
            continue;
        }
        let Some((name_part, type_part)) = line.split_once('\t') else {
            continue;
        };
        if !in_fields {
            continue;
        }
        let indent = name_part.len() - name_part.trim_start().len();
        let depth = indent / 2 - 1;
        stack.truncate(depth);
        stack.push(name_part.trim().to_owned());
        let ty = type_part
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        out.insert(stack.join("."), ty);
    }
    out
}

#[tokio::test]
async fn kubectl_explain_from_openapi_v3_shows_every_field_and_type() {
    let _ns = TestNamespace::new("explain3").await;
    // The apiserver publishes the group in its OpenAPI v3 discovery.
    eventually(
        "OpenAPI v3 document of m2m.dev/v1alpha1",
        Duration::from_secs(30),
        || async {
            let out = kubectl(&["get", "--raw", "/openapi/v3"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("apis/m2m.dev/v1alpha1")
                .then_some(())
        },
    )
    .await;
    for (short, crd) in ["m2msa", "m2mcred"]
        .into_iter()
        .zip(m2m_operator::crd::crds())
    {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("schema json");
        let mut want = BTreeMap::new();
        for top in ["spec", "status"] {
            want.insert(top.to_owned(), "Object".to_owned());
            schema_fields(&schema["properties"][top], top, &mut want);
        }
        assert!(want.len() > 10, "{short}: schema walk found {want:?}");
        // kubectl explain reads OpenAPI v3 by default; the v2 fallback is
        // the `plaintext-openapiv2` output, which we do not ask for.
        let out = eventually(
            &format!("kubectl explain {short} --recursive lists every field"),
            Duration::from_secs(30),
            || async {
                let out = kubectl(&["explain", short, "--recursive"]);
                let got = explained_fields(&String::from_utf8_lossy(&out.stdout));
                want.keys().all(|k| got.contains_key(k)).then_some(got)
            },
        )
        .await;
        for (path, ty) in &want {
            assert_eq!(
                out.get(path),
                Some(ty),
                "kubectl explain {short}: field {path} should show <{ty}>"
            );
        }
    }
}

#[tokio::test]
async fn kubectl_watch_wait_ready_and_managed_fields_on_both_kinds() {
    let ns = TestNamespace::new("conventions").await;
    let op = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    // A watch started before the objects exist sees them appear and change.
    // Right after the CRDs change (ensure_crds) the apiserver rebuilds their
    // storage, and a watch begun at that moment ends at once with "too old
    // resource version": start it again until it stays up.
    let mut watch = None;
    for _ in 0..20 {
        let mut child = Command::new(kubectl_bin())
            .args([
                "get",
                "m2mcred",
                "-n",
                &ns.name,
                "--watch",
                "--output-watch-events",
            ])
            .env("KUBECONFIG", support::kubeconfig_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        tokio::time::sleep(Duration::from_secs(1)).await;
        if matches!(child.try_wait(), Ok(None)) {
            watch = Some(child);
            break;
        }
    }
    let mut watch = watch.expect("kubectl get --watch keeps running");
    let out = ns.apply_yaml(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ci-bot }
spec: { scopes: ["artifacts:write"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: ci-bot-uploads }
spec: { serviceAccountName: ci-bot }
"#,
    );
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        "-n",
        &ns.name,
        "m2msa/ci-bot",
        "m2mcred/ci-bot-uploads",
    ]);
    let waited = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let objects = kubectl(&["get", "m2m", "-n", &ns.name, "-o", "yaml"]);
        panic!(
            "kubectl wait: {waited} {}\nobjects:\n{}\noperator log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&objects.stdout),
            op.log_text()
        );
    }
    assert!(
        waited.contains("serviceaccount.m2m.dev/ci-bot condition met"),
        "{waited}"
    );
    assert!(
        waited.contains("m2mcredential.m2m.dev/ci-bot-uploads condition met"),
        "{waited}"
    );

    let _ = watch.kill();
    let mut seen = String::new();
    watch
        .stdout
        .take()
        .expect("watch stdout")
        .read_to_string(&mut seen)
        .expect("read watch output");
    let _ = watch.wait();
    let events: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains("ci-bot-uploads"))
        .collect();
    assert!(
        events.first().is_some_and(|l| l.starts_with("ADDED")),
        "watch output: {seen}"
    );
    assert!(
        events
            .iter()
            .any(|l| l.starts_with("MODIFIED") && l.contains("True")),
        "the watch shows the credential turning Ready: {seen}"
    );

    // Server-side apply field ownership: the operator owns status (through
    // the status subresource), kubectl owns the spec it applied.
    for object in ["m2msa/ci-bot", "m2mcred/ci-bot-uploads"] {
        let out = kubectl(&[
            "get",
            object,
            "-n",
            &ns.name,
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        let obj: Value = serde_json::from_slice(&out.stdout).expect("object json");
        let managers = obj["metadata"]["managedFields"]
            .as_array()
            .unwrap_or_else(|| panic!("{object}: no managedFields: {obj}"));
        let operator = managers
            .iter()
            .find(|m| m["manager"] == "m2m-operator" && m["subresource"] == "status")
            .unwrap_or_else(|| panic!("{object}: no m2m-operator status entry: {managers:?}"));
        assert_eq!(operator["operation"], "Apply", "{operator}");
        assert!(
            operator["fieldsV1"]["f:status"]["f:conditions"].is_object(),
            "{object}: the operator owns status.conditions: {operator}"
        );
        assert!(
            managers
                .iter()
                .any(|m| m["fieldsV1"]["f:spec"].is_object() && m["manager"] != "m2m-operator"),
            "{object}: the user's kubectl owns the spec: {managers:?}"
        );
        // Without the flag, kubectl hides them.
        let out = kubectl(&["get", object, "-n", &ns.name, "-o", "yaml"]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("managedFields"));
    }
}

/// The local control plane issues service-account tokens through the
/// TokenRequest API, also bound to a Pod object: what workload identity
/// builds on (tests/cluster/up.sh passes the issuer, keys and audiences).
#[tokio::test]
async fn control_plane_issues_audience_and_pod_bound_service_account_tokens() {
    use base64::Engine as _;
    let ns = TestNamespace::new("sa-tokens").await;
    let out = ns.apply_yaml(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: workload }
---
apiVersion: v1
kind: Pod
metadata: { name: workload-0 }
spec:
  serviceAccountName: workload
  containers: [{ name: app, image: example.invalid/app }]
"#,
    );
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(&[
        "create",
        "token",
        "workload",
        "-n",
        &ns.name,
        "--audience",
        "m2m-test",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "workload-0",
    ]);
    assert!(
        out.status.success(),
        "kubectl create token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url payload"),
    )
    .expect("JSON claims");
    assert_eq!(claims["aud"], serde_json::json!(["m2m-test"]), "{claims}");
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{}:workload", ns.name)
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["name"], "workload-0",
        "{claims}"
    );
}
