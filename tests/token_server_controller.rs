//! The token server with the real credential controller: `controller` and
//! two `token-server` processes (tests/support) against the local control
//! plane. The controller generates the credential Secret and its
//! verifiers; a workload reads the Secret, gets a token with the `oauth2`
//! crate, and an annotation rotation without grace period revokes it on
//! both replicas within 2 s.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use m2m_operator::cli::SigningAlg;
use m2m_operator::controller::keys::{KeySecretConfig, reconcile_keys};
use m2m_operator::crd::M2MCredential;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, TokenResponse, TokenUrl};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually};

const PROPAGATION: Duration = Duration::from_secs(2);

async fn read_secret(ns: &TestNamespace, name: &str, version: i64) -> (String, String) {
    eventually(
        "credential Secret at version",
        Duration::from_secs(30),
        || async {
            let cred = ns.api::<M2MCredential>().get(name).await.ok()?;
            (cred.status?.secret_version == version).then_some(())?;
            let s = ns
                .api::<Secret>()
                .get_opt(&format!("{name}-credentials"))
                .await
                .ok()??;
            let data = s.data?;
            let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
            Some((get("client_id")?, get("client_secret")?))
        },
    )
    .await
}

async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> Option<String> {
    BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_token_uri(TokenUrl::new(format!("{base}/oauth/token")).ok()?)
        .exchange_client_credentials()
        .request_async(http)
        .await
        .ok()
        .map(|t| t.access_token().secret().clone())
}

async fn active(http: &reqwest::Client, base: &str, id: &str, secret: &str, t: &str) -> bool {
    let info: Value = http
        .post(format!("{base}/oauth/introspect"))
        .basic_auth(id, Some(secret))
        .form(&[("token", t)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["active"] == true
}

#[tokio::test]
async fn controller_secrets_work_and_rotation_revokes_on_both_replicas() {
    let ns = TestNamespace::new("ts-ctrl").await;
    // The signing keys (the controller will adopt the verifier key in them).
    let keys = KeySecretConfig::new(
        ns.name.clone(),
        SigningAlg::Es256,
        Duration::from_secs(3600),
    );
    reconcile_keys(&ns.client, &keys, chrono::Utc::now())
        .await
        .unwrap();
    let _controller = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    let issuer = format!("https://m2m.{}.test", ns.name);
    let servers: Vec<Operator> = (0..2)
        .map(|_| {
            Operator::start_with(
                &ns,
                OperatorOptions {
                    subcommand: "token-server",
                    issuer: Some(issuer.clone()),
                    ..Default::default()
                },
            )
        })
        .collect();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for s in &servers {
        eventually("token server ready", Duration::from_secs(30), || async {
            let r = http
                .get(format!("{}/readyz", s.admin_url))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: ci-bot }\nspec: { scopes: [\"repo:read\"] }\n");
    let out = ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: { name: uploads }\nspec: { serviceAccountName: ci-bot }\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, secret) = read_secret(&ns, "uploads", 1).await;

    let t1 = eventually("token from the controller's Secret", PROPAGATION, || {
        token(&http, &servers[0].url, &id, &secret)
    })
    .await;
    for (i, s) in servers.iter().enumerate() {
        eventually(
            &format!("token active on server {i}"),
            PROPAGATION,
            || async { active(&http, &s.url, &id, &secret, &t1).await.then_some(()) },
        )
        .await;
    }

    // Rotate by annotation, gracePeriod 0: the old secret and token stop on both.
    ns.api::<M2MCredential>()
        .patch(
            "uploads",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"m2m.dev/rotate": "now"}}})),
        )
        .await
        .unwrap();
    let (id2, secret2) = read_secret(&ns, "uploads", 2).await;
    assert_eq!(id2, id, "client id is stable");
    for (i, s) in servers.iter().enumerate() {
        eventually(
            &format!("old token inactive on server {i}"),
            PROPAGATION,
            || async { (!active(&http, &s.url, &id2, &secret2, &t1).await).then_some(()) },
        )
        .await;
        assert!(
            token(&http, &s.url, &id, &secret).await.is_none(),
            "old secret refused"
        );
        eventually(
            &format!("new secret works on server {i}"),
            PROPAGATION,
            || token(&http, &s.url, &id2, &secret2),
        )
        .await;
    }
}
