//! Handler tests (`oneshot`, no socket, no cluster). The state is built
//! from CR objects through [`CredentialIndex::build`] and
//! [`KeyMaterial::from_secret`], the functions the watches call.

use super::index::{CredentialIndex, KeyMaterial, TokenState};
use super::revocation::LocalRevocations;
use super::{ServerConfig, TokenServer, router};
use crate::core::client_secret::{ClientSecret, client_id_for_uid};
use crate::core::grant::ScopePolicy;
use crate::core::verifier::{SecretBinding, VerifierKey};
use crate::crd::{
    ALLOWED_SCOPES_ANNOTATION, M2MCredential, M2MCredentialSpec, M2MCredentialStatus,
    SecretVerifier, ServiceAccount, ServiceAccountSpec,
};
use crate::signing::KeySet;
use crate::signing::SigningAlg;
use crate::signing::keyset::next_key_set;
use crate::signing::store::{KeySecretConfig, desired_secret};
use crate::telemetry::Metrics;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use http_body_util::BodyExt;
use kube::api::ObjectMeta;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const ISSUER: &str = "https://m2m.test";
const NS: &str = "team-a";

/// The cluster as the watches would see it, and a server fed from it.
struct World {
    key: VerifierKey,
    credentials: Vec<M2MCredential>,
    accounts: Vec<ServiceAccount>,
    namespaces: Vec<ObjectMeta>,
    state: Arc<TokenState>,
    metrics: Metrics,
    app: Router,
}

struct Client {
    id: String,
    secret: String,
}

impl World {
    fn new(alg: SigningAlg) -> Self {
        Self::with_limits(alg, crate::http::HttpLimits::token_endpoint())
    }

    fn with_limits(alg: SigningAlg, limits: crate::http::HttpLimits) -> Self {
        Self::build(alg, limits, None, ISSUER)
    }

    /// A world whose issuer URL is `issuer` (e.g. one with a path).
    fn with_issuer(issuer: &str) -> Self {
        Self::build(
            SigningAlg::Es256,
            crate::http::HttpLimits::token_endpoint(),
            None,
            issuer,
        )
    }

    /// A world whose token server checks workload-identity assertions with
    /// `assertions` (instead of refusing them all).
    fn with_assertions(assertions: Arc<super::assertion::AssertionVerifier>) -> Self {
        Self::build(
            SigningAlg::Es256,
            crate::http::HttpLimits::token_endpoint(),
            Some(assertions),
            ISSUER,
        )
    }

    fn build(
        alg: SigningAlg,
        limits: crate::http::HttpLimits,
        assertions: Option<Arc<super::assertion::AssertionVerifier>>,
        issuer: &str,
    ) -> Self {
        let key = VerifierKey::generate().unwrap();
        let cfg = KeySecretConfig::new("ops".into(), alg, Duration::from_secs(3600));
        let (_, set) = next_key_set(&KeySet::default(), &cfg.policy, Utc::now())
            .unwrap()
            .unwrap();
        let secret = desired_secret(&cfg, &key, &set, None).unwrap();
        let state = Arc::new(TokenState::new());
        state.set_keys(Some(KeyMaterial::from_secret(&secret, Utc::now()).unwrap()));
        let config = ServerConfig {
            issuer: issuer.into(),
            default_audience: issuer.into(),
            default_policy: ScopePolicy::allow_all(),
            default_role: None,
            operator_namespace: "ops".into(),
            limits,
            sender: Default::default(),
            listen: Default::default(),
            bounds: Default::default(),
        };
        let metrics = Metrics::new();
        let assertions = assertions
            .unwrap_or_else(|| Arc::new(super::assertion::AssertionVerifier::refuse_all()));
        let server = TokenServer::with_assertions(
            config,
            state.clone(),
            metrics.clone(),
            Arc::new(LocalRevocations::new(state.clone())),
            assertions,
        );
        let mut world = Self {
            key,
            credentials: vec![],
            accounts: vec![],
            namespaces: vec![ObjectMeta {
                name: Some(NS.into()),
                ..Default::default()
            }],
            state,
            metrics,
            app: router(server),
        };
        world.account(
            "ci-bot",
            &["artifacts:read", "artifacts:write", "repo:read"],
        );
        world
    }

    fn sync(&self) {
        self.state.set_credentials(CredentialIndex::build(
            &self.credentials,
            &self.accounts,
            &self.namespaces,
            &ScopePolicy::allow_all(),
            Utc::now(),
        ));
    }

    fn account(&mut self, name: &str, scopes: &[&str]) {
        self.accounts
            .retain(|a| a.metadata.name.as_deref() != Some(name));
        self.accounts.push(ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            spec: ServiceAccountSpec {
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            status: None,
        });
        self.sync();
    }

    fn account_mut(&mut self, name: &str) -> &mut ServiceAccount {
        self.accounts
            .iter_mut()
            .find(|a| a.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    fn cred_mut(&mut self, name: &str) -> &mut M2MCredential {
        self.credentials
            .iter_mut()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    fn digest(&self, cred: &M2MCredential, version: i64, secret: &str) -> String {
        let uid = cred.metadata.uid.as_deref().unwrap();
        let client_id = client_id_for_uid(uid);
        self.key.digest(
            &SecretBinding {
                namespace: NS,
                name: cred.metadata.name.as_deref().unwrap(),
                uid,
                client_id: &client_id,
                version,
            },
            secret,
        )
    }

    /// A verifier as the controller writes it: sealed with the verifier key.
    fn sealed(&self, cred: &M2MCredential, v: SecretVerifier) -> SecretVerifier {
        let uid = cred.metadata.uid.as_deref().unwrap();
        let client_id = client_id_for_uid(uid);
        let binding = SecretBinding {
            namespace: NS,
            name: cred.metadata.name.as_deref().unwrap(),
            uid,
            client_id: &client_id,
            version: 0,
        };
        let mut v = v;
        self.key.seal(&binding, &mut v);
        v
    }

    fn credential(&mut self, name: &str, spec: M2MCredentialSpec) -> Client {
        let uid = uuid::Uuid::new_v4().to_string();
        let mut cred = M2MCredential {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                uid: Some(uid.clone()),
                generation: Some(1),
                ..Default::default()
            },
            spec,
            status: Some(M2MCredentialStatus {
                observed_generation: Some(1),
                ..Default::default()
            }),
        };
        let secret = ClientSecret::generate().unwrap().expose().to_owned();
        let digest = self.digest(&cred, 1, &secret);
        let verifier = SecretVerifier {
            version: 1,
            digest,
            not_after: None,
            seal: None,
        };
        cred.status.as_mut().unwrap().verifiers = vec![self.sealed(&cred, verifier)];
        self.credentials.push(cred);
        self.sync();
        Client {
            id: client_id_for_uid(&uid),
            secret,
        }
    }

    fn simple(&mut self, name: &str) -> Client {
        self.credential(
            name,
            M2MCredentialSpec {
                service_account_name: "ci-bot".into(),
                ..Default::default()
            },
        )
    }

    /// Rotate: the current verifier stays accepted until `grace_end` (or is
    /// dropped when `None`), a new version becomes current.
    fn rotate(&mut self, name: &str, grace_end: Option<DateTime<Utc>>) -> Client {
        let cred = self.cred_mut(name).clone();
        let status = cred.status.clone().unwrap();
        let version = status.verifiers.iter().map(|v| v.version).max().unwrap() + 1;
        let secret = ClientSecret::generate().unwrap().expose().to_owned();
        let digest = self.digest(&cred, version, &secret);
        let mut verifiers: Vec<SecretVerifier> = match grace_end {
            None => vec![],
            Some(end) => status
                .verifiers
                .into_iter()
                .map(|v| {
                    let graced = SecretVerifier {
                        not_after: Some(v.not_after.unwrap_or(end)),
                        ..v
                    };
                    self.sealed(&cred, graced)
                })
                .collect(),
        };
        let current = SecretVerifier {
            version,
            digest,
            not_after: None,
            seal: None,
        };
        verifiers.insert(0, self.sealed(&cred, current));
        self.cred_mut(name).status.as_mut().unwrap().verifiers = verifiers;
        self.sync();
        Client {
            id: client_id_for_uid(cred.metadata.uid.as_deref().unwrap()),
            secret,
        }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, headers, json)
    }

    async fn post(
        &self,
        path: &str,
        body: &str,
        basic: Option<&Client>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = basic {
            req = req.header(header::AUTHORIZATION, basic_header(&c.id, &c.secret));
        }
        self.call(req.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    async fn token(&self, client: &Client, extra: &str) -> (StatusCode, HeaderMap, Value) {
        self.post(
            "/oauth/token",
            &format!("grant_type=client_credentials{extra}"),
            Some(client),
        )
        .await
    }

    async fn access_token(&self, client: &Client) -> String {
        let (status, _, body) = self.token(client, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn introspect(&self, caller: &Client, token: &str) -> Value {
        let (status, _, body) = self
            .post("/oauth/introspect", &format!("token={token}"), Some(caller))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn active(&self, caller: &Client, token: &str) -> bool {
        self.introspect(caller, token).await["active"] == Value::Bool(true)
    }
}

fn basic_header(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn assert_error(resp: &(StatusCode, HeaderMap, Value), status: StatusCode, code: &str) {
    let (s, headers, body) = resp;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers[header::PRAGMA], "no-cache");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
}

/// Decode a token with jsonwebtoken against the served JWKS.
async fn decode_with_jwks(world: &World, token: &str, alg: SigningAlg) -> Value {
    let (status, _, jwks) = world
        .call(
            Request::get("/.well-known/jwks.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, alg.to_jsonwebtoken());
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg.to_jsonwebtoken());
    validation.set_issuer(&[ISSUER]);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

#[tokio::test]
async fn issues_rfc9068_tokens_for_every_algorithm() {
    for alg in [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256] {
        let mut world = World::new(alg);
        let client = world.simple("uploads");
        let resp = world.token(&client, "").await;
        let (status, headers, body) = &resp;
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::PRAGMA], "no-cache");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "artifacts:read artifacts:write repo:read");
        let claims = decode_with_jwks(&world, body["access_token"].as_str().unwrap(), alg).await;
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "m2m:team-a:ci-bot");
        assert_eq!(claims["aud"], ISSUER, "default audience");
        assert_eq!(claims["client_id"], client.id.as_str());
        assert_eq!(claims["scope"], "artifacts:read artifacts:write repo:read");
        assert_eq!(claims["m2m_sv"], 1);
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3600
        );
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
    }
}

#[tokio::test]
async fn client_secret_post_works_and_scope_and_audience_narrow() {
    let mut world = World::new(SigningAlg::Es256);
    let client = world.credential(
        "uploads",
        M2MCredentialSpec {
            service_account_name: "ci-bot".into(),
            scopes: vec!["artifacts:read".into(), "artifacts:write".into()],
            audiences: vec!["https://a.example".into(), "https://b.example".into()],
            token_ttl: Some("15m".into()),
            ..Default::default()
        },
    );
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=artifacts%3Awrite&audience=https%3A%2F%2Fb.example",
        client.id, client.secret
    );
    let (status, _, json) = world.post("/oauth/token", &body, None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["scope"], "artifacts:write");
    assert_eq!(json["expires_in"], 900);
    let claims = decode_with_jwks(
        &world,
        json["access_token"].as_str().unwrap(),
        SigningAlg::Es256,
    )
    .await;
    assert_eq!(claims["aud"], "https://b.example");
    // Default: every allowed audience, as an array.
    let (_, _, json) = world
        .token(&client, "&resource=https%3A%2F%2Fa.example")
        .await;
    let claims = decode_with_jwks(
        &world,
        json["access_token"].as_str().unwrap(),
        SigningAlg::Es256,
    )
    .await;
    assert_eq!(claims["aud"], "https://a.example");
    let (_, _, json) = world.token(&client, "").await;
    let claims = decode_with_jwks(
        &world,
        json["access_token"].as_str().unwrap(),
        SigningAlg::Es256,
    )
    .await;
    assert_eq!(
        claims["aud"],
        serde_json::json!(["https://a.example", "https://b.example"])
    );
    assert_eq!(json["scope"], "artifacts:read artifacts:write");

    assert_error(
        &world.token(&client, "&scope=repo:read").await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    assert_error(
        &world.token(&client, "&scope=artifacts:read%20nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    assert_error(
        &world
            .token(&client, "&audience=https%3A%2F%2Fevil.example")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    );
    assert_error(
        &world.token(&client, &format!("&resource={ISSUER}")).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    );
}

#[tokio::test]
async fn request_syntax_errors() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    let bad = StatusCode::BAD_REQUEST;
    // Wrong method: still an RFC 6749 error, and the allowed method is named.
    let wrong_method = world
        .call(Request::get("/oauth/token").body(Body::empty()).unwrap())
        .await;
    assert_error(
        &wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
    );
    assert_eq!(wrong_method.1[header::ALLOW], "POST");
    // Repeated parameter.
    assert_error(
        &world
            .post(
                "/oauth/token",
                "grant_type=client_credentials&grant_type=client_credentials",
                Some(&c),
            )
            .await,
        bad,
        "invalid_request",
    );
    assert_error(
        &world.token(&c, "&scope=a&scope=b").await,
        bad,
        "invalid_request",
    );
    // Missing and unknown grant types.
    assert_error(
        &world.post("/oauth/token", "scope=a", Some(&c)).await,
        bad,
        "invalid_request",
    );
    assert_error(
        &world
            .post("/oauth/token", "grant_type=password", Some(&c))
            .await,
        bad,
        "unsupported_grant_type",
    );
    assert_error(
        &world
            .post("/oauth/token", "grant_type=urn%3Afoo", None)
            .await,
        bad,
        "unsupported_grant_type",
    );
    // Non-UTF-8, raw and percent-encoded; malformed percent-encoding.
    for body in [
        &b"grant_type=client_credentials&scope=\xff"[..],
        b"grant_type=client_credentials&scope=%FF",
        b"grant_type=%zz",
    ] {
        let req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, basic_header(&c.id, &c.secret))
            .body(Body::from(body.to_vec()))
            .unwrap();
        assert_error(&world.call(req).await, bad, "invalid_request");
    }
    // Wrong or missing content type.
    for ct in [
        Some("application/json"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded; charset=iso-8859-1"),
        None,
    ] {
        let mut req = Request::post("/oauth/token")
            .header(header::AUTHORIZATION, basic_header(&c.id, &c.secret));
        if let Some(ct) = ct {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Body::from("grant_type=client_credentials"))
            .unwrap();
        assert_error(
            &world.call(req).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
        );
    }
    // Oversized body, with and without Content-Length.
    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(9000));
    assert_error(
        &world.post("/oauth/token", &big, Some(&c)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from_stream(stream))
        .unwrap();
    assert_error(
        &world.call(req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
    // Too many parameters.
    let many: String = (0..40).map(|i| format!("p{i}=1&")).collect();
    assert_error(
        &world.post("/oauth/token", &many, Some(&c)).await,
        bad,
        "invalid_request",
    );
}

#[tokio::test]
async fn client_authentication_errors() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    let bad = StatusCode::BAD_REQUEST;
    let unauthorized = StatusCode::UNAUTHORIZED;
    let form = "grant_type=client_credentials";
    let with_auth = |value: &str, body: String| {
        Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, value)
            .body(Body::from(body))
            .unwrap()
    };
    // Basic and post at once.
    let both = with_auth(
        &basic_header(&c.id, &c.secret),
        format!("{form}&client_id={}&client_secret={}", c.id, c.secret),
    );
    assert_error(&world.call(both).await, bad, "invalid_request");
    // Basic with a different client_id in the body.
    let differ = with_auth(
        &basic_header(&c.id, &c.secret),
        format!("{form}&client_id=other"),
    );
    assert_error(&world.call(differ).await, bad, "invalid_request");
    // Malformed Basic: bad base64, no colon, non-UTF-8 inside.
    for value in [
        "Basic !!!notbase64".to_owned(),
        format!("Basic {}", STANDARD.encode("no-colon")),
        format!("Basic {}", STANDARD.encode(b"\xff:\xfe")),
    ] {
        assert_error(
            &world.call(with_auth(&value, form.into())).await,
            bad,
            "invalid_request",
        );
    }
    // Another scheme.
    let resp = world.call(with_auth("Bearer abc", form.into())).await;
    assert_error(&resp, unauthorized, "invalid_client");
    assert!(
        resp.1[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    // No authentication at all.
    let resp = world.post("/oauth/token", form, None).await;
    assert_error(&resp, unauthorized, "invalid_client");
    assert!(resp.1.contains_key(header::WWW_AUTHENTICATE));
    // Wrong secret vs unknown id: identical answers.
    let wrong = Client {
        id: c.id.clone(),
        secret: ClientSecret::generate().unwrap().expose().to_owned(),
    };
    let unknown = Client {
        id: "m2mc_doesnotexist".into(),
        secret: c.secret.clone(),
    };
    let r1 = world.token(&wrong, "").await;
    let r2 = world.token(&unknown, "").await;
    assert_error(&r1, unauthorized, "invalid_client");
    assert_error(&r2, unauthorized, "invalid_client");
    assert_eq!(r1.2, r2.2);
    assert_eq!(
        r1.1[header::WWW_AUTHENTICATE],
        r2.1[header::WWW_AUTHENTICATE]
    );
    // Via post: 401 without a Basic challenge.
    let resp = world
        .post(
            "/oauth/token",
            &format!("{form}&client_id={}&client_secret=m2ms_nope", c.id),
            None,
        )
        .await;
    assert_error(&resp, unauthorized, "invalid_client");
    assert!(!resp.1.contains_key(header::WWW_AUTHENTICATE));
    // The right secret still works (under the rate limit).
    assert_eq!(world.token(&c, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_grace_period_lengthened_in_status_is_refused() {
    let mut world = World::new(SigningAlg::Es256);
    let old = world.simple("uploads");
    let old_token = world.access_token(&old).await;
    // Rotated with a grace period that has already ended.
    let new = world.rotate("uploads", Some(Utc::now() - chrono::Duration::seconds(1)));
    assert_eq!(world.token(&old, "").await.0, StatusCode::UNAUTHORIZED);
    // A status writer without the key stretches the ended grace period.
    let verifiers = &mut world.cred_mut("uploads").status.as_mut().unwrap().verifiers;
    assert_eq!(verifiers.len(), 2);
    verifiers[1].not_after = Some(Utc::now() + chrono::Duration::hours(1));
    world.sync();
    assert_error(
        &world.token(&old, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_eq!(world.introspect(&new, &old_token).await["active"], false);
    assert_eq!(world.token(&new, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn forged_verifiers_are_refused() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    // Someone who can write status but lacks the verifier key.
    let other_key = VerifierKey::generate().unwrap();
    let cred = world.cred_mut("uploads").clone();
    let uid = cred.metadata.uid.clone().unwrap();
    let mine = ClientSecret::generate().unwrap().expose().to_owned();
    let forged = other_key.digest(
        &SecretBinding {
            namespace: NS,
            name: "uploads",
            uid: &uid,
            client_id: &c.id,
            version: 2,
        },
        &mine,
    );
    world
        .cred_mut("uploads")
        .status
        .as_mut()
        .unwrap()
        .verifiers
        .push(SecretVerifier {
            version: 2,
            digest: forged,
            not_after: None,
            seal: None,
        });
    // And a forged clientId in status changes nothing: ids come from the UID.
    world.cred_mut("uploads").status.as_mut().unwrap().client_id = Some("m2mc_forged".into());
    world.sync();
    assert_error(
        &world
            .token(
                &Client {
                    id: c.id.clone(),
                    secret: mine,
                },
                "",
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &world
            .token(
                &Client {
                    id: "m2mc_forged".into(),
                    secret: c.secret.clone(),
                },
                "",
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_eq!(world.token(&c, "").await.0, StatusCode::OK);
}

/// Knowing a client id must not lock its owner out: failures are answered
/// 429 once the id has run out, but the right secret always works.
#[tokio::test]
async fn failed_authentication_is_limited_but_never_refuses_the_right_secret() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    let other = world.simple("other");
    let wrong = Client {
        id: c.id.clone(),
        secret: ClientSecret::generate().unwrap().expose().to_owned(),
    };
    for _ in 0..10 {
        assert_eq!(world.token(&wrong, "").await.0, StatusCode::UNAUTHORIZED);
    }
    let resp = world.token(&wrong, "").await;
    assert_error(&resp, StatusCode::TOO_MANY_REQUESTS, "invalid_client");
    let retry: u64 = resp.1[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry));
    // The attacker keeps going; the owner's right secret still works, on
    // every endpoint, and other clients are unaffected.
    for _ in 0..5 {
        assert_eq!(
            world.token(&wrong, "").await.0,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(world.token(&c, "").await.0, StatusCode::OK);
    }
    let token = world.access_token(&c).await;
    assert!(world.active(&c, &token).await);
    assert_eq!(world.token(&other, "").await.0, StatusCode::OK);
    // Unknown ids are limited the same way.
    let ghost = Client {
        id: "m2mc_ghost".into(),
        secret: "x".into(),
    };
    for _ in 0..10 {
        world.token(&ghost, "").await;
    }
    assert_eq!(
        world.token(&ghost, "").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Failures are limited per source address too: one source trying many
/// ids runs out, another source does not, and the right secret from the
/// limited source still works.
#[tokio::test]
async fn failed_authentication_is_limited_per_source() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    let from = |ip: &str, client: &Client| {
        let mut req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(
                header::AUTHORIZATION,
                basic_header(&client.id, &client.secret),
            )
            .body(Body::from("grant_type=client_credentials"))
            .unwrap();
        let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        req
    };
    for i in 0..10 {
        let ghost = Client {
            id: format!("m2mc_ghost{i}"),
            secret: "x".into(),
        };
        assert_eq!(
            world.call(from("10.0.0.7", &ghost)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let fresh = Client {
        id: "m2mc_fresh".into(),
        secret: "x".into(),
    };
    assert_eq!(
        world.call(from("10.0.0.7", &fresh)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        world.call(from("10.0.0.8", &fresh)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(world.call(from("10.0.0.7", &c)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn grant_failures_and_revocation_by_state() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    let token = world.access_token(&c).await;
    assert!(world.active(&c, &token).await);

    // Disabled account: no tokens, earlier tokens inactive; re-enable restores both.
    world.account_mut("ci-bot").spec.disabled = true;
    world.sync();
    assert_error(
        &world.token(&c, "").await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    );
    assert!(!world.active(&c, &token).await);
    world.account_mut("ci-bot").spec.disabled = false;
    world.sync();
    assert!(world.active(&c, &token).await);

    // Account scopes narrowed below the token's scopes: inactive.
    world.account("ci-bot", &["artifacts:read"]);
    assert!(!world.active(&c, &token).await);
    world.account(
        "ci-bot",
        &["artifacts:read", "artifacts:write", "repo:read"],
    );
    assert!(world.active(&c, &token).await);

    // Namespace policy forbids a scope of the account.
    world.namespaces[0].annotations = Some(BTreeMap::from([(
        ALLOWED_SCOPES_ANNOTATION.to_owned(),
        "artifacts:*".to_owned(),
    )]));
    world.sync();
    let resp = world.token(&c, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "unauthorized_client");
    assert!(
        resp.2["error_description"]
            .as_str()
            .unwrap()
            .contains("ScopesNotAllowedInNamespace")
    );
    world.namespaces[0].annotations = None;
    world.sync();

    // Missing account.
    world.accounts.clear();
    world.sync();
    assert_error(
        &world.token(&c, "").await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    );
    world.account(
        "ci-bot",
        &["artifacts:read", "artifacts:write", "repo:read"],
    );

    // Expired credential.
    world.cred_mut("uploads").spec.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    world.sync();
    assert_error(
        &world.token(&c, "").await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert!(!world.active(&c, &token).await);
    // Expiring soon: the token's exp is capped at the credential's expiry.
    let soon = Utc::now() + chrono::Duration::seconds(120);
    world.cred_mut("uploads").spec.expires_at = Some(soon);
    world.sync();
    let (_, _, json) = world.token(&c, "").await;
    assert!(json["expires_in"].as_i64().unwrap() <= 120, "{json}");
    world.cred_mut("uploads").spec.expires_at = None;
    world.sync();

    // Deletion (or a deletionTimestamp): everything stops at once.
    world.cred_mut("uploads").metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    world.sync();
    assert_error(
        &world.token(&c, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let other = world.simple("other");
    let (_, _, body) = world
        .post("/oauth/introspect", &format!("token={token}"), Some(&other))
        .await;
    assert_eq!(body["active"], false);
}

#[tokio::test]
async fn rotation_without_grace_revokes_and_with_grace_keeps() {
    let mut world = World::new(SigningAlg::Es256);
    let old = world.simple("uploads");
    let old_token = world.access_token(&old).await;

    // With a grace period both secrets and the old token work.
    let new = world.rotate("uploads", Some(Utc::now() + chrono::Duration::minutes(10)));
    assert_eq!(new.id, old.id, "client id never changes");
    assert_eq!(world.token(&old, "").await.0, StatusCode::OK);
    let new_token = world.access_token(&new).await;
    assert!(world.active(&new, &old_token).await);
    assert_eq!(world.introspect(&new, &new_token).await["m2m_sv"], 2);

    // When the grace period is over the old secret and its tokens stop.
    for v in world
        .cred_mut("uploads")
        .status
        .as_mut()
        .unwrap()
        .verifiers
        .iter_mut()
    {
        if v.version == 1 {
            v.not_after = Some(Utc::now() - chrono::Duration::seconds(1));
        }
    }
    world.sync();
    assert_error(
        &world.token(&old, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert!(!world.active(&new, &old_token).await);
    assert!(world.active(&new, &new_token).await);

    // Without grace: immediately.
    let newest = world.rotate("uploads", None);
    assert_error(
        &world.token(&new, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert!(!world.active(&newest, &new_token).await);
    assert_eq!(world.token(&newest, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn introspection_and_revocation() {
    let mut world = World::new(SigningAlg::EdDsa);
    let a = world.simple("a");
    let b = world.simple("b");
    let token = world.access_token(&a).await;
    let info = world.introspect(&a, &token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["client_id"], a.id.as_str());
    assert_eq!(info["sub"], "m2m:team-a:ci-bot");
    assert_eq!(info["token_type"], "Bearer");
    assert_eq!(info["iss"], ISSUER);
    assert!(info["exp"].is_i64() && info["jti"].is_string());
    // A resource server introspects its caller's token with its own credential.
    let seen_by_b = world.introspect(&b, &token).await;
    assert_eq!(seen_by_b["active"], true);
    assert_eq!(seen_by_b["client_id"], a.id.as_str());
    for garbage in ["nope", "a.b.c", &token[..token.len() - 3]] {
        assert_eq!(world.introspect(&a, garbage).await["active"], false);
    }
    // A token from another server's key is not ours.
    let other_world = World::new(SigningAlg::EdDsa);
    let mut other_world = other_world;
    let stranger = other_world.simple("a");
    let foreign = other_world.access_token(&stranger).await;
    assert_eq!(world.introspect(&a, &foreign).await["active"], false);
    // Errors: missing token, unauthenticated caller.
    assert_error(
        &world.post("/oauth/introspect", "", Some(&a)).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &world
            .post("/oauth/introspect", &format!("token={token}"), None)
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );

    // Revocation: someone else's token is a no-op, own token turns inactive.
    let (status, headers, _) = world
        .post("/oauth/revoke", &format!("token={token}"), Some(&b))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(world.active(&a, &token).await);
    let (status, _, _) = world
        .post(
            "/oauth/revoke",
            &format!("token={token}&token_type_hint=access_token"),
            Some(&a),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!world.active(&a, &token).await);
    // Unknown tokens: 200 as well; other tokens of the client stay active.
    assert_eq!(
        world
            .post("/oauth/revoke", "token=whatever", Some(&a))
            .await
            .0,
        StatusCode::OK
    );
    let second = world.access_token(&a).await;
    assert!(world.active(&a, &second).await);
    assert_error(
        &world.post("/oauth/revoke", "token=x", None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
}

#[tokio::test]
async fn discovery_documents_and_missing_keys() {
    let mut world = World::new(SigningAlg::Es256);
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let (status, _, meta) = world
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(meta["issuer"], ISSUER);
        assert_eq!(meta["token_endpoint"], format!("{ISSUER}/oauth/token"));
        assert_eq!(meta["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
        assert_eq!(
            meta["introspection_endpoint"],
            format!("{ISSUER}/oauth/introspect")
        );
        assert_eq!(
            meta["revocation_endpoint"],
            format!("{ISSUER}/oauth/revoke")
        );
        assert_eq!(
            meta["grant_types_supported"],
            serde_json::json!([
                "client_credentials",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ])
        );
        // Workload identity: RFC 7523 client assertions at the token endpoint only.
        assert_eq!(
            meta["token_endpoint_auth_methods_supported"],
            serde_json::json!([
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ])
        );
        assert_eq!(
            meta["introspection_endpoint_auth_methods_supported"],
            serde_json::json!(["client_secret_basic", "client_secret_post"])
        );
        assert!(meta.get("id_token_signing_alg_values_supported").is_none());
    }
    let c = world.simple("uploads");
    world.state.set_keys(None);
    assert_error(
        &world.token(&c, "").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    let (status, _, _) = world
        .call(
            Request::get("/.well-known/jwks.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A body that stops arriving is cut off by the body deadline with an RFC
/// 6749 error (408), and the metrics middleware counts every outcome, the
/// layers' own answers included.
#[tokio::test]
async fn stalled_bodies_time_out_and_every_outcome_is_counted() {
    let limits = crate::http::HttpLimits {
        body_read_timeout: Duration::from_millis(200),
        ..crate::http::HttpLimits::token_endpoint()
    };
    let mut world = World::with_limits(SigningAlg::Es256, limits);
    let c = world.simple("uploads");
    let first = futures::stream::iter([Ok::<_, std::io::Error>(b"grant_type=cli".to_vec())]);
    let stalled = first.chain(futures::stream::pending());
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, basic_header(&c.id, &c.secret))
        .body(Body::from_stream(stalled))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), world.call(req))
        .await
        .expect("a stalled body must not hold the request open");
    assert_error(&resp, StatusCode::REQUEST_TIMEOUT, "invalid_request");

    assert_eq!(world.token(&c, "").await.0, StatusCode::OK);
    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(9000));
    world.post("/oauth/token", &big, Some(&c)).await;
    let text = world.metrics.encode().unwrap();
    for needle in [
        r#"m2m_token_requests_total{endpoint="token",outcome="ok"} 1"#,
        r#"m2m_token_requests_total{endpoint="token",outcome="invalid_request"} 2"#,
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
}

/// Counts the keyed checks authentication performs.
struct CountingKey<'a> {
    key: &'a VerifierKey,
    macs: std::cell::Cell<usize>,
    /// Poses as a key with another id (same bytes).
    other_id: bool,
}

impl super::secret_check::SecretCheck for CountingKey<'_> {
    fn is_sealed(&self, binding: &SecretBinding<'_>, verifier: &SecretVerifier) -> bool {
        self.macs.set(self.macs.get() + 1);
        self.key.is_sealed(binding, verifier)
    }

    fn verify(&self, binding: &SecretBinding<'_>, secret: &str, digest: &str) -> bool {
        self.macs.set(self.macs.get() + 1);
        self.key.verify(binding, secret, digest)
    }

    fn key_id(&self) -> u64 {
        self.key.id() ^ u64::from(self.other_id)
    }
}

/// No timing oracle: the same number of MAC computations for an unknown
/// id, a known id with one verifier, one in a grace period (two verifiers),
/// a right and a wrong secret. (Seals are checked once per entry and key,
/// before: they do not depend on the request.)
#[tokio::test]
async fn authentication_does_equal_work_for_every_client_id() {
    let mut world = World::new(SigningAlg::Es256);
    let one = world.simple("one");
    world.simple("two");
    let two = world.rotate("two", Some(Utc::now() + chrono::Duration::hours(1)));
    let index = world.state.credentials();
    let now = Utc::now();
    for id in [&one.id, &two.id] {
        index.get(id).unwrap().authenticate(&world.key, "", now);
    }
    let count = |entry: &super::index::CredentialEntry, secret: &str| {
        let k = CountingKey {
            key: &world.key,
            macs: std::cell::Cell::new(0),
            other_id: false,
        };
        let matched = entry.authenticate(&k, secret, now);
        (k.macs.get(), matched.is_some())
    };
    let wrong = ClientSecret::generate().unwrap().expose().to_owned();
    let unknown = super::index::unknown_client();
    let cases = [
        ("unknown id", count(unknown, &wrong)),
        (
            "one verifier, right",
            count(index.get(&one.id).unwrap(), &one.secret),
        ),
        (
            "one verifier, wrong",
            count(index.get(&one.id).unwrap(), &wrong),
        ),
        (
            "grace period, right",
            count(index.get(&two.id).unwrap(), &two.secret),
        ),
        (
            "grace period, wrong",
            count(index.get(&two.id).unwrap(), &wrong),
        ),
    ];
    let expected = super::secret_check::MAX_VERIFIERS;
    for (what, (macs, matched)) in cases {
        assert_eq!(macs, expected, "{what}");
        assert_eq!(matched, what.ends_with("right"), "{what}");
    }
}

/// Seal checks are reused only under the key they were made with: under
/// a key with another id every verifier's seal is checked again, and a
/// verifier whose seal fails under the key in use is never accepted.
#[tokio::test]
async fn seal_checks_are_reused_only_for_the_same_key() {
    let mut world = World::new(SigningAlg::Es256);
    world.simple("two");
    let two = world.rotate("two", Some(Utc::now() + chrono::Duration::hours(1)));
    let index = world.state.credentials();
    let entry = index.get(&two.id).unwrap();
    let now = Utc::now();
    let run = |other_id| {
        let k = CountingKey {
            key: &world.key,
            macs: std::cell::Cell::new(0),
            other_id,
        };
        let matched = entry.authenticate(&k, &two.secret, now);
        (k.macs.get(), matched.is_some())
    };
    let slots = super::secret_check::MAX_VERIFIERS;
    assert_eq!(run(false), (slots + 2, true), "first use checks both seals");
    assert_eq!(run(false), (slots, true), "then only the digests");
    assert_eq!(run(true), (slots + 2, true), "another key id: seals again");
    assert_eq!(run(true), (slots + 2, true), "and every time");

    // A verifier sealed under another key is refused, cached or not.
    let other = VerifierKey::generate().unwrap();
    assert_eq!(entry.authenticate(&other, &two.secret, now), None);
    assert!(entry.authenticate(&world.key, &two.secret, now).is_some());
}

/// Removing an audience from a credential deactivates the tokens issued
/// for it, as removing a scope does; tokens for the remaining audience stay.
#[tokio::test]
async fn tokens_for_a_removed_audience_introspect_inactive() {
    let mut world = World::new(SigningAlg::Es256);
    let c = world.credential(
        "uploads",
        M2MCredentialSpec {
            service_account_name: "ci-bot".into(),
            audiences: vec!["https://a.example".into(), "https://b.example".into()],
            ..Default::default()
        },
    );
    let both = world.access_token(&c).await;
    let (status, _, body) = world.token(&c, "&audience=https%3A%2F%2Fa.example").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let only_a = body["access_token"].as_str().unwrap().to_owned();
    let (_, _, body) = world.token(&c, "&audience=https%3A%2F%2Fb.example").await;
    let only_b = body["access_token"].as_str().unwrap().to_owned();
    assert!(world.active(&c, &both).await);
    assert!(world.active(&c, &only_b).await);
    world.cred_mut("uploads").spec.audiences = vec!["https://a.example".into()];
    world.sync();
    assert!(world.active(&c, &only_a).await);
    assert!(!world.active(&c, &only_b).await, "removed audience");
    assert!(
        !world.active(&c, &both).await,
        "one of its audiences was removed"
    );
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Capture this thread's INFO-and-above log lines until the guard drops.
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// What was logged so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A secret sent as the client id (id and secret swapped, in the form or
/// in Basic) never reaches the audit log; unknown ids are logged as a
/// short hash, known ids in full.
#[tokio::test]
async fn the_audit_log_never_shows_a_secret_as_client_id() {
    let (logs, _guard) = LogBuffer::capture();
    let mut world = World::new(SigningAlg::Es256);
    let c = world.simple("uploads");
    let swapped = Client {
        id: c.secret.clone(),
        secret: c.id.clone(),
    };
    assert_eq!(world.token(&swapped, "").await.0, StatusCode::UNAUTHORIZED);
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        c.secret, c.id
    );
    assert_eq!(
        world.post("/oauth/token", &form, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A refusal after authentication, and a typo'd id.
    assert_eq!(
        world.token(&c, "&scope=nope").await.0,
        StatusCode::BAD_REQUEST
    );
    let typo = Client {
        id: format!("{}x", c.id),
        secret: c.secret.clone(),
    };
    assert_eq!(world.token(&typo, "").await.0, StatusCode::UNAUTHORIZED);
    let text = logs.text();
    assert!(!text.contains(&c.secret[5..]), "secret in the log:\n{text}");
    assert!(!text.contains(&typo.id), "unknown id in full:\n{text}");
    assert_eq!(
        text.matches("client_id=unknown:sha256:").count(),
        3,
        "{text}"
    );
    assert!(text.contains(&format!("client_id={}", c.id)), "{text}");
}

/// Whatever can be issued can be introspected and revoked: a token of 40
/// long scopes (14 KB) used to be issued and then be refused by the 8 KiB
/// body limit of introspection and revocation.
#[tokio::test]
async fn every_issued_token_fits_introspection_and_revocation() {
    let mut world = World::new(SigningAlg::Es256);
    let scopes: Vec<String> = (0..40)
        .map(|i| format!("scope-{i:02}:{}", "x".repeat(300)))
        .collect();
    let refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    world.account("wide", &refs);
    let c = world.credential(
        "wide",
        M2MCredentialSpec {
            service_account_name: "wide".into(),
            ..Default::default()
        },
    );
    // All 40 (the default) is too large to issue.
    assert_error(
        &world.token(&c, "").await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    // The largest token that is issued introspects and revokes, with the
    // client authenticating in the body (the largest request form).
    let mut largest = None;
    for n in 1..=40 {
        let (status, _, body) = world
            .token(&c, &format!("&scope={}", scopes[..n].join("+")))
            .await;
        if status != StatusCode::OK {
            assert_eq!(body["error"], "invalid_scope", "{body}");
            break;
        }
        largest = Some(body["access_token"].as_str().unwrap().to_owned());
    }
    let token = largest.expect("some token is issued");
    assert!(token.len() > 5000, "{}", token.len());
    let auth = format!("&client_id={}&client_secret={}", c.id, c.secret);
    let (status, _, body) = world
        .post(
            "/oauth/introspect",
            &format!("token={token}&token_type_hint=access_token{auth}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], true);
    let (status, _, body) = world
        .post(
            "/oauth/revoke",
            &format!("token={token}&token_type_hint=access_token{auth}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!world.active(&c, &token).await);
}

/// Roles add their scopes to the grant; a token claims (RFC 9068 `roles`)
/// only the roles whose every scope it holds; a missing role refuses every
/// token of the account.
#[tokio::test]
async fn roles_widen_the_grant_and_tokens_claim_the_roles_they_hold() {
    use super::index::RoleSource;
    use crate::crd::{RoleKind, RoleRef};
    let mut world = World::new(SigningAlg::Es256);
    world.account_mut("ci-bot").spec.role_refs = vec![RoleRef {
        kind: RoleKind::M2MRole,
        name: "deployer".into(),
    }];
    let client = world.simple("with-roles");
    let role = |kind, name: &str, scopes: &[&str]| RoleSource {
        kind,
        namespace: if kind == RoleKind::M2MRole {
            NS.into()
        } else {
            String::new()
        },
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        deleting: false,
    };
    let index = |roles: Vec<RoleSource>| {
        CredentialIndex::build_with_roles(
            &world.credentials,
            &world.accounts,
            &world.namespaces,
            roles,
            &ScopePolicy::allow_all(),
            Some("base"),
            Utc::now(),
        )
    };
    world.state.set_credentials(index(vec![
        role(
            RoleKind::M2MRole,
            "deployer",
            &["deploy:staging", "repo:read"],
        ),
        role(RoleKind::ClusterM2MRole, "base", &[]),
    ]));

    let token = world.access_token(&client).await;
    let claims = decode_with_jwks(&world, &token, SigningAlg::Es256).await;
    assert_eq!(
        claims["scope"],
        "artifacts:read artifacts:write deploy:staging repo:read"
    );
    // The default role "base" has no scopes: never claimed.
    assert_eq!(claims["roles"], serde_json::json!(["team-a/deployer"]));

    let (status, _, body) = world.token(&client, "&scope=deploy%3Astaging").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let narrow = body["access_token"].as_str().unwrap();
    let claims = decode_with_jwks(&world, narrow, SigningAlg::Es256).await;
    assert!(
        claims.get("roles").is_none(),
        "deployer not fully held: {claims}"
    );

    // The default role is missing: nothing is granted, not even own scopes.
    world.state.set_credentials(index(vec![role(
        RoleKind::M2MRole,
        "deployer",
        &["deploy:staging"],
    )]));
    let refused = world.token(&client, "&scope=repo%3Aread").await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "unauthorized_client");
    assert!(
        refused.2["error_description"]
            .as_str()
            .unwrap()
            .starts_with("RoleNotFound: roles not found: ClusterM2MRole/base"),
        "{}",
        refused.2
    );
}

mod api_tokens;
mod pod_identity;
mod sender;
mod workload;

/// A tenant's `M2MRole platform-admin` with no scopes must not make its
/// tokens say `roles: ["platform-admin"]` — the name of the cluster
/// admin's `ClusterM2MRole platform-admin` (`admin:all`), which the token
/// does not hold. Namespaced roles are claimed as `<namespace>/<name>`,
/// cluster roles by their bare name, and a role with no scopes never.
#[tokio::test]
async fn a_roles_claim_never_names_a_role_the_token_does_not_hold() {
    use super::index::RoleSource;
    use crate::crd::{RoleKind, RoleRef};
    let mut world = World::new(SigningAlg::Es256);
    world.account_mut("ci-bot").spec.role_refs = [
        (RoleKind::M2MRole, "platform-admin"),
        (RoleKind::M2MRole, "deployer"),
        (RoleKind::ClusterM2MRole, "base"),
    ]
    .into_iter()
    .map(|(kind, name)| RoleRef {
        kind,
        name: name.into(),
    })
    .collect();
    let client = world.simple("tenant");
    let role = |kind, name: &str, scopes: &[&str]| RoleSource {
        kind,
        namespace: if kind == RoleKind::M2MRole {
            NS.into()
        } else {
            String::new()
        },
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        deleting: false,
    };
    world
        .state
        .set_credentials(CredentialIndex::build_with_roles(
            &world.credentials,
            &world.accounts,
            &world.namespaces,
            vec![
                role(RoleKind::M2MRole, "platform-admin", &[]),
                role(RoleKind::M2MRole, "deployer", &["deploy:staging"]),
                role(RoleKind::ClusterM2MRole, "base", &["repo:read"]),
                role(RoleKind::ClusterM2MRole, "platform-admin", &["admin:all"]),
            ],
            &ScopePolicy::allow_all(),
            None,
            Utc::now(),
        ));
    let token = world.access_token(&client).await;
    let claims = decode_with_jwks(&world, &token, SigningAlg::Es256).await;
    assert!(!claims["scope"].as_str().unwrap().contains("admin:all"));
    assert_eq!(
        claims["roles"],
        serde_json::json!(["base", "team-a/deployer"]),
        "{claims}"
    );
}

/// OpenID Connect clients (go-oidc's `NewProvider`, Kubernetes' JWT
/// authenticator, Spring) discover at `<issuer>/.well-known/openid-configuration`:
/// the RFC 8414 document is served there too, and for an issuer with a
/// path also at the RFC 8414 path-inserted location, with every endpoint
/// it lists reachable under that path.
#[tokio::test]
async fn discovery_is_served_where_oidc_and_rfc8414_clients_look() {
    let get = |world: &World, path: &str| {
        let req = Request::get(path.to_owned()).body(Body::empty()).unwrap();
        let app = world.app.clone();
        async move {
            let response = app.oneshot(req).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let world = World::new(SigningAlg::Es256);
    let (status, rfc8414) = get(&world, "/.well-known/oauth-authorization-server").await;
    assert_eq!(status, StatusCode::OK);
    let (status, oidc) = get(&world, "/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK, "{oidc}");
    assert_eq!(oidc, rfc8414);
    assert_eq!(oidc["issuer"], ISSUER);
    // Nothing this server does not do: no authorization endpoint, no ID tokens.
    assert!(oidc.get("authorization_endpoint").is_none());
    assert!(oidc.get("userinfo_endpoint").is_none());

    let issuer = "https://m2m.test/tenant-a";
    let mut world = World::with_issuer(issuer);
    let client = world.simple("uploads");
    for path in [
        "/.well-known/oauth-authorization-server/tenant-a",
        "/tenant-a/.well-known/openid-configuration",
    ] {
        let (status, doc) = get(&world, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {doc}");
        assert_eq!(doc["issuer"], issuer, "{path}");
        assert_eq!(doc["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
        assert_eq!(doc["token_endpoint"], format!("{issuer}/oauth/token"));
    }
    let (status, jwks) = get(&world, "/tenant-a/.well-known/jwks.json").await;
    assert_eq!(status, StatusCode::OK, "{jwks}");
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    let (status, _, body) = world
        .post(
            "/tenant-a/oauth/token",
            "grant_type=client_credentials",
            Some(&client),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
