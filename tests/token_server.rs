//! The token server against the real local control plane
//! (`tests/cluster/up.sh`): two `m2m-operator token-server` processes side
//! by side, a third-party OAuth 2.0 client (`oauth2`), an independent JWT
//! verifier (`jsonwebtoken` against the served JWKS), and every revocation
//! case of issue #4 observed on both replicas within 2 s.
//!
//! The tests play the credential controller's part (tests/token_server_controller.rs
//! runs the real one): they write `status.verifiers` themselves with the
//! verifier key that `reconcile_keys` created, which also lets them set up
//! states such as an expired grace period precisely.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use m2m_operator::controller::keys::reconcile_keys;
use m2m_operator::core::client_secret::{ClientSecret, client_id_for_uid};
use m2m_operator::core::verifier::{SecretBinding, VerifierKey};
use m2m_operator::crd::{M2MCredential, SecretVerifier, ServiceAccount};
use m2m_operator::signing::SigningAlg;
use m2m_operator::signing::store::KeySecretConfig;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret as OAuthSecret, Scope, TokenResponse, TokenUrl};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually};

const PROPAGATION: Duration = Duration::from_secs(2);

/// A token server for `ns` (also its operator namespace) with a shared issuer.
fn token_server(ns: &TestNamespace, issuer: &str) -> Operator {
    Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "token-server",
            issuer: Some(issuer.to_owned()),
            ..Default::default()
        },
    )
}

struct Creds {
    id: String,
    secret: String,
}

/// The part of the credential controller the tests play until it lands.
struct Fixture {
    ns: TestNamespace,
    key: VerifierKey,
    keys_cfg: KeySecretConfig,
    http: reqwest::Client,
    servers: Vec<Operator>,
    issuer: String,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let keys_cfg = KeySecretConfig::new(
            ns.name.clone(),
            SigningAlg::Es256,
            Duration::from_secs(3600),
        );
        let keys = reconcile_keys(&ns.client, &keys_cfg, chrono::Utc::now())
            .await
            .expect("key Secret");
        assert!(keys.changed);
        let issuer = format!("https://m2m.{}.test", ns.name);
        let servers = vec![token_server(&ns, &issuer), token_server(&ns, &issuer)];
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for s in &servers {
            s.wait_ready().await;
        }
        Self {
            ns,
            key: keys.verifier_key,
            keys_cfg,
            http,
            servers,
            issuer,
        }
    }

    async fn account(&self, name: &str, scopes: &[&str], disabled: bool) {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "m2m.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": name},
            "spec": {"scopes": scopes, "disabled": disabled}
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
            .expect("apply ServiceAccount");
    }

    /// Create a credential and its first secret; returns what the Secret holds.
    async fn credential(&self, name: &str, spec: Value) -> Creds {
        let cred: M2MCredential = serde_json::from_value(json!({
            "apiVersion": "m2m.dev/v1alpha1", "kind": "M2MCredential",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        let created = self
            .ns
            .api::<M2MCredential>()
            .create(&PostParams::default(), &cred)
            .await
            .expect("create credential");
        let uid = created.metadata.uid.unwrap();
        let secret = self.rotate(name, &uid, 1, vec![]).await;
        let id = client_id_for_uid(&uid);
        let data = BTreeMap::from([
            ("client_id".to_owned(), id.clone()),
            ("client_secret".to_owned(), secret.clone()),
        ]);
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{name}-credentials")),
                ..Default::default()
            },
            type_: Some("m2m.dev/client-credentials".into()),
            string_data: Some(data),
            ..Default::default()
        };
        self.ns
            .api::<Secret>()
            .create(&PostParams::default(), &s)
            .await
            .expect("create Secret");
        // Read it back, as a workload would.
        let stored = self
            .ns
            .api::<Secret>()
            .get(&format!("{name}-credentials"))
            .await
            .unwrap();
        let data = stored.data.unwrap();
        Creds {
            id: String::from_utf8(data["client_id"].0.clone()).unwrap(),
            secret: String::from_utf8(data["client_secret"].0.clone()).unwrap(),
        }
    }

    /// Write a new current verifier for `version` (keeping `keep`); returns the new secret.
    async fn rotate(
        &self,
        name: &str,
        uid: &str,
        version: i64,
        keep: Vec<SecretVerifier>,
    ) -> String {
        let secret = ClientSecret::generate().unwrap().expose().to_owned();
        let client_id = client_id_for_uid(uid);
        let binding = SecretBinding {
            namespace: &self.ns.name,
            name,
            uid,
            client_id: &client_id,
            version,
        };
        let digest = self.key.digest(&binding, &secret);
        let mut verifiers = vec![SecretVerifier {
            version,
            digest,
            not_after: None,
            seal: None,
        }];
        verifiers.extend(keep);
        // Sealed as the controller does, with its grace-period end.
        for v in &mut verifiers {
            self.key.seal(&binding, v);
        }
        let patch = json!({"status": {"secretVersion": version, "verifiers": verifiers}});
        self.ns
            .api::<M2MCredential>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch status");
        secret
    }

    async fn oauth2_token(
        &self,
        server: usize,
        c: &Creds,
        scope: Option<&str>,
    ) -> Result<String, String> {
        let client = BasicClient::new(ClientId::new(c.id.clone()))
            .set_client_secret(OAuthSecret::new(c.secret.clone()))
            .set_token_uri(
                TokenUrl::new(format!("{}/oauth/token", self.servers[server].url)).unwrap(),
            );
        let mut req = client.exchange_client_credentials();
        if let Some(s) = scope {
            req = req.add_scope(Scope::new(s.into()));
        }
        req.request_async(&self.http)
            .await
            .map(|t| t.access_token().secret().clone())
            .map_err(|e| format!("{e:?}"))
    }

    async fn introspect(&self, server: usize, caller: &Creds, token: &str) -> Value {
        self.http
            .post(format!("{}/oauth/introspect", self.servers[server].url))
            .basic_auth(&caller.id, Some(&caller.secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until `token` is inactive on every server, within 2 s of now.
    async fn inactive_everywhere(&self, caller: &Creds, token: &str, what: &str) {
        for i in 0..self.servers.len() {
            eventually(
                &format!("{what}: inactive on server {i}"),
                PROPAGATION,
                || async {
                    (self.introspect(i, caller, token).await["active"] == false).then_some(())
                },
            )
            .await;
        }
    }

    /// Wait until `token` is active on every server (a replica may see the
    /// credential a few milliseconds after the one that issued the token).
    async fn assert_active_everywhere(&self, caller: &Creds, token: &str) {
        for i in 0..self.servers.len() {
            eventually(&format!("active on server {i}"), PROPAGATION, || async {
                (self.introspect(i, caller, token).await["active"] == true).then_some(())
            })
            .await;
        }
    }

    /// Verify a token with jsonwebtoken against the JWKS served by `server`.
    async fn verify(&self, server: usize, token: &str) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(format!(
                "{}/.well-known/jwks.json",
                self.servers[server].url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid in JWKS");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.issuer]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .expect("token verifies")
            .claims
    }
}

fn cred_spec(account: &str) -> Value {
    json!({"serviceAccountName": account})
}

#[tokio::test]
async fn oauth2_client_gets_a_verifiable_token_and_revocation_holds_across_replicas() {
    let f = Fixture::new("ts-revoke").await;
    f.account("ci-bot", &["artifacts:read", "artifacts:write"], false)
        .await;
    let c = f.credential("uploads", cred_spec("ci-bot")).await;

    let token = eventually("token issued", PROPAGATION, || async {
        f.oauth2_token(0, &c, Some("artifacts:read")).await.ok()
    })
    .await;
    let claims = f.verify(1, &token).await;
    assert_eq!(claims["sub"], format!("m2m:{}:ci-bot", f.ns.name));
    assert_eq!(claims["client_id"], c.id.as_str());
    assert_eq!(claims["scope"], "artifacts:read");
    f.assert_active_everywhere(&c, &token).await;

    // /oauth/revoke on one replica holds on both, and after a restart.
    let resp = f
        .http
        .post(format!("{}/oauth/revoke", f.servers[1].url))
        .basic_auth(&c.id, Some(&c.secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    f.inactive_everywhere(&c, &token, "revoked").await;
    let cm =
        f.ns.api::<ConfigMap>()
            .get(&m2m_operator::server::revocation::list::config_map_name(
                &c.id,
            ))
            .await
            .unwrap();
    assert!(
        cm.data
            .unwrap()
            .contains_key(claims["jti"].as_str().unwrap())
    );
    let restarted = token_server(&f.ns, &f.issuer);
    restarted.wait_ready().await;
    let info: Value = f
        .http
        .post(format!("{}/oauth/introspect", restarted.url))
        .basic_auth(&c.id, Some(&c.secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["active"], false, "revocation survives a restart");
    // Other tokens of the client are unaffected.
    let other = f.oauth2_token(1, &c, None).await.unwrap();
    f.assert_active_everywhere(&c, &other).await;
}

#[tokio::test]
async fn rotation_disable_expiry_and_deletion_revoke_on_every_replica() {
    let f = Fixture::new("ts-state").await;
    f.account("ci-bot", &["repo:read"], false).await;
    f.account("other-bot", &["repo:read"], false).await;
    let c = f.credential("rotating", cred_spec("ci-bot")).await;
    let uid =
        f.ns.api::<M2MCredential>()
            .get("rotating")
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
    let t1 = eventually("token", PROPAGATION, || async {
        f.oauth2_token(0, &c, None).await.ok()
    })
    .await;
    f.assert_active_everywhere(&c, &t1).await;

    // Rotation with a grace period: both secrets and the old token keep working.
    let cred = f.ns.api::<M2MCredential>().get("rotating").await.unwrap();
    let mut old = cred.status.unwrap().verifiers;
    old[0].not_after = Some(chrono::Utc::now() + chrono::Duration::minutes(10));
    let s2 = f.rotate("rotating", &uid, 2, old).await;
    let c2 = Creds {
        id: c.id.clone(),
        secret: s2,
    };
    let t2 = eventually("token with the new secret", PROPAGATION, || async {
        f.oauth2_token(1, &c2, None).await.ok()
    })
    .await;
    assert!(
        f.oauth2_token(0, &c, None).await.is_ok(),
        "old secret within grace"
    );
    f.assert_active_everywhere(&c2, &t1).await;

    // Rotation without grace: the old secrets and their tokens stop at once.
    let s3 = f.rotate("rotating", &uid, 3, vec![]).await;
    let c3 = Creds {
        id: c.id.clone(),
        secret: s3,
    };
    f.inactive_everywhere(&c3, &t2, "rotated without grace")
        .await;
    f.inactive_everywhere(&c3, &t1, "rotated without grace")
        .await;
    for i in 0..2 {
        assert!(
            f.oauth2_token(i, &c2, None).await.is_err(),
            "old secret refused on server {i}"
        );
    }
    let t3 = f.oauth2_token(0, &c3, None).await.unwrap();

    // Disabling the ServiceAccount.
    f.account("ci-bot", &["repo:read"], true).await;
    f.inactive_everywhere(&c3, &t3, "account disabled").await;
    for i in 0..2 {
        assert!(f.oauth2_token(i, &c3, None).await.is_err());
    }
    f.account("ci-bot", &["repo:read"], false).await;
    eventually("re-enabled", PROPAGATION, || async {
        f.oauth2_token(1, &c3, None).await.ok()
    })
    .await;

    // Expiry: no event at all, the clock alone.
    let e = f.credential("expiring", json!({"serviceAccountName": "other-bot",
        "expiresAt": (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)})).await;
    let te = eventually("token", PROPAGATION, || async {
        f.oauth2_token(0, &e, None).await.ok()
    })
    .await;
    f.assert_active_everywhere(&e, &te).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    f.inactive_everywhere(&e, &te, "credential expired").await;
    assert!(f.oauth2_token(1, &e, None).await.is_err());

    // Deletion.
    let d = f.credential("deleted", cred_spec("other-bot")).await;
    let td = eventually("token", PROPAGATION, || async {
        f.oauth2_token(0, &d, None).await.ok()
    })
    .await;
    f.ns.api::<M2MCredential>()
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    // The deleted client cannot authenticate any more; ask as another client
    // (introspection of foreign tokens is inactive anyway) and check refusal.
    for i in 0..2 {
        eventually(
            &format!("deleted credential refused on server {i}"),
            PROPAGATION,
            || async { f.oauth2_token(i, &d, None).await.is_err().then_some(()) },
        )
        .await;
    }
    let _ = td; // its introspection needs its own (now refused) credentials
}

#[tokio::test]
async fn signing_key_rotation_keeps_older_tokens_verifiable() {
    let f = Fixture::new("ts-keys").await;
    f.account("ci-bot", &["repo:read"], false).await;
    let c = f.credential("uploads", cred_spec("ci-bot")).await;
    let before = eventually("token", PROPAGATION, || async {
        f.oauth2_token(0, &c, None).await.ok()
    })
    .await;
    let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();

    // The controller, two hours later: the 1h-old key is rotated out.
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let r = reconcile_keys(&f.ns.client, &f.keys_cfg, later)
        .await
        .unwrap();
    assert!(r.changed);
    assert_eq!(r.key_set.keys.len(), 2);
    let again = reconcile_keys(&f.ns.client, &f.keys_cfg, later)
        .await
        .unwrap();
    assert!(!again.changed, "nothing due: nothing written");

    for i in 0..2 {
        let after = eventually(&format!("new kid on server {i}"), PROPAGATION, || async {
            let t = f.oauth2_token(i, &c, None).await.ok()?;
            let kid = jsonwebtoken::decode_header(&t).ok()?.kid?;
            (kid != old_kid).then_some(t)
        })
        .await;
        f.verify(i, &after).await;
        f.verify(i, &before).await;
    }
    f.assert_active_everywhere(&c, &before).await;
}
