//! Federation against real issuers (SPEC §9), none written by us.
//!
//! "Another cluster" is a second kube-apiserver + etcd on loopback
//! (`tests/cluster/issuer-cluster.sh`, started here if it is not running):
//! its own CA, service-account issuer and signing key, discovery served as
//! Kubernetes serves it. Its `kubectl create token` tokens are the
//! assertions. The operator runs as real child processes (`run` plus a
//! second `token-server` replica), so "every replica within 2 s" is
//! observed on both.
//!
//! Kubernetes will not mint a token that expires in less than 10 minutes,
//! so "expired" is covered by the unit tests of `core::federation::verify`
//! (and here by a forged `exp`, which breaks the signature).

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use m2m_operator::crd::{ClusterTrustedIssuer, ConditionStatus, M2MCredential};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{Operator, OperatorOptions, TestNamespace, eventually, kubectl_bin};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// SPEC §4: a change reaches every replica within this.
const PROPAGATION: Duration = Duration::from_secs(2);

/// Tests that use the other cluster share it; the rotation test restarts it
/// and so has it alone.
static OTHER_CLUSTER_USE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The other cluster's issuer URL, kubeconfig and CA.
struct OtherCluster {
    url: String,
    kubeconfig: PathBuf,
    ca_pem: String,
}

fn issuer_script(action: &str) -> String {
    let out = Command::new("tests/cluster/issuer-cluster.sh")
        .arg(action)
        .output()
        .expect("run tests/cluster/issuer-cluster.sh");
    assert!(
        out.status.success(),
        "issuer-cluster.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn other_cluster() -> &'static OtherCluster {
    static OTHER: OnceLock<OtherCluster> = OnceLock::new();
    OTHER.get_or_init(|| {
        let env = issuer_script("up");
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} in {env}"))
                .trim_matches('\'')
                .to_owned()
        };
        let ca = PathBuf::from(var("M2M_ISSUER_CA"));
        OtherCluster {
            url: var("M2M_ISSUER_URL"),
            kubeconfig: PathBuf::from(var("M2M_ISSUER_KUBECONFIG")),
            ca_pem: std::fs::read_to_string(&ca).expect("the other cluster's CA"),
        }
    })
}

/// `kubectl` against the other cluster.
fn other_kubectl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let other = other_cluster();
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&other.kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} (other cluster): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A namespace with ServiceAccounts in the other cluster.
fn other_service_accounts(ns: &str, names: &[&str]) {
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns} }}\n");
    for n in names {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: {n}, namespace: {ns} }}\n"
        ));
    }
    other_kubectl(&["apply", "-f", "-"], Some(&yaml));
}

/// `kubectl create token` in the other cluster.
fn other_token(ns: &str, sa: &str, audience: &str, duration: &str) -> String {
    other_kubectl(
        &[
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            duration,
        ],
        None,
    )
    .trim()
    .to_owned()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client_credentials request with `assertion` as RFC 7523 client assertion.
async fn assert_with(base: &str, assertion: &str, client_id: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    if let Some(id) = client_id {
        form.push(("client_id", id));
    }
    post(base, &form).await
}

/// An RFC 8693 exchange with `jwt` as subject token.
async fn exchange(base: &str, jwt: &str) -> (u16, Value) {
    post(
        base,
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", jwt),
            ("subject_token_type", JWT_TYPE),
        ],
    )
    .await
}

/// Each request from its own loopback address, so that the refused cases
/// of a test do not use up one source's failure allowance (10, then one per
/// 2 s) and turn into `429`s.
async fn post(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let source = std::net::IpAddr::from([127, 0, (n / 250 % 250) as u8 + 1, (n % 250) as u8 + 2]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(source)
        .build()
        .unwrap();
    let r = http
        .post(format!("{base}/oauth/token"))
        .form(form)
        .send()
        .await
        .expect("token endpoint reachable");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

/// `token` with its header and payload replaced (the signature kept).
fn forge(token: &str, header: &Value, payload: &Value) -> String {
    let sig = token.split('.').nth(2).unwrap();
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

fn apply(ns: &TestNamespace, yaml: &str) {
    let out = ns.apply_yaml(yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_ready(conditions: &[m2m_operator::crd::Condition]) -> Option<(ConditionStatus, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status, c.reason.clone()))
}

/// Wait until the credential is Ready in federation mode; its client id.
async fn wait_federation_ready(ns: &TestNamespace, name: &str) -> String {
    eventually(
        "credential Ready in federation mode",
        Duration::from_secs(30),
        || async {
            let c = ns.api::<M2MCredential>().get(name).await.ok()?;
            let s = c.status?;
            (is_ready(&s.conditions)? == (ConditionStatus::True, "Issuing".into())
                && s.federation.is_some())
            .then_some(s.client_id?)
        },
    )
    .await
}

/// Wait for the credential's Ready reason.
async fn wait_reason(ns: &TestNamespace, name: &str, reason: &str) -> String {
    eventually(
        &format!("{name} Ready=False {reason}"),
        Duration::from_secs(30),
        || async {
            let c = ns.api::<M2MCredential>().get(name).await.ok()?;
            let s = c.status?;
            let cond = s.conditions.iter().find(|c| c.type_ == "Ready")?;
            (cond.status == ConditionStatus::False && cond.reason == reason)
                .then(|| cond.message.clone())
        },
    )
    .await
}

/// Poll both replicas until both answer `want` (401: refused, which after
/// repeated failures for one subject is `429`), within PROPAGATION.
async fn both_answer(bases: &[&str], token: &str, want: u16, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for b in bases {
            let got = assert_with(b, token, None).await.0;
            if got != want && !(want == 401 && got == 429) {
                all = false;
            }
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION + Duration::from_millis(500),
            "{what}: not every replica answered {want} within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics` of `op`, asserting that `m2m_federation_assertions_total`
/// has each of `results` for the issuer label `issuer`.
async fn assert_results(op: &Operator, issuer: &str, results: &[&str]) -> String {
    let metrics = http()
        .get(format!("{}/metrics", op.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for result in results {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("m2m_federation_assertions_total")
                    && l.contains(issuer)
                    && l.contains(&format!("result=\"{result}\""))),
            "no {result} for {issuer} in:\n{metrics}"
        );
    }
    metrics
}

/// The scenario's objects: a ClusterTrustedIssuer for the other cluster
/// allowed for namespaces labelled for this test, an m2m ServiceAccount and
/// a credential binding `system:serviceaccount:<other_ns>:uploader`.
fn cluster_issuer_yaml(
    name: &str,
    label: &str,
    issuer_url: &str,
    ca: &str,
    audience: &str,
) -> String {
    let ca = ca.replace('\n', "\n    ");
    format!(
        r#"apiVersion: m2m.dev/v1alpha1
kind: ClusterTrustedIssuer
metadata: {{ name: {name} }}
spec:
  issuer: {issuer_url}
  audiences: ["{audience}"]
  maxTokenLifetime: 1h
  caBundle: |
    {ca}
  allowedNamespaces:
    matchLabels: {{ m2m.dev/federation-test: "{label}" }}
"#
    )
}

#[tokio::test]
async fn another_clusters_tokens_are_accepted_for_the_bound_subject_only() {
    let _shared = OTHER_CLUSTER_USE.read().await;
    let other = other_cluster();
    let ns = TestNamespace::new("fed-k8s").await;
    let other_ns = format!("ci-{}", ns.name);
    other_service_accounts(&other_ns, &["uploader", "intruder"]);
    let issuer_name = format!("{}-other", ns.name);
    // The operator's issuer URL must be known before the objects: fix the port.
    let port = support::free_port();
    let our_issuer = format!("http://127.0.0.1:{port}");
    let label = ns.name.clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(support::client().await);
    let set_label = |value: Option<&str>| json!({ "metadata": { "labels": { "m2m.dev/federation-test": value } } });
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(set_label(Some(&label))),
        )
        .await
        .unwrap();
    let issuers: Api<ClusterTrustedIssuer> = Api::all(support::client().await);
    let out = support::kubectl_stdin(
        &["apply", "-f", "-"],
        &cluster_issuer_yaml(&issuer_name, &label, &other.url, &other.ca_pem, &our_issuer),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(
        &ns,
        &format!(
            r#"apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: {{ name: ci-bot }}
spec: {{ scopes: ["artifacts:write"] }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: uploader }}
spec:
  serviceAccountName: ci-bot
  federation:
    issuerRef: {{ kind: ClusterTrustedIssuer, name: {issuer_name} }}
    subject: system:serviceaccount:{other_ns}:uploader
"#
        ),
    );
    let op = Operator::start_with(
        &ns,
        OperatorOptions {
            listen_port: Some(port),
            args: vec!["--assertion-cache-ttl".into(), "2s".into()],
            ..Default::default()
        },
    );
    let replica = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "token-server",
            issuer: Some(our_issuer.clone()),
            args: vec!["--assertion-cache-ttl".into(), "2s".into()],
            ..Default::default()
        },
    );
    op.wait_ready().await;
    replica.wait_ready().await;
    let bases = [op.url.as_str(), replica.url.as_str()];

    // The issuer is Ready with the other cluster's keys in status.
    let status = eventually(
        "issuer Ready with keys",
        Duration::from_secs(30),
        || async {
            let s = issuers.get(&issuer_name).await.ok()?.status?;
            (is_ready(&s.conditions)?.0 == ConditionStatus::True && !s.keys.is_empty()).then_some(s)
        },
    )
    .await;
    assert_eq!(
        status.jwks_url.as_deref(),
        Some(format!("{}/openid/v1/jwks", other.url).as_str()),
        "found by discovery, as Kubernetes publishes it"
    );
    assert!(
        status.keys.iter().all(|k| k.alg == "RS256"),
        "{:?}",
        status.keys
    );
    let client_id = wait_federation_ready(&ns, "uploader").await;

    // The bound subject's token works on both replicas, as client
    // assertion (without and with client_id) and as RFC 8693 subject token.
    let good = other_token(&other_ns, "uploader", &our_issuer, "30m");
    for base in bases {
        let (code, body) = assert_with(base, &good, None).await;
        assert_eq!(code, 200, "{body}");
        let at = claims(body["access_token"].as_str().unwrap());
        assert_eq!(at["sub"], format!("m2m:{}:ci-bot", ns.name));
        assert_eq!(at["client_id"], client_id);
        assert_eq!(at["scope"], "artifacts:write");
    }
    assert_eq!(assert_with(&op.url, &good, Some(&client_id)).await.0, 200);
    let (code, body) = exchange(&op.url, &good).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );

    // Every refused case is the same 401 invalid_client.
    let refused = |what: &'static str| {
        move |(code, body): (u16, Value)| {
            assert_eq!(
                (code, body["error"].as_str()),
                (401, Some("invalid_client")),
                "{what}: {body}"
            );
        }
    };
    // Another subject of the same issuer.
    let intruder = other_token(&other_ns, "intruder", &our_issuer, "30m");
    refused("another subject")(assert_with(&op.url, &intruder, None).await);
    refused("another subject naming the credential")(
        assert_with(&op.url, &intruder, Some(&client_id)).await,
    );
    refused("another subject, exchange")(exchange(&op.url, &intruder).await);
    // A foreign audience.
    let foreign = other_token(&other_ns, "uploader", "https://elsewhere.example", "30m");
    refused("foreign aud")(assert_with(&op.url, &foreign, None).await);
    // Longer-lived than maxTokenLifetime (1h).
    let long = other_token(&other_ns, "uploader", &our_issuer, "2h");
    refused("too long-lived")(assert_with(&op.url, &long, None).await);
    // Forgeries on the good token: alg none, HS256 keyed with the JWKS, an
    // unknown kid (after a refresh), an expired exp (signature broken).
    let jwks = http()
        .get(format!("{}/openid/v1/jwks", other.url))
        .send()
        .await;
    let jwks_text = match jwks {
        Ok(r) => r.text().await.unwrap_or_default(),
        // The test's client does not trust the other cluster's CA: any text will do.
        Err(_) => serde_json::to_string(&status.keys).unwrap(),
    };
    let payload = claims(&good);
    let mut h = header(&good);
    h["alg"] = "none".into();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(h.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    refused("alg none")(assert_with(&op.url, &none, None).await);
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = header(&good)["kid"].as_str().map(str::to_owned);
    let hmac = jsonwebtoken::encode(
        &hs,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(jwks_text.as_bytes()),
    )
    .unwrap();
    refused("HS256 with the JWKS as key")(assert_with(&op.url, &hmac, None).await);
    let mut unknown = header(&good);
    unknown["kid"] = "not-a-key-of-this-issuer".into();
    refused("unknown kid")(assert_with(&op.url, &forge(&good, &unknown, &payload), None).await);
    let mut expired = payload.clone();
    expired["exp"] = (chrono::Utc::now().timestamp() - 60).into();
    refused("expired (forged)")(
        assert_with(&op.url, &forge(&good, &header(&good), &expired), None).await,
    );
    // The metric names the issuer and the reason.
    let metrics = assert_results(
        &op,
        &format!("issuer=\"ClusterTrustedIssuer/{issuer_name}\""),
        &["ok", "subject", "audience", "lifetime", "unknown_kid"],
    )
    .await;
    assert!(
        metrics.contains("m2m_federation_key_refreshes_total"),
        "{metrics}"
    );

    // The namespace loses its label: refused on both replicas within 2 s,
    // and the credential says why; relabelled, it works again.
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(set_label(None)),
        )
        .await
        .unwrap();
    let took = both_answer(&bases, &good, 401, "namespace not allowed").await;
    eprintln!("namespace no longer allowed: refused by both replicas after {took:?}");
    wait_reason(&ns, "uploader", "IssuerNotAllowed").await;
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(set_label(Some(&label))),
        )
        .await
        .unwrap();
    both_answer(&bases, &good, 200, "namespace allowed again").await;

    // A TrustedIssuer of another namespace cannot be bound: the reference
    // names this namespace's (absent) one.
    let ns2 = TestNamespace::new("fed-k8s-other").await;
    let ca = other.ca_pem.replace('\n', "\n    ");
    let out = ns2.apply_yaml(&format!(
        r#"apiVersion: m2m.dev/v1alpha1
kind: TrustedIssuer
metadata: {{ name: theirs }}
spec:
  issuer: {}
  audiences: ["{our_issuer}"]
  caBundle: |
    {ca}
"#,
        other.url
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(
        &ns,
        &format!(
            r#"apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: borrower }}
spec:
  serviceAccountName: ci-bot
  federation:
    issuerRef: {{ kind: TrustedIssuer, name: theirs }}
    subject: system:serviceaccount:{other_ns}:intruder
"#
        ),
    );
    let why = wait_reason(&ns, "borrower", "IssuerNotFound").await;
    assert!(
        why.contains(&format!("TrustedIssuer/{}/theirs", ns.name)),
        "{why}"
    );
    refused("TrustedIssuer of another namespace")(assert_with(&op.url, &intruder, None).await);
    let borrower = ns.api::<M2MCredential>().get("borrower").await.unwrap();
    let borrower_id = borrower.status.and_then(|s| s.client_id).unwrap();
    refused("TrustedIssuer of another namespace, by client_id")(
        assert_with(&op.url, &intruder, Some(&borrower_id)).await,
    );

    // The issuer deleted: refused by both replicas within 2 s.
    issuers
        .delete(&issuer_name, &DeleteParams::default())
        .await
        .unwrap();
    let took = both_answer(&bases, &good, 401, "issuer deleted").await;
    eprintln!("issuer deleted: refused by both replicas after {took:?}");
    wait_reason(&ns, "uploader", "IssuerNotFound").await;
}

#[tokio::test]
async fn the_other_clusters_key_rotation_is_followed() {
    let _alone = OTHER_CLUSTER_USE.write().await;
    let other = other_cluster();
    let ns = TestNamespace::new("fed-rotate").await;
    let other_ns = format!("ci-{}", ns.name);
    other_service_accounts(&other_ns, &["uploader"]);
    let port = support::free_port();
    let our_issuer = format!("http://127.0.0.1:{port}");
    let ca = other.ca_pem.replace('\n', "\n    ");
    apply(
        &ns,
        &format!(
            r#"apiVersion: m2m.dev/v1alpha1
kind: TrustedIssuer
metadata: {{ name: other }}
spec:
  issuer: {}
  audiences: ["{our_issuer}"]
  caBundle: |
    {ca}
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: {{ name: ci-bot }}
spec: {{ scopes: ["artifacts:write"] }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: uploader }}
spec:
  serviceAccountName: ci-bot
  federation:
    issuerRef: {{ kind: TrustedIssuer, name: other }}
    subject: system:serviceaccount:{other_ns}:uploader
"#,
            other.url
        ),
    );
    let op = Operator::start_with(
        &ns,
        OperatorOptions {
            listen_port: Some(port),
            ..Default::default()
        },
    );
    op.wait_ready().await;
    wait_federation_ready(&ns, "uploader").await;
    let before = eventually("a token accepted", Duration::from_secs(30), || async {
        let t = other_token(&other_ns, "uploader", &our_issuer, "30m");
        (assert_with(&op.url, &t, None).await.0 == 200).then_some(t)
    })
    .await;
    let old_kid = header(&before)["kid"].clone();

    // Restart the other cluster with a new signing key (the old one kept
    // for verification): a token with the new kid is accepted at once —
    // its unknown kid refreshes the keys — and the old token still is.
    issuer_script("rotate");
    let after = other_token(&other_ns, "uploader", &our_issuer, "30m");
    assert_ne!(
        header(&after)["kid"],
        old_kid,
        "the other cluster signs with a new key"
    );
    let start = Instant::now();
    let (code, body) = assert_with(&op.url, &after, None).await;
    assert_eq!(
        code,
        200,
        "a token of the new key: {body}\n{}",
        op.log_text()
    );
    eprintln!("new key followed on first use, in {:?}", start.elapsed());
    assert_eq!(
        assert_with(&op.url, &before, None).await.0,
        200,
        "the old key still verifies"
    );
}

/// The npm `oidc-provider` package where tests/cluster/install.sh puts it.
fn oidc_provider_dir() -> PathBuf {
    let dir = support::bin_dir()
        .parent()
        .expect("cache dir")
        .join("versions/oidc-provider-9.13.3");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "{} lacks oidc-provider: run tests/cluster/install.sh",
        dir.display()
    );
    dir
}

/// `tests/federation/oidc-issuer.mjs` running: a generic OIDC provider
/// issuing GitHub-Actions-shaped tokens. Killed when dropped.
struct OidcIssuer {
    child: std::process::Child,
    url: String,
    ca_pem: String,
    http: reqwest::Client,
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcIssuer {
    /// Start it with one client per (owner, repo, ref) — the client id is
    /// GitHub's `sub` — and GitHub's claims for it.
    fn start(dir: &std::path::Path, repos: &[(&str, &str, &str)]) -> Self {
        use std::io::BufRead;
        let (ca, cert, key) = support::make_pki(dir, "oidc");
        let clients: Vec<Value> = repos
            .iter()
            .map(|(owner, repo, git_ref)| {
                json!({
                    "sub": format!("repo:{owner}/{repo}:ref:{git_ref}"),
                    "claims": {
                        "repository": format!("{owner}/{repo}"),
                        "repository_owner": owner,
                        "ref": git_ref,
                        "event_name": "push",
                    }
                })
            })
            .collect();
        let port = support::free_port();
        let mut child = Command::new("node")
            .arg("tests/federation/oidc-issuer.mjs")
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .env("OIDC_PROVIDER_DIR", oidc_provider_dir())
            .env("CLIENTS", serde_json::to_string(&clients).unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("oidc-issuer.mjs said {line:?}"))
            .to_owned();
        let ca_pem = std::fs::read_to_string(&ca).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        Self {
            child,
            url,
            ca_pem,
            http,
        }
    }

    /// A token for `sub` with `aud` = `resource` (none: an opaque token).
    async fn token(&self, sub: &str, resource: Option<&str>) -> String {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", sub),
            ("client_secret", "not-a-secret-of-the-operator"),
        ];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let body: Value = self
            .http
            .post(format!("{}/token", self.url))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {body}"))
            .to_owned()
    }
}

#[tokio::test]
async fn a_github_shaped_oidc_provider_is_bounded_by_claim_rules() {
    let ns = TestNamespace::new("fed-oidc").await;
    let dir = std::env::temp_dir().join(format!("m2m-fed-oidc-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let gh = OidcIssuer::start(
        &dir,
        &[
            ("acme", "app", "refs/heads/main"),
            ("acme", "other", "refs/heads/main"),
            ("evil", "app", "refs/heads/main"),
        ],
    );
    let port = support::free_port();
    let our_issuer = format!("http://127.0.0.1:{port}");
    let ca = gh.ca_pem.replace('\n', "\n    ");
    let issuer_yaml = |rule: &str| {
        format!(
            r#"apiVersion: m2m.dev/v1alpha1
kind: TrustedIssuer
metadata: {{ name: github }}
spec:
  issuer: {}
  caBundle: |
    {ca}
  maxTokenLifetime: 10m
  claimValidationRules:
    - expression: '{rule}'
      message: only acme's repositories
"#,
            gh.url
        )
    };
    apply(&ns, &issuer_yaml(r#"claims.repository_owner == "acme""#));
    apply(
        &ns,
        r#"apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ci-bot }
spec: { scopes: ["artifacts:write"] }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: app-main }
spec:
  serviceAccountName: ci-bot
  federation:
    issuerRef: { kind: TrustedIssuer, name: github }
    subject: "repo:acme/app:ref:refs/heads/main"
    condition: 'claims.ref == "refs/heads/main" && claims.event_name == "push"'
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: other-production }
spec:
  serviceAccountName: ci-bot
  federation:
    issuerRef: { kind: TrustedIssuer, name: github }
    subject: "repo:acme/other:ref:refs/heads/main"
    condition: 'claims.environment == "production"'
---
# The audience-only pitfall: a binding of another owner's repository (a
# typo, a recycled name) — the issuer's owner rule still refuses it.
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: careless }
spec:
  serviceAccountName: ci-bot
  federation:
    issuerRef: { kind: TrustedIssuer, name: github }
    subject: "repo:evil/app:ref:refs/heads/main"
"#,
    );
    let op = Operator::start_with(
        &ns,
        OperatorOptions {
            listen_port: Some(port),
            ..Default::default()
        },
    );
    let replica = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "token-server",
            issuer: Some(our_issuer.clone()),
            ..Default::default()
        },
    );
    op.wait_ready().await;
    replica.wait_ready().await;
    let bases = [op.url.as_str(), replica.url.as_str()];
    for name in ["app-main", "other-production", "careless"] {
        wait_federation_ready(&ns, name).await;
    }
    let refused = |what: &'static str| {
        move |(code, body): (u16, Value)| {
            assert_eq!(
                (code, body["error"].as_str()),
                (401, Some("invalid_client")),
                "{what}: {body}"
            );
        }
    };
    let acme = gh
        .token("repo:acme/app:ref:refs/heads/main", Some(&our_issuer))
        .await;
    assert_eq!(claims(&acme)["repository_owner"], "acme");
    for base in bases {
        let (code, body) = assert_with(base, &acme, None).await;
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(exchange(&op.url, &acme).await.0, 200);
    let evil = gh
        .token("repo:evil/app:ref:refs/heads/main", Some(&our_issuer))
        .await;
    refused("another repository owner (audience-only pitfall)")(
        assert_with(&op.url, &evil, None).await,
    );
    let other = gh
        .token("repo:acme/other:ref:refs/heads/main", Some(&our_issuer))
        .await;
    refused("a condition on a claim the token lacks")(assert_with(&op.url, &other, None).await);
    let opaque = gh.token("repo:acme/app:ref:refs/heads/main", None).await;
    refused("no aud (an opaque token)")(assert_with(&op.url, &opaque, None).await);
    let foreign = gh
        .token(
            "repo:acme/app:ref:refs/heads/main",
            Some("https://elsewhere.example"),
        )
        .await;
    refused("a foreign aud")(assert_with(&op.url, &foreign, None).await);

    // A rule change reaches both replicas within 2 s (the cached
    // verification is dropped with the issuer's old spec).
    apply(
        &ns,
        &issuer_yaml(r#"claims.repository_owner == "someone-else""#),
    );
    let took = both_answer(&bases, &acme, 401, "claim rule changed").await;
    eprintln!("claim rule change: refused by both replicas after {took:?}");
    apply(&ns, &issuer_yaml(r#"claims.repository_owner == "acme""#));
    both_answer(&bases, &acme, 200, "claim rule restored").await;

    // A rule that does not compile: Ready=False with the compiler's
    // message, and nothing of the issuer is accepted.
    apply(&ns, &issuer_yaml("claims.repository_owner =="));
    let issuers: Api<m2m_operator::crd::TrustedIssuer> = ns.api();
    let message = eventually("issuer Ready=False", Duration::from_secs(30), || async {
        let s = issuers.get("github").await.ok()?.status?;
        let c = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (c.status == ConditionStatus::False && c.reason == "InvalidClaimValidationRule")
            .then(|| c.message.clone())
    })
    .await;
    assert!(
        message.starts_with("claimValidationRules[0]: compiling:"),
        "{message}"
    );
    both_answer(&bases, &acme, 401, "rule does not compile").await;
    assert_results(
        &op,
        &format!("issuer=\"TrustedIssuer/{}/github\"", ns.name),
        &["ok", "claim_rule", "condition", "audience"],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
