//! A token server that needs no cluster, for `bench/token-bench.sh`: one
//! generated namespace, ServiceAccount and credential (its verifier
//! computed here), one generated signing key, fed through the same
//! [`CredentialIndex::build`] the watches use. It adds
//! `POST /bench/token-unsigned`, which does everything `/oauth/token` does
//! except signing, so one run measures the signing cost against a baseline.
//! Reached only through the hidden `bench-server` subcommand.
//!
//! Workload identity: a second credential binds the core ServiceAccount
//! `bench/bench-wi`, and the assertion cache is pre-seeded with a
//! service-account-token-shaped assertion for it (there is no apiserver to
//! ask), so the benchmark measures the steady state — every request a
//! cache hit, as in production once a pod's token has been reviewed.
//!
//! API tokens: a third credential (`spec.type: APIToken`) with a generated
//! token, for introspection of an API token and RFC 8693 token exchange.
//!
//! Sender-constrained tokens: the first credential also accepts
//! `tls_client_auth` for [`BENCH_SAN_URI`]; with `--tls-listen` the same
//! routes are served over TLS asking for client certificates, and
//! `bench-dpop` writes DPoP proofs for the benchmark's load generator and
//! times the verification of one proof ([`run_dpop`]).

use super::error::OAuthError;
use super::form::OAuthRequest;
use super::index::{CredentialIndex, KeyMaterial, TokenState};
use super::oauth::Refusal;
use super::revocation::LocalRevocations;
use super::{ServerConfig, TokenServer, router, with_layers};
use crate::core::client_secret::{ClientSecret, client_id_for_uid};
use crate::core::grant::ScopePolicy;
use crate::core::verifier::{SecretBinding, VerifierKey};
use crate::core::workload::service_account_subject;
use crate::crd::{
    M2MCredential, M2MCredentialSpec, M2MCredentialStatus, SecretVerifier, ServiceAccount,
    ServiceAccountSpec, WorkloadIdentity,
};
use crate::signing::KeySet;
use crate::signing::SigningAlg;
use crate::signing::keyset::next_key_set;
use crate::signing::store::{KeySecretConfig, desired_secret};
use crate::telemetry::Metrics;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use kube::api::ObjectMeta;
use std::sync::Arc;
use std::time::Duration;

/// A server with one credential, and that credential's client id and secret.
#[derive(Debug)]
pub struct BenchFixture {
    /// The server.
    pub server: TokenServer,
    /// The credential's client id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// A client assertion the server accepts (pre-seeded in its cache) for
    /// the workload-identity credential.
    pub assertion: String,
    /// The API token of the `APIToken` credential.
    pub api_token: String,
}

/// The URI SAN the bench credential accepts for `tls_client_auth`.
pub const BENCH_SAN_URI: &str = "spiffe://bench.example/ns/bench/sa/bench";

/// Build a cluster-free server whose keys use `alg`.
pub fn fixture(alg: SigningAlg) -> anyhow::Result<BenchFixture> {
    fixture_with(alg, Default::default())
}

/// [`fixture`] with sender-constraint options.
pub fn fixture_with(
    alg: SigningAlg,
    sender: super::binding::SenderOptions,
) -> anyhow::Result<BenchFixture> {
    let now = Utc::now();
    let namespace = "bench";
    let uid = uuid::Uuid::new_v4().to_string();
    let client_id = client_id_for_uid(&uid);
    let secret = ClientSecret::generate()?;
    let verifier_key = VerifierKey::generate()?;
    let binding = SecretBinding {
        namespace,
        name: "bench",
        uid: &uid,
        client_id: &client_id,
        version: 1,
    };
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: ServiceAccountSpec {
            scopes: vec!["bench:read".into(), "bench:write".into()],
            ..Default::default()
        },
        status: None,
    };
    let credential = sealed_credential(
        &binding,
        M2MCredentialSpec {
            service_account_name: "bench".into(),
            audiences: vec!["https://api.bench.example".into()],
            token_ttl: Some("15m".into()),
            mtls: Some(crate::crd::MutualTls {
                san_uri: Some(BENCH_SAN_URI.into()),
                san_dns: None,
            }),
            ..Default::default()
        },
        &verifier_key,
        secret.expose(),
    );
    // Workload identity: bound to core ServiceAccount bench/bench-wi.
    let wi_credential = M2MCredential {
        metadata: ObjectMeta {
            name: Some("bench-wi".into()),
            namespace: Some(namespace.into()),
            uid: Some(uuid::Uuid::new_v4().to_string()),
            ..Default::default()
        },
        spec: M2MCredentialSpec {
            workload_identity: Some(WorkloadIdentity {
                kubernetes_service_account: "bench-wi".into(),
                ..Default::default()
            }),
            ..credential.spec.clone()
        },
        status: None,
    };
    // API token: same account and grant, its token as the secret.
    let api_uid = uuid::Uuid::new_v4().to_string();
    let api_client_id = client_id_for_uid(&api_uid);
    let api_token = crate::core::api_token::generate(&api_client_id)?;
    let api_binding = SecretBinding {
        namespace,
        name: "bench-api",
        uid: &api_uid,
        client_id: &api_client_id,
        version: 1,
    };
    let api_credential = sealed_credential(
        &api_binding,
        M2MCredentialSpec {
            type_: crate::crd::CredentialType::ApiToken,
            rotation: crate::crd::CredentialRotation {
                every: Some("720h".into()),
                ..Default::default()
            },
            mtls: None,
            ..credential.spec.clone()
        },
        &verifier_key,
        api_token.expose(),
    );
    let namespace_meta = ObjectMeta {
        name: Some(namespace.into()),
        ..Default::default()
    };
    let key_cfg = KeySecretConfig::new("bench".into(), alg, Duration::from_secs(86400));
    let (_, key_set) = next_key_set(&KeySet::default(), &key_cfg.policy, now)?
        .ok_or_else(|| anyhow::anyhow!("no signing key generated"))?;
    let key_secret = desired_secret(&key_cfg, &verifier_key, &key_set, None)?;

    let state = Arc::new(TokenState::new());
    let policy = ScopePolicy::allow_all();
    state.set_credentials(CredentialIndex::build(
        [&credential, &wi_credential, &api_credential],
        [&account],
        [&namespace_meta],
        &policy,
        now,
    ));
    state.set_keys(Some(KeyMaterial::from_secret(&key_secret, now)?));
    let config = ServerConfig {
        sender,
        ..bench_config(policy)
    };
    let issuer = config.issuer.clone();
    let revocations = Arc::new(LocalRevocations::new(state.clone()));
    let server = TokenServer::new(config, state, Metrics::new(), revocations);
    let subject = service_account_subject(namespace, "bench-wi");
    let assertion = fake_service_account_token(&subject, &issuer, now);
    server.assertions().cache().seed(
        &issuer,
        &assertion,
        &subject,
        now + chrono::Duration::days(1),
    );
    Ok(BenchFixture {
        server,
        client_id,
        client_secret: secret.expose().to_owned(),
        assertion,
        api_token: api_token.expose().to_owned(),
    })
}

/// The bench server's configuration: production limits, an example issuer.
fn bench_config(policy: ScopePolicy) -> ServerConfig {
    ServerConfig {
        issuer: "https://m2m.bench.example".into(),
        default_audience: "https://m2m.bench.example".into(),
        default_policy: policy,
        default_role: None,
        operator_namespace: "bench".into(),
        limits: crate::http::HttpLimits::token_endpoint(),
        sender: Default::default(),
        listen: Default::default(),
        bounds: Default::default(),
    }
}

/// A credential as the controller leaves it: `secret` is version 1, its
/// verifier sealed under `key`.
fn sealed_credential(
    binding: &SecretBinding<'_>,
    spec: M2MCredentialSpec,
    key: &VerifierKey,
    secret: &str,
) -> M2MCredential {
    let mut verifier = SecretVerifier {
        version: binding.version,
        digest: key.digest(binding, secret),
        not_after: None,
        seal: None,
    };
    key.seal(binding, &mut verifier);
    M2MCredential {
        metadata: ObjectMeta {
            name: Some(binding.name.into()),
            namespace: Some(binding.namespace.into()),
            uid: Some(binding.uid.into()),
            ..Default::default()
        },
        spec,
        status: Some(M2MCredentialStatus {
            verifiers: vec![verifier],
            ..Default::default()
        }),
    }
}

/// A JWT shaped and sized like a projected service-account token (RS256,
/// ~1 KB); its signature is random bytes: only the pre-seeded cache accepts it.
fn fake_service_account_token(subject: &str, audience: &str, now: chrono::DateTime<Utc>) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rand::RngCore;
    let header = r#"{"alg":"RS256","kid":"bench"}"#;
    let claims = serde_json::json!({
        "aud": [audience],
        "exp": now.timestamp() + 86_400,
        "iat": now.timestamp(),
        "iss": "https://kubernetes.default.svc",
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": "bench",
            "pod": {"name": "bench-0", "uid": uuid::Uuid::new_v4().to_string()},
            "serviceaccount": {"name": "bench-wi", "uid": uuid::Uuid::new_v4().to_string()},
        },
        "nbf": now.timestamp(),
        "sub": subject,
    });
    let mut signature = [0u8; 256];
    rand::rng().fill_bytes(&mut signature);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Everything `/oauth/token` does but signing: the claims are only
/// base64url-encoded. The production handler has no such switch.
async fn token_unsigned(
    State(server): State<TokenServer>,
    request: OAuthRequest,
) -> Result<Response, OAuthError> {
    let issued = server
        .prepare_token(request)
        .await
        .map_err(Refusal::audit)?;
    let token = URL_SAFE_NO_PAD.encode(&issued.claims_json);
    server.token_response(issued, &token)
}

/// The production routes plus `/bench/token-unsigned`, behind the same layers.
pub fn bench_router(server: TokenServer) -> Router {
    let limits = server.config().limits.clone();
    let metrics = server.metrics().clone();
    let unsigned = Router::new()
        .route("/bench/token-unsigned", post(token_unsigned))
        .with_state(server.clone());
    router(server).merge(with_layers(unsigned, &limits, metrics))
}
