//! A token server that needs no cluster, for `bench/token-bench.sh`: one
//! generated namespace, ServiceAccount and credential (its verifier
//! computed here), one generated signing key, fed through the same
//! [`CredentialIndex::build`] the watches use. It adds
//! `POST /bench/token-unsigned`, which does everything `/oauth/token` does
//! except signing, so one run measures the signing cost against a baseline.
//! Reached only through the hidden `bench-server` subcommand.

use super::error::OAuthError;
use super::form::OAuthRequest;
use super::index::{CredentialIndex, KeyMaterial, TokenState};
use super::oauth::Refusal;
use super::revocation::LocalRevocations;
use super::{ServerConfig, TokenServer, router, with_layers};
use crate::cli::{BenchServerArgs, SigningAlg};
use crate::controller::keys::{KeySecretConfig, desired_secret, next_key_set};
use crate::core::client_secret::{ClientSecret, client_id_for_uid};
use crate::core::grant::ScopePolicy;
use crate::core::verifier::{SecretBinding, VerifierKey};
use crate::crd::{
    M2MCredential, M2MCredentialSpec, M2MCredentialStatus, SecretVerifier, ServiceAccount,
    ServiceAccountSpec,
};
use crate::signing::KeySet;
use crate::telemetry::{Metrics, init_logging};
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
}

/// Build a cluster-free server whose keys use `alg`.
pub fn fixture(alg: SigningAlg) -> anyhow::Result<BenchFixture> {
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
    let credential = M2MCredential {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.clone()),
            ..Default::default()
        },
        spec: M2MCredentialSpec {
            service_account_name: "bench".into(),
            audiences: vec!["https://api.bench.example".into()],
            token_ttl: Some("15m".into()),
            ..Default::default()
        },
        status: Some(M2MCredentialStatus {
            verifiers: vec![{
                let mut v = SecretVerifier {
                    version: 1,
                    digest: verifier_key.digest(&binding, secret.expose()),
                    not_after: None,
                    seal: None,
                };
                verifier_key.seal(&binding, &mut v);
                v
            }],
            ..Default::default()
        }),
    };
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
        [&credential],
        [&account],
        [&namespace_meta],
        &policy,
        now,
    ));
    state.set_keys(Some(KeyMaterial::from_secret(&key_secret, now)?));
    let config = ServerConfig {
        issuer: "https://m2m.bench.example".into(),
        default_audience: "https://m2m.bench.example".into(),
        default_policy: policy,
        operator_namespace: "bench".into(),
        limits: crate::http::HttpLimits::token_endpoint(),
    };
    let revocations = Arc::new(LocalRevocations::new(state.clone()));
    Ok(BenchFixture {
        server: TokenServer::new(config, state, Metrics::new(), revocations),
        client_id,
        client_secret: secret.expose().to_owned(),
    })
}

/// Everything `/oauth/token` does but signing: the claims are only
/// base64url-encoded. The production handler has no such switch.
async fn token_unsigned(
    State(server): State<TokenServer>,
    request: OAuthRequest,
) -> Result<Response, OAuthError> {
    let issued = server.prepare_token(request).map_err(Refusal::audit)?;
    let token = URL_SAFE_NO_PAD.encode(&issued.claims_json);
    Ok(server.token_response(issued, &token))
}

/// The production routes plus `/bench/token-unsigned`, behind the same layers.
pub fn bench_router(server: TokenServer) -> Router {
    let limits = server.config().limits.clone();
    let metrics = server.inner.metrics.clone();
    let unsigned = Router::new()
        .route("/bench/token-unsigned", post(token_unsigned))
        .with_state(server.clone());
    router(server).merge(with_layers(unsigned, &limits, metrics))
}

/// `m2m-operator bench-server`.
pub async fn run(args: BenchServerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let fixture = fixture(args.signing_alg)?;
    std::fs::write(
        &args.credentials_file,
        format!("{}:{}\n", fixture.client_id, fixture.client_secret),
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, alg = args.signing_alg.as_str(), "bench server ready");
    let limits = fixture.server.config().limits.clone();
    let metrics = fixture.server.inner.metrics.clone();
    crate::http::serve(
        "token",
        listener,
        bench_router(fixture.server),
        None,
        limits,
        metrics,
        crate::admin::shutdown_signal(),
    )
    .await?;
    Ok(())
}
