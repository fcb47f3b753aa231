//! The `m2m.dev/workload-identity` PodCertificateRequest signer against
//! the real apiserver (SPEC §10): requests created as the cluster admin
//! (what a kubelet would send, with keys made by openssl) are Issued with
//! the right chain, SAN and lifetime, or Denied with a reason and an Event;
//! the CA is published as a ClusterTrustBundle, and rotating it keeps the
//! old CA in the bundle. The issued certificate then authenticates at the
//! token endpoint with `tls_client_auth` (no client_id, no secret) and binds
//! the token (`cnf["x5t#S256"]`). The kubelet's side (a `podCertificate`
//! volume) is `on_node::a_pod_certificate_gets_certificate_bound_tokens`.

mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually, kubectl, kubectl_stdin};

const SIGNER: &str = "m2m.dev/workload-identity";
const TRUST_DOMAIN: &str = "pods.test";

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key of `kind` and the stub PKCS#10 request the kubelet would send.
fn key_and_stub(dir: &Path, name: &str, kind: &str) -> (PathBuf, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let k = key.to_str().unwrap();
    let alg: &[&str] = match kind {
        "P256" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "P521" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        "ED25519" => &["-algorithm", "ED25519"],
        other => panic!("{other}"),
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(alg);
    args.extend_from_slice(&["-out", k]);
    openssl(&args);
    let der = openssl(&["req", "-new", "-subj", "/", "-outform", "DER", "-key", k]);
    (key, der)
}

fn request(name: &str, sa: &str, stub: &[u8], max_seconds: Option<i32>) -> String {
    let mut spec = json!({
        "signerName": SIGNER,
        "podName": format!("{name}-pod"),
        "podUID": format!("00000000-0000-0000-0000-{:012}", name.len()),
        "serviceAccountName": sa,
        "serviceAccountUID": "11111111-1111-1111-1111-111111111111",
        "nodeName": "node-a",
        "nodeUID": "22222222-2222-2222-2222-222222222222",
        "stubPKCS10Request": STANDARD.encode(stub),
    });
    if let Some(s) = max_seconds {
        spec["maxExpirationSeconds"] = json!(s);
    }
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "PodCertificateRequest",
        "metadata": { "name": name },
        "spec": spec,
    })
    .to_string()
}

fn create_request(ns: &TestNamespace, body: &str) {
    let out = kubectl_stdin(&["create", "-n", &ns.name, "-f", "-"], body);
    assert!(
        out.status.success(),
        "create PodCertificateRequest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get_json(args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = kubectl(&a);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The request's decided condition (type, reason) and status, once decided.
async fn decided(ns: &TestNamespace, name: &str) -> (String, String, Value) {
    eventually(
        &format!("PodCertificateRequest {name} decided"),
        Duration::from_secs(30),
        || async {
            let r = get_json(&["podcertificaterequest", "-n", &ns.name, name])?;
            let status = r["status"].clone();
            let c = status["conditions"].as_array()?.iter().find(|c| {
                ["Issued", "Denied", "Failed"].contains(&c["type"].as_str().unwrap_or(""))
            })?;
            Some((
                c["type"].as_str()?.to_owned(),
                c["reason"].as_str()?.to_owned(),
                status,
            ))
        },
    )
    .await
}

fn bundle_name(ns: &TestNamespace) -> String {
    format!("m2m.dev:workload-identity:{}", ns.name)
}

/// The PEM certificates of this operator's bundle (empty until published).
fn bundle_certs(ns: &TestNamespace) -> Vec<String> {
    let Some(b) = get_json(&["clustertrustbundle", &bundle_name(ns)]) else {
        return vec![];
    };
    assert_eq!(b["spec"]["signerName"], SIGNER);
    let pem = b["spec"]["trustBundle"].as_str().unwrap_or_default();
    pem.split_inclusive("-----END CERTIFICATE-----")
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with("-----BEGIN CERTIFICATE-----"))
        .collect()
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        kubectl(&[
            "delete",
            "clustertrustbundle",
            &self.0,
            "--ignore-not-found",
        ]);
    }
}

fn verify(dir: &Path, ca_pems: &[String], leaf: &str) -> bool {
    let ca = dir.join("verify-ca.pem");
    let crt = dir.join("verify-leaf.pem");
    std::fs::write(&ca, ca_pems.join("\n") + "\n").unwrap();
    std::fs::write(&crt, leaf).unwrap();
    Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&ca)
        .arg(&crt)
        .output()
        .unwrap()
        .status
        .success()
}

fn x509_text(dir: &Path, pem: &str) -> String {
    let f = dir.join("text.pem");
    std::fs::write(&f, pem).unwrap();
    String::from_utf8(openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        f.to_str().unwrap(),
    ]))
    .unwrap()
}

const SETUP: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: bound }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: unbound }
---
apiVersion: m2m.dev/v1alpha1
kind: ServiceAccount
metadata: { name: inventory }
spec: { scopes: ["inventory:write"], tokenTTL: 10m }
---
apiVersion: m2m.dev/v1alpha1
kind: M2MCredential
metadata: { name: bound }
spec:
  serviceAccountName: inventory
  workloadIdentity: { kubernetesServiceAccount: bound }
  mtls: { sanURI: "spiffe://pods.test/ns/NS/sa/bound" }
  senderConstraint: MTLS
"#;

async fn start(ns: &TestNamespace, dir: &Path, extra: &[&str]) -> (Operator, PathBuf) {
    let (server_ca, server_crt, server_key) = support::make_pki(dir, "server");
    let out = ns.apply_yaml(&SETUP.replace("NS", &ns.name));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mut args = vec![
        "--pod-certificates".to_owned(),
        "--pod-certificate-trust-domain".to_owned(),
        TRUST_DOMAIN.to_owned(),
        "--tls-cert".to_owned(),
        s(&server_crt),
        "--tls-key".to_owned(),
        s(&server_key),
        "--tls-client-ca-signer".to_owned(),
        SIGNER.to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let op = Operator::start_with(
        ns,
        OperatorOptions {
            subcommand: "run",
            args,
            ..Default::default()
        },
    );
    op.wait_ready().await;
    (op, server_ca)
}

/// A token with the Pod certificate: (status, body).
fn token_with(url: &str, server_ca: &Path, crt: &Path, key: &Path) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(server_ca)
        .arg("--cert")
        .arg(crt)
        .arg("--key")
        .arg(key)
        .args(["--data-urlencode", "grant_type=client_credentials"])
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn thumbprint(pem: &str) -> String {
    use sha2::Digest;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(STANDARD.decode(b64).unwrap()))
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn requests_are_issued_for_bound_service_accounts_and_denied_otherwise() {
    let ns = TestNamespace::new("podcert").await;
    let _bundle = Cleanup(bundle_name(&ns));
    let dir = std::env::temp_dir().join(format!("m2m-podcert-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (op, server_ca) = start(&ns, &dir, &[]).await;

    let (p256_key, p256) = key_and_stub(&dir, "p256", "P256");
    let (_, ed) = key_and_stub(&dir, "ed", "ED25519");
    let (_, p521) = key_and_stub(&dir, "p521", "P521");
    create_request(&ns, &request("bound-p256", "bound", &p256, Some(7200)));
    create_request(&ns, &request("bound-ed25519", "bound", &ed, None));
    create_request(&ns, &request("unbound", "unbound", &p256, None));
    create_request(&ns, &request("bound-p521", "bound", &p521, None));

    let (kind, reason, status) = decided(&ns, "bound-p256").await;
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Issued", "Issued"),
        "{status}"
    );
    let chain = status["certificateChain"].as_str().unwrap().to_owned();
    let ca = eventually("the CA bundle", Duration::from_secs(10), || async {
        let c = bundle_certs(&ns);
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(ca.len(), 1);
    assert!(
        verify(&dir, &ca, &chain),
        "the chain verifies against the bundle"
    );
    let text = x509_text(&dir, &chain);
    let spiffe = format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/bound", ns.name);
    assert!(text.contains(&format!("URI:{spiffe}")), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    // Lifetime: what the request allowed (2 h), notBefore/notAfter as in
    // the certificate, a refresh hint in between.
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(status[k].as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    assert_eq!(t("notAfter") - t("notBefore"), 7200);
    assert_eq!(t("beginRefreshAt") - t("notBefore"), 5400);
    let (kind, _, status) = decided(&ns, "bound-ed25519").await;
    assert_eq!(kind, "Issued");
    assert_eq!(
        t_of(&status, "notAfter") - t_of(&status, "notBefore"),
        86_400
    );
    assert!(x509_text(&dir, status["certificateChain"].as_str().unwrap()).contains("ED25519"));

    // Denied, with the reason, and an Event on the Pod.
    let (kind, reason, _) = decided(&ns, "unbound").await;
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Denied", "ServiceAccountNotBound")
    );
    let (kind, reason, status) = decided(&ns, "bound-p521").await;
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Denied", "UnsupportedKeyType")
    );
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("ECDSAP256"), "{message}");
    eventually(
        "a denial Event on the Pod",
        Duration::from_secs(20),
        || async {
            let events = get_json(&["events.events.k8s.io", "-n", &ns.name])?;
            events["items"]
                .as_array()?
                .iter()
                .any(|e| {
                    e["reason"] == "PodCertificateDenied"
                        && e["regarding"]["kind"] == "Pod"
                        && e["regarding"]["name"] == "unbound-pod"
                        && e["note"]
                            .as_str()
                            .unwrap_or("")
                            .contains("ServiceAccountNotBound")
                })
                .then_some(())
        },
    )
    .await;

    // The certificate authenticates (tls_client_auth, no client_id) and
    // binds the token.
    let crt = dir.join("p256.crt");
    std::fs::write(&crt, &chain).unwrap();
    let url = format!("{}/oauth/token", op.url.replace("http://", "https://"));
    let (code, body) = eventually(
        "the token server trusts the bundle",
        Duration::from_secs(30),
        || async {
            let (code, body) = token_with(&url, &server_ca, &crt, &p256_key);
            (code == 200).then_some((code, body))
        },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let claims = claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint(&chain), "{claims}");
    assert_eq!(claims["sub"], format!("m2m:{}:inventory", ns.name));
    // The CA key is in its own Secret, the bundle holds no key.
    let secret = get_json(&["secret", "-n", &ns.name, "m2m-operator-pod-ca"]).unwrap();
    assert!(secret["data"]["ca.key"].is_string());
    let bundle = get_json(&["clustertrustbundle", &bundle_name(&ns)]).unwrap();
    assert!(!bundle.to_string().contains("PRIVATE KEY"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn t_of(status: &Value, k: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(status[k].as_str().unwrap())
        .unwrap()
        .timestamp()
}

#[tokio::test]
async fn ca_rotation_keeps_the_old_ca_in_the_bundle_and_its_certificates_working() {
    let ns = TestNamespace::new("podcert-rot").await;
    let _bundle = Cleanup(bundle_name(&ns));
    let dir = std::env::temp_dir().join(format!("m2m-podcert-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (op, server_ca) = start(&ns, &dir, &["--pod-certificate-ca-rotation", "1m"]).await;
    let (key, stub) = key_and_stub(&dir, "before", "P256");
    create_request(&ns, &request("before", "bound", &stub, None));
    let (kind, _, status) = decided(&ns, "before").await;
    assert_eq!(kind, "Issued");
    let before = status["certificateChain"].as_str().unwrap().to_owned();
    let first = bundle_certs(&ns);
    assert_eq!(first.len(), 1);

    // After a minute a second CA signs; the first stays in the bundle.
    let rotated = eventually("the CA rotated", Duration::from_secs(120), || async {
        let c = bundle_certs(&ns);
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(rotated[1], first[0], "the old CA stays, after the new one");
    assert_ne!(rotated[0], first[0]);
    // New requests are signed by the new CA (once it is in the bundle).
    let (key2, stub2) = key_and_stub(&dir, "after", "P256");
    tokio::time::sleep(Duration::from_secs(12)).await;
    create_request(&ns, &request("after", "bound", &stub2, None));
    let (kind, _, status) = decided(&ns, "after").await;
    assert_eq!(kind, "Issued");
    let after = status["certificateChain"].as_str().unwrap().to_owned();
    assert!(verify(&dir, &rotated[..1], &after), "signed by the new CA");
    assert!(!verify(&dir, &rotated[1..], &after));
    assert!(
        verify(&dir, &rotated[1..], &before),
        "the old certificate still chains"
    );

    // Both certificates authenticate at the token endpoint.
    let url = format!("{}/oauth/token", op.url.replace("http://", "https://"));
    for (name, pem, k) in [("before", &before, &key), ("after", &after, &key2)] {
        let crt = dir.join(format!("{name}.crt"));
        std::fs::write(&crt, pem).unwrap();
        eventually(
            &format!("a token with the {name} certificate"),
            Duration::from_secs(30),
            || async { (token_with(&url, &server_ca, &crt, k).0 == 200).then_some(()) },
        )
        .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
