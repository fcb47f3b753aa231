//! The CRDs against the real local control plane: they install, `kubectl`
//! knows them, valid examples are accepted and invalid ones are refused with
//! a message naming the bad field.

mod support;

use std::path::Path;
use support::{TestNamespace, kubectl, kubectl_stdin};

/// `crds/` holds exactly what the code generates: a drift fails here.
#[test]
fn crds_directory_matches_generated_yaml() {
    let generated = m2m_operator::crd::crds_yaml().expect("render CRDs");
    let committed = std::fs::read_to_string("crds/m2m.dev_crds.yaml").expect("read crds/");
    assert!(
        generated == committed,
        "crds/m2m.dev_crds.yaml is stale: run `cargo run -- crds > crds/m2m.dev_crds.yaml`"
    );
    let chart = Path::new("charts/m2m-operator/crds/m2m.dev_crds.yaml");
    if chart.exists() {
        let in_chart = std::fs::read_to_string(chart).expect("read chart CRDs");
        assert!(
            in_chart == generated,
            "{} is stale: copy crds/ into the chart",
            chart.display()
        );
    }
}

#[tokio::test]
async fn crds_install_and_kubectl_lists_both_kinds_by_category() {
    let ns = TestNamespace::new("crds").await;
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
    let out = kubectl(&["get", "m2m", "-n", &ns.name, "-o", "name"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("serviceaccount.m2m.dev/ci-bot"), "{listed}");
    assert!(
        listed.contains("m2mcredential.m2m.dev/ci-bot-uploads"),
        "{listed}"
    );
    for short in ["m2msa", "m2mcred"] {
        let out = kubectl(&["get", short, "-n", &ns.name]);
        assert!(
            out.status.success(),
            "kubectl get {short}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Printer columns are served.
    let out = kubectl(&["get", "m2mcred", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    for column in ["READY", "CLIENT ID", "SCOPES", "LAST ROTATION", "AGE"] {
        assert!(table.contains(column), "missing column {column}: {table}");
    }
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() {
    let _ns = TestNamespace::new("explain").await;
    let out = support::eventually(
        "kubectl explain",
        std::time::Duration::from_secs(30),
        || async {
            // The apiserver republishes its OpenAPI document shortly after a CRD changes.
            let out = kubectl(&["explain", "m2mcredential.spec.rotation"]);
            (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("gracePeriod"))
                .then_some(out)
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gracePeriod"), "{text}");
    assert!(text.contains("How long the previous secret"), "{text}");
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walk(Path::new(dir))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Each `examples/invalid/*.yaml` says what the refusal must mention in its
/// `# expect: <text>` lines (the field path, and for a CEL rule its
/// message); the apiserver must refuse it saying all of them. A file of
/// several documents is a change: every document but the last is applied
/// for real first, then the last must be refused (transition rules such
/// as immutability).
#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let ns = TestNamespace::new("invalid").await;
    let files = yaml_files("examples/invalid");
    assert!(
        files.len() >= 14,
        "expected a set of invalid examples, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read example");
        let expect: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expect.is_empty(),
            "{} lacks an '# expect:' line",
            file.display()
        );
        let docs: Vec<&str> = text
            .split("\n---\n")
            .filter(|d| {
                d.lines()
                    .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
            })
            .collect();
        let (last, setup) = docs.split_last().expect("a manifest");
        for doc in setup {
            let out = ns.apply_yaml(doc);
            assert!(
                out.status.success(),
                "{}: setup document refused: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = kubectl_stdin(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            last,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        for want in expect {
            assert!(
                stderr.contains(want),
                "{}: error does not mention {want:?}: {stderr}",
                file.display()
            );
        }
    }
}

/// The CRDs carry CEL rules (`x-kubernetes-validations`), and each rule has
/// a refused example that quotes its message.
#[test]
fn every_cel_rule_has_a_refused_example() {
    let crds = m2m_operator::crd::crds_yaml().expect("render CRDs");
    let examples: String = yaml_files("examples/invalid")
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read example"))
        .collect();
    let mut rules = 0;
    for crd in m2m_operator::crd::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema json");
        let mut found = vec![];
        collect_rules(&schema, &mut found);
        for rule in found {
            rules += 1;
            // The fixed start of the message (before the first quoted value).
            let msg = rule["message"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    rule["messageExpression"].as_str().map(|e| {
                        e.trim_start_matches('\'')
                            .split('\'')
                            .next()
                            .unwrap_or("")
                            .to_owned()
                    })
                })
                .unwrap_or_else(|| panic!("rule without a message: {rule}"));
            let start: String = msg.chars().take(20).collect();
            assert!(
                examples.contains(&format!("# expect: {start}")),
                "no examples/invalid manifest expects the message of {rule}"
            );
        }
    }
    assert!(
        rules >= 6,
        "expected CEL rules in the CRDs, found {rules}: {crds}"
    );
}

fn collect_rules(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == "x-kubernetes-validations" {
                    out.extend(child.as_array().into_iter().flatten().cloned());
                } else {
                    collect_rules(child, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_rules(i, out)),
        _ => {}
    }
}
