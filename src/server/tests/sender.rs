//! Sender-constrained tokens at the handlers (`oneshot`): DPoP proofs made
//! with [`crate::server::dpop::client::ProofKey`], and a client
//! certificate put into the request as the TLS listener does.

use super::*;
use crate::core::sender::SubjectAltNames;
use crate::crd::{MutualTls, SenderConstraint};
use crate::server::dpop::client::ProofKey;
use crate::server::mtls::{ClientCert, PeerCertificate};

const HTU: &str = "https://m2m.test/oauth/token";

fn claims(token: &str) -> Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

fn cert(uri: &str) -> PeerCertificate {
    PeerCertificate(Arc::new(ClientCert {
        x5t_s256: "x5t-of-the-test-certificate".into(),
        sans: SubjectAltNames {
            uris: vec![uri.into()],
            dns: vec![],
        },
    }))
}

impl World {
    async fn token_with(
        &self,
        basic: Option<&Client>,
        body: &str,
        dpop: Option<&str>,
        cert: Option<PeerCertificate>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = basic {
            req = req.header(header::AUTHORIZATION, basic_header(&c.id, &c.secret));
        }
        if let Some(proof) = dpop {
            req = req.header("DPoP", proof);
        }
        let mut req = req.body(Body::from(body.to_owned())).unwrap();
        if let Some(cert) = cert {
            req.extensions_mut().insert(cert);
        }
        self.call(req).await
    }
}

#[tokio::test]
async fn a_dpop_proof_binds_the_token_and_introspection_reports_it() {
    let mut w = World::new(SigningAlg::Es256);
    let c = w.simple("app");
    let rs = w.simple("rs");
    let key = ProofKey::generate(jsonwebtoken::Algorithm::EdDSA).unwrap();
    let proof = key.proof(HTU, Utc::now().timestamp(), None).unwrap();
    let (status, _, body) = w
        .token_with(
            Some(&c),
            "grant_type=client_credentials",
            Some(&proof),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["cnf"]["jkt"], key.thumbprint());
    let i = w.introspect(&rs, token).await;
    assert_eq!(i["token_type"], "DPoP");
    assert_eq!(i["cnf"]["jkt"], key.thumbprint());
    // The same proof again: replayed.
    let (status, _, body) = w
        .token_with(
            Some(&c),
            "grant_type=client_credentials",
            Some(&proof),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_dpop_proof");
    let (_, _, meta) = w
        .call(
            Request::get("/.well-known/oauth-authorization-server")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        serde_json::json!(["ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"])
    );
    assert!(
        meta.get("tls_client_certificate_bound_access_tokens")
            .is_none()
    );
}

#[tokio::test]
async fn a_failed_authentication_does_not_spend_the_proof() {
    let mut w = World::new(SigningAlg::Es256);
    let c = w.simple("app");
    let wrong = Client {
        id: c.id.clone(),
        secret: ClientSecret::generate().unwrap().expose().to_owned(),
    };
    let key = ProofKey::generate(jsonwebtoken::Algorithm::ES256).unwrap();
    let proof = key.proof(HTU, Utc::now().timestamp(), None).unwrap();
    let body = "grant_type=client_credentials";
    let (status, _, _) = w.token_with(Some(&wrong), body, Some(&proof), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, out) = w.token_with(Some(&c), body, Some(&proof), None).await;
    assert_eq!(status, StatusCode::OK, "{out}");
}

#[tokio::test]
async fn tls_client_auth_and_certificate_bound_tokens() {
    let mut w = World::new(SigningAlg::Es256);
    let uri = "spiffe://td/ns/team-a/sa/uploader";
    let bound = w.credential(
        "bound",
        M2MCredentialSpec {
            service_account_name: "ci-bot".into(),
            mtls: Some(MutualTls {
                san_uri: Some(uri.into()),
                san_dns: None,
            }),
            sender_constraint: Some(SenderConstraint::Mtls),
            ..Default::default()
        },
    );
    let plain = w.simple("plain");
    let body = format!("grant_type=client_credentials&client_id={}", bound.id);
    let (status, _, out) = w.token_with(None, &body, None, Some(cert(uri))).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["token_type"], "Bearer");
    let token = out["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["cnf"]["x5t#S256"], "x5t-of-the-test-certificate");
    assert_eq!(c["m2m_sv"], 1, "the current secret version");
    let i = w.introspect(&plain, token).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["cnf"]["x5t#S256"], "x5t-of-the-test-certificate");
    // Another SAN: the same answer as a wrong secret.
    let (status, _, out) = w
        .token_with(
            None,
            &body,
            None,
            Some(cert("spiffe://td/ns/team-a/sa/other")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{out}");
    assert_eq!(out["error"], "invalid_client");
    // A credential without spec.mtls cannot use its client id that way.
    let body_plain = format!("grant_type=client_credentials&client_id={}", plain.id);
    let (status, _, _) = w.token_with(None, &body_plain, None, Some(cert(uri))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // senderConstraint: MTLS without a certificate.
    let (status, _, out) = w
        .token_with(Some(&bound), "grant_type=client_credentials", None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert_eq!(out["error"], "invalid_request");
    // A secret over a certificate connection: bound too.
    let (status, _, out) = w
        .token_with(
            Some(&plain),
            "grant_type=client_credentials",
            None,
            Some(cert(uri)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        claims(out["access_token"].as_str().unwrap())["cnf"]["x5t#S256"],
        "x5t-of-the-test-certificate"
    );
    // A rotation without grace ends certificate-authenticated tokens too.
    w.rotate("bound", None);
    let i = w.introspect(&plain, token).await;
    assert_eq!(i["active"], false, "{i}");
}

#[tokio::test]
async fn sender_constraint_dpop_refuses_bearer_requests() {
    let mut w = World::new(SigningAlg::Es256);
    let c = w.credential(
        "dpop",
        M2MCredentialSpec {
            service_account_name: "ci-bot".into(),
            sender_constraint: Some(SenderConstraint::DPoP),
            ..Default::default()
        },
    );
    let (status, _, out) = w.token(&c, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(out["error"], "invalid_dpop_proof");
    let key = ProofKey::generate(jsonwebtoken::Algorithm::ES256).unwrap();
    let proof = key.proof(HTU, Utc::now().timestamp(), None).unwrap();
    let (status, _, out) = w
        .token_with(
            Some(&c),
            "grant_type=client_credentials",
            Some(&proof),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
}
