//! `tls_client_auth` with a Pod certificate and no `client_id`
//! ([`crate::server::pod_identity`]): found through the workload-identity
//! binding the SPIFFE ID names, only when exactly one credential accepts it.

use super::*;
use crate::core::sender::SubjectAltNames;
use crate::crd::{MutualTls, WorkloadIdentity};
use crate::server::mtls::{ClientCert, PeerCertificate};

fn cert(uri: &str) -> PeerCertificate {
    PeerCertificate(Arc::new(ClientCert {
        x5t_s256: "x5t-of-the-pod-certificate".into(),
        sans: SubjectAltNames {
            uris: vec![uri.into()],
            dns: vec![],
        },
    }))
}

impl World {
    /// A workload-identity credential binding `sa` that accepts `san`, with
    /// the sealed epoch the controller writes; its client id.
    fn pod_identity(&mut self, name: &str, sa: &str, san: &str) -> String {
        let id = self
            .credential(
                name,
                M2MCredentialSpec {
                    service_account_name: "ci-bot".into(),
                    workload_identity: Some(WorkloadIdentity {
                        kubernetes_service_account: sa.into(),
                        audience: None,
                        allow_default_service_account: false,
                    }),
                    mtls: Some(MutualTls {
                        san_uri: Some(san.into()),
                        san_dns: None,
                    }),
                    ..Default::default()
                },
            )
            .id;
        let cred = self.cred_mut(name).clone();
        let mut status = crate::crd::WorkloadIdentityStatus {
            subject: format!("system:serviceaccount:{NS}:{sa}"),
            audience: ISSUER.into(),
            epoch: 2,
            seal: None,
        };
        status.seal = self
            .sealed(&cred, crate::core::workload::epoch_verifier(&status))
            .seal;
        self.cred_mut(name)
            .status
            .as_mut()
            .unwrap()
            .workload_identity = Some(status);
        self.sync();
        id
    }

    async fn token_with_cert(&self, body: &str, cert: PeerCertificate) -> (StatusCode, Value) {
        let mut req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        req.extensions_mut().insert(cert);
        let (status, _, out) = self.call(req).await;
        (status, out)
    }
}

#[tokio::test]
async fn a_pod_certificate_needs_no_client_id_when_exactly_one_credential_accepts_it() {
    let mut w = World::new(SigningAlg::Es256);
    let uri = format!("spiffe://pods.test/ns/{NS}/sa/inventory-sync");
    let first = w.pod_identity("inventory-sync", "inventory-sync", &uri);
    let cc = "grant_type=client_credentials";
    let (status, out) = w.token_with_cert(cc, cert(&uri)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let payload = out["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], "x5t-of-the-pod-certificate");
    assert_eq!(claims["client_id"], first, "{claims}");
    assert_eq!(claims["m2m_sv"], 2, "the binding's epoch");
    // Another trust domain: the SPIFFE ID names the same ServiceAccount, but
    // no credential's spec.mtls accepts it.
    let other = format!("spiffe://elsewhere.test/ns/{NS}/sa/inventory-sync");
    let (status, _) = w.token_with_cert(cc, cert(&other)).await;
    assert_ne!(status, StatusCode::OK);
    // Two credentials accept it: ambiguous without client_id, fine with one.
    let second = w.pod_identity("inventory-sync-2", "inventory-sync", &uri);
    let (status, _) = w.token_with_cert(cc, cert(&uri)).await;
    assert_ne!(status, StatusCode::OK, "ambiguous: refused");
    let (status, out) = w
        .token_with_cert(&format!("{cc}&client_id={second}"), cert(&uri))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
}
