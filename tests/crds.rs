//! The CRDs against the real local control plane: they install, `kubectl`
//! knows them, valid examples are accepted and invalid ones are refused with
//! a message naming the bad field.

mod support;

use std::path::Path;
use support::{TestNamespace, kubectl};

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

/// Each `examples/invalid/*.yaml` names the field it breaks in its first
/// line (`# expect: <text>`); the apiserver must refuse it with that text.
#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let ns = TestNamespace::new("invalid").await;
    let files = yaml_files("examples/invalid");
    assert!(
        files.len() >= 8,
        "expected a set of invalid examples, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read example");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an '# expect:' line", file.display()))
            .to_owned();
        let out = kubectl(&[
            "apply",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            file.to_str().expect("utf8 path"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(
            stderr.contains(&expect),
            "{}: error does not mention {expect:?}: {stderr}",
            file.display()
        );
    }
}
