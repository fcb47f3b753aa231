//! Sender-constrained tokens against the real apiserver and the real
//! operator binary (SPEC §10): DPoP (RFC 9449) with a third-party client
//! (npm `oauth4webapi`) and with proofs hand-built by PyPI's
//! `cryptography` (every refused kind of proof), and mTLS (RFC 8705) with
//! curl and openssl-made client certificates. The clients are installed by
//! `tests/cluster/install.sh` into `$M2M_TEST_CLIENTS_OUT`.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, credential_secret, eventually, kubectl};

/// Where install.sh put the third-party clients (tests/cluster/lib.sh).
fn clients_dir() -> PathBuf {
    let out = Command::new("bash")
        .args([
            "-c",
            "source tests/cluster/lib.sh && printf %s \"$M2M_TEST_CLIENTS_OUT\"",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bash");
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap());
    assert!(
        dir.join("node/node_modules/oauth4webapi").is_dir()
            && dir.join("python/bin/python3").exists(),
        "the third-party test clients are not installed in {}: run tests/cluster/install.sh",
        dir.display()
    );
    dir
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// Run the oauth4webapi DPoP client; its JSON line.
fn oauth4webapi(issuer: &str, id: &str, secret: &str, alg: &str, extra: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg(script("dpop-client.mjs"))
        .env("M2M_NODE_MODULES", clients_dir().join("node/node_modules"))
        .env("ISSUER", issuer)
        .env("CLIENT_ID", id)
        .env("CLIENT_SECRET", secret)
        .env("ALG", alg);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("node");
    assert!(
        out.status.success(),
        "oauth4webapi client ({alg}) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// Proofs hand-built with PyPI's cryptography for `POST htu`.
fn python_proofs(htu: &str) -> Value {
    let out = Command::new(clients_dir().join("python/bin/python3"))
        .arg(script("dpop_proofs.py"))
        .arg(htu)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn proof<'a>(proofs: &'a Value, name: &str) -> &'a str {
    proofs[name]["proof"].as_str().unwrap()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A token request with HTTP Basic, optional DPoP headers and extra
/// parameters; (status, body, DPoP-Nonce).
async fn token(
    base: &str,
    basic: Option<(&str, &str)>,
    dpop: &[&str],
    form: &[(&str, &str)],
) -> (u16, Value, Option<String>) {
    let mut request = http().post(format!("{base}/oauth/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    for proof in dpop {
        request = request.header("DPoP", *proof);
    }
    let r = request.send().await.expect("token endpoint");
    let status = r.status().as_u16();
    let nonce = r
        .headers()
        .get("dpop-nonce")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), nonce)
}

const CC: (&str, &str) = ("grant_type", "client_credentials");

async fn introspect(base: &str, rs: &(String, String), token: &str) -> Value {
    http()
        .post(format!("{base}/oauth/introspect"))
        .basic_auth(&rs.0, Some(&rs.1))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn apply(ns: &TestNamespace, yaml: &str) {
    let out = ns.apply_yaml(yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SETUP: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: uploader }
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: ci-bot }
spec: { scopes: ["repo:read", "repo:write"], tokenTTL: 10m }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: plain }
spec: { serviceAccountName: ci-bot }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: dpop-only }
spec: { serviceAccountName: ci-bot, senderConstraint: DPoP }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: resource-server }
spec: { serviceAccountName: ci-bot }
"#;

async fn start(ns: &TestNamespace, args: &[&str]) -> Operator {
    let op = Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "run",
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
    );
    op.wait_ready().await;
    op
}

#[tokio::test]
async fn a_third_party_dpop_client_gets_bound_tokens_that_introspection_reports() {
    let ns = TestNamespace::new("dpop-client").await;
    apply(&ns, SETUP);
    let op = start(&ns, &[]).await;
    let (id, secret) = credential_secret(&ns, "plain", 1, Duration::from_secs(30)).await;
    let rs = credential_secret(&ns, "resource-server", 1, Duration::from_secs(30)).await;
    for alg in ["ES256", "EdDSA"] {
        let out = oauth4webapi(&op.url, &id, &secret, alg, &[("SCOPE", "repo:read")]);
        assert_eq!(
            out["token_type"], "dpop",
            "oauth4webapi lower-cases it: {out}"
        );
        assert!(
            out["dpop_signing_alg_values_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(alg)),
            "{out}"
        );
        let access = out["access_token"].as_str().unwrap();
        let c = claims(access);
        assert_eq!(
            c["cnf"]["jkt"], out["jkt"],
            "cnf.jkt is the client key's RFC 7638 thumbprint"
        );
        assert_eq!(c["scope"], "repo:read");
        let i = introspect(&op.url, &rs, access).await;
        assert_eq!(i["active"], true, "{i}");
        assert_eq!(i["token_type"], "DPoP", "{i}");
        assert_eq!(i["cnf"]["jkt"], out["jkt"], "{i}");
    }
    // Without a proof the same client still gets a bearer token.
    let (status, body, _) = token(&op.url, Some((&id, &secret)), &[], &[CC]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        claims(body["access_token"].as_str().unwrap())
            .get("cnf")
            .is_none()
    );
    let i = introspect(&op.url, &rs, body["access_token"].as_str().unwrap()).await;
    assert_eq!(i["token_type"], "Bearer");
    assert!(i.get("cnf").is_none(), "{i}");
}

#[tokio::test]
async fn every_refused_dpop_proof_is_invalid_dpop_proof() {
    let ns = TestNamespace::new("dpop-refused").await;
    apply(&ns, SETUP);
    let op = start(&ns, &[]).await;
    let (id, secret) = credential_secret(&ns, "plain", 1, Duration::from_secs(30)).await;
    let (only_id, only_secret) =
        credential_secret(&ns, "dpop-only", 1, Duration::from_secs(30)).await;
    let htu = format!("{}/oauth/token", op.url);
    let proofs = python_proofs(&htu);
    let basic = Some((id.as_str(), secret.as_str()));

    // Good proofs made by an independent implementation are accepted, and
    // cnf.jkt is the thumbprint it computed.
    for good in ["valid_es256", "valid_eddsa"] {
        let (status, body, _) = token(&op.url, basic, &[proof(&proofs, good)], &[CC]).await;
        assert_eq!(status, 200, "{good}: {body}");
        assert_eq!(body["token_type"], "DPoP");
        let c = claims(body["access_token"].as_str().unwrap());
        assert_eq!(c["cnf"]["jkt"], proofs[good]["jkt"], "{good}");
    }

    // Replayed: the first use works, the second is refused.
    let replayed = proof(&proofs, "replayed");
    assert_eq!(token(&op.url, basic, &[replayed], &[CC]).await.0, 200);
    let (status, body, _) = token(&op.url, basic, &[replayed], &[CC]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{body}"
    );

    for (name, says) in [
        ("wrong_htm", "htm"),
        ("wrong_htu", "htu"),
        ("stale_iat", "too old"),
        ("future_iat", "future"),
        ("private_jwk", "private key"),
        ("alg_none", "alg"),
        ("alg_hs256", "alg"),
        ("other_key", "signature"),
        ("wrong_typ", "typ"),
        ("missing_jti", "jti"),
    ] {
        let (status, body, _) = token(&op.url, basic, &[proof(&proofs, name)], &[CC]).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"], "invalid_dpop_proof", "{name}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(says), "{name}: {description}");
    }
    // Two proofs at once.
    let fresh = python_proofs(&htu);
    let (status, body, _) = token(
        &op.url,
        basic,
        &[proof(&fresh, "valid_es256"), proof(&fresh, "valid_eddsa")],
        &[CC],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );

    // senderConstraint: DPoP refuses a request without a proof, and binds
    // one with it.
    let only = Some((only_id.as_str(), only_secret.as_str()));
    let (status, body, _) = token(&op.url, only, &[], &[CC]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("senderConstraint"),
        "{body}"
    );
    let (status, body, _) =
        token(&op.url, only, &[proof(&fresh, "valid_es256_again")], &[CC]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    // A refused proof tells nothing about the client: a wrong secret with a
    // good proof is the ordinary 401.
    let (status, body, _) = token(
        &op.url,
        Some((id.as_str(), "m2ms_wrong")),
        &[proof(&fresh, "replayed")],
        &[CC],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    // ... and did not spend the proof: it still works with the right secret.
    let (status, body, _) = token(&op.url, basic, &[proof(&fresh, "replayed")], &[CC]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn dpop_binds_the_tokens_of_every_grant_and_client_authentication() {
    let ns = TestNamespace::new("dpop-grants").await;
    apply(&ns, SETUP);
    let expires = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    apply(
        &ns,
        &format!(
            r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: api }}
spec: {{ serviceAccountName: ci-bot, type: APIToken, expiresAt: "{expires}", senderConstraint: DPoP }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: workload }}
spec:
  serviceAccountName: ci-bot
  workloadIdentity: {{ kubernetesServiceAccount: uploader }}
"#
        ),
    );
    let op = start(&ns, &[]).await;
    let htu = format!("{}/oauth/token", op.url);
    let (id, secret) = credential_secret(&ns, "plain", 1, Duration::from_secs(30)).await;

    // client_secret_post.
    let proofs = python_proofs(&htu);
    let (status, body, _) = token(
        &op.url,
        None,
        &[proof(&proofs, "valid_es256")],
        &[CC, ("client_id", &id), ("client_secret", &secret)],
    )
    .await;
    assert_eq!(
        (status, body["token_type"].as_str()),
        (200, Some("DPoP")),
        "{body}"
    );

    // RFC 8693 token exchange of an API token whose credential requires DPoP.
    use k8s_openapi::api::core::v1::Secret;
    let api_token = eventually("the API token Secret", Duration::from_secs(30), || async {
        let s = ns.api::<Secret>().get_opt("api-credentials").await.ok()??;
        String::from_utf8(s.data?.get("token")?.0.clone()).ok()
    })
    .await;
    let exchange = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token", api_token.as_str()),
    ];
    let (status, body, _) = token(&op.url, None, &[], &exchange).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    let (status, body, _) = token(&op.url, None, &[proof(&proofs, "valid_eddsa")], &exchange).await;
    assert_eq!(
        (status, body["token_type"].as_str()),
        (200, Some("DPoP")),
        "{body}"
    );
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        proofs["valid_eddsa"]["jkt"]
    );

    // Workload identity: a Kubernetes service-account token as the client
    // assertion, minted by the apiserver.
    let out = kubectl(&[
        "create",
        "token",
        "uploader",
        "-n",
        &ns.name,
        "--audience",
        &op.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let assertion = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let wi = [
        CC,
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ];
    let body = eventually(
        "a DPoP-bound workload-identity token",
        Duration::from_secs(30),
        || async {
            let fresh = python_proofs(&htu);
            let (status, body, _) =
                token(&op.url, None, &[proof(&fresh, "valid_es256")], &wi).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(body["token_type"], "DPoP", "{body}");
    assert!(claims(body["access_token"].as_str().unwrap())["cnf"]["jkt"].is_string());
}

#[tokio::test]
async fn the_dpop_nonce_flow_when_the_server_asks_for_one() {
    let ns = TestNamespace::new("dpop-nonce").await;
    apply(&ns, SETUP);
    let op = start(&ns, &["--dpop-nonce"]).await;
    let (id, secret) = credential_secret(&ns, "plain", 1, Duration::from_secs(30)).await;
    // A proof without a nonce: use_dpop_nonce with a DPoP-Nonce header.
    let proofs = python_proofs(&format!("{}/oauth/token", op.url));
    let (status, body, nonce) = token(
        &op.url,
        Some((&id, &secret)),
        &[proof(&proofs, "valid_es256")],
        &[CC],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce")),
        "{body}"
    );
    assert!(nonce.is_some_and(|n| !n.is_empty()));
    // oauth4webapi caches the nonce and retries once, as RFC 9449 §8 describes.
    let out = oauth4webapi(&op.url, &id, &secret, "ES256", &[]);
    assert_eq!(out["token_type"], "dpop", "{out}");
    assert_eq!(out["nonce_retries"], 1, "{out}");
    assert_eq!(
        claims(out["access_token"].as_str().unwrap())["cnf"]["jkt"],
        out["jkt"]
    );
}

/// A CA and a client certificate with the given SAN and `clientAuth`, signed by it.
fn client_pki(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    std::fs::write(
        p("ext"),
        format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"),
    )
    .unwrap();
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &s(&p("ca.key")),
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &s(&p("ca.key")),
        "-subj",
        &format!("/CN={name} client CA"),
        "-days",
        "1",
        "-out",
        &s(&p("ca.crt")),
    ]);
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &s(&p("client.key")),
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        &s(&p("client.key")),
        "-subj",
        &format!("/CN={name}"),
        "-out",
        &s(&p("client.csr")),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&p("client.csr")),
        "-CA",
        &s(&p("ca.crt")),
        "-CAkey",
        &s(&p("ca.key")),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &s(&p("ext")),
        "-out",
        &s(&p("client.crt")),
    ]);
    (p("ca.crt"), p("client.crt"), p("client.key"))
}

/// RFC 8705 §3.1 `x5t#S256` of a PEM certificate, computed with openssl.
fn openssl_x5t(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&out.stdout))
}

/// curl (over TLS, trusting `server_ca`, with an optional client
/// certificate) POSTing `form` to `url`; (status, body), status 0 when the
/// connection failed.
fn curl(
    url: &str,
    server_ca: &Path,
    cert: Option<(&Path, &Path)>,
    basic: Option<&str>,
    form: &[&str],
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(server_ca);
    if let Some((crt, key)) = cert {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    if let Some(user) = basic {
        cmd.args(["-u", user]);
    }
    for f in form {
        cmd.args(["--data-urlencode", f]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn client_certificates_bind_tokens_and_authenticate_with_tls_client_auth() {
    let ns = TestNamespace::new("mtls").await;
    let dir = std::env::temp_dir().join(format!("m2m-mtls-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (server_ca, server_crt, server_key) = support::make_pki(&dir, "server");
    let spiffe = format!("spiffe://test.example/ns/{}/sa/uploader", ns.name);
    let (ca1, crt1, key1) = client_pki(&dir, "first", &format!("URI:{spiffe}"));
    let (_, dns_crt, dns_key) = client_pki(&dir, "dns", "DNS:client.test.example");
    let (ca2, crt2, key2) = client_pki(&dir, "second", &format!("URI:{spiffe}"));
    // The trusted CAs: the first client CA and the DNS one's.
    let trust = dir.join("client-ca.pem");
    let dns_ca = dir.join("dns-ca.crt");
    std::fs::write(
        &trust,
        [
            std::fs::read(&ca1).unwrap(),
            std::fs::read(&dns_ca).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    apply(&ns, SETUP);
    apply(
        &ns,
        &format!(
            r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: by-uri }}
spec: {{ serviceAccountName: ci-bot, senderConstraint: MTLS, mtls: {{ sanURI: "{spiffe}" }} }}
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: {{ name: by-dns }}
spec: {{ serviceAccountName: ci-bot, mtls: {{ sanDNS: client.test.example }} }}
"#
        ),
    );
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let op = start(
        &ns,
        &[
            "--tls-cert",
            &s(&server_crt),
            "--tls-key",
            &s(&server_key),
            "--tls-client-ca",
            &s(&trust),
        ],
    )
    .await;
    let base = op.url.replace("http://", "https://");
    let url = format!("{base}/oauth/token");
    let (uri_id, uri_secret) = credential_secret(&ns, "by-uri", 1, Duration::from_secs(30)).await;
    let (dns_id, _) = credential_secret(&ns, "by-dns", 1, Duration::from_secs(30)).await;
    let (plain_id, plain_secret) =
        credential_secret(&ns, "plain", 1, Duration::from_secs(30)).await;
    let rs = credential_secret(&ns, "resource-server", 1, Duration::from_secs(30)).await;
    let cc = "grant_type=client_credentials";

    // Metadata says so.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &s(&server_ca),
            &format!("{base}/.well-known/oauth-authorization-server"),
        ])
        .output()
        .unwrap();
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("tls_client_auth")),
        "{meta}"
    );
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);

    // tls_client_auth: client_id and the certificate, no secret.
    let client_id = format!("client_id={uri_id}");
    let (status, body) = curl(
        &url,
        &server_ca,
        Some((&crt1, &key1)),
        None,
        &[cc, &client_id],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["token_type"], "Bearer",
        "RFC 8705 §3: still used as a Bearer token"
    );
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&access)["cnf"]["x5t#S256"], openssl_x5t(&crt1));
    let i = eventually("introspection over TLS", Duration::from_secs(5), || async {
        let r = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&server_ca).unwrap()).unwrap(),
            )
            .build()
            .unwrap()
            .post(format!("{base}/oauth/introspect"))
            .basic_auth(&rs.0, Some(&rs.1))
            .form(&[("token", access.as_str())])
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["cnf"]["x5t#S256"], openssl_x5t(&crt1), "{i}");

    // senderConstraint: MTLS refuses its own secret without a certificate.
    let user = format!("{uri_id}:{uri_secret}");
    let (status, body) = curl(&url, &server_ca, None, Some(&user), &[cc]);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["error_description"].as_str().unwrap().contains("MTLS"),
        "{body}"
    );
    // Any token issued over a client-certificate connection is bound to it.
    let plain = format!("{plain_id}:{plain_secret}");
    let (status, body) = curl(
        &url,
        &server_ca,
        Some((&dns_crt, &dns_key)),
        Some(&plain),
        &[cc],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["cnf"]["x5t#S256"],
        openssl_x5t(&dns_crt)
    );
    let (status, body) = curl(&url, &server_ca, None, Some(&plain), &[cc]);
    assert_eq!(status, 200, "{body}");
    assert!(
        claims(body["access_token"].as_str().unwrap())
            .get("cnf")
            .is_none()
    );
    // A DNS SAN authenticates the credential naming it, and no other.
    let dns_client = format!("client_id={dns_id}");
    let (status, body) = curl(
        &url,
        &server_ca,
        Some((&dns_crt, &dns_key)),
        None,
        &[cc, &dns_client],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(
        &url,
        &server_ca,
        Some((&dns_crt, &dns_key)),
        None,
        &[cc, &client_id],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    // A certificate of an untrusted CA does not get through the handshake.
    let (status, _) = curl(
        &url,
        &server_ca,
        Some((&crt2, &key2)),
        None,
        &[cc, &client_id],
    );
    assert_eq!(
        status, 0,
        "an untrusted client certificate is refused at the handshake"
    );

    // The CA file is reloaded: trust the second CA instead of the first.
    std::fs::write(&trust, std::fs::read(&ca2).unwrap()).unwrap();
    eventually(
        "the second client CA is trusted",
        Duration::from_secs(20),
        || async {
            let (status, _) = curl(
                &url,
                &server_ca,
                Some((&crt2, &key2)),
                None,
                &[cc, &client_id],
            );
            (status == 200).then_some(())
        },
    )
    .await;
    let (status, _) = curl(
        &url,
        &server_ca,
        Some((&crt1, &key1)),
        None,
        &[cc, &client_id],
    );
    assert_eq!(status, 0, "the first CA is no longer trusted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `certificates.k8s.io/v1` ClusterTrustBundle of `signer` holding `ca`.
fn trust_bundle(name: &str, signer: &str, ca: &Path) -> String {
    let pem = std::fs::read_to_string(ca).unwrap();
    serde_json::to_string(&json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "ClusterTrustBundle",
        "metadata": { "name": name, "labels": { "m2m.dev/test": "true" } },
        "spec": { "signerName": signer, "trustBundle": pem },
    }))
    .unwrap()
}

#[tokio::test]
async fn client_certificate_trust_follows_the_cluster_trust_bundles_of_a_signer() {
    let ns = TestNamespace::new("mtls-ctb").await;
    let dir = std::env::temp_dir().join(format!("m2m-mtls-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (server_ca, server_crt, server_key) = support::make_pki(&dir, "server");
    let san = "DNS:bundle-client.test.example";
    let (ca1, crt1, key1) = client_pki(&dir, "first", san);
    let (ca2, crt2, key2) = client_pki(&dir, "second", san);
    // Bundle names are the signer name with ':' for '/', then a suffix.
    let signer = format!("m2m.dev/test-{}", ns.name);
    let bundle = format!("{}:main", signer.replace('/', ":"));
    let apply_bundle = |ca: &Path| {
        let out =
            support::kubectl_stdin(&["apply", "-f", "-"], &trust_bundle(&bundle, &signer, ca));
        assert!(
            out.status.success(),
            "ClusterTrustBundle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apply_bundle(&ca1);
    apply(&ns, SETUP);
    apply(
        &ns,
        r#"
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: by-dns }
spec: { serviceAccountName: ci-bot, mtls: { sanDNS: bundle-client.test.example } }
"#,
    );
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let op = start(
        &ns,
        &[
            "--tls-cert",
            &s(&server_crt),
            "--tls-key",
            &s(&server_key),
            "--tls-client-ca-signer",
            &signer,
        ],
    )
    .await;
    let url = format!("{}/oauth/token", op.url.replace("http://", "https://"));
    let (id, _) = credential_secret(&ns, "by-dns", 1, Duration::from_secs(30)).await;
    let form = [
        "grant_type=client_credentials".to_owned(),
        format!("client_id={id}"),
    ];
    let form: Vec<&str> = form.iter().map(String::as_str).collect();
    let status_with =
        |crt: &Path, key: &Path| curl(&url, &server_ca, Some((crt, key)), None, &form).0;
    eventually(
        "the bundle's CA is trusted",
        Duration::from_secs(20),
        || async { (status_with(&crt1, &key1) == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        status_with(&crt2, &key2),
        0,
        "a CA outside the bundle is not trusted"
    );
    // The signer rotates its CA: the bundle changes, the trust follows.
    apply_bundle(&ca2);
    eventually("the new CA is trusted", Duration::from_secs(20), || async {
        (status_with(&crt2, &key2) == 200).then_some(())
    })
    .await;
    assert_eq!(
        status_with(&crt1, &key1),
        0,
        "the replaced CA is no longer trusted"
    );
    // Deleting the bundle withdraws the trust.
    let out = kubectl(&["delete", "clustertrustbundle", &bundle]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("no CA is trusted", Duration::from_secs(20), || async {
        (status_with(&crt2, &key2) == 0).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
