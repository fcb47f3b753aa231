//! Workload identity against the real apiserver (SPEC §6): pods exchange
//! their Kubernetes service-account token (RFC 7523 `client_assertion`)
//! for an access token. Tokens are minted by the apiserver itself with
//! `kubectl create token` (TokenRequest), pod-bound ones for a Pod object
//! that never runs (no kubelet here). The operator runs as real child
//! processes with `--assertion-cache-ttl 2s`, so "refused once the cache
//! bound passed" is observable within a test.
//!
//! "Expired" cannot be minted directly: the apiserver's minimum
//! `expirationSeconds` is 10 minutes. The expiry check is the apiserver's
//! own (TokenReview), and the token server also refuses a token whose
//! `exp` has passed before asking (unit-tested in `server::assertion`);
//! here a token with a forged payload (an `exp` in the past and a broken
//! signature) and an unsigned one stand in for it, and a token of a
//! deleted ServiceAccount covers "no longer valid".

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually, kubectl};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const PROPAGATION: Duration = Duration::from_secs(2);
/// The `--assertion-cache-ttl` the tests run with.
const CACHE_BOUND: Duration = Duration::from_secs(2);
/// kube-apiserver caches successful token authentications (TokenReview
/// included) for 10 s; a deleted Pod is noticed after both caches.
const APISERVER_TOKEN_CACHE: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `kubectl create token` for a core ServiceAccount (extra args: bound object).
fn mint(ns: &str, sa: &str, audience: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "token", sa, "-n", ns, "--audience", audience];
    args.extend_from_slice(extra);
    let out = kubectl(&args);
    assert!(
        out.status.success(),
        "kubectl create token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn kubectl_ok(args: &[&str]) {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POST a client_credentials request with a client assertion; (status, body).
async fn exchange(
    base: &str,
    assertion: &str,
    client_id: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    if let Some(id) = client_id {
        form.push(("client_id", id));
    }
    form.extend_from_slice(extra);
    let r = http()
        .post(format!("{base}/oauth/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn apply(ns: &TestNamespace, yaml: &str) {
    let out = ns.apply_yaml(yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait until the credential is Ready in workload-identity mode; its client id.
async fn wait_workload_ready(ns: &TestNamespace, name: &str) -> String {
    eventually(
        "credential Ready in workload-identity mode",
        Duration::from_secs(30),
        || async {
            let c = ns.api::<M2MCredential>().get(name).await.ok()?;
            let s = c.status?;
            let ready = s.conditions.iter().any(|c| {
                c.type_ == "Ready" && c.status == m2m_operator::crd::ConditionStatus::True
            });
            (ready && s.workload_identity.is_some() && s.verifiers.is_empty())
                .then_some(s.client_id?)
        },
    )
    .await
}

fn start_run(ns: &TestNamespace, issuer: &str) -> Operator {
    Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "run",
            issuer: Some(issuer.to_owned()),
            args: vec![
                "--assertion-cache-ttl".into(),
                format!("{}s", CACHE_BOUND.as_secs()),
            ],
            ..Default::default()
        },
    )
}

fn setup_yaml() -> &'static str {
    r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: uploader }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: intruder }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: short-lived }
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ci-bot }
spec: { scopes: ["repo:read", "repo:write"], tokenTTL: 10m }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: uploads }
spec:
  serviceAccountName: ci-bot
  scopes: ["repo:read"]
  workloadIdentity: { kubernetesServiceAccount: uploader }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: ephemeral }
spec:
  serviceAccountName: ci-bot
  workloadIdentity: { kubernetesServiceAccount: short-lived }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: resource-server }
spec: { serviceAccountName: ci-bot }
"#
}

#[tokio::test]
async fn bound_service_account_token_gets_a_token_and_every_other_token_is_refused() {
    let ns = TestNamespace::new("wi").await;
    let other = TestNamespace::new("wi-other").await;
    let issuer = format!("https://m2m.{}.test", ns.name);
    let op = start_run(&ns, &issuer);
    op.wait_ready().await;
    apply(&ns, setup_yaml());
    apply(
        &other,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: uploader }\n",
    );
    let client_id = wait_workload_ready(&ns, "uploads").await;
    wait_workload_ready(&ns, "ephemeral").await;
    // No secret generated, no Secret written.
    assert!(
        ns.api::<Secret>()
            .get_opt("uploads-credentials")
            .await
            .unwrap()
            .is_none()
    );
    let cred = ns.api::<M2MCredential>().get("uploads").await.unwrap();
    let status = cred.status.unwrap();
    let binding = status.workload_identity.unwrap();
    assert_eq!(
        binding.subject,
        format!("system:serviceaccount:{}:uploader", ns.name)
    );
    assert_eq!(binding.audience, issuer);
    assert_eq!(
        serde_json::to_value(status.mode).unwrap(),
        json!("WorkloadIdentity")
    );

    // The bound ServiceAccount's token, without client_id (one credential binds it).
    let good = mint(&ns.name, "uploader", &issuer, &[]);
    let (code, body) = exchange(&op.url, &good, None, &[]).await;
    assert_eq!(code, 200, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let c = claims(&access);
    assert_eq!(c["sub"], format!("m2m:{}:ci-bot", ns.name));
    assert_eq!(c["client_id"], client_id);
    assert_eq!(c["scope"], "repo:read");
    assert_eq!(c["aud"], issuer);
    assert_eq!(c["m2m_sv"], json!(binding.epoch), "the binding's epoch");
    assert_eq!(body["expires_in"], 600);
    // With client_id, asking for a scope and audience as usual.
    let (code, body) = exchange(&op.url, &good, Some(&client_id), &[("scope", "repo:read")]).await;
    assert_eq!(code, 200, "{body}");
    // Scope rules are the credential's, whatever authenticated it.
    let (code, body) = exchange(&op.url, &good, None, &[("scope", "repo:write")]).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_scope")));

    // Introspection of the workload's token by a resource server with its own credential.
    let (rs_id, rs_secret) = eventually(
        "resource-server Secret",
        Duration::from_secs(30),
        || async {
            let s = ns
                .api::<Secret>()
                .get_opt("resource-server-credentials")
                .await
                .ok()??;
            let data = s.data?;
            let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
            Some((get("client_id")?, get("client_secret")?))
        },
    )
    .await;
    let introspect = |token: String| {
        let (id, secret) = (rs_id.clone(), rs_secret.clone());
        let url = format!("{}/oauth/introspect", op.url);
        async move {
            let v: Value = http()
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    let info = introspect(access.clone()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["m2m_sv"], json!(binding.epoch));

    // Refused, all with the same 401 invalid_client.
    let mut forged_parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged_claims = claims(&good);
    forged_claims["exp"] = json!(1);
    forged_parts[1] = URL_SAFE_NO_PAD.encode(forged_claims.to_string());
    let expired_forgery = forged_parts.join(".");
    let mut unsigned_claims = claims(&good);
    unsigned_claims["exp"] = json!(4_102_444_800i64);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(unsigned_claims.to_string())
    );
    let short_lived = mint(&ns.name, "short-lived", &issuer, &[]);
    kubectl_ok(&["delete", "serviceaccount", "short-lived", "-n", &ns.name]);
    let refused: Vec<(&str, String, Option<&str>)> = vec![
        (
            "another ServiceAccount's token",
            mint(&ns.name, "intruder", &issuer, &[]),
            None,
        ),
        (
            "another ServiceAccount's token with the credential's client_id",
            mint(&ns.name, "intruder", &issuer, &[]),
            Some(&client_id),
        ),
        (
            "the same ServiceAccount name in another namespace",
            mint(&other.name, "uploader", &issuer, &[]),
            None,
        ),
        (
            "a wrong audience",
            mint(&ns.name, "uploader", "https://elsewhere.example", &[]),
            None,
        ),
        (
            "the apiserver's own audience",
            mint(&ns.name, "uploader", "https://kubernetes.default.svc", &[]),
            None,
        ),
        ("a forged, expired payload", expired_forgery, None),
        ("an unsigned token", unsigned, None),
        ("a deleted ServiceAccount's token", short_lived, None),
        ("garbage", "not-a-jwt".into(), None),
    ];
    let mut bodies = vec![];
    for (what, token, id) in &refused {
        let (code, body) = exchange(&op.url, token, *id, &[]).await;
        assert_eq!(code, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "no oracle: {bodies:?}"
    );

    // Mixed client authentication is malformed.
    let (code, body) = exchange(
        &op.url,
        &good,
        Some(&rs_id),
        &[("client_secret", &rs_secret)],
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let r = http()
        .post(format!("{}/oauth/token", op.url))
        .basic_auth(&rs_id, Some(&rs_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", good.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Discovery advertises the method; metrics and audit lines name it.
    let meta: Value = http()
        .get(format!("{}/.well-known/oauth-authorization-server", op.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("private_key_jwt")),
        "{meta}"
    );
    let metrics = http()
        .get(format!("{}/metrics", op.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"m2m_token_client_auth_total{method="private_key_jwt",outcome="ok"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"m2m_token_assertion_checks_total{result="cache_hit"}"#));
    let log = op.log_text();
    assert!(
        log.lines().any(|l| l.contains("token issued")
            && l.contains("auth_method")
            && l.contains("private_key_jwt")),
        "an audit line names the method"
    );
    assert!(
        !log.contains(&good),
        "the service-account token is never logged"
    );
}

#[tokio::test]
async fn pod_bound_token_stops_working_once_the_pod_is_gone_and_the_cache_bound_passed() {
    let ns = TestNamespace::new("wi-pod").await;
    let issuer = format!("https://m2m.{}.test", ns.name);
    let op = start_run(&ns, &issuer);
    op.wait_ready().await;
    apply(&ns, setup_yaml());
    wait_workload_ready(&ns, "uploads").await;
    // A Pod object: it never runs here (no kubelet), but tokens can be bound to it.
    apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: { name: worker }\nspec:\n  serviceAccountName: uploader\n  automountServiceAccountToken: false\n  containers: [{ name: c, image: busybox }]\n",
    );
    let bound = mint(
        &ns.name,
        "uploader",
        &issuer,
        &[
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "worker",
        ],
    );
    assert_eq!(
        claims(&bound)["kubernetes.io"]["pod"]["name"],
        "worker",
        "a pod-bound token"
    );
    let (code, body) = exchange(&op.url, &bound, None, &[]).await;
    assert_eq!(code, 200, "{body}");
    kubectl_ok(&[
        "delete",
        "pod",
        "worker",
        "-n",
        &ns.name,
        "--grace-period=0",
        "--force",
    ]);
    // Cached results may serve it until our bound has passed — and the
    // apiserver's own cache of successful token authentications (10 s in
    // kube-apiserver) — after that Kubernetes says no.
    let bound_total = CACHE_BOUND + APISERVER_TOKEN_CACHE + Duration::from_secs(2);
    eventually("the deleted Pod's token refused", bound_total, || async {
        let (code, body) = exchange(&op.url, &bound, None, &[]).await;
        (code == 401 && body["error"] == "invalid_client").then_some(())
    })
    .await;
}

#[tokio::test]
async fn disable_delete_and_mode_switches_take_effect_within_2s_on_two_replicas() {
    let ns = TestNamespace::new("wi-repl").await;
    let issuer = format!("https://m2m.{}.test", ns.name);
    let _controller = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
            ..Default::default()
        },
    );
    let servers: Vec<Operator> = (0..2)
        .map(|_| {
            Operator::start_with(
                &ns,
                OperatorOptions {
                    subcommand: "token-server",
                    issuer: Some(issuer.clone()),
                    args: vec!["--assertion-cache-ttl".into(), "30s".into()],
                    ..Default::default()
                },
            )
        })
        .collect();
    for s in &servers {
        s.wait_ready().await;
    }
    // Starts secret-based.
    apply(
        &ns,
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: uploader }
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ci-bot }
spec: { scopes: ["repo:read"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: uploads }
spec: { serviceAccountName: ci-bot }
"#,
    );
    let (id, secret) = eventually("credential Secret", Duration::from_secs(30), || async {
        let s = ns
            .api::<Secret>()
            .get_opt("uploads-credentials")
            .await
            .ok()??;
        let data = s.data?;
        let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some((get("client_id")?, get("client_secret")?))
    })
    .await;
    let secret_ok = |base: String| {
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            http()
                .post(format!("{base}/oauth/token"))
                .basic_auth(id, Some(secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for s in &servers {
        eventually("secret works", Duration::from_secs(10), || async {
            (secret_ok(s.url.clone()).await == 200).then_some(())
        })
        .await;
    }
    let good = mint(&ns.name, "uploader", &issuer, &[]);
    assert_eq!(
        exchange(&servers[0].url, &good, None, &[]).await.0,
        401,
        "not bound yet"
    );

    // ClientSecret -> WorkloadIdentity: the Secret is deleted, the secret stops working.
    let creds = ns.api::<M2MCredential>();
    let pp = PatchParams::default();
    creds
        .patch(
            "uploads",
            &pp,
            &Patch::Merge(
                json!({"spec": {"workloadIdentity": {"kubernetesServiceAccount": "uploader"}}}),
            ),
        )
        .await
        .unwrap();
    let start = std::time::Instant::now();
    for s in &servers {
        eventually("secret refused after the switch", PROPAGATION, || async {
            (secret_ok(s.url.clone()).await == 401).then_some(())
        })
        .await;
        eventually(
            "assertion accepted after the switch",
            PROPAGATION,
            || async { (exchange(&s.url, &good, None, &[]).await.0 == 200).then_some(()) },
        )
        .await;
    }
    assert!(start.elapsed() < PROPAGATION * 2);
    eventually("old Secret deleted", Duration::from_secs(10), || async {
        ns.api::<Secret>()
            .get_opt("uploads-credentials")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    wait_workload_ready(&ns, "uploads").await;

    // Disabling the m2m ServiceAccount refuses on both replicas within 2 s,
    // although their assertion caches still hold the token.
    let accounts = ns.api::<m2m_operator::crd::ServiceAccount>();
    accounts
        .patch(
            "ci-bot",
            &pp,
            &Patch::Merge(json!({"spec": {"disabled": true}})),
        )
        .await
        .unwrap();
    for s in &servers {
        eventually("refused once disabled", PROPAGATION, || async {
            (exchange(&s.url, &good, None, &[]).await.0 != 200).then_some(())
        })
        .await;
    }
    accounts
        .patch(
            "ci-bot",
            &pp,
            &Patch::Merge(json!({"spec": {"disabled": false}})),
        )
        .await
        .unwrap();
    for s in &servers {
        eventually("accepted once re-enabled", PROPAGATION, || async {
            (exchange(&s.url, &good, None, &[]).await.0 == 200).then_some(())
        })
        .await;
    }

    // WorkloadIdentity -> ClientSecret: a fresh Secret at a new version; the assertion stops.
    creds
        .patch(
            "uploads",
            &pp,
            &Patch::Merge(json!({"spec": {"workloadIdentity": null}})),
        )
        .await
        .unwrap();
    for s in &servers {
        eventually(
            "assertion refused after switching back",
            PROPAGATION,
            || async { (exchange(&s.url, &good, None, &[]).await.0 == 401).then_some(()) },
        )
        .await;
    }
    let (id2, secret2) = eventually("a new Secret", Duration::from_secs(30), || async {
        let s = ns
            .api::<Secret>()
            .get_opt("uploads-credentials")
            .await
            .ok()??;
        let data = s.data?;
        let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some((get("client_id")?, get("client_secret")?))
    })
    .await;
    assert_eq!(id2, id, "the client id never changes");
    assert_ne!(secret2, secret, "a fresh secret");
    // The Secret is written before the status: wait for the status too.
    let st = eventually(
        "status at secret version 2",
        Duration::from_secs(10),
        || async {
            let st = creds.get("uploads").await.ok()?.status?;
            (st.secret_version == 2).then_some(st)
        },
    )
    .await;
    assert!(st.workload_identity.is_none());
    assert_eq!(
        serde_json::to_value(st.mode).unwrap(),
        json!("ClientSecret")
    );
    // The fresh secret works (the next version, not the one before the switch).
    for s in &servers {
        let (id, secret) = (id2.clone(), secret2.clone());
        eventually("the new secret works", PROPAGATION, || {
            let (id, secret, url) = (id.clone(), secret.clone(), s.url.clone());
            async move {
                let code = http()
                    .post(format!("{url}/oauth/token"))
                    .basic_auth(id, Some(secret))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await
                    .ok()?
                    .status()
                    .as_u16();
                (code == 200).then_some(())
            }
        })
        .await;
    }

    // Back to workload identity, then deleting the credential refuses within 2 s.
    creds
        .patch(
            "uploads",
            &pp,
            &Patch::Merge(
                json!({"spec": {"workloadIdentity": {"kubernetesServiceAccount": "uploader"}}}),
            ),
        )
        .await
        .unwrap();
    for s in &servers {
        eventually("accepted again", PROPAGATION, || async {
            (exchange(&s.url, &good, None, &[]).await.0 == 200).then_some(())
        })
        .await;
    }
    creds
        .delete("uploads", &DeleteParams::default())
        .await
        .unwrap();
    for s in &servers {
        eventually(
            "refused once the credential is deleted",
            PROPAGATION,
            || async { (exchange(&s.url, &good, None, &[]).await.0 == 401).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn binding_the_default_service_account_needs_the_opt_in() {
    let ns = TestNamespace::new("wi-default").await;
    let issuer = format!("https://m2m.{}.test", ns.name);
    let op = start_run(&ns, &issuer);
    op.wait_ready().await;
    apply(
        &ns,
        r#"
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ci-bot }
spec: { scopes: ["repo:read"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: everyone }
spec:
  serviceAccountName: ci-bot
  workloadIdentity: { kubernetesServiceAccount: default }
"#,
    );
    let creds = ns.api::<M2MCredential>();
    eventually(
        "Ready=False DefaultServiceAccountNotAllowed",
        Duration::from_secs(30),
        || async {
            let c = creds.get("everyone").await.ok()?;
            c.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "DefaultServiceAccountNotAllowed")
                .then_some(())
        },
    )
    .await;
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(String::from_utf8_lossy(&events.stdout).contains("DefaultServiceAccountNotAllowed"));
    // The namespace's default ServiceAccount exists once the controller-manager created it.
    let token = eventually(
        "default ServiceAccount",
        Duration::from_secs(30),
        || async {
            let out = kubectl(&[
                "create",
                "token",
                "default",
                "-n",
                &ns.name,
                "--audience",
                &issuer,
            ]);
            out.status
                .success()
                .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
        },
    )
    .await;
    assert_eq!(exchange(&op.url, &token, None, &[]).await.0, 401);
    creds
        .patch(
            "everyone",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"workloadIdentity": {"allowDefaultServiceAccount": true}}}),
            ),
        )
        .await
        .unwrap();
    wait_workload_ready(&ns, "everyone").await;
    eventually("accepted with the opt-in", PROPAGATION, || async {
        (exchange(&op.url, &token, None, &[]).await.0 == 200).then_some(())
    })
    .await;
}

/// Is `token` active, asked by the resource-server credential?
async fn active(base: &str, rs: &(String, String), token: &str) -> bool {
    let v: Value = http()
        .post(format!("{base}/oauth/introspect"))
        .basic_auth(&rs.0, Some(&rs.1))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["active"] == json!(true)
}

/// Tokens of an earlier workload-identity binding never come back: a
/// binding switched to another ServiceAccount, or removed and added again,
/// leaves every token issued before inactive (each switch starts a new
/// epoch, carried in `m2m_sv`).
#[tokio::test]
async fn tokens_of_an_earlier_binding_stay_inactive_after_a_switch_or_re_adding() {
    let ns = TestNamespace::new("wi-epoch").await;
    let issuer = format!("https://m2m.{}.test", ns.name);
    let op = start_run(&ns, &issuer);
    op.wait_ready().await;
    apply(&ns, setup_yaml());
    wait_workload_ready(&ns, "uploads").await;
    let rs = support::credential_secret(&ns, "resource-server", 1, Duration::from_secs(30)).await;
    let uploader = mint(&ns.name, "uploader", &issuer, &[]);
    let intruder = mint(&ns.name, "intruder", &issuer, &[]);
    let get_token = |assertion: String| {
        let url = op.url.clone();
        async move {
            eventually(
                "a token for the binding",
                Duration::from_secs(10),
                || async {
                    let (code, body) = exchange(&url, &assertion, None, &[]).await;
                    (code == 200).then(|| body["access_token"].as_str().unwrap().to_owned())
                },
            )
            .await
        }
    };
    let first = get_token(uploader.clone()).await;
    assert!(active(&op.url, &rs, &first).await);

    let creds = ns.api::<M2MCredential>();
    let set_binding = |sa: Option<&str>| {
        let wi = sa.map_or(Value::Null, |sa| json!({ "kubernetesServiceAccount": sa }));
        let creds = creds.clone();
        async move {
            creds
                .patch(
                    "uploads",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "workloadIdentity": wi } })),
                )
                .await
                .unwrap();
        }
    };
    // Switch to another ServiceAccount: the first token is inactive.
    set_binding(Some("intruder")).await;
    let second = get_token(intruder.clone()).await;
    assert!(
        !active(&op.url, &rs, &first).await,
        "a token of the previous binding is still active"
    );
    // Back to the first ServiceAccount: neither earlier token revives.
    set_binding(Some("uploader")).await;
    let third = get_token(uploader.clone()).await;
    assert!(active(&op.url, &rs, &third).await);
    assert!(
        !active(&op.url, &rs, &first).await,
        "the first token revived"
    );
    assert!(
        !active(&op.url, &rs, &second).await,
        "the second token revived"
    );
    // Removed (secret-based) and added again: still nothing revives.
    set_binding(None).await;
    eventually(
        "inactive without workload identity",
        Duration::from_secs(10),
        || async { (!active(&op.url, &rs, &third).await).then_some(()) },
    )
    .await;
    // Re-added at once, before the controller may have looked: the status
    // still holds the old epoch behind two unseen generations, which no
    // token server honours until the controller has renewed it.
    set_binding(Some("uploader")).await;
    let fourth = get_token(uploader.clone()).await;
    assert!(active(&op.url, &rs, &fourth).await);
    for (name, token) in [("first", &first), ("second", &second), ("third", &third)] {
        assert!(
            !active(&op.url, &rs, token).await,
            "the {name} token revived"
        );
    }
    let cred = creds.get("uploads").await.unwrap();
    let status = serde_json::to_value(cred.status.unwrap()).unwrap();
    assert_eq!(
        claims(&fourth)["m2m_sv"],
        status["workloadIdentity"]["epoch"]
    );
}

/// A forged assertion per request (unsigned, naming a bound ServiceAccount)
/// from one source: how many TokenReviews reach the real apiserver.
/// Before the fix it was one per request (~760/s in the review, 709/s
/// here); now the source's failure limit stops them before the apiserver.
#[tokio::test]
async fn a_flood_of_forged_assertions_costs_the_apiserver_almost_nothing() {
    let ns = TestNamespace::new("wi-flood").await;
    let issuer = format!("https://m2m.{}.test", ns.name);
    let op = start_run(&ns, &issuer);
    op.wait_ready().await;
    apply(&ns, setup_yaml());
    wait_workload_ready(&ns, "uploads").await;
    let forged = |n: usize| {
        let now = chrono::Utc::now().timestamp();
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.{}",
            enc(json!({ "alg": "RS256", "kid": "x" })),
            enc(json!({
                "iss": "https://kubernetes.default.svc",
                "sub": format!("system:serviceaccount:{}:uploader", ns.name),
                "aud": [issuer],
                "exp": now + 3600, "iat": now, "nbf": now, "jti": format!("forged-{n}"),
            })),
            URL_SAFE_NO_PAD.encode([7u8; 256])
        )
    };
    let reviews = || async {
        let text = http()
            .get(format!("{}/metrics", op.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("m2m_token_assertion_checks_total{result=\"review_"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = reviews().await;
    // The review's flood: 20,000 requests from one source.
    let requests = 20_000;
    let started = std::time::Instant::now();
    // The flood comes from its own source address (all of 127/8 is loopback).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let url = format!("{}/oauth/token", op.url);
    let statuses: Vec<u16> = futures::stream::iter(0..requests)
        .map(|n| {
            let (http, url, token) = (http.clone(), url.clone(), forged(n));
            async move {
                http.post(url)
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_assertion_type", ASSERTION_TYPE),
                        ("client_assertion", token.as_str()),
                    ])
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let made = reviews().await - before;
    println!(
        "flood: {requests} forged assertions in {elapsed:.1} s, {made} TokenReviews ({:.1}/s); answers 401: {}, 429: {}",
        made / elapsed,
        statuses.iter().filter(|s| **s == 401).count(),
        statuses.iter().filter(|s| **s == 429).count(),
    );
    // The failure burst (10; each review takes its failure before it
    // starts, so concurrent requests cannot overrun it), one more per 2 s,
    // and slack for timing.
    let bound = 10.0 + elapsed / 2.0 + 5.0;
    assert!(
        made <= bound,
        "{made} TokenReviews for {requests} forged assertions in {elapsed:.1} s (bound {bound:.0})"
    );
    // A real token from another source works at once.
    let good = mint(&ns.name, "uploader", &issuer, &[]);
    let (code, body) = exchange(&op.url, &good, None, &[]).await;
    assert_eq!(code, 200, "{body}");
}
