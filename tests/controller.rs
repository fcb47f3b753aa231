//! The credential controller against the real local control plane: every
//! SPEC §3 promise, each test in its own namespace with its own operator
//! process (so a crash is a real SIGKILL or abort).

mod support;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use m2m_operator::core::client_secret::is_well_formed;
use m2m_operator::crd::{M2MCredential, ServiceAccount};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// The controller alone, with an issuer that stays the same across restarts.
fn controller(ns: &TestNamespace) -> Operator {
    Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "controller",
            issuer: Some(format!("http://m2m-operator.{}.svc:8080", ns.name)),
            ..Default::default()
        },
    )
}

async fn apply(ns: &TestNamespace, yaml: &str) {
    let out = ns.apply_yaml(yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn account_yaml(name: &str, scopes: &[&str], extra: &str) -> String {
    format!(
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {{ name: {name} }}\nspec:\n  scopes: {}\n{extra}",
        serde_json::to_string(scopes).unwrap()
    )
}

fn credential_yaml(name: &str, account: &str, extra: &str) -> String {
    format!(
        "apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{ name: {name} }}\nspec:\n  serviceAccountName: {account}\n{extra}"
    )
}

fn data(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("Secret lacks {key}"));
    String::from_utf8(bytes.0.clone()).expect("utf-8")
}

fn ready(cred: &M2MCredential) -> Option<(String, String)> {
    let c = cred
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((format!("{:?}", c.status), c.reason.clone()))
}

/// Wait until the credential's Ready condition has `status` and `reason`.
async fn wait_ready(ns: &TestNamespace, name: &str, status: &str, reason: &str) -> M2MCredential {
    let api: Api<M2MCredential> = ns.api();
    eventually(
        &format!("{name} Ready={status} ({reason})"),
        WAIT,
        || async {
            let c = api.get(name).await.ok()?;
            (ready(&c) == Some((status.to_owned(), reason.to_owned()))).then_some(c)
        },
    )
    .await
}

/// Wait until the credential reports secret version `version` and return it with its Secret.
async fn wait_version(ns: &TestNamespace, name: &str, version: i64) -> (M2MCredential, Secret) {
    let creds: Api<M2MCredential> = ns.api();
    let secrets: Api<Secret> = ns.api();
    eventually(
        &format!("{name} at secret version {version}"),
        WAIT,
        || async {
            let c = creds.get(name).await.ok()?;
            let st = c.status.as_ref()?;
            if st.secret_version != version {
                return None;
            }
            let s = secrets.get(st.secret_name.as_deref()?).await.ok()?;
            let annotated = s
                .metadata
                .annotations
                .as_ref()?
                .get("m2m.dev/secret-version")?;
            (annotated == &version.to_string()).then_some((c, s))
        },
    )
    .await
}

async fn events_for(ns: &TestNamespace, name: &str) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let list = api.list(&ListParams::default()).await.expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_event(ns: &TestNamespace, name: &str, type_: &str, reason: &str) -> String {
    eventually(
        &format!("{type_} event {reason} for {name}"),
        WAIT,
        || async {
            events_for(ns, name)
                .await
                .into_iter()
                .find(|(t, r, _)| t == type_ && r == reason)
                .map(|(_, _, n)| n)
        },
    )
    .await
}

/// Wait until `op` logs that it holds the leader Lease.
async fn wait_leader(op: &Operator, what: &str, timeout: Duration) {
    eventually(what, timeout, || async {
        op.log_text().contains("acquired leadership").then_some(())
    })
    .await;
}

async fn annotate_rotate(ns: &TestNamespace, name: &str, value: &str) {
    let api: Api<M2MCredential> = ns.api();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"m2m.dev/rotate": value}}})),
    )
    .await
    .expect("annotate");
}

#[tokio::test]
async fn creates_the_secret_with_every_documented_key_label_and_owner() {
    let ns = TestNamespace::new("create").await;
    let _op = controller(&ns);
    apply(
        &ns,
        &account_yaml("ci-bot", &["artifacts:write", "repo:read"], ""),
    )
    .await;
    apply(
        &ns,
        &credential_yaml(
            "uploads",
            "ci-bot",
            "  scopes: [\"artifacts:write\"]\n  secretTemplate:\n    labels: { team: a }\n    annotations: { owner: platform }\n",
        ),
    )
    .await;
    let (cred, secret) = wait_version(&ns, "uploads", 1).await;
    let status = cred.status.clone().unwrap();
    let uid = cred.metadata.uid.clone().unwrap();

    assert_eq!(secret.metadata.name.as_deref(), Some("uploads-credentials"));
    assert_eq!(secret.type_.as_deref(), Some("m2m.dev/client-credentials"));
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("m2m-operator")
    );
    assert_eq!(
        labels.get("m2m.dev/credential").map(String::as_str),
        Some("uploads")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        secret
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("owner")
            .map(String::as_str),
        Some("platform")
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("M2MCredential", uid.as_str(), Some(true))
    );

    let client_id = data(&secret, "client_id");
    let client_secret = data(&secret, "client_secret");
    assert_eq!(Some(client_id.clone()), status.client_id);
    assert!(client_id.starts_with("m2mc_"));
    assert!(
        client_secret.starts_with("m2ms_") && is_well_formed(&client_secret),
        "secret format"
    );
    assert!(client_secret.len() >= 5 + 43, "≥ 256 bits");
    assert!(data(&secret, "token_url").ends_with("/oauth/token"));
    assert_eq!(
        data(&secret, "issuer"),
        format!("http://m2m-operator.{}.svc:8080", ns.name)
    );
    assert_eq!(data(&secret, "scope"), "artifacts:write");

    assert_eq!(status.secret_name.as_deref(), Some("uploads-credentials"));
    assert!(status.last_rotation_time.is_some());
    assert_eq!(
        status.secret_hint.as_deref(),
        Some(m2m_operator::core::client_secret::hint(&client_secret).as_str()),
        "the hint is a fingerprint, never characters of the secret"
    );
    assert_eq!(status.observed_generation, cred.metadata.generation);
    assert_eq!(ready(&cred), Some(("True".into(), "Issuing".into())));
    // No secret material anywhere in status.
    let status_json = serde_json::to_string(&status).unwrap();
    assert!(
        !status_json.contains(&client_secret[5..]),
        "status leaks the secret"
    );
    wait_event(&ns, "uploads", "Normal", "SecretCreated").await;

    // The ServiceAccount counts its credentials.
    let accounts: Api<ServiceAccount> = ns.api();
    eventually("credential count", WAIT, || async {
        let a = accounts.get("ci-bot").await.ok()?;
        (a.status?.credential_count == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn annotation_rotates_with_same_client_id_and_version_bump() {
    let ns = TestNamespace::new("rotate").await;
    let _op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, "apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata:\n  name: c\n  annotations: { m2m.dev/rotate: \"initial\" }\nspec: { serviceAccountName: sa }\n").await;
    let (c1, s1) = wait_version(&ns, "c", 1).await;
    assert_eq!(
        c1.status
            .as_ref()
            .unwrap()
            .last_handled_rotate_annotation
            .as_deref(),
        Some("initial"),
        "the initial value is handled, not rotated"
    );

    annotate_rotate(&ns, "c", "2026-11-23").await;
    let (c2, s2) = wait_version(&ns, "c", 2).await;
    let st = c2.status.as_ref().unwrap();
    assert_eq!(
        data(&s2, "client_id"),
        data(&s1, "client_id"),
        "client id never changes"
    );
    assert_ne!(data(&s2, "client_secret"), data(&s1, "client_secret"));
    assert_eq!(
        st.last_handled_rotate_annotation.as_deref(),
        Some("2026-11-23")
    );
    assert!(st.last_rotation_time > c1.status.as_ref().unwrap().last_rotation_time);
    // gracePeriod 0: only the new version is accepted.
    assert_eq!(
        st.verifiers.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2]
    );
    let note = wait_event(&ns, "c", "Normal", "RotateAnnotationChanged").await;
    assert!(note.contains("2026-11-23"), "{note}");
}

#[tokio::test]
async fn scheduled_rotation_with_grace_period() {
    let ns = TestNamespace::new("schedule").await;
    let _op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(
        &ns,
        &credential_yaml("c", "sa", "  rotation: { every: 4s, gracePeriod: 3s }\n"),
    )
    .await;
    let (c1, _) = wait_version(&ns, "c", 1).await;
    let next = c1
        .status
        .as_ref()
        .unwrap()
        .next_rotation_time
        .expect("next rotation scheduled");
    let last = c1.status.as_ref().unwrap().last_rotation_time.unwrap();
    assert_eq!((next - last).num_seconds(), 4);

    let (c2, _) = wait_version(&ns, "c", 2).await;
    let st = c2.status.as_ref().unwrap();
    let rotated = st.last_rotation_time.unwrap();
    assert!(
        rotated >= next,
        "rotated at the computed due time, not before"
    );
    // Both secrets are valid during the grace period…
    let versions: Vec<_> = st
        .verifiers
        .iter()
        .map(|v| (v.version, v.not_after.is_some()))
        .collect();
    assert_eq!(versions, vec![(2, false), (1, true)]);
    let grace_end = st.verifiers[1].not_after.unwrap();
    assert_eq!((grace_end - rotated).num_seconds(), 3);
    // …and the old one is dropped once it ends.
    let creds: Api<M2MCredential> = ns.api();
    eventually("grace period ends", WAIT, || async {
        let c = creds.get("c").await.ok()?;
        let st = c.status?;
        (st.verifiers.iter().all(|v| v.not_after.is_none()) && st.secret_version >= 2).then_some(())
    })
    .await;
    wait_event(&ns, "c", "Normal", "ScheduledRotation").await;
}

#[tokio::test]
async fn validation_failures_set_ready_false_touch_nothing_and_recover() {
    let ns = TestNamespace::with_annotations(
        "validate",
        &[("m2m.dev/allowed-scopes", "repo:*, artifacts:write")],
    )
    .await;
    let mut op = controller(&ns);
    let creds: Api<M2MCredential> = ns.api();
    let secrets: Api<Secret> = ns.api();

    // Missing ServiceAccount: no Secret at all.
    apply(
        &ns,
        &credential_yaml("c", "ci-bot", "  scopes: [\"repo:read\"]\n"),
    )
    .await;
    let c = wait_ready(&ns, "c", "False", "ServiceAccountNotFound").await;
    assert!(
        c.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains("\"ci-bot\""))
    );
    wait_event(&ns, "c", "Warning", "ServiceAccountNotFound").await;
    assert!(secrets.get_opt("c-credentials").await.unwrap().is_none());

    // Fixed: recovers.
    apply(
        &ns,
        &account_yaml(
            "ci-bot",
            &["repo:read", "artifacts:write"],
            "  tokenTTL: 1h\n",
        ),
    )
    .await;
    wait_ready(&ns, "c", "True", "Issuing").await;
    let (_, before) = wait_version(&ns, "c", 1).await;
    let rv = before.metadata.resource_version.clone();

    let cases: &[(&str, &str, &str)] = &[
        (
            "scopes outside the account",
            "  scopes: [\"repo:write\"]\n",
            "ScopesOutsideServiceAccount",
        ),
        (
            "ttl over the account's",
            "  scopes: [\"repo:read\"]\n  tokenTTL: 2h\n",
            "TokenTTLTooLong",
        ),
        (
            "expired",
            "  scopes: [\"repo:read\"]\n  expiresAt: \"2020-01-01T00:00:00Z\"\n",
            "Expired",
        ),
    ];
    for (what, spec, reason) in cases {
        apply(&ns, &credential_yaml("c", "ci-bot", spec)).await;
        let c = wait_ready(&ns, "c", "False", reason).await;
        assert_eq!(
            c.status.as_ref().unwrap().secret_version,
            1,
            "{what}: no rotation"
        );
        wait_event(&ns, "c", "Warning", reason).await;
        let s = secrets.get("c-credentials").await.unwrap();
        assert_eq!(
            s.metadata.resource_version, rv,
            "{what}: the Secret was changed"
        );
        apply(
            &ns,
            &credential_yaml("c", "ci-bot", "  scopes: [\"repo:read\"]\n"),
        )
        .await;
        wait_ready(&ns, "c", "True", "Issuing").await;
    }

    // The account asks for more than the namespace allows: it and its credentials are refused.
    apply(
        &ns,
        &account_yaml("ci-bot", &["repo:read", "admin:all"], ""),
    )
    .await;
    wait_ready(&ns, "c", "False", "ScopesNotAllowedInNamespace").await;
    let accounts: Api<ServiceAccount> = ns.api();
    eventually("account Ready=False", WAIT, || async {
        let a = accounts.get("ci-bot").await.ok()?;
        a.status?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.reason == "ScopesNotAllowedInNamespace")
            .map(|_| ())
    })
    .await;
    // Widening the namespace policy fixes it (namespace changes are watched).
    let nss: Api<Namespace> = Api::all(ns.client.clone());
    nss.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"m2m.dev/allowed-scopes": "repo:*, admin:*"}}}),
        ),
    )
    .await
    .unwrap();
    wait_ready(&ns, "c", "True", "Issuing").await;
    // A malformed policy never widens anything.
    nss.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"m2m.dev/allowed-scopes": "repo:*, a*b"}}}),
        ),
    )
    .await
    .unwrap();
    wait_ready(&ns, "c", "False", "InvalidNamespacePolicy").await;

    let s = secrets.get("c-credentials").await.unwrap();
    assert_eq!(
        s.metadata.resource_version, rv,
        "the Secret survived every refusal untouched"
    );
    assert!(creds.get("c").await.unwrap().status.unwrap().secret_version == 1);
    assert!(op.is_running(), "no crash loop: {}", op.log_text());
}

#[tokio::test]
async fn disabled_service_account_is_reflected_on_every_credential() {
    let ns = TestNamespace::new("disabled").await;
    let _op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, &credential_yaml("one", "sa", "")).await;
    apply(&ns, &credential_yaml("two", "sa", "")).await;
    wait_ready(&ns, "one", "True", "Issuing").await;
    wait_ready(&ns, "two", "True", "Issuing").await;
    apply(&ns, &account_yaml("sa", &["a"], "  disabled: true\n")).await;
    wait_ready(&ns, "one", "False", "ServiceAccountDisabled").await;
    wait_ready(&ns, "two", "False", "ServiceAccountDisabled").await;
    let secrets: Api<Secret> = ns.api();
    assert!(
        secrets.get_opt("one-credentials").await.unwrap().is_some(),
        "secrets are kept while disabled"
    );
    apply(&ns, &account_yaml("sa", &["a"], "  disabled: false\n")).await;
    wait_ready(&ns, "one", "True", "Issuing").await;
    wait_ready(&ns, "two", "True", "Issuing").await;
}

#[tokio::test]
async fn deleting_the_credential_garbage_collects_its_secret() {
    let ns = TestNamespace::new("delete").await;
    let _op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, &credential_yaml("c", "sa", "")).await;
    wait_version(&ns, "c", 1).await;
    let creds: Api<M2MCredential> = ns.api();
    creds
        .delete("c", &DeleteParams::foreground())
        .await
        .unwrap();
    let secrets: Api<Secret> = ns.api();
    // The garbage collector learns a new CRD kind within its discovery resync.
    eventually(
        "Secret garbage-collected",
        Duration::from_secs(90),
        || async {
            secrets
                .get_opt("c-credentials")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn hand_edited_or_deleted_secret_is_repaired_with_a_warning() {
    let ns = TestNamespace::new("tamper").await;
    let _op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(
        &ns,
        &credential_yaml("c", "sa", "  rotation: { gracePeriod: 1h }\n"),
    )
    .await;
    let (_, s1) = wait_version(&ns, "c", 1).await;
    let secrets: Api<Secret> = ns.api();

    // Edit the secret by hand to a value of the editor's choice.
    let chosen = "m2ms_chosen-by-an-attacker";
    secrets
        .patch(
            "c-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"client_secret": chosen}})),
        )
        .await
        .unwrap();
    let (c2, s2) = wait_version(&ns, "c", 2).await;
    assert_ne!(data(&s2, "client_secret"), chosen);
    assert_ne!(data(&s2, "client_secret"), data(&s1, "client_secret"));
    assert_eq!(data(&s2, "client_id"), data(&s1, "client_id"));
    let st = c2.status.unwrap();
    assert_eq!(
        st.verifiers.len(),
        1,
        "no grace for a tampered secret, whatever the spec says"
    );
    let note = wait_event(&ns, "c", "Warning", "SecretTampered").await;
    assert!(!note.contains(chosen), "events never repeat secret values");

    // Delete it by hand.
    secrets
        .delete("c-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let (_, s3) = wait_version(&ns, "c", 3).await;
    assert_ne!(data(&s3, "client_secret"), data(&s2, "client_secret"));
    wait_event(&ns, "c", "Warning", "SecretDeleted").await;
}

#[tokio::test]
async fn secret_name_conflict_leaves_the_foreign_secret_untouched() {
    let ns = TestNamespace::new("conflict").await;
    let _op = controller(&ns);
    apply(&ns, "apiVersion: v1\nkind: Secret\nmetadata: { name: taken }\nstringData: { password: hunter2 }\n").await;
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, &credential_yaml("c", "sa", "  secretName: taken\n")).await;
    wait_ready(&ns, "c", "False", "SecretNameConflict").await;
    wait_event(&ns, "c", "Warning", "SecretNameConflict").await;
    // Two credentials naming the same Secret: the second one conflicts.
    apply(
        &ns,
        &credential_yaml("first", "sa", "  secretName: shared\n"),
    )
    .await;
    wait_version(&ns, "first", 1).await;
    apply(
        &ns,
        &credential_yaml("second", "sa", "  secretName: shared\n"),
    )
    .await;
    wait_ready(&ns, "second", "False", "SecretNameConflict").await;

    let secrets: Api<Secret> = ns.api();
    let taken = secrets.get("taken").await.unwrap();
    let data: BTreeMap<_, _> = taken.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["password"]);
    assert!(taken.metadata.owner_references.is_none());
    let shared = secrets.get("shared").await.unwrap();
    assert_eq!(
        shared
            .metadata
            .labels
            .unwrap()
            .get("m2m.dev/credential")
            .map(String::as_str),
        Some("first")
    );

    // Choosing another name resolves it.
    apply(&ns, &credential_yaml("c", "sa", "  secretName: mine\n")).await;
    wait_ready(&ns, "c", "True", "Issuing").await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the failpoint: cargo test --features test-hooks (scripts/test.sh does)"
)]
async fn crash_between_secret_and_status_converges_on_one_secret() {
    let ns = TestNamespace::new("crash").await;
    let mut op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(
        &ns,
        &credential_yaml("c", "sa", "  rotation: { gracePeriod: 1h }\n"),
    )
    .await;
    let (c1, _) = wait_version(&ns, "c", 1).await;
    op.kill();

    // The next operator aborts right after writing the rotated Secret,
    // before the status records it.
    let mut crashing = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            env: vec![("M2M_TEST_FAILPOINT", "after-secret-write".into())],
            issuer: Some(format!("http://m2m-operator.{}.svc:8080", ns.name)),
            ..Default::default()
        },
    );
    annotate_rotate(&ns, "c", "now").await;
    let exit = crashing.wait_exit(WAIT).await;
    assert!(!exit.success(), "the failpoint aborts the process");
    let creds: Api<M2MCredential> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let half = secrets.get("c-credentials").await.unwrap();
    assert_eq!(
        half.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("m2m.dev/secret-version")
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(
        creds.get("c").await.unwrap().status.unwrap().secret_version,
        1,
        "status not written"
    );

    // A healthy restart converges: exactly one current secret, the one in
    // the Secret, with the old one in its grace period as requested.
    let _op = controller(&ns);
    let (c2, s2) = wait_version(&ns, "c", 2).await;
    assert_eq!(
        data(&s2, "client_secret"),
        data(&half, "client_secret"),
        "the written secret is kept, not regenerated"
    );
    let st = c2.status.unwrap();
    let current: Vec<_> = st
        .verifiers
        .iter()
        .filter(|v| v.not_after.is_none())
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(
        current[0].digest,
        half.metadata.annotations.as_ref().unwrap()["m2m.dev/secret-digest"]
    );
    assert!(
        st.verifiers
            .iter()
            .any(|v| v.version == 1 && v.not_after.is_some())
    );
    assert_eq!(st.last_handled_rotate_annotation.as_deref(), Some("now"));
    assert!(st.last_rotation_time > c1.status.unwrap().last_rotation_time);
    wait_event(&ns, "c", "Normal", "RotationCompleted").await;
}

#[tokio::test]
async fn resync_of_a_converged_cluster_writes_nothing() {
    let ns = TestNamespace::new("quiet").await;
    let mut op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a", "b"], "")).await;
    for name in ["one", "two", "three"] {
        apply(
            &ns,
            &credential_yaml(name, "sa", "  secretTemplate: { labels: { team: x } }\n"),
        )
        .await;
        wait_version(&ns, name, 1).await;
        wait_ready(&ns, name, "True", "Issuing").await;
    }
    let accounts: Api<ServiceAccount> = ns.api();
    eventually("account counts 3", WAIT, || async {
        (accounts.get("sa").await.ok()?.status?.credential_count == 3).then_some(())
    })
    .await;
    // Let trailing events from the initial reconciles settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = || async {
        let creds: Api<M2MCredential> = ns.api();
        let secrets: Api<Secret> = ns.api();
        let mut rvs = BTreeMap::new();
        for c in creds.list(&ListParams::default()).await.unwrap() {
            rvs.insert(
                format!("cred/{}", c.metadata.name.unwrap()),
                c.metadata.resource_version.unwrap(),
            );
        }
        for s in secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=m2m-operator"))
            .await
            .unwrap()
        {
            rvs.insert(
                format!("secret/{}", s.metadata.name.unwrap()),
                s.metadata.resource_version.unwrap(),
            );
        }
        let a = accounts.get("sa").await.unwrap();
        rvs.insert("account".into(), a.metadata.resource_version.unwrap());
        rvs
    };
    let before = snapshot().await;
    // A restart lists and reconciles every object again: a full resync.
    op.kill();
    let op2 = controller(&ns);
    eventually("controllers started", WAIT, || async {
        op2.log_text().contains("controllers started").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        snapshot().await,
        before,
        "a resync of an unchanged cluster wrote to the API"
    );
}

#[tokio::test]
async fn standby_replica_takes_over_when_the_leader_dies() {
    let ns = TestNamespace::new("leader").await;
    let mut first = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, &credential_yaml("c", "sa", "")).await;
    wait_version(&ns, "c", 1).await;
    let second = controller(&ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !second.log_text().contains("acquired leadership"),
        "only one leader at a time"
    );
    first.kill();
    // Takes over within the lease duration (15 s) and reconciles new work.
    wait_leader(
        &second,
        "standby acquires the lease",
        Duration::from_secs(40),
    )
    .await;
    annotate_rotate(&ns, "c", "after-failover").await;
    wait_version(&ns, "c", 2).await;
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_releases_the_lease() {
    let ns = TestNamespace::new("sigterm").await;
    let mut first = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, &credential_yaml("c", "sa", "")).await;
    wait_version(&ns, "c", 1).await;
    let second = controller(&ns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.terminate();
    let status = first.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "graceful exit: {status:?}\n{}",
        first.log_text()
    );
    // The Lease is released on the way out: no holder until the standby takes it.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    let lease = leases.get("m2m-operator-controller").await.unwrap();
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty());
    assert!(
        holder.is_none() || second.log_text().contains("acquired leadership"),
        "lease still held by the stopped replica: {holder:?}"
    );
    // The standby picks it up within the lease duration and does the work.
    wait_leader(
        &second,
        "standby acquires the released lease",
        Duration::from_secs(30),
    )
    .await;
    annotate_rotate(&ns, "c", "after-handover").await;
    wait_version(&ns, "c", 2).await;
}

#[tokio::test]
async fn verifiers_written_without_the_key_are_dropped_with_a_warning() {
    let ns = TestNamespace::new("forge").await;
    let _op = controller(&ns);
    apply(&ns, &account_yaml("sa", &["a"], "")).await;
    apply(&ns, &credential_yaml("c", "sa", "")).await;
    let (c1, _) = wait_version(&ns, "c", 1).await;
    let genuine = c1.status.unwrap().verifiers;
    assert!(
        genuine.iter().all(|v| v.seal.is_some()),
        "the controller seals what it writes"
    );

    // A status writer without the key adds a verifier of their own.
    let mut forged = genuine.clone();
    forged.push(m2m_operator::crd::SecretVerifier {
        version: 7,
        digest: "chosen-by-the-writer".into(),
        not_after: Some(chrono::Utc::now() + chrono::Duration::days(365)),
        seal: Some("not-a-seal".into()),
    });
    let creds: Api<M2MCredential> = ns.api();
    creds
        .patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"verifiers": forged}})),
        )
        .await
        .unwrap();
    wait_event(&ns, "c", "Warning", "VerifiersTampered").await;
    let cleaned = eventually("forged verifier dropped", WAIT, || async {
        let v = creds.get("c").await.ok()?.status?.verifiers;
        (v.len() == 1).then_some(v)
    })
    .await;
    assert_eq!(cleaned, genuine, "the genuine verifier is kept as it was");
}
