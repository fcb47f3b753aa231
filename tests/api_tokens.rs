//! API tokens (`M2MCredential.spec.type: APIToken`) against the real local
//! control plane: the controller and two `token-server` processes. A
//! resource server introspects the token with its own client credentials,
//! a workload exchanges it for a JWT (RFC 8693), and every change —
//! rotation with and without grace, disable, expiry, deletion — is seen by
//! both replicas within 2 s. API tokens and client secrets never stand in
//! for each other, and an API token without an end is `Ready=False`.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, TokenUrl};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually};

const PROPAGATION: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A controller and two token servers for `ns`.
struct Cluster {
    ns: TestNamespace,
    _controller: Operator,
    servers: Vec<Operator>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(prefix: &str, controller_args: &[&str]) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let controller = Operator::start_with(
            &ns,
            OperatorOptions {
                subcommand: "controller",
                args: controller_args.iter().map(|a| a.to_string()).collect(),
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
        for s in &servers {
            s.wait_ready().await;
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            ns,
            _controller: controller,
            servers,
            http,
        }
    }

    fn apply(&self, yaml: &str) {
        let out = self.ns.apply_yaml(yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn patch_credential(&self, name: &str, patch: Value) {
        self.ns
            .api::<M2MCredential>()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("patch credential");
    }

    /// The Secret's data once the credential's status shows `version`.
    async fn secret_at(&self, name: &str, version: i64) -> (Secret, Value) {
        eventually(
            &format!("{name} Secret at version {version}"),
            WAIT,
            || async {
                let cred = self.ns.api::<M2MCredential>().get(name).await.ok()?;
                (cred.status?.secret_version == version).then_some(())?;
                let s = self
                    .ns
                    .api::<Secret>()
                    .get_opt(&format!("{name}-credentials"))
                    .await
                    .ok()??;
                let annotated = s
                    .metadata
                    .annotations
                    .as_ref()?
                    .get("m2m.dev/secret-version")?;
                (annotated == &version.to_string()).then_some(())?;
                let data: serde_json::Map<String, Value> = s
                    .data
                    .clone()?
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(String::from_utf8_lossy(&v.0).into_owned())))
                    .collect();
                Some((s, Value::Object(data)))
            },
        )
        .await
    }

    async fn token_at(&self, name: &str, version: i64) -> String {
        let (_, data) = self.secret_at(name, version).await;
        data["token"].as_str().expect("token key").to_owned()
    }

    /// Introspect `token` at server `i`, authenticating as `rs`.
    async fn introspect(&self, i: usize, rs: &(String, String), token: &str) -> Value {
        self.http
            .post(format!("{}/oauth/introspect", self.servers[i].url))
            .basic_auth(&rs.0, Some(&rs.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// RFC 8693 exchange at server `i`: status and body.
    async fn exchange(&self, i: usize, token: &str, scope: Option<&str>) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let r = self
            .http
            .post(format!("{}/oauth/token", self.servers[i].url))
            .form(&form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Wait until `token` introspects `active` on both replicas.
    async fn wait_active(&self, what: &str, rs: &(String, String), token: &str, active: bool) {
        for i in 0..self.servers.len() {
            eventually(
                &format!("{what}: active={active} on server {i}"),
                PROPAGATION,
                || async {
                    (self.introspect(i, rs, token).await["active"] == active).then_some(())
                },
            )
            .await;
        }
    }

    async fn ready(&self, name: &str) -> Option<(String, String, String)> {
        let c = self.ns.api::<M2MCredential>().get(name).await.ok()?;
        let r = c
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        Some((format!("{:?}", r.status), r.reason, r.message))
    }

    async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> String {
        eventually(&format!("{name} Ready={status} {reason}"), WAIT, || async {
            let (s, r, m) = self.ready(name).await?;
            (s == status && r == reason).then_some(m)
        })
        .await
    }

    async fn has_event(&self, name: &str, reason: &str) -> bool {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.ns.api();
        let list = api.list(&ListParams::default()).await.expect("events");
        list.items.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
        })
    }
}

const ACCOUNT_AND_RESOURCE_SERVER: &str = r#"
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: reporter }
spec: { scopes: ["reports:read", "reports:write"] }
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: reports-api }
spec: { scopes: ["introspect"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: reports-api }
spec: { serviceAccountName: reports-api }
"#;

async fn resource_server(c: &Cluster) -> (String, String) {
    let (_, data) = c.secret_at("reports-api", 1).await;
    (
        data["client_id"].as_str().unwrap().to_owned(),
        data["client_secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn api_token_lifecycle_is_seen_by_both_replicas() {
    let c = Cluster::start("apitok", &[]).await;
    c.apply(ACCOUNT_AND_RESOURCE_SERVER);
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: reports }
spec:
  serviceAccountName: reporter
  type: APIToken
  rotation: { every: 720h }
"#,
    );
    let rs = resource_server(&c).await;

    // Issue: the Secret holds the token and where to exchange it.
    let (secret, data) = c.secret_at("reports", 1).await;
    assert_eq!(secret.type_.as_deref(), Some("m2m.dev/api-token"));
    let t1 = data["token"].as_str().unwrap().to_owned();
    assert!(t1.starts_with("m2mt_"), "{t1}");
    assert!(data.get("client_secret").is_none(), "{data}");
    assert!(
        data["token_url"]
            .as_str()
            .unwrap()
            .ends_with("/oauth/token")
    );
    assert!(data["issuer"].as_str().is_some());
    let id = data["client_id"].as_str().unwrap().to_owned();
    c.wait_ready("reports", "True", "Issuing").await;
    let cred = c.ns.api::<M2MCredential>().get("reports").await.unwrap();
    let status = cred.status.unwrap();
    assert_eq!(
        serde_json::to_value(status.mode).unwrap(),
        json!("APIToken")
    );
    let next_rotation = status.next_rotation_time.unwrap().timestamp();

    // Introspect: active on both replicas, with its grant.
    c.wait_active("issued", &rs, &t1, true).await;
    let info = c.introspect(1, &rs, &t1).await;
    assert_eq!(info["scope"], "reports:read reports:write", "{info}");
    assert_eq!(info["client_id"], id.as_str());
    assert_eq!(info["sub"], format!("m2m:{}:reporter", c.ns.name));
    assert_eq!(info["token_type"], "Bearer");
    assert_eq!(info["exp"], next_rotation, "ends at the scheduled rotation");

    // Exchange on both replicas: a JWT with the same sub, at most its scopes.
    let mut jwts = vec![];
    for i in 0..2 {
        let (status, body) = c.exchange(i, &t1, Some("reports:read")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
        assert_eq!(body["scope"], "reports:read");
        let jwt = body["access_token"].as_str().unwrap().to_owned();
        let info = c.introspect(1 - i, &rs, &jwt).await;
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["sub"], format!("m2m:{}:reporter", c.ns.name));
        assert_eq!(info["client_id"], id.as_str());
        jwts.push(jwt);
    }
    let (status, body) = c.exchange(0, &t1, Some("reports:read admin")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // Rotation without grace: the old token and its JWTs stop on both.
    c.patch_credential(
        "reports",
        json!({"metadata": {"annotations": {"m2m.dev/rotate": "1"}}}),
    )
    .await;
    let t2 = c.token_at("reports", 2).await;
    assert_ne!(t2, t1);
    c.wait_active("old token after rotation without grace", &rs, &t1, false)
        .await;
    for jwt in &jwts {
        c.wait_active("JWT exchanged from the old token", &rs, jwt, false)
            .await;
    }
    c.wait_active("new token", &rs, &t2, true).await;
    let (status, _) = c.exchange(0, &t1, None).await;
    assert_eq!(status, 400, "the old token is not exchanged");

    // Rotation with a grace period: both work until it ends, then only the new.
    c.patch_credential(
        "reports",
        json!({"metadata": {"annotations": {"m2m.dev/rotate": "2"}},
               "spec": {"rotation": {"gracePeriod": "6s"}}}),
    )
    .await;
    let t3 = c.token_at("reports", 3).await;
    c.wait_active("new token after rotation with grace", &rs, &t3, true)
        .await;
    for i in 0..2 {
        let info = c.introspect(i, &rs, &t2).await;
        assert_eq!(info["active"], true, "in grace on server {i}: {info}");
        let (status, body) = c.exchange(i, &t2, None).await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.wait_active("token after its grace", &rs, &t2, false)
        .await;

    // Disable the ServiceAccount: inactive on both, not exchanged; enable: back.
    let sa = r#"
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: reporter }
spec: { scopes: ["reports:read", "reports:write"], disabled: DISABLED }
"#;
    c.apply(&sa.replace("DISABLED", "true"));
    c.wait_active("disabled", &rs, &t3, false).await;
    let (status, body) = c.exchange(1, &t3, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    c.apply(&sa.replace("DISABLED", "false"));
    c.wait_active("enabled again", &rs, &t3, true).await;

    // Expiry: inactive on both once expiresAt passes.
    let at = chrono::Utc::now() + chrono::Duration::seconds(8);
    c.patch_credential("reports", json!({"spec": {"expiresAt": at.to_rfc3339()}}))
        .await;
    for i in 0..2 {
        eventually(
            &format!("exp is expiresAt on server {i}"),
            PROPAGATION,
            || async {
                let info = c.introspect(i, &rs, &t3).await;
                (info["active"] == true && info["exp"] == at.timestamp()).then_some(())
            },
        )
        .await;
    }
    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    c.wait_active("after expiry", &rs, &t3, false).await;
    let (status, _) = c.exchange(0, &t3, None).await;
    assert_eq!(status, 400);
    c.wait_ready("reports", "False", "Expired").await;

    // Delete: a live token stops on both.
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: deploys }
spec:
  serviceAccountName: reporter
  type: APIToken
  expiresAt: "2099-01-01T00:00:00Z"
"#,
    );
    // 2099 is over the one-year maximum: refused, no token.
    c.wait_ready("deploys", "False", "APITokenLifetimeTooLong")
        .await;
    let soon = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    c.patch_credential("deploys", json!({"spec": {"expiresAt": soon}}))
        .await;
    let t4 = c.token_at("deploys", 1).await;
    c.wait_active("second credential", &rs, &t4, true).await;
    c.ns.api::<M2MCredential>()
        .delete("deploys", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_active("deleted credential", &rs, &t4, false).await;

    // No token ever reaches a log.
    for s in &c.servers {
        let log = s.log_text();
        for t in [&t1, &t2, &t3, &t4] {
            assert!(!log.contains(t.as_str()), "an API token reached the log");
        }
    }
}

#[tokio::test]
async fn api_tokens_and_client_secrets_are_not_interchangeable() {
    let c = Cluster::start("apitok-x", &[]).await;
    c.apply(ACCOUNT_AND_RESOURCE_SERVER);
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: reports }
spec:
  serviceAccountName: reporter
  type: APIToken
  rotation: { every: 24h }
"#,
    );
    let rs = resource_server(&c).await;
    let (_, data) = c.secret_at("reports", 1).await;
    let token = data["token"].as_str().unwrap().to_owned();
    let id = data["client_id"].as_str().unwrap().to_owned();
    c.wait_active("issued", &rs, &token, true).await;

    for (i, s) in c.servers.iter().enumerate() {
        // The API token as a client secret (its own client id, or another's).
        for client_id in [&id, &rs.0] {
            let result = BasicClient::new(ClientId::new(client_id.clone()))
                .set_client_secret(ClientSecret::new(token.clone()))
                .set_token_uri(TokenUrl::new(format!("{}/oauth/token", s.url)).unwrap())
                .exchange_client_credentials()
                .request_async(&c.http)
                .await;
            assert!(
                result.is_err(),
                "server {i}: an API token authenticated a client"
            );
        }
        // A client secret as an API token: not exchanged, not active.
        let (status, body) = c.exchange(i, &rs.1, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request"))
        );
        let info = c.introspect(i, &rs, &rs.1).await;
        assert_eq!(info["active"], false, "{info}");
        // The API token's client id with its token cannot introspect.
        let r = c
            .http
            .post(format!("{}/oauth/introspect", s.url))
            .basic_auth(&id, Some(&token))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
}

#[tokio::test]
async fn an_api_token_without_an_allowed_end_is_not_ready() {
    let c = Cluster::start("apitok-end", &["--max-api-token-lifetime", "720h"]).await;
    c.apply(ACCOUNT_AND_RESOURCE_SERVER);
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: endless }
spec: { serviceAccountName: reporter, type: APIToken }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: yearly }
spec:
  serviceAccountName: reporter
  type: APIToken
  rotation: { every: 8760h }
"#,
    );
    let msg = c.wait_ready("endless", "False", "APITokenWithoutEnd").await;
    assert!(
        msg.contains("spec.expiresAt or spec.rotation.every"),
        "{msg}"
    );
    let msg = c
        .wait_ready("yearly", "False", "APITokenLifetimeTooLong")
        .await;
    assert!(msg.contains("720h"), "names the operator maximum: {msg}");
    for name in ["endless", "yearly"] {
        eventually(&format!("Warning event for {name}"), WAIT, || async {
            let reason = c.ready(name).await?.1;
            c.has_event(name, &reason).await.then_some(())
        })
        .await;
        let secret =
            c.ns.api::<Secret>()
                .get_opt(&format!("{name}-credentials"))
                .await
                .unwrap();
        assert!(secret.is_none(), "{name}: no token without an allowed end");
    }
    // Giving it an end makes it usable.
    c.patch_credential("endless", json!({"spec": {"rotation": {"every": "24h"}}}))
        .await;
    c.wait_ready("endless", "True", "Issuing").await;
    let rs = resource_server(&c).await;
    let token = c.token_at("endless", 1).await;
    c.wait_active("with an end", &rs, &token, true).await;
}
