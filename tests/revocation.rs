//! Revocation against the real local control plane (`tests/cluster/up.sh`),
//! issue #14 items 2 and 3: a revocation cannot be undone by deleting or
//! editing its stored copy (also across restarts), hand edits are reported,
//! and one client revoking many tokens neither stops another client's
//! revocations nor makes a revoke rewrite a large object.
//!
//! The tests play the credential controller's part as tests/token_server.rs
//! does: they write sealed `status.verifiers` with the verifier key that
//! `reconcile_keys` created.

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use m2m_operator::controller::keys::reconcile_keys;
use m2m_operator::core::client_secret::{ClientSecret, client_id_for_uid};
use m2m_operator::core::verifier::{SecretBinding, VerifierKey};
use m2m_operator::crd::{M2MCredential, SecretVerifier, ServiceAccount};
use m2m_operator::server::revocation::list::config_map_name;
use m2m_operator::signing::SigningAlg;
use m2m_operator::signing::store::KeySecretConfig;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually};

const PROPAGATION: Duration = Duration::from_secs(2);
/// The repairer waits for watch bursts to settle; allow a few round trips.
const REPAIR: Duration = Duration::from_secs(10);

struct Creds {
    id: String,
    secret: String,
}

struct Fixture {
    ns: TestNamespace,
    key: VerifierKey,
    http: reqwest::Client,
    servers: Vec<Operator>,
    issuer: String,
    args: Vec<String>,
}

impl Fixture {
    async fn new(prefix: &str, replicas: usize, args: &[&str]) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let cfg = KeySecretConfig::new(
            ns.name.clone(),
            SigningAlg::Es256,
            Duration::from_secs(3600),
        );
        let keys = reconcile_keys(&ns.client, &cfg, chrono::Utc::now())
            .await
            .expect("key Secret");
        let issuer = format!("https://m2m.{}.test", ns.name);
        let mut f = Self {
            ns,
            key: keys.verifier_key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            servers: vec![],
            issuer,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..replicas {
            let s = f.start().await;
            f.servers.push(s);
        }
        f
    }

    async fn start(&self) -> Operator {
        let s = Operator::start_with(
            &self.ns,
            OperatorOptions {
                subcommand: "token-server",
                issuer: Some(self.issuer.clone()),
                args: self.args.clone(),
                ..Default::default()
            },
        );
        s.wait_ready().await;
        s
    }

    /// A ServiceAccount and a credential with a sealed first secret.
    async fn client(&self, name: &str) -> Creds {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "m2m.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": name}, "spec": {"scopes": ["read"]}
        }))
        .unwrap();
        self.ns
            .api::<ServiceAccount>()
            .patch(
                name,
                &PatchParams::apply("tests").force(),
                &Patch::Apply(&sa),
            )
            .await
            .unwrap();
        let cred: M2MCredential = serde_json::from_value(json!({
            "apiVersion": "m2m.dev/v1alpha1", "kind": "M2MCredential",
            "metadata": {"name": name}, "spec": {"serviceAccountName": name}
        }))
        .unwrap();
        let uid = self
            .ns
            .api::<M2MCredential>()
            .create(&PostParams::default(), &cred)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        let secret = ClientSecret::generate().unwrap().expose().to_owned();
        let id = client_id_for_uid(&uid);
        let binding = SecretBinding {
            namespace: &self.ns.name,
            name,
            uid: &uid,
            client_id: &id,
            version: 1,
        };
        let mut v = SecretVerifier {
            version: 1,
            digest: self.key.digest(&binding, &secret),
            not_after: None,
            seal: None,
        };
        self.key.seal(&binding, &mut v);
        let patch = json!({"status": {"secretVersion": 1, "verifiers": [v]}});
        self.ns
            .api::<M2MCredential>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        Creds { id, secret }
    }

    async fn token(&self, server: &Operator, c: &Creds) -> String {
        eventually("a token", PROPAGATION, || async {
            let r = self
                .http
                .post(format!("{}/oauth/token", server.url))
                .basic_auth(&c.id, Some(&c.secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .ok()?;
            let body: Value = r.json().await.ok()?;
            Some(body["access_token"].as_str()?.to_owned())
        })
        .await
    }

    async fn active(&self, server: &Operator, c: &Creds, token: &str) -> bool {
        let body: Value = self
            .http
            .post(format!("{}/oauth/introspect", server.url))
            .basic_auth(&c.id, Some(&c.secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["active"] == true
    }

    async fn revoke(&self, server: &Operator, c: &Creds, token: &str) -> reqwest::StatusCode {
        self.http
            .post(format!("{}/oauth/revoke", server.url))
            .basic_auth(&c.id, Some(&c.secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Inactive on every running server (within `PROPAGATION`).
    async fn inactive_everywhere(&self, c: &Creds, token: &str, what: &str) {
        for (i, s) in self.servers.iter().enumerate() {
            eventually(
                &format!("{what}: inactive on server {i}"),
                PROPAGATION,
                || async { (!self.active(s, c, token).await).then_some(()) },
            )
            .await;
        }
    }

    async fn list(&self, c: &Creds) -> Option<ConfigMap> {
        self.ns
            .api::<ConfigMap>()
            .get_opt(&config_map_name(&c.id))
            .await
            .unwrap()
    }

    async fn entry(&self, c: &Creds, jti: &str) -> Option<String> {
        self.list(c).await?.data?.get(jti).cloned()
    }

    async fn edit(&self, c: &Creds, jti: &str, value: &str) {
        self.ns
            .api::<ConfigMap>()
            .patch(
                &config_map_name(&c.id),
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {jti: value}})),
            )
            .await
            .unwrap();
    }
}

fn jti(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn deleting_the_list_keeps_the_token_revoked_and_recreates_the_entry() {
    let mut f = Fixture::new("rv-delete", 2, &[]).await;
    let c = f.client("bot").await;
    let token = f.token(&f.servers[0], &c).await;
    let other = f.token(&f.servers[0], &c).await;
    assert_eq!(f.revoke(&f.servers[1], &c, &token).await, 200);
    f.inactive_everywhere(&c, &token, "revoked").await;
    let sealed = f.entry(&c, &jti(&token)).await.expect("stored entry");

    f.ns.api::<ConfigMap>()
        .delete(&config_map_name(&c.id), &DeleteParams::default())
        .await
        .unwrap();
    for (i, s) in f.servers.iter().enumerate() {
        assert!(
            !f.active(s, &c, &token).await,
            "server {i} after the delete"
        );
    }
    let restored = eventually("the list recreated with the entry", REPAIR, || async {
        f.entry(&c, &jti(&token)).await
    })
    .await;
    assert_eq!(restored, sealed);

    // Restart: both old replicas gone, a fresh one reads the recreated list.
    f.servers.clear();
    let fresh = f.start().await;
    assert!(!f.active(&fresh, &c, &token).await, "revoked after restart");
    assert!(
        f.active(&fresh, &c, &other).await,
        "the other token is untouched"
    );
}

#[tokio::test]
async fn a_non_integer_edit_keeps_the_token_revoked_is_repaired_and_reported() {
    let mut f = Fixture::new("rv-edit", 2, &[]).await;
    let c = f.client("bot").await;
    let token = f.token(&f.servers[0], &c).await;
    let id = jti(&token);
    assert_eq!(f.revoke(&f.servers[0], &c, &token).await, 200);
    f.inactive_everywhere(&c, &token, "revoked").await;
    let sealed = f.entry(&c, &id).await.expect("stored entry");

    f.edit(&c, &id, "not-a-number").await;
    for (i, s) in f.servers.iter().enumerate() {
        assert!(!f.active(s, &c, &token).await, "server {i} after the edit");
    }
    eventually("the sealed entry written back", REPAIR, || async {
        (f.entry(&c, &id).await.as_deref() == Some(sealed.as_str())).then_some(())
    })
    .await;

    // Edited while no replica runs: a fresh one still treats it as revoked and reports it.
    f.servers.clear();
    f.edit(&c, &id, "garbage").await;
    let fresh = f.start().await;
    assert!(
        !f.active(&fresh, &c, &token).await,
        "unparseable counts as revoked"
    );
    eventually("the edit reported", PROPAGATION, || async {
        fresh.log_text().contains("not sealed").then_some(())
    })
    .await;

    // A hand-added entry (no seal) is honoured too, and reported.
    let victim = f.token(&fresh, &c).await;
    assert!(f.active(&fresh, &c, &victim).await);
    f.edit(&c, &jti(&victim), "1999999999").await;
    eventually("a hand-added entry is honoured", PROPAGATION, || async {
        (!f.active(&fresh, &c, &victim).await).then_some(())
    })
    .await;
    assert!(fresh.log_text().contains(&jti(&victim)), "reported by jti");
}

#[tokio::test]
async fn one_client_revoking_many_tokens_neither_blocks_others_nor_grows_each_write() {
    const QUOTA: usize = 5;
    let mut f = Fixture::new("rv-quota", 1, &["--revocation-quota", "5"]).await;
    let s = &f.servers[0];
    let noisy = f.client("noisy").await;
    let quiet = f.client("quiet").await;

    let mut tokens = vec![];
    for _ in 0..(3 * QUOTA) {
        tokens.push(f.token(s, &noisy).await);
    }
    // Issued a second later than every revoked one: outside any cutoff.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = f.token(s, &noisy).await;

    let mut sizes = vec![];
    for t in &tokens {
        assert_eq!(f.revoke(s, &noisy, t).await, 200);
        let cm = f.list(&noisy).await.expect("noisy's list");
        sizes.push(serde_json::to_vec(&cm).unwrap().len());
        let entries = cm.data.unwrap_or_default().len();
        assert!(entries <= QUOTA + 1, "{entries} entries in one list");
    }
    println!("object size after each revoke (bytes, with managedFields): {sizes:?}");
    let max = *sizes.iter().max().unwrap();
    assert!(max < 4096, "a revoke rewrote {max} bytes");
    for t in &tokens {
        assert!(
            !f.active(s, &noisy, t).await,
            "every revoked token stays revoked"
        );
    }
    assert!(
        f.active(s, &noisy, &later).await,
        "a later token is not covered"
    );

    // The other client's revocation works and lands in its own small list.
    let q = f.token(s, &quiet).await;
    assert_eq!(f.revoke(s, &quiet, &q).await, 200);
    assert!(!f.active(s, &quiet, &q).await);
    let quiet_list = f.list(&quiet).await.expect("quiet's list");
    assert_eq!(quiet_list.data.unwrap().len(), 1);

    // The compact form survives a restart.
    f.servers.clear();
    let fresh = f.start().await;
    for t in &tokens {
        assert!(!f.active(&fresh, &noisy, t).await, "revoked after restart");
    }
    assert!(f.active(&fresh, &noisy, &later).await);
}
