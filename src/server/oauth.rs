//! The OAuth 2.0 handlers: token (RFC 6749 §4.4), introspection (RFC 7662),
//! revocation (RFC 7009), authorization-server metadata (RFC 8414) and the
//! JWKS. See [`super::error`] for the error table.
//!
//! Access tokens are JWTs per RFC 9068: header `typ: at+jwt`, `alg`, `kid`;
//! claims `iss`, `sub` (`m2m:<namespace>:<serviceaccount>`, stable), `aud`
//! (a string, or an array when several audiences were granted), `exp`,
//! `iat`, `nbf`, `jti`, `client_id`, `scope` and [`SECRET_VERSION_CLAIM`].
//!
//! Introspection reports a token `active` only while: its signature checks
//! against a published key, it has not expired, its `jti` is not revoked,
//! the credential with its `client_id` still exists (same UID), its grant
//! still resolves (account enabled, credential not expired, scopes still
//! granted), and the secret version that obtained it is still accepted.
//! So a rotation without grace period, a deletion, a disable or an expiry
//! turns every token issued before inactive as soon as the watch delivers
//! the change. Any authenticated client may introspect any token — resource
//! servers authenticate with their own credential to check their callers'
//! tokens, and a token's holder can read its claims anyway — but a client
//! may revoke only its own tokens (RFC 7009 §2.1); revoking anyone else's
//! is a no-op.

use super::TokenServer;
use super::error::{OAuthError, no_store};
use super::form::{
    AuthMethod, ClientCredentials, Form, check_content_type, client_credentials, read_body,
};
use super::index::{CredentialEntry, KeyMaterial};
use crate::core::client_secret::is_well_formed;
use crate::core::grant::GrantError;
use crate::core::verifier::SecretBinding;
use crate::core::workload::WORKLOAD_IDENTITY_VERSION;
use crate::telemetry::{AUDIT_TARGET, Endpoint};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// The private claim carrying the client-secret version that authenticated
/// the token request. Stable: introspection compares it with the versions
/// the credential still accepts. Tokens obtained with a Kubernetes
/// service-account token (workload identity) carry
/// [`WORKLOAD_IDENTITY_VERSION`] (`0`), accepted while the credential stays
/// in workload-identity mode.
pub const SECRET_VERSION_CLAIM: &str = "m2m_sv";

/// The only grant type.
const CLIENT_CREDENTIALS: &str = "client_credentials";

#[derive(Serialize)]
#[serde(untagged)]
enum AudienceOut<'a> {
    One(&'a str),
    Many(&'a [&'a str]),
}

#[derive(Serialize)]
struct ClaimsOut<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: AudienceOut<'a>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    client_id: &'a str,
    scope: &'a str,
    m2m_sv: i64,
}

/// `aud` as a string or an array of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum AudienceIn {
    One(String),
    Many(Vec<String>),
}

/// The claims of a token this server issued.
#[derive(Deserialize, Debug, Clone)]
struct ClaimsIn {
    iss: String,
    sub: String,
    aud: AudienceIn,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    jti: String,
    client_id: String,
    #[serde(default)]
    scope: String,
    m2m_sv: i64,
}

/// A fresh token id: 128 bits from a CSPRNG, base64url (valid as a
/// ConfigMap key, which the revocation list needs).
fn new_jti() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A digest no secret matches, for the equal-work path of unknown clients.
const DUMMY_DIGEST: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn audit_id(client_id: &str) -> &str {
    match client_id.char_indices().nth(80) {
        Some((i, _)) => &client_id[..i],
        None => client_id,
    }
}

impl TokenServer {
    /// Authenticate a client: the same response and similar work whether
    /// the id is unknown or the secret is wrong. Returns the credential and
    /// the secret version that matched.
    fn authenticate(
        &self,
        creds: &ClientCredentials,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        let started = Instant::now();
        let limiter = &self.inner.limiter;
        if let Err(retry) = limiter.check(&creds.client_id, started) {
            return Err(OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64));
        }
        let basic = creds.method == AuthMethod::Basic;
        let index = self.inner.state.credentials();
        let entry = index.get(&creds.client_id);
        // The checksum pre-check rejects typos and garbage before any HMAC,
        // identically for known and unknown ids.
        let matched = if is_well_formed(&creds.client_secret) {
            match entry {
                Some(entry) => entry
                    .authenticate(&keys.verifier_key, &creds.client_secret, now)
                    .map(|v| (entry.clone(), v)),
                None => {
                    let dummy = SecretBinding {
                        namespace: "",
                        name: "",
                        uid: "",
                        client_id: &creds.client_id,
                        version: 0,
                    };
                    let _ = keys
                        .verifier_key
                        .verify(&dummy, &creds.client_secret, DUMMY_DIGEST);
                    None
                }
            }
        } else {
            None
        };
        matched.ok_or_else(|| {
            limiter.record_failure(&creds.client_id, started);
            OAuthError::invalid_client(basic)
        })
    }

    fn keys(&self) -> Result<Arc<KeyMaterial>, OAuthError> {
        self.inner
            .state
            .keys()
            .ok_or_else(|| OAuthError::unavailable("the signing keys are not loaded yet"))
    }

    /// The common front half of every POST endpoint: content type, body,
    /// form, client credentials.
    async fn read_request(
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Form, Option<ClientCredentials>), OAuthError> {
        check_content_type(headers)?;
        let body = read_body(headers, body).await?;
        let form = Form::parse(&body)?;
        let creds = client_credentials(headers, &form)?;
        Ok((form, creds))
    }

    /// Everything `/oauth/token` does; `sign: false` skips only the
    /// signature (the benchmark's baseline).
    pub(crate) async fn issue(&self, headers: HeaderMap, body: Body, sign: bool) -> Response {
        let started = Instant::now();
        let result = self.issue_inner(&headers, body, sign).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err((e, _)) => e.outcome(),
        };
        self.inner.metrics.observe_request(
            Endpoint::token,
            outcome,
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(response) => response,
            Err((error, who)) => {
                if let Some(who) = who {
                    tracing::info!(
                        target: AUDIT_TARGET,
                        event = "token",
                        outcome,
                        client_id = ?audit_id(&who.client_id),
                        namespace = who.namespace.as_deref(),
                        service_account = who.service_account.as_deref(),
                        auth_method = who.method,
                        reason = %error.description,
                        "token refused"
                    );
                }
                error.into_response()
            }
        }
    }

    async fn issue_inner(
        &self,
        headers: &HeaderMap,
        body: Body,
        sign: bool,
    ) -> Result<Response, (OAuthError, Option<Who>)> {
        let (form, creds) = Self::read_request(headers, body)
            .await
            .map_err(|e| (e, None))?;
        match form.get("grant_type") {
            None => {
                return Err((
                    OAuthError::invalid_request("missing grant_type"),
                    creds.as_ref().map(Who::unauthenticated),
                ));
            }
            Some(CLIENT_CREDENTIALS) => {}
            Some(_) => {
                return Err((
                    OAuthError::unsupported_grant_type(),
                    creds.as_ref().map(Who::unauthenticated),
                ));
            }
        }
        let now = Utc::now();
        // Workload identity hook: an RFC 7523 client assertion instead of a secret.
        let (entry, version, method) = match super::assertion::client_assertion(headers, &form)
            .map_err(|e| (e, creds.as_ref().map(Who::unauthenticated)))?
        {
            Some(assertion) => {
                let who = || Some(Who::asserted(&assertion));
                self.keys().map_err(|e| (e, who()))?;
                let result = self.authenticate_assertion(&assertion, now).await;
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
                self.inner
                    .metrics
                    .observe_client_auth(super::assertion::METHOD, outcome);
                let entry = result.map_err(|e| (e, who()))?;
                (entry, WORKLOAD_IDENTITY_VERSION, super::assertion::METHOD)
            }
            None => {
                let Some(creds) = creds else {
                    return Err((OAuthError::invalid_client(true), None));
                };
                let keys = self.keys().map_err(|e| (e, None))?;
                let result = self.authenticate(&creds, &keys, now);
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
                self.inner
                    .metrics
                    .observe_client_auth(creds.method.as_str(), outcome);
                let (entry, version) =
                    result.map_err(|e| (e, Some(Who::unauthenticated(&creds))))?;
                (entry, version, creds.method.as_str())
            }
        };
        let keys = self.keys().map_err(|e| (e, None))?;
        let who = || Some(Who::of(&entry, method));
        let grant = entry.grant_at(now).map_err(|e| (grant_error(&e), who()))?;

        // Scopes: a subset of the grant; default all of it.
        let scope: std::borrow::Cow<'_, str> = match form.get("scope") {
            None => entry.default_scope.as_str().into(),
            Some(requested) => {
                let mut wanted: Vec<&str> =
                    requested.split(' ').filter(|s| !s.is_empty()).collect();
                wanted.sort_unstable();
                wanted.dedup();
                if let Some(bad) = wanted.iter().find(|s| !grant.scopes.contains(**s)) {
                    let bad: String = bad.chars().take(64).collect();
                    return Err((
                        OAuthError::invalid_scope(format!(
                            "scope {bad:?} is not granted to this client"
                        )),
                        who(),
                    ));
                }
                wanted.join(" ").into()
            }
        };

        // Audiences: a subset of the allowed ones; default all of them.
        let default_audience = [self.inner.config.default_audience.as_str()];
        let allowed: Vec<&str> = if grant.audiences.is_empty() {
            default_audience.to_vec()
        } else {
            grant.audiences.iter().map(String::as_str).collect()
        };
        let mut audiences: Vec<&str> = form
            .get("audience")
            .into_iter()
            .chain(form.get("resource"))
            .flat_map(|v| v.split(' '))
            .filter(|s| !s.is_empty())
            .collect();
        audiences.sort_unstable();
        audiences.dedup();
        if let Some(bad) = audiences.iter().find(|a| !allowed.contains(a)) {
            let bad: String = bad.chars().take(128).collect();
            return Err((
                OAuthError::invalid_target(format!(
                    "audience {bad:?} is not allowed for this client"
                )),
                who(),
            ));
        }
        if audiences.is_empty() {
            audiences = allowed;
        }

        let iat = now.timestamp();
        let ttl = i64::try_from(grant.token_ttl.as_secs()).unwrap_or(i64::MAX);
        let mut exp = iat.saturating_add(ttl);
        if let Some(end) = grant.expires_at {
            exp = exp.min(end.timestamp());
        }
        let jti = new_jti();
        let claims = ClaimsOut {
            iss: &self.inner.config.issuer,
            sub: &entry.subject,
            aud: match audiences.as_slice() {
                [one] => AudienceOut::One(one),
                many => AudienceOut::Many(many),
            },
            exp,
            iat,
            nbf: iat,
            jti: &jti,
            client_id: &entry.client_id,
            scope: &scope,
            m2m_sv: version,
        };
        let claims_json = serde_json::to_vec(&claims)
            .map_err(|_| (OAuthError::unavailable("encoding the token failed"), who()))?;
        let access_token = if sign {
            let signer = keys
                .ring
                .active()
                .ok_or_else(|| (OAuthError::unavailable("no active signing key"), who()))?;
            signer.sign(&claims_json).map_err(|e| {
                tracing::error!(error = %e, "signing failed");
                (OAuthError::unavailable("signing failed"), who())
            })?
        } else {
            URL_SAFE_NO_PAD.encode(&claims_json)
        };
        tracing::info!(
            target: AUDIT_TARGET,
            event = "token",
            outcome = "ok",
            client_id = %entry.client_id,
            namespace = %entry.namespace,
            credential = %entry.name,
            service_account = %entry.service_account,
            auth_method = method,
            scope = %scope,
            jti = %jti,
            secret_version = version,
            exp,
            "token issued"
        );
        #[derive(Serialize)]
        struct TokenResponse<'a> {
            access_token: &'a str,
            token_type: &'static str,
            expires_in: i64,
            scope: &'a str,
        }
        let body = serde_json::to_vec(&TokenResponse {
            access_token: &access_token,
            token_type: "Bearer",
            expires_in: exp - iat,
            scope: &scope,
        })
        .unwrap_or_default();
        Ok(json_response(StatusCode::OK, body))
    }

    /// The claims of `token` if its signature checks and it belongs to `caller`.
    fn inspect(
        &self,
        keys: &KeyMaterial,
        token: &str,
        owner: Option<&CredentialEntry>,
    ) -> Option<ClaimsIn> {
        let verified = keys.ring.verify(token)?;
        let claims: ClaimsIn = serde_json::from_slice(&verified.claims_json).ok()?;
        if owner.is_some_and(|o| claims.client_id != o.client_id) {
            return None;
        }
        Some(claims)
    }

    fn is_active(&self, keys: &KeyMaterial, claims: &ClaimsIn, now: DateTime<Utc>) -> bool {
        let ts = now.timestamp();
        if claims.exp <= ts
            || claims.nbf.is_some_and(|nbf| nbf > ts + 60)
            || claims.iss != self.inner.config.issuer
            || self.inner.state.revoked().contains(&claims.jti)
        {
            return false;
        }
        let index = self.inner.state.credentials();
        let Some(entry) = index.get(&claims.client_id) else {
            return false;
        };
        let Ok(grant) = entry.grant_at(now) else {
            return false;
        };
        entry.subject == claims.sub
            && entry.accepts_version(&keys.verifier_key, claims.m2m_sv, now)
            && claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .all(|s| grant.scopes.contains(s))
    }
}

/// Who a refused request was about, for the audit line.
struct Who {
    client_id: String,
    namespace: Option<String>,
    service_account: Option<String>,
    method: &'static str,
}

impl Who {
    fn unauthenticated(creds: &ClientCredentials) -> Self {
        Self {
            client_id: creds.client_id.clone(),
            namespace: None,
            service_account: None,
            method: creds.method.as_str(),
        }
    }

    /// A workload-identity request before it is authenticated: the
    /// `client_id` if sent (the token is never logged).
    fn asserted(assertion: &super::assertion::ClientAssertion) -> Self {
        Self {
            client_id: assertion.client_id.clone().unwrap_or_default(),
            namespace: None,
            service_account: None,
            method: super::assertion::METHOD,
        }
    }

    fn of(entry: &CredentialEntry, method: &'static str) -> Self {
        Self {
            client_id: entry.client_id.clone(),
            namespace: Some(entry.namespace.clone()),
            service_account: Some(entry.service_account.clone()),
            method,
        }
    }
}

/// How a grant that does not resolve is reported to an authenticated client.
fn grant_error(e: &GrantError) -> OAuthError {
    match e {
        GrantError::Expired(_) => OAuthError::invalid_grant(e.to_string()),
        _ => OAuthError::unauthorized_client(format!("{}: {e}", e.reason())),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    no_store(&mut response);
    response
}

/// `POST /oauth/token`.
pub async fn token(State(server): State<TokenServer>, headers: HeaderMap, body: Body) -> Response {
    server.issue(headers, body, true).await
}

/// `POST /oauth/introspect` (RFC 7662).
pub async fn introspect(
    State(server): State<TokenServer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (form, creds) = TokenServer::read_request(&headers, body).await?;
        let creds = creds.ok_or_else(|| OAuthError::invalid_client(true))?;
        let now = Utc::now();
        let keys = server.keys()?;
        // Authentication gates access; the answer does not depend on who asks.
        server.authenticate(&creds, &keys, now)?;
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("missing token"))?;
        let claims = server
            .inspect(&keys, token, None)
            .filter(|c| server.is_active(&keys, c, now));
        let body = match claims {
            None => serde_json::json!({ "active": false }),
            Some(c) => {
                let aud = match c.aud {
                    AudienceIn::One(a) => serde_json::json!(a),
                    AudienceIn::Many(a) => serde_json::json!(a),
                };
                serde_json::json!({
                    "active": true,
                    "scope": c.scope,
                    "client_id": c.client_id,
                    "token_type": "Bearer",
                    "exp": c.exp,
                    "iat": c.iat,
                    "nbf": c.nbf,
                    "sub": c.sub,
                    "aud": aud,
                    "iss": c.iss,
                    "jti": c.jti,
                    SECRET_VERSION_CLAIM: c.m2m_sv,
                })
            }
        };
        Ok::<_, OAuthError>(json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ))
    }
    .await;
    finish(&server, Endpoint::introspect, started, result)
}

/// `POST /oauth/revoke` (RFC 7009): 200 for unknown, foreign or already
/// expired tokens too.
pub async fn revoke(State(server): State<TokenServer>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = async {
        let (form, creds) = TokenServer::read_request(&headers, body).await?;
        let creds = creds.ok_or_else(|| OAuthError::invalid_client(true))?;
        let now = Utc::now();
        let keys = server.keys()?;
        let (caller, _) = server.authenticate(&creds, &keys, now)?;
        let token = form
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("missing token"))?;
        if let Some(claims) = server.inspect(&keys, token, Some(&caller))
            && claims.exp > now.timestamp()
            && !server.inner.state.revoked().contains(&claims.jti)
        {
            server
                .inner
                .revocations
                .revoke(&claims.jti, claims.exp, now.timestamp())
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "recording a revocation failed");
                    OAuthError::unavailable("the revocation could not be recorded; retry")
                })?;
            tracing::info!(
                target: AUDIT_TARGET,
                event = "revoke",
                outcome = "ok",
                client_id = %caller.client_id,
                namespace = %caller.namespace,
                service_account = %caller.service_account,
                jti = %claims.jti,
                "token revoked"
            );
        }
        let mut response = StatusCode::OK.into_response();
        no_store(&mut response);
        Ok::<_, OAuthError>(response)
    }
    .await;
    finish(&server, Endpoint::revoke, started, result)
}

fn finish(
    server: &TokenServer,
    endpoint: Endpoint,
    started: Instant,
    result: Result<Response, OAuthError>,
) -> Response {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    server
        .inner
        .metrics
        .observe_request(endpoint, outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `GET /.well-known/oauth-authorization-server` and
/// `/.well-known/openid-configuration` (RFC 8414).
pub async fn metadata(State(server): State<TokenServer>) -> Response {
    let issuer = &server.inner.config.issuer;
    let algs: Vec<&str> = server
        .inner
        .state
        .keys()
        .map(|k| k.ring.algorithms().to_vec())
        .unwrap_or_default();
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    // Workload identity: Kubernetes service-account tokens as RFC 7523
    // client assertions, at the token endpoint only.
    let token_auth_methods = [
        "client_secret_basic",
        "client_secret_post",
        super::assertion::METHOD,
    ];
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "grant_types_supported": [CLIENT_CREDENTIALS],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": token_auth_methods,
        // Service-account tokens are signed by the cluster (RS256 or ES256).
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "access_token_signing_alg_values_supported": algs,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `GET /.well-known/jwks.json`: every published key, active or retired.
pub async fn jwks(State(server): State<TokenServer>) -> Response {
    match server.inner.state.keys() {
        Some(keys) => (
            [
                (header::CONTENT_TYPE, "application/jwk-set+json"),
                // Short: a resource server meeting an unknown kid refetches anyway.
                (header::CACHE_CONTROL, "public, max-age=60"),
            ],
            Body::from(axum::body::Bytes::from_owner(keys.ring.jwks_json())),
        )
            .into_response(),
        None => OAuthError::unavailable("the signing keys are not loaded yet").into_response(),
    }
}
