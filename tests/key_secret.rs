//! The operator's key Secret (`m2m-operator-keys`) against the real
//! apiserver (issue 14, items 9 and 10):
//!
//! - deleted by hand, it comes back within seconds with the keys the
//!   running controller holds: no credential is re-issued, tokens issued
//!   before still introspect active, secrets still authenticate;
//! - replaced by one with another verifier key, every credential sealed
//!   under the old key reports `Ready=False` (`VerifierKeyConflict`) with
//!   exactly one Warning Event and is neither rotated nor repaired; with
//!   the original key back it is `Ready=True` again, same secret;
//! - two installations with different keys watching one namespace settle
//!   (one report, no rotations) instead of re-issuing secrets forever.

mod support;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{
    Operator, OperatorOptions, TestNamespace, client_credentials_token, credential_secret,
    eventually,
};

const KEYS: &str = "m2m-operator-keys";
const WAIT: Duration = Duration::from_secs(30);

fn setup(ns: &TestNamespace, names: &[&str]) {
    let out = ns.apply_yaml(
        "apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: ci-bot }\nspec: { scopes: [\"repo:read\"] }\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in names {
        let out = ns.apply_yaml(&format!(
            "apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: {{ name: {name} }}\nspec: {{ serviceAccountName: ci-bot }}\n"
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn ready_of(cred: &M2MCredential) -> Option<(String, String)> {
    let c = cred
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((format!("{:?}", c.status), c.reason.clone()))
}

async fn wait_ready(ns: &TestNamespace, name: &str, status: &str, reason: &str) -> M2MCredential {
    eventually(
        &format!("{name} Ready={status} ({reason})"),
        WAIT,
        || async {
            let c = ns.api::<M2MCredential>().get(name).await.ok()?;
            (ready_of(&c) == Some((status.to_owned(), reason.to_owned()))).then_some(c)
        },
    )
    .await
}

/// How many times Events with `reason` were emitted for `name` (a repeated
/// Event is one object with a series count).
async fn emitted(ns: &TestNamespace, name: &str, reason: &str) -> i32 {
    let events = ns
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("list events");
    events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

async fn introspect(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
    token: &str,
) -> Value {
    http.post(format!("{base}/oauth/introspect"))
        .basic_auth(id, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .expect("introspection reachable")
        .json()
        .await
        .unwrap_or(Value::Null)
}

fn key_data(s: &Secret) -> (Vec<u8>, Vec<u8>) {
    let data = s.data.clone().unwrap_or_default();
    let get = |k: &str| data.get(k).map(|b| b.0.clone()).unwrap_or_default();
    (get("verifier-key"), get("signing-keys.json"))
}

/// Item 10: a deleted key Secret is recreated from what the controller
/// holds, within seconds, with the same keys.
#[tokio::test]
async fn a_deleted_key_secret_comes_back_with_the_same_keys() {
    let ns = TestNamespace::new("keys-deleted").await;
    let op = Operator::start(&ns);
    op.wait_ready().await;
    setup(&ns, &["uploads"]);
    let (id, secret) = credential_secret(&ns, "uploads", 1, WAIT).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let before = eventually("a token", WAIT, || async {
        let (status, body) = client_credentials_token(&http, &op.url, &id, &secret).await;
        (status == 200).then(|| body["access_token"].as_str().map(str::to_owned))?
    })
    .await;
    let secrets = ns.api::<Secret>();
    let keys = key_data(&secrets.get(KEYS).await.unwrap());

    secrets
        .delete(KEYS, &DeleteParams::default())
        .await
        .expect("delete the key Secret");
    let recreated = eventually(
        "the key Secret is recreated",
        Duration::from_secs(10),
        || async { secrets.get_opt(KEYS).await.ok()? },
    )
    .await;
    assert!(
        key_data(&recreated) == keys,
        "the key Secret came back with other keys"
    );
    // Secrets still authenticate and tokens issued before still verify.
    eventually("the old secret still works", WAIT, || async {
        (client_credentials_token(&http, &op.url, &id, &secret)
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    let info = introspect(&http, &op.url, &id, &secret, &before).await;
    assert_eq!(info["active"], true, "{info}");
    // Nothing was re-issued.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cred = ns.api::<M2MCredential>().get("uploads").await.unwrap();
    assert_eq!(cred.status.unwrap().secret_version, 1);
    assert_eq!(credential_secret(&ns, "uploads", 1, WAIT).await.1, secret);
    assert_eq!(emitted(&ns, "uploads", "SecretTampered").await, 0);
}

/// Item 9, a replaced key Secret: report once, rotate nothing, recover
/// when the original key is back.
#[tokio::test]
async fn a_replaced_verifier_key_is_reported_once_and_recovers() {
    let ns = TestNamespace::new("keys-replaced").await;
    let op = Operator::start(&ns);
    op.wait_ready().await;
    setup(&ns, &["a", "b"]);
    let (id, secret) = credential_secret(&ns, "a", 1, WAIT).await;
    credential_secret(&ns, "b", 1, WAIT).await;
    let secrets = ns.api::<Secret>();
    let (original, _) = key_data(&secrets.get(KEYS).await.unwrap());
    let set_verifier_key = |key: Vec<u8>| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    KEYS,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"verifier-key": ByteString(key)}})),
                )
                .await
                .expect("patch the key Secret");
        }
    };

    set_verifier_key(vec![42; 32]).await;
    for name in ["a", "b"] {
        let c = wait_ready(&ns, name, "False", "VerifierKeyConflict").await;
        let status = c.status.unwrap();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let message = &ready.unwrap().message;
        assert!(message.contains("sealed under verifier key"), "{message}");
    }
    // Settled: no rotation, no repair, one Warning each.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in ["a", "b"] {
        let c = ns.api::<M2MCredential>().get(name).await.unwrap();
        assert_eq!(c.status.unwrap().secret_version, 1, "{name} was rotated");
        assert_eq!(emitted(&ns, name, "VerifierKeyConflict").await, 1, "{name}");
        assert_eq!(emitted(&ns, name, "SecretTampered").await, 0, "{name}");
        assert_eq!(emitted(&ns, name, "VerifiersTampered").await, 0, "{name}");
    }
    assert_eq!(credential_secret(&ns, "a", 1, WAIT).await.1, secret);

    // The original key is back: usable again, with the same secret.
    set_verifier_key(original).await;
    wait_ready(&ns, "a", "True", "Issuing").await;
    wait_ready(&ns, "b", "True", "Issuing").await;
    assert_eq!(credential_secret(&ns, "a", 1, WAIT).await.1, secret);
    let http = reqwest::Client::new();
    eventually("the unchanged secret works again", WAIT, || async {
        (client_credentials_token(&http, &op.url, &id, &secret)
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    assert_eq!(emitted(&ns, "a", "VerifierKeyConflict").await, 1);
}

/// A second installation: its own operator namespace (own keys, own
/// Lease), watching `watch_ns`. Killed when dropped.
struct SecondInstall(Child);

impl SecondInstall {
    fn start(operator_ns: &TestNamespace, watch_ns: &TestNamespace) -> Self {
        let log = std::env::temp_dir().join(format!("m2m-operator-{}.log", operator_ns.name));
        let child = Command::new(env!("CARGO_BIN_EXE_m2m-operator"))
            .args(["controller", "--namespace", &operator_ns.name])
            .args(["--watch-namespace", &watch_ns.name])
            .args([
                "--admin-listen",
                &format!("127.0.0.1:{}", support::free_port()),
            ])
            .args(["--issuer", "http://127.0.0.1:1"])
            .env("KUBECONFIG", support::kubeconfig_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start the second installation");
        Self(child)
    }
}

impl Drop for SecondInstall {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Item 9, two installations: before, each treated the other's verifiers
/// as tampering and re-issued secrets forever.
#[tokio::test]
async fn two_installations_with_other_keys_report_instead_of_fighting() {
    let ns = TestNamespace::new("keys-two").await;
    let other = TestNamespace::new("keys-two-op").await;
    let first = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    first.wait_ready().await;
    setup(&ns, &["shared"]);
    credential_secret(&ns, "shared", 1, WAIT).await;
    let _second = SecondInstall::start(&other, &ns);
    wait_ready(&ns, "shared", "False", "VerifierKeyConflict").await;
    // Settled: both installations keep running, nothing is re-issued.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let c = ns.api::<M2MCredential>().get("shared").await.unwrap();
    assert_eq!(
        ready_of(&c),
        Some(("False".into(), "VerifierKeyConflict".into()))
    );
    assert_eq!(
        c.status.unwrap().secret_version,
        1,
        "the installations re-issued the secret"
    );
    assert_eq!(emitted(&ns, "shared", "VerifierKeyConflict").await, 1);
    assert_eq!(emitted(&ns, "shared", "SecretTampered").await, 0);
}
