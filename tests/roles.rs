//! Roles against the real local control plane (`tests/cluster/up.sh`): the
//! `controller` and two `token-server` processes (tests/support) for a
//! namespace. A ServiceAccount is granted scopes through an `M2MRole`, a
//! `ClusterM2MRole` and the operator's `--default-role`; its status shows
//! the effective scopes and roles, tokens carry the RFC 9068 `roles` claim,
//! and a role edit or deletion reaches both token-server replicas within
//! 2 s. A missing role is `Ready=False` (`RoleNotFound`) with a Warning
//! Event, and tokens are refused — even for the account's own scopes — until
//! it exists again. The namespace policy still bounds role scopes.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use m2m_operator::crd::{ClusterM2MRole, M2MRole, ServiceAccount};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Operator, OperatorOptions, TestNamespace, eventually};

/// How fast a role change must reach every token-server replica (SPEC §7).
const PROPAGATION: Duration = Duration::from_secs(2);
/// How long the controller may take to reconcile.
const WAIT: Duration = Duration::from_secs(30);

/// The controller and two token servers for `ns`, all with `extra` flags.
struct Cluster {
    ns: TestNamespace,
    _controller: Operator,
    servers: Vec<Operator>,
    http: reqwest::Client,
    /// ClusterM2MRoles this test created (cluster-scoped: deleted on drop).
    cluster_roles: Vec<String>,
}

impl Cluster {
    async fn start(ns: TestNamespace, extra: &[String]) -> Self {
        let issuer = format!("https://m2m.{}.test", ns.name);
        let start = |subcommand| {
            Operator::start_with(
                &ns,
                OperatorOptions {
                    subcommand,
                    issuer: Some(issuer.clone()),
                    args: extra.to_vec(),
                    ..Default::default()
                },
            )
        };
        let controller = start("controller");
        let servers = vec![start("token-server"), start("token-server")];
        for s in &servers {
            s.wait_ready().await;
        }
        Self {
            ns,
            _controller: controller,
            servers,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            cluster_roles: vec![],
        }
    }

    fn apply(&self, yaml: &str) {
        let out = self.ns.apply_yaml(yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn apply_cluster_role(&mut self, name: &str, scopes: &[&str]) {
        let api: Api<ClusterM2MRole> = Api::all(self.ns.client.clone());
        let role = json!({
            "apiVersion": "m2m.dev/v1alpha1",
            "kind": "ClusterM2MRole",
            "metadata": { "name": name },
            "spec": { "scopes": scopes },
        });
        api.patch(
            name,
            &PatchParams::apply("m2m-roles-test").force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("apply ClusterM2MRole");
        if !self.cluster_roles.iter().any(|r| r == name) {
            self.cluster_roles.push(name.to_owned());
        }
    }

    async fn delete_cluster_role(&self, name: &str) {
        let api: Api<ClusterM2MRole> = Api::all(self.ns.client.clone());
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete ClusterM2MRole");
    }

    /// The account's `Ready` condition once it has `status` and `reason`.
    async fn wait_account(&self, name: &str, status: &str, reason: &str) -> ServiceAccount {
        let api = self.ns.api::<ServiceAccount>();
        eventually(
            &format!("m2msa/{name} Ready={status} ({reason})"),
            WAIT,
            || async {
                let a = api.get(name).await.ok()?;
                let ready = a
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")?;
                (format!("{:?}", ready.status) == status && ready.reason == reason)
                    .then_some(a.clone())
            },
        )
        .await
    }

    /// The client id and secret of credential `name`, once its Secret exists.
    async fn credentials(&self, name: &str) -> (String, String) {
        let api = self.ns.api::<Secret>();
        eventually("credential Secret", WAIT, || async {
            let s = api.get_opt(&format!("{name}-credentials")).await.ok()??;
            let data = s.data?;
            let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
            Some((get("client_id")?, get("client_secret")?))
        })
        .await
    }

    /// A token request to replica `server`: the token's claims, or the
    /// OAuth error code.
    async fn token(
        &self,
        server: usize,
        creds: &(String, String),
        scope: Option<&str>,
    ) -> Result<Value, String> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let response = self
            .http
            .post(format!("{}/oauth/token", self.servers[server].url))
            .basic_auth(&creds.0, Some(&creds.1))
            .form(&form)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !ok {
            return Err(format!(
                "{}: {}",
                body["error"].as_str().unwrap_or_default(),
                body["error_description"].as_str().unwrap_or_default()
            ));
        }
        let token = body["access_token"].as_str().ok_or("no access_token")?;
        let payload = token.split('.').nth(1).ok_or("not a JWT")?;
        let claims = URL_SAFE_NO_PAD.decode(payload).map_err(|e| e.to_string())?;
        serde_json::from_slice(&claims).map_err(|e| e.to_string())
    }

    /// A raw access token from replica `server`.
    async fn raw_token(&self, server: usize, creds: &(String, String)) -> String {
        let body: Value = self
            .http
            .post(format!("{}/oauth/token", self.servers[server].url))
            .basic_auth(&creds.0, Some(&creds.1))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["access_token"].as_str().expect("a token").to_owned()
    }

    /// Whether replica `server` reports `token` active, asked by `caller`.
    async fn active(&self, server: usize, caller: &(String, String), token: &str) -> bool {
        let info: Value = self
            .http
            .post(format!("{}/oauth/introspect", self.servers[server].url))
            .basic_auth(&caller.0, Some(&caller.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        info["active"] == true
    }

    /// Whether `token`-endpoint answers satisfy `check` on both replicas
    /// within [`PROPAGATION`] of `since`.
    async fn on_both_within_propagation<F>(
        &self,
        what: &str,
        since: Instant,
        creds: &(String, String),
        scope: Option<&str>,
        check: F,
    ) where
        F: Fn(&Result<Value, String>) -> bool,
    {
        for server in 0..self.servers.len() {
            loop {
                let got = self.token(server, creds, scope).await;
                if check(&got) {
                    break;
                }
                assert!(
                    since.elapsed() < PROPAGATION,
                    "{what}: replica {server} still answers {got:?} {:?} after the change",
                    since.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Warning Events about `name` with `reason`.
    async fn wait_warning(&self, name: &str, reason: &str) -> String {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.ns.api();
        eventually(&format!("Warning {reason} for {name}"), WAIT, || async {
            api.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(reason)
                })
                .and_then(|e| e.note)
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for name in &self.cluster_roles {
            let _ = support::kubectl(&["delete", "clusterm2mrole", name, "--ignore-not-found"]);
        }
    }
}

fn scopes_of(claims: &Value) -> Vec<&str> {
    claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .collect()
}

#[tokio::test]
async fn a_role_grants_its_scopes_edits_propagate_and_deletion_refuses_tokens() {
    let ns = TestNamespace::new("roles-grant").await;
    let mut c = Cluster::start(ns, &[]).await;
    let auditor = format!("{}-auditor", c.ns.name);
    c.apply_cluster_role(&auditor, &["audit:read"]).await;
    c.apply(&format!(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MRole
metadata: {{ name: deployer }}
spec: {{ scopes: ["deploy:staging", "artifacts:read"] }}
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: {{ name: release-bot }}
spec:
  scopes: ["repo:read"]
  roleRefs:
    - {{ kind: M2MRole, name: deployer }}
    - {{ kind: ClusterM2MRole, name: {auditor} }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: release }}
spec: {{ serviceAccountName: release-bot }}
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: {{ name: observer }}
spec: {{ scopes: ["repo:read"] }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: observer }}
spec: {{ serviceAccountName: observer }}
"#
    ));

    // The status shows what the roles add.
    let account = c.wait_account("release-bot", "True", "Valid").await;
    let status = account.status.unwrap();
    assert_eq!(
        status.effective_scopes,
        [
            "artifacts:read",
            "audit:read",
            "deploy:staging",
            "repo:read"
        ]
    );
    // Claim names: an M2MRole as <namespace>/<name>, a ClusterM2MRole bare.
    let mut held = vec![format!("{}/deployer", c.ns.name), auditor.clone()];
    held.sort();
    assert_eq!(status.roles, held);

    // Tokens get every effective scope and claim the roles they fully hold.
    let creds = c.credentials("release").await;
    for server in 0..2 {
        let all = eventually("a token with the role scopes", WAIT, || async {
            c.token(server, &creds, None).await.ok()
        })
        .await;
        assert_eq!(
            scopes_of(&all),
            [
                "artifacts:read",
                "audit:read",
                "deploy:staging",
                "repo:read"
            ]
        );
        assert_eq!(all["roles"], json!(held));
        // A token narrowed below a role's scopes does not claim that role.
        let narrow = c
            .token(server, &creds, Some("deploy:staging repo:read"))
            .await;
        let narrow = narrow.expect("a narrower token");
        assert_eq!(scopes_of(&narrow), ["deploy:staging", "repo:read"]);
        assert!(narrow.get("roles").is_none(), "{narrow}");
        let own = c.token(server, &creds, Some("repo:read")).await.unwrap();
        assert!(own.get("roles").is_none(), "{own}");
    }
    let outside = c.token(0, &creds, Some("deploy:prod")).await;
    assert!(
        outside
            .as_ref()
            .is_err_and(|e| e.starts_with("invalid_scope")),
        "{outside:?}"
    );

    // Editing the role: new tokens reflect it on both replicas within 2 s.
    let since = Instant::now();
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MRole
metadata: { name: deployer }
spec: { scopes: ["deploy:staging", "deploy:prod"] }
"#,
    );
    c.on_both_within_propagation(
        "the edited role grants deploy:prod",
        since,
        &creds,
        Some("deploy:prod"),
        |r| r.is_ok(),
    )
    .await;
    c.on_both_within_propagation(
        "the edited role no longer grants artifacts:read",
        since,
        &creds,
        Some("artifacts:read"),
        |r| r.as_ref().is_err_and(|e| e.starts_with("invalid_scope")),
    )
    .await;
    let edited = c.wait_account("release-bot", "True", "Valid").await;
    eventually("status shows the edited role", WAIT, || async {
        let a = c.ns.api::<ServiceAccount>().get("release-bot").await.ok()?;
        (a.status?.effective_scopes == ["audit:read", "deploy:prod", "deploy:staging", "repo:read"])
            .then_some(())
    })
    .await;
    drop(edited);

    // Deleting a referenced role: Ready=False RoleNotFound with a Warning,
    // and no token at all — not even for the account's own scope — on both
    // replicas within 2 s. Never a silently narrower grant. Tokens issued
    // before turn inactive; other accounts are not affected.
    let observer = c.credentials("observer").await;
    let earlier = c.raw_token(0, &creds).await;
    for server in 0..2 {
        let active = eventually("the observer can introspect", WAIT, || async {
            c.active(server, &observer, &earlier).await.then_some(())
        });
        active.await;
    }
    let since = Instant::now();
    c.ns.api::<M2MRole>()
        .delete("deployer", &DeleteParams::default())
        .await
        .expect("delete role");
    c.on_both_within_propagation(
        "a missing role refuses tokens",
        since,
        &creds,
        Some("repo:read"),
        |r| {
            r.as_ref()
                .is_err_and(|e| e.starts_with("unauthorized_client: RoleNotFound"))
        },
    )
    .await;
    for server in 0..2 {
        assert!(
            !c.active(server, &observer, &earlier).await,
            "replica {server}: a token of an account with a missing role is still active"
        );
        assert!(c.token(server, &observer, None).await.is_ok());
    }
    let refused = c.wait_account("release-bot", "False", "RoleNotFound").await;
    let ready = refused
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.message, "roles not found: M2MRole/deployer");
    assert!(refused.status.unwrap().effective_scopes.is_empty());
    let note = c.wait_warning("release-bot", "RoleNotFound").await;
    assert!(note.contains("M2MRole/deployer"), "{note}");
    // Its credential says so too, and keeps its Secret.
    let creds_api = c.ns.api::<m2m_operator::crd::M2MCredential>();
    eventually("credential Ready=False RoleNotFound", WAIT, || async {
        let cred = creds_api.get("release").await.ok()?;
        let ready = cred
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.reason == "RoleNotFound").then_some(())
    })
    .await;
    assert_eq!(c.credentials("release").await, creds, "the Secret is kept");

    // Re-creating it restores access.
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MRole
metadata: { name: deployer }
spec: { scopes: ["deploy:staging"] }
"#,
    );
    c.wait_account("release-bot", "True", "Valid").await;
    for server in 0..2 {
        eventually("tokens again", PROPAGATION, || async {
            c.token(server, &creds, Some("deploy:staging")).await.ok()
        })
        .await;
    }
}

#[tokio::test]
async fn the_default_role_is_granted_to_every_account() {
    let ns = TestNamespace::new("roles-default").await;
    let default_role = format!("{}-baseline", ns.name);
    // The default role exists before the operator starts, as documented.
    let client = ns.client.clone();
    let api: Api<ClusterM2MRole> = Api::all(client);
    api.patch(
        &default_role,
        &PatchParams::apply("m2m-roles-test").force(),
        &Patch::Apply(&json!({
            "apiVersion": "m2m.dev/v1alpha1",
            "kind": "ClusterM2MRole",
            "metadata": { "name": default_role },
            "spec": { "scopes": ["health:read"] },
        })),
    )
    .await
    .expect("apply default role");
    let mut c = Cluster::start(ns, &[format!("--default-role={default_role}")]).await;
    c.cluster_roles.push(default_role.clone());
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: plain }
spec: { scopes: ["repo:read"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: plain }
spec: { serviceAccountName: plain }
"#,
    );
    let account = c.wait_account("plain", "True", "Valid").await;
    let status = account.status.unwrap();
    assert_eq!(status.effective_scopes, ["health:read", "repo:read"]);
    assert_eq!(status.roles, vec![default_role.clone()]);
    let creds = c.credentials("plain").await;
    for server in 0..2 {
        let claims = eventually("a token with the default role", WAIT, || async {
            c.token(server, &creds, Some("health:read")).await.ok()
        })
        .await;
        assert_eq!(claims["roles"], json!([default_role]));
    }

    // Editing the default role reaches every account on both replicas.
    let since = Instant::now();
    c.apply_cluster_role(&default_role, &["health:read", "metrics:read"])
        .await;
    c.on_both_within_propagation(
        "the edited default role",
        since,
        &creds,
        Some("metrics:read"),
        |r| r.is_ok(),
    )
    .await;

    // A missing default role refuses every account, saying which role.
    let since = Instant::now();
    c.delete_cluster_role(&default_role).await;
    c.on_both_within_propagation(
        "a missing default role refuses tokens",
        since,
        &creds,
        Some("repo:read"),
        |r| {
            r.as_ref()
                .is_err_and(|e| e.contains("RoleNotFound") && e.contains("default role"))
        },
    )
    .await;
    let refused = c.wait_account("plain", "False", "RoleNotFound").await;
    let message = &refused
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert_eq!(
        message,
        &format!("roles not found: ClusterM2MRole/{default_role} (the operator's default role)")
    );
    c.wait_warning("plain", "RoleNotFound").await;
}

#[tokio::test]
async fn the_namespace_policy_still_bounds_role_scopes() {
    let ns = TestNamespace::with_annotations(
        "roles-policy",
        &[("m2m.dev/allowed-scopes", "repo:*,deploy:staging")],
    )
    .await;
    let c = Cluster::start(ns, &[]).await;
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MRole
metadata: { name: admin }
spec: { scopes: ["deploy:staging", "cluster:admin"] }
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ambitious }
spec:
  scopes: ["repo:read"]
  roleRefs: [{ kind: M2MRole, name: admin }]
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: ambitious }
spec: { serviceAccountName: ambitious }
"#,
    );
    // A role scope the namespace forbids fails the account, as its own would.
    let refused = c
        .wait_account("ambitious", "False", "ScopesNotAllowedInNamespace")
        .await;
    let ready = refused
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.ends_with(": cluster:admin"),
        "{}",
        ready.message
    );
    c.wait_warning("ambitious", "ScopesNotAllowedInNamespace")
        .await;

    // Its credential gets a Secret only once the account is valid; fix the
    // role and every token stays inside the policy.
    c.apply(
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MRole
metadata: { name: admin }
spec: { scopes: ["deploy:staging"] }
"#,
    );
    let account = c.wait_account("ambitious", "True", "Valid").await;
    assert_eq!(
        account.status.unwrap().effective_scopes,
        ["deploy:staging", "repo:read"]
    );
    let creds = c.credentials("ambitious").await;
    for server in 0..2 {
        let claims = eventually("a token within the policy", WAIT, || async {
            c.token(server, &creds, None).await.ok()
        })
        .await;
        assert_eq!(scopes_of(&claims), ["deploy:staging", "repo:read"]);
        assert_eq!(claims["roles"], json!([format!("{}/admin", c.ns.name)]));
    }
}
