//! The token server with the real credential controller: `controller` and
//! two `token-server` processes (tests/support) against the local control
//! plane. The controller generates the credential Secret and its
//! verifiers; a workload reads the Secret, gets a token with the `oauth2`
//! crate, and an annotation rotation without grace period revokes it on
//! both replicas within 2 s.

mod support;

use kube::api::{Patch, PatchParams};
use m2m_operator::crd::M2MCredential;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, TokenResponse, TokenUrl};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Operator, OperatorOptions, TestNamespace, credential_secret, eventually};

const PROPAGATION: Duration = Duration::from_secs(2);

async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> Option<String> {
    BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_token_uri(TokenUrl::new(format!("{base}/oauth/token")).ok()?)
        .exchange_client_credentials()
        .request_async(http)
        .await
        .ok()
        .map(|t| t.access_token().secret().clone())
}

async fn active(http: &reqwest::Client, base: &str, id: &str, secret: &str, t: &str) -> bool {
    let info: Value = http
        .post(format!("{base}/oauth/introspect"))
        .basic_auth(id, Some(secret))
        .form(&[("token", t)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["active"] == true
}

/// Verify an ES256 access token with RustCrypto's `p256` — not the aws-lc
/// code that signed it — against the served JWKS, and return its claims.
async fn verify_independently(http: &reqwest::Client, base: &str, token: &str) -> Value {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::ecdsa::signature::Verifier;
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
    let jwks: Value = http
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact serialization");
    let header: Value = serde_json::from_slice(&b64(parts[0])).unwrap();
    assert_eq!(header["typ"], "at+jwt", "RFC 9068 type");
    assert_eq!(header["alg"], "ES256");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the header's kid is in the JWKS");
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let mut point = vec![4u8];
    point.extend(b64(jwk["x"].as_str().unwrap()));
    point.extend(b64(jwk["y"].as_str().unwrap()));
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).expect("public key");
    let signature = p256::ecdsa::Signature::from_slice(&b64(parts[2])).expect("r||s signature");
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("signature verifies independently");
    serde_json::from_slice(&b64(parts[1])).unwrap()
}

#[tokio::test]
async fn controller_secrets_work_and_rotation_revokes_on_both_replicas() {
    let ns = TestNamespace::new("ts-ctrl").await;
    // The controller creates the key Secret (signing keys and verifier key) itself.
    let controller = Operator::start_with(
        &ns,
        OperatorOptions {
            subcommand: "controller",
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
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for s in &servers {
        s.wait_ready().await;
    }

    ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: ServiceAccount\nmetadata: { name: ci-bot }\nspec: { scopes: [\"repo:read\"] }\n");
    let out = ns.apply_yaml("apiVersion: m2m.dev/v1alpha1\nkind: M2MCredential\nmetadata: { name: uploads }\nspec: { serviceAccountName: ci-bot }\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (id, secret) = credential_secret(&ns, "uploads", 1, Duration::from_secs(30)).await;

    let t1 = eventually("token from the controller's Secret", PROPAGATION, || {
        token(&http, &servers[0].url, &id, &secret)
    })
    .await;
    let claims = verify_independently(&http, &servers[1].url, &t1).await;
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], format!("m2m:{}:ci-bot", ns.name));
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["scope"], "repo:read");
    assert_eq!(
        claims["aud"],
        issuer.as_str(),
        "no audiences listed: the issuer's default"
    );
    let now = chrono::Utc::now().timestamp();
    let exp = claims["exp"].as_i64().unwrap();
    assert!(
        exp > now && exp <= now + 3600 + 5,
        "default 1h lifetime: {exp} vs {now}"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    for (i, s) in servers.iter().enumerate() {
        eventually(
            &format!("token active on server {i}"),
            PROPAGATION,
            || async { active(&http, &s.url, &id, &secret, &t1).await.then_some(()) },
        )
        .await;
    }

    // Rotate by annotation, gracePeriod 0: the old secret and token stop on both.
    ns.api::<M2MCredential>()
        .patch(
            "uploads",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"m2m.dev/rotate": "now"}}})),
        )
        .await
        .unwrap();
    let (id2, secret2) = credential_secret(&ns, "uploads", 2, Duration::from_secs(30)).await;
    assert_eq!(id2, id, "client id is stable");
    for (i, s) in servers.iter().enumerate() {
        eventually(
            &format!("old token inactive on server {i}"),
            PROPAGATION,
            || async { (!active(&http, &s.url, &id2, &secret2, &t1).await).then_some(()) },
        )
        .await;
        assert!(
            token(&http, &s.url, &id, &secret).await.is_none(),
            "old secret refused"
        );
        eventually(
            &format!("new secret works on server {i}"),
            PROPAGATION,
            || token(&http, &s.url, &id2, &secret2),
        )
        .await;
    }

    // Observability: each token issued or refused has an audit line without
    // the secret, and both processes export their metrics.
    let log = servers[0].log_text();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("audit")).collect();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("token issued") && l.contains(&id)),
        "no audit line for an issued token:\n{log}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains(&id) && l.contains("refused")),
        "no audit line for the refused old secret:\n{log}"
    );
    for s in [&secret, &secret2] {
        assert!(!log.contains(s.as_str()), "a client secret reached the log");
    }
    let metrics = http
        .get(format!("{}/metrics", servers[0].admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("m2m_token_requests_total{endpoint=\"token\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("m2m_token_request_duration_seconds_bucket"),
        "{metrics}"
    );
    let metrics = http
        .get(format!("{}/metrics", controller.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("m2m_reconcile_duration_seconds_count{controller=\"credential\"}"),
        "{metrics}"
    );
    eventually("credential gauge", Duration::from_secs(10), || async {
        let m = http
            .get(format!("{}/metrics", controller.admin_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains("m2m_credentials{state=\"ready\"} 1")
            .then_some(())
    })
    .await;
}
