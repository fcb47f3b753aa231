//! OpenID Connect discovery as third-party verifiers use it (SPEC §4):
//! our access tokens, served over HTTPS by the real binary, are accepted by
//!
//! - **kube-apiserver's structured JWT authenticator**: a second
//!   kube-apiserver (the one the tests run, on its own port and etcd
//!   prefix) with an `AuthenticationConfiguration` whose `jwt.issuer.url` is
//!   our issuer, trusting our CA, mapping `sub` to the username with a
//!   prefix. `kubectl --token <m2m token> auth whoami` prints the mapped user;
//! - **coreos/go-oidc**: `oidc.NewProvider` (discovery at
//!   `<issuer>/.well-known/openid-configuration`, issuer match) and its
//!   verifier (signature against the discovered `jwks_uri`, `iss`, `aud`,
//!   `exp`) — the small Go program in `tests/oidc-verifier/`, built here
//!   from its Go module (cached under `$M2M_CACHE_DIR`).

mod support;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually, make_pki};

/// A free port in 17000–17999 (the range this suite's extra servers use).
fn free_port_in_range() -> u16 {
    let start = 17000 + (std::process::id() % 900) as u16;
    (0..1000)
        .map(|i| 17000 + (start - 17000 + i) % 1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 17000-17999")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("M2M_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::bin_dir().parent().unwrap().to_path_buf())
}

fn cluster_dir() -> PathBuf {
    support::kubeconfig_path().parent().unwrap().to_path_buf()
}

/// Build `tests/oidc-verifier` (once per source version) and return the binary.
fn oidc_verifier() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-verifier");
    let mut h = Sha256::new();
    for f in ["go.mod", "go.sum", "main.go"] {
        h.update(std::fs::read(src.join(f)).unwrap());
    }
    let hex: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let bin = cache_dir().join("bin").join(format!("oidc-verifier-{hex}"));
    if !bin.exists() {
        let out = Command::new("go")
            .args(["build", "-mod=readonly", "-trimpath", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("CGO_ENABLED", "0")
            .output()
            .expect("run go build (Go ≥ 1.26 must be installed)");
        assert!(
            out.status.success(),
            "go build tests/oidc-verifier: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// A second kube-apiserver of the test control plane (same etcd, its own
/// prefix and port), authenticating JWTs per `authn_config`. Killed on drop.
struct ExtraApiserver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl ExtraApiserver {
    fn start(dir: &Path, authn_config: &Path) -> Self {
        let port = free_port_in_range();
        let bin = [
            cache_dir().join("bin/kube-apiserver"),
            support::bin_dir().join("kube-apiserver"),
        ]
        .into_iter()
        .find(|p| p.exists())
        .expect("kube-apiserver under $M2M_CACHE_DIR/bin (tests/cluster/install.sh)");
        let etcd_port = std::env::var("M2M_ETCD_CLIENT_PORT").unwrap_or_else(|_| "23791".into());
        let pki = cluster_dir().join("pki");
        let log = dir.join("kube-apiserver.log");
        let child = Command::new(bin)
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--etcd-prefix=/m2m-discovery-test-{port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!(
                "--authentication-config={}",
                authn_config.display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .args([
                "--service-cluster-ip-range=10.96.0.0/24",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kube-apiserver");
        Self {
            child,
            url: format!("https://127.0.0.1:{port}"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExtraApiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn kube_apiserver_and_go_oidc_accept_our_tokens_through_discovery() {
    let ns = TestNamespace::new("oidc").await;
    let dir = std::env::temp_dir().join(format!("m2m-discovery-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, crt, key) = make_pki(&dir, "oidc");
    let verifier = oidc_verifier();

    // The token server over HTTPS, its issuer the HTTPS URL.
    let port = free_port_in_range();
    let issuer = format!("https://127.0.0.1:{port}");
    let op = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "run",
            issuer: Some(issuer.clone()),
            listen_port: Some(port),
            args: vec![
                "--tls-cert".into(),
                crt.to_str().unwrap().into(),
                "--tls-key".into(),
                key.to_str().unwrap().into(),
            ],
            ..Default::default()
        },
    );
    op.wait_ready().await;
    let out = ns.apply_yaml(
        r#"
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, secret) = support::credential_secret(&ns, "uploads", 1, Duration::from_secs(30)).await;
    let pem = std::fs::read(&ca).unwrap();
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let token = eventually(
        "an access token over HTTPS",
        Duration::from_secs(30),
        || async {
            let (status, body) =
                support::client_credentials_token(&https, &issuer, &id, &secret).await;
            (status == 200).then(|| body["access_token"].as_str().unwrap().to_owned())
        },
    )
    .await;
    let subject = format!("m2m:{}:ci-bot", ns.name);

    // go-oidc: NewProvider (discovery) and Verify.
    let mut child = Command::new(&verifier)
        .args([
            "-issuer",
            &issuer,
            "-audience",
            &issuer,
            "-alg",
            "ES256",
            "-ca",
        ])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "go-oidc refused our token: {said}");
    assert!(
        said.contains(&format!("verified sub={subject} iss={issuer}")),
        "{said}"
    );

    // kube-apiserver: structured authentication configuration.
    let ca_pem = String::from_utf8(pem).unwrap();
    let indented: String = ca_pem.lines().map(|l| format!("      {l}\n")).collect();
    let authn = dir.join("authentication-config.yaml");
    std::fs::write(
        &authn,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: {issuer}
    audiences: [\"{issuer}\"]
    certificateAuthority: |
{indented}  claimMappings:
    username:
      claim: sub
      prefix: \"m2m-operator#\"
"
        ),
    )
    .unwrap();
    let apiserver = ExtraApiserver::start(&dir, &authn);
    let whoami = || {
        Command::new(support::kubectl_bin())
            .args(["--kubeconfig", "/dev/null", "--server", &apiserver.url])
            .args(["--insecure-skip-tls-verify", "--token", &token])
            .args(["auth", "whoami"])
            .output()
            .expect("kubectl")
    };
    let printed = eventually(
        "kubectl --token <m2m token> auth whoami",
        Duration::from_secs(90),
        || async {
            let out = whoami();
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    )
    .await;
    println!("kubectl --token <m2m token> auth whoami:\n{printed}");
    let expected = format!("m2m-operator#{subject}");
    assert!(
        printed
            .lines()
            .any(|l| l.split_whitespace().eq(["Username", expected.as_str()])),
        "whoami printed:\n{printed}\napiserver log:\n{}",
        apiserver.log_text()
    );
    // A tampered token is not accepted.
    let out = Command::new(support::kubectl_bin())
        .args(["--kubeconfig", "/dev/null", "--server", &apiserver.url])
        .args([
            "--insecure-skip-tls-verify",
            "--token",
            &format!("{token}x"),
        ])
        .args(["auth", "whoami"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tampered token was accepted");
}
