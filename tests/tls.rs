//! TLS on the token endpoint from certificate files (as a cert-manager
//! Secret mounts them), and a certificate renewal picked up without a
//! restart. Certificates are made with the openssl command line.

mod support;

use std::path::Path;
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, eventually, make_pki};

fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        // A fresh handshake per request: a pooled connection would keep
        // using the certificate it was opened with.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn serves_tls_from_files_and_reloads_a_renewed_certificate() {
    let ns = TestNamespace::new("tls").await;
    let dir = std::env::temp_dir().join(format!("m2m-tls-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca1, crt1, key1) = make_pki(&dir, "first");
    let (ca2, crt2, key2) = make_pki(&dir, "second");
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::copy(&crt1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();

    let op = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "run",
            args: vec![
                "--tls-cert".into(),
                cert.to_str().unwrap().into(),
                "--tls-key".into(),
                key.to_str().unwrap().into(),
            ],
            ..Default::default()
        },
    );
    let https = op.url.replace("http://", "https://");
    let jwks = format!("{https}/.well-known/jwks.json");
    let first = client_trusting(&ca1);
    eventually(
        "TLS endpoint with the first certificate",
        Duration::from_secs(30),
        || async {
            first
                .get(&jwks)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;
    let second = client_trusting(&ca2);
    assert!(
        second.get(&jwks).send().await.is_err(),
        "the second CA must not be trusted yet"
    );
    // Plain HTTP on the TLS port is refused, not served.
    assert!(
        reqwest::get(format!("{}/.well-known/jwks.json", op.url))
            .await
            .is_err()
    );

    // Renew: replace both files, as a Secret volume update would.
    std::fs::copy(&crt2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    eventually(
        "the renewed certificate is served",
        Duration::from_secs(20),
        || async {
            second
                .get(&jwks)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;
    assert!(
        first.get(&jwks).send().await.is_err(),
        "the old certificate is no longer served"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
