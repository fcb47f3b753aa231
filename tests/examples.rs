//! Every manifest in `examples/` applies as it is and converges: with the
//! operator running, each identity and credential in them becomes Ready.

mod support;

use kube::api::ListParams;
use m2m_operator::crd::{M2MCredential, ServiceAccount};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually, kubectl, kubectl_stdin};

/// The examples use namespace `m2m-demo`; each test run gets its own copy.
fn localise(yaml: &str, ns: &str) -> String {
    yaml.replace("m2m-demo", ns)
}

#[tokio::test]
async fn every_example_applies_and_its_credentials_become_ready() {
    let ns = TestNamespace::new("examples").await;
    let _op = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );

    // Cluster-scoped objects outlive the namespace: the examples name them
    // `m2m-demo-…`, localised to this run's namespace, and they are deleted
    // at the end.
    struct ClusterObjects(String);
    impl Drop for ClusterObjects {
        fn drop(&mut self) {
            let yaml = localise(
                &std::fs::read_to_string("examples/07-roles.yaml").unwrap_or_default(),
                &self.0,
            );
            let cluster_scoped: Vec<&str> = yaml
                .split("\n---\n")
                .filter(|d| d.contains("kind: ClusterM2MRole"))
                .collect();
            kubectl_stdin(
                &["delete", "--ignore-not-found", "-f", "-"],
                &cluster_scoped.join("\n---\n"),
            );
        }
    }
    let _cluster_objects = ClusterObjects(ns.name.clone());

    let mut files: Vec<_> = std::fs::read_dir("examples")
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples missing: {files:?}");
    // Pod certificates (`podCertificate` volumes, examples/09) need
    // Kubernetes 1.37; the oldest supported release does not serve them.
    let pod_certificates = String::from_utf8_lossy(
        &kubectl(&[
            "api-resources",
            "--api-group=certificates.k8s.io",
            "-o",
            "name",
        ])
        .stdout,
    )
    .lines()
    .any(|r| r.starts_with("podcertificaterequests"));
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read example");
        if text.contains("podCertificate:") && !pod_certificates {
            println!(
                "skipped {}: PodCertificateRequests not served",
                file.display()
            );
            continue;
        }
        let yaml = localise(&text, &ns.name);
        let out = kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The GitOps layout builds with kustomize and applies the same way.
    let built = kubectl(&["kustomize", "examples/gitops"]);
    assert!(
        built.status.success(),
        "kustomize: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = kubectl_stdin(
        &["apply", "-f", "-"],
        &localise(&String::from_utf8_lossy(&built.stdout), &ns.name),
    );
    assert!(
        out.status.success(),
        "gitops: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let creds = ns.api::<M2MCredential>();
    let accounts = ns.api::<ServiceAccount>();
    let not_ready = || async {
        let mut pending = vec![];
        for c in creds.list(&ListParams::default()).await.ok()?.items {
            let ready = c
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            if ready.is_none_or(|r| r.reason != "Issuing") {
                pending.push(format!(
                    "m2mcred/{}: {:?}",
                    c.metadata.name.unwrap_or_default(),
                    ready.map(|r| &r.message)
                ));
            }
        }
        for a in accounts.list(&ListParams::default()).await.ok()?.items {
            let ready = a
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            if ready.is_none_or(|r| r.reason != "Valid") {
                pending.push(format!(
                    "m2msa/{}: {:?}",
                    a.metadata.name.unwrap_or_default(),
                    ready.map(|r| &r.message)
                ));
            }
        }
        Some(pending)
    };
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(p) = not_ready().await
                && p.is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if result.is_err() {
        panic!("examples did not converge: {:?}", not_ready().await);
    }
    // 07-roles.yaml: the roles' scopes are granted on top of the account's.
    let release_bot = accounts.get("release-bot").await.expect("07-roles.yaml");
    let status = release_bot.status.expect("status");
    assert_eq!(
        status.effective_scopes,
        [
            "artifacts:read",
            "deploy:staging",
            "repo:read",
            "reports:read"
        ]
    );
    assert_eq!(
        status.roles,
        [
            format!("{}-reporting", ns.name),
            // An M2MRole goes by <namespace>/<name> (issue 21, item 2).
            format!("{}/release-manager", ns.name)
        ]
    );
    let all = creds.list(&ListParams::default()).await.unwrap().items;
    assert!(
        all.len() >= 5,
        "expected the examples' credentials, found {}",
        all.len()
    );
    // Every secret-based credential's Secret exists; workload-identity and
    // federation ones have none.
    let count = all
        .iter()
        .filter(|c| c.spec.workload_identity.is_none() && c.spec.federation.is_none())
        .count();
    assert!(count < all.len(), "an example uses workload identity");
    eventually("example Secrets", Duration::from_secs(10), || async {
        let out = kubectl(&[
            "get",
            "secrets",
            "-n",
            &ns.name,
            "-l",
            "m2m.dev/credential",
            "-o",
            "name",
        ]);
        (String::from_utf8_lossy(&out.stdout).lines().count() == count).then_some(())
    })
    .await;
}
