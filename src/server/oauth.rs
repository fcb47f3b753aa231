//! The OAuth 2.0 handlers: token (RFC 6749 §4.4), introspection (RFC 7662),
//! revocation (RFC 7009), authorization-server metadata (RFC 8414) and the
//! JWKS. See [`super::error`] for the error table. API tokens (introspection
//! of `m2mt_` tokens, RFC 8693 exchange) hook in from [`super::api_token`].
//!
//! Access tokens are JWTs per RFC 9068: header `typ: at+jwt`, `alg`, `kid`;
//! claims `iss`, `sub` (`m2m:<namespace>:<serviceaccount>`, stable), `aud`
//! (a string, or an array when several audiences were granted), `exp`,
//! `iat`, `nbf`, `jti`, `client_id`, `scope`, [`SECRET_VERSION_CLAIM`] and,
//! when the account has roles, `roles` (RFC 9068 §2.2.3.1): the roles whose
//! every scope the token holds (see [`crate::core::roles`]).
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
use super::form::{AuthMethod, ClientCredentials, MAX_TOKEN_BYTES, OAuthRequest};
use super::index::{CredentialEntry, KeyMaterial, unknown_client};
use super::revocation::Revoked;
use crate::core::client_secret::{SECRET_PREFIX, is_well_formed};
use crate::core::grant::GrantError;
use crate::telemetry::{AUDIT_TARGET, audit_field};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The private claim carrying the client-secret version that authenticated
/// the token request. Stable: introspection compares it with the versions
/// the credential still accepts. Tokens obtained with a Kubernetes
/// service-account token (workload identity) carry the binding's epoch
/// (`status.workloadIdentity.epoch`), accepted only while it is current:
/// a switch of binding or of mode starts a new one.
pub(crate) const SECRET_VERSION_CLAIM: &str = "m2m_sv";

/// The client-credentials grant (the other one, RFC 8693 token exchange of
/// an API token, is [`super::api_token::TOKEN_EXCHANGE`]).
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
    /// RFC 8693 §4.1: the client that exchanged another subject's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<Actor<'a>>,
    /// RFC 9068 §2.2.3.1: the roles whose every scope the token holds,
    /// by their unambiguous claim names ([`crate::core::roles::claim_name`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    m2m_sv: i64,
    /// RFC 7800 / RFC 9449 §6 / RFC 8705 §3: what the token is bound to.
    #[serde(skip_serializing_if = "crate::core::sender::Confirmation::is_empty")]
    cnf: crate::core::sender::Confirmation,
}

/// The `act` claim (RFC 8693 §4.1): who acts for the token's subject.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Actor<'a> {
    /// The acting client's identity, `m2m:<namespace>:<serviceaccount>`.
    sub: std::borrow::Cow<'a, str>,
    /// The acting client's id.
    client_id: std::borrow::Cow<'a, str>,
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
    #[serde(default)]
    act: Option<Actor<'static>>,
    #[serde(default)]
    cnf: Option<crate::core::sender::Confirmation>,
}

/// A fresh token id: 128 bits from a CSPRNG, base64url (valid as a
/// ConfigMap key, which the revocation list needs).
fn new_jti() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Scopes: a subset of the grant; default all of it.
fn requested_scope(
    form: &super::form::Form,
    entry: &CredentialEntry,
    grant: &crate::core::grant::Grant,
) -> Result<String, OAuthError> {
    let Some(requested) = form.get("scope") else {
        return Ok(entry.default_scope.clone());
    };
    let mut wanted: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    if let Some(bad) = wanted.iter().find(|s| !grant.scopes.contains(**s)) {
        let bad: String = bad.chars().take(64).collect();
        return Err(OAuthError::invalid_scope(format!(
            "scope {bad:?} is not granted to this client"
        )));
    }
    Ok(wanted.join(" "))
}

/// Audiences (`audience` and `resource`): a subset of the allowed ones;
/// default all of them (the issuer's default audience when the grant
/// names none).
fn requested_audiences<'a>(
    form: &'a super::form::Form,
    grant: &'a crate::core::grant::Grant,
    default_audience: &'a str,
) -> Result<Vec<&'a str>, OAuthError> {
    let allowed: Vec<&str> = if grant.audiences.is_empty() {
        vec![default_audience]
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
        return Err(OAuthError::invalid_target(format!(
            "audience {bad:?} is not allowed for this client"
        )));
    }
    Ok(if audiences.is_empty() {
        allowed
    } else {
        audiences
    })
}

/// What a token request presented to authenticate with, and how to
/// attribute a refusal of it.
struct Presented<'a> {
    form: &'a super::form::Form,
    credentials: Option<&'a ClientCredentials>,
    /// The connection's TLS client certificate (`tls_client_auth`).
    client_cert: Option<&'a super::mtls::ClientCert>,
    source: Option<IpAddr>,
    refuse: &'a (dyn Fn(OAuthError) -> Refusal + Sync),
}

/// An authenticated request: the credential the token is for, the secret
/// version that matched, the authentication method's name, the keys in
/// use and, for a token exchange by an authenticated client, that client
/// (the actor).
type Authenticated = (
    Arc<CredentialEntry>,
    i64,
    &'static str,
    Arc<KeyMaterial>,
    Option<Arc<CredentialEntry>>,
);

/// How a presented client id appears in logs: in full only when it is a
/// known client id; anything else — a secret sent in its place (client_id
/// and client_secret swapped), a typo, garbage — as a short hash, which
/// still lets repeated attempts be correlated without revealing the value.
fn loggable_client_id(presented: &str, known: bool) -> String {
    if known && !presented.starts_with(SECRET_PREFIX) {
        return presented.to_owned();
    }
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(presented.as_bytes());
    let hex: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("unknown:sha256:{hex}")
}

impl TokenServer {
    /// Authenticate a client: the same response and the same work whether
    /// the id is unknown or the secret is wrong. Returns the credential and
    /// the secret version that matched. A correct secret is always
    /// accepted; failures count against the id and the source, and once
    /// either has run out they are answered `429` instead of `401`
    /// ([`super::ratelimit`]).
    fn authenticate(
        &self,
        creds: &ClientCredentials,
        source: Option<IpAddr>,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        let basic = creds.method == AuthMethod::Basic;
        let index = self.inner.state.credentials();
        // An APIToken credential has no client secret: its id is unknown here.
        let entry = index.get(&creds.client_id).filter(|e| !e.api_token);
        // The checksum pre-check rejects typos and garbage before any HMAC,
        // identically for known and unknown ids.
        let matched = if is_well_formed(&creds.client_secret) {
            match entry {
                Some(entry) => entry
                    .authenticate(&keys.verifier_key, &creds.client_secret, now)
                    .map(|v| (entry.clone(), v)),
                None => {
                    let _ = unknown_client().authenticate(
                        &keys.verifier_key,
                        &creds.client_secret,
                        now,
                    );
                    None
                }
            }
        } else {
            None
        };
        if let Some((entry, version)) = &matched {
            // Usage tracking: a fetch_max in memory, no API call.
            let usage = &self.inner.state.usage().recorder;
            usage.record(&entry.client_id, *version, now.timestamp());
        }
        matched.ok_or_else(|| {
            match self
                .inner
                .limiter
                .failed(&creds.client_id, source, Instant::now())
            {
                Ok(()) => OAuthError::invalid_client(basic),
                Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
            }
        })
    }

    fn keys(&self) -> Result<Arc<KeyMaterial>, OAuthError> {
        self.inner
            .state
            .keys()
            .ok_or_else(|| OAuthError::unavailable("the signing keys are not loaded yet"))
    }

    /// Everything `/oauth/token` does before signing: grant type, client
    /// authentication, grant, scopes, audiences, claims. The signature is
    /// the caller's: [`token`] signs with the active key.
    pub(crate) async fn prepare_token(&self, request: OAuthRequest) -> Result<Issued, Refusal> {
        let OAuthRequest {
            form,
            credentials,
            source,
            sender,
            ..
        } = request;
        let refuse = |error: OAuthError| Refusal {
            error,
            who: credentials.as_ref().map(|c| {
                let known = self.inner.state.credentials().get(&c.client_id).is_some();
                Box::new(Who::unauthenticated(c, known))
            }),
        };
        let exchange = match form.get("grant_type") {
            None => return Err(refuse(OAuthError::invalid_request("missing grant_type"))),
            Some(CLIENT_CREDENTIALS) => false,
            Some(super::api_token::TOKEN_EXCHANGE) => true,
            Some(_) => return Err(refuse(OAuthError::unsupported_grant_type())),
        };
        let now = Utc::now();
        // Sender-constraint hook: the DPoP proof and the client certificate
        // (RFC 9449 §4.3, RFC 8705 §3), for every grant ([`super::binding`]).
        let binding = self
            .check_sender(&sender, self.inner.state.keys().as_deref(), now)
            .map_err(refuse)?;
        // Workload identity hook: an RFC 7523 client assertion instead of a
        // secret (also the client authentication of a token exchange).
        let assertion =
            super::assertion::client_assertion(&form, credentials.as_ref()).map_err(refuse)?;
        let client = Presented {
            form: &form,
            credentials: credentials.as_ref(),
            client_cert: sender.client_cert.as_deref(),
            source,
            refuse: &refuse,
        };
        let (entry, version, method, keys, actor) = self
            .authenticate_request(client, assertion, exchange, now)
            .await?;
        let refuse = |error: OAuthError| Refusal {
            error,
            who: Some(Box::new(Who::of(&entry, method))),
        };
        let grant = entry.grant_at(now).map_err(|e| refuse(grant_error(&e)))?;
        // An acting client must itself be in good standing (not disabled,
        // deleted or expired); it adds nothing to what the subject token allows.
        if let Some(actor) = &actor {
            actor.grant_at(now).map_err(|e| {
                refuse(OAuthError::unauthorized_client(format!(
                    "the acting client may not obtain tokens: {}",
                    e.reason()
                )))
            })?;
        }

        let scope = requested_scope(&form, &entry, grant).map_err(refuse)?;
        let audiences = requested_audiences(&form, grant, &self.inner.config.default_audience)
            .map_err(refuse)?;
        // Sender-constraint hook: `spec.senderConstraint`, the replay check.
        self.bind(&binding, &entry, now).map_err(refuse)?;

        let iat = now.timestamp();
        let ttl = i64::try_from(grant.token_ttl.as_secs()).unwrap_or(i64::MAX);
        let mut exp = iat.saturating_add(ttl);
        if let Some(end) = grant.expires_at {
            exp = exp.min(end.timestamp());
        }
        // A JWT exchanged from an API token never outlives the API token
        // (offline verifiers see only `exp`).
        if exchange && let Some(end) = super::api_token::token_end(&entry, version, grant) {
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
            act: actor.as_ref().map(|a| Actor {
                sub: a.subject.as_str().into(),
                client_id: a.client_id.as_str().into(),
            }),
            roles: grant.roles.held_with(&scope, &entry.namespace),
            m2m_sv: version,
            cnf: binding.cnf.clone(),
        };
        let claims_json = serde_json::to_vec(&claims)
            .map_err(|_| refuse(OAuthError::unavailable("encoding the token failed")))?;
        Ok(Issued {
            claims_json,
            issued_token_type: exchange.then_some(super::api_token::ACCESS_TOKEN_TYPE),
            scope,
            jti,
            iat,
            exp,
            version,
            method,
            entry,
            keys,
            token_type: binding.cnf.token_type(),
            dpop_nonce: binding.nonce,
        })
    }

    /// Client authentication of a token request, by whichever method it
    /// used: the credential, the secret version, the method's name and the
    /// keys.
    async fn authenticate_request(
        &self,
        client: Presented<'_>,
        assertion: Option<super::assertion::ClientAssertion>,
        exchange: bool,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, Refusal> {
        let Presented {
            form,
            credentials,
            client_cert,
            source,
            refuse,
        } = client;
        // mTLS hook: `tls_client_auth`, a `client_id` (or, with a Pod
        // certificate, the one it implies: super::pod_identity), no other
        // client authentication and the connection's certificate (RFC 8705 §2.1).
        let implied;
        if !exchange
            && assertion.is_none()
            && credentials.is_none()
            && let Some(cert) = client_cert
            && let Some(client_id) = match form.get("client_id") {
                Some(id) => Some(id),
                None => {
                    implied = self.implied_mtls_client(cert);
                    implied.as_deref()
                }
            }
        {
            let keys = self.keys().map_err(|error| Refusal { error, who: None })?;
            let result = self.authenticate_mtls(client_id, cert, source, &keys, now);
            let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
            let method = super::mtls::METHOD;
            self.inner.metrics.observe_client_auth(method, outcome);
            let (entry, version) = result.map_err(|error| {
                let known = self.inner.state.credentials().get(client_id).is_some();
                Refusal {
                    error,
                    who: Some(Box::new(Who {
                        client_id: loggable_client_id(client_id, known),
                        namespace: None,
                        service_account: None,
                        method,
                    })),
                }
            })?;
            return Ok((entry, version, method, keys, None));
        }
        let authenticated = match assertion {
            // API token hook: RFC 8693 exchange, the subject token
            // authenticates; a client may authenticate too (§2.1) and then
            // acts for the subject.
            _ if exchange => {
                let who = || Some(Box::new(Who::exchanging(form)));
                let keys = self.keys().map_err(|error| Refusal { error, who: who() })?;
                let actor = self
                    .authenticate_actor(credentials, assertion.as_ref(), source, &keys, refuse, now)
                    .await?;
                // Federation hook: a JWT of a trusted issuer as subject_token.
                let (result, method) = if super::federation::is_jwt_subject(form) {
                    let r = self
                        .authenticate_federated_exchange(form, source, &keys, now)
                        .await;
                    (r, super::federation::METHOD)
                } else {
                    let r = self.authenticate_exchange(form, source, &keys, now);
                    (r, super::api_token::METHOD)
                };
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
                self.inner.metrics.observe_client_auth(method, outcome);
                let (entry, version) = result.map_err(|error| Refusal { error, who: who() })?;
                (entry, version, method, keys, actor)
            }
            // Federation hook: an assertion whose `iss` a trusted issuer has.
            Some(assertion) if self.is_federated(&assertion.token) => {
                let known = assertion
                    .client_id
                    .as_deref()
                    .is_some_and(|id| self.inner.state.credentials().get(id).is_some());
                let who = || Some(Box::new(Who::asserted(&assertion, known)));
                let keys = self.keys().map_err(|error| Refusal { error, who: who() })?;
                let result = self
                    .authenticate_federated(
                        &assertion.token,
                        assertion.client_id.as_deref(),
                        source,
                        &keys,
                        now,
                    )
                    .await;
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
                let method = super::federation::METHOD;
                self.inner.metrics.observe_client_auth(method, outcome);
                let (entry, epoch) = result.map_err(|error| Refusal { error, who: who() })?;
                (entry, epoch, method, keys, None)
            }
            Some(assertion) => {
                let known = assertion
                    .client_id
                    .as_deref()
                    .is_some_and(|id| self.inner.state.credentials().get(id).is_some());
                let who = || Some(Box::new(Who::asserted(&assertion, known)));
                let keys = self.keys().map_err(|error| Refusal { error, who: who() })?;
                let result = self
                    .authenticate_assertion(&assertion, source, &keys, now)
                    .await;
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
                let method = super::assertion::METHOD;
                self.inner.metrics.observe_client_auth(method, outcome);
                let (entry, epoch) = result.map_err(|error| Refusal { error, who: who() })?;
                (entry, epoch, method, keys, None)
            }
            None => {
                let Some(creds) = credentials else {
                    return Err(Refusal {
                        error: OAuthError::invalid_client(true),
                        who: None,
                    });
                };
                let keys = self.keys().map_err(|error| Refusal { error, who: None })?;
                let result = self.authenticate(creds, source, &keys, now);
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
                let method = creds.method.as_str();
                self.inner.metrics.observe_client_auth(method, outcome);
                let (entry, version) = result.map_err(refuse)?;
                (entry, version, method, keys, None)
            }
        };
        Ok(authenticated)
    }

    /// The client authentication of a token exchange, if it carries one
    /// (RFC 8693 §2.1: by the usual methods): the authenticated client, or
    /// the same refusal a token request gets (`401 invalid_client`).
    async fn authenticate_actor(
        &self,
        credentials: Option<&ClientCredentials>,
        assertion: Option<&super::assertion::ClientAssertion>,
        source: Option<IpAddr>,
        keys: &Arc<KeyMaterial>,
        refuse: &(dyn Fn(OAuthError) -> Refusal + Sync),
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<CredentialEntry>>, Refusal> {
        if let Some(creds) = credentials {
            let result = self.authenticate(creds, source, keys, now);
            let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
            self.inner
                .metrics
                .observe_client_auth(creds.method.as_str(), outcome);
            return result.map(|(entry, _)| Some(entry)).map_err(refuse);
        }
        if let Some(assertion) = assertion {
            let result = self
                .authenticate_assertion(assertion, source, keys, now)
                .await;
            let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "ok");
            let method = super::assertion::METHOD;
            self.inner.metrics.observe_client_auth(method, outcome);
            let known = assertion
                .client_id
                .as_deref()
                .is_some_and(|id| self.inner.state.credentials().get(id).is_some());
            return result
                .map(|(entry, _)| Some(entry))
                .map_err(|error| Refusal {
                    error,
                    who: Some(Box::new(Who::asserted(assertion, known))),
                });
        }
        Ok(None)
    }

    /// The token response for a prepared token and its encoding, with the
    /// audit line. A token over [`MAX_TOKEN_BYTES`] is refused: it could
    /// not be introspected or revoked within the body limit.
    pub(crate) fn token_response(
        &self,
        issued: Issued,
        access_token: &str,
    ) -> Result<Response, OAuthError> {
        if access_token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal {
                error: OAuthError::invalid_scope(format!(
                    "the token would be {} bytes, over the limit of {MAX_TOKEN_BYTES}; \
                     request fewer scopes or audiences",
                    access_token.len()
                )),
                who: Some(Box::new(Who::of(&issued.entry, issued.method))),
            }
            .audit());
        }
        let Issued {
            issued_token_type,
            scope,
            jti,
            iat,
            exp,
            version,
            method,
            entry,
            token_type,
            dpop_nonce,
            ..
        } = issued;
        tracing::info!(
            target: AUDIT_TARGET,
            event = "token",
            outcome = "ok",
            client_id = %audit_field(&entry.client_id),
            namespace = %audit_field(&entry.namespace),
            credential = %audit_field(&entry.name),
            service_account = %audit_field(&entry.service_account),
            auth_method = method,
            issuer = entry.federation.as_ref().map(|f| f.issuer.to_string()),
            scope = %audit_field(&scope),
            jti = %audit_field(&jti),
            secret_version = version,
            token_type,
            exp,
            "token issued"
        );
        #[derive(Serialize)]
        struct TokenResponse<'a> {
            access_token: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            issued_token_type: Option<&'static str>,
            token_type: &'static str,
            expires_in: i64,
            scope: &'a str,
        }
        let body = serde_json::to_vec(&TokenResponse {
            access_token,
            issued_token_type,
            token_type,
            expires_in: exp - iat,
            scope: &scope,
        })
        .unwrap_or_default();
        let mut response = json_response(StatusCode::OK, body);
        if let Some(nonce) = dpop_nonce.as_deref().and_then(super::dpop::nonce_header) {
            response
                .headers_mut()
                .insert(super::dpop::DPOP_NONCE_HEADER, nonce);
        }
        Ok(response)
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
        // A token belongs to its client and to the client that acted for it.
        let owned_by = |o: &CredentialEntry| {
            claims.client_id == o.client_id
                || claims
                    .act
                    .as_ref()
                    .is_some_and(|a| a.client_id == o.client_id)
        };
        if owner.is_some_and(|o| !owned_by(o)) {
            return None;
        }
        Some(claims)
    }

    fn is_active(&self, keys: &KeyMaterial, claims: &ClaimsIn, now: DateTime<Utc>) -> bool {
        let ts = now.timestamp();
        if claims.exp <= ts
            || claims.nbf.is_some_and(|nbf| nbf > ts + 60)
            || claims.iss != self.inner.config.issuer
            || self
                .inner
                .state
                .revocations()
                .is_revoked(&claims.client_id, &claims.jti, claims.iat)
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
        // The acting client, if any, must still exist and be in good standing.
        if let Some(act) = &claims.act {
            let actor_ok = index
                .get(&act.client_id)
                .is_some_and(|a| a.subject == act.sub && a.grant_at(now).is_ok());
            if !actor_ok {
                return false;
            }
        }
        // Every audience of the token must still be allowed: removing an
        // audience from the credential deactivates its tokens, as removing
        // a scope does.
        let default_audience = self.inner.config.default_audience.as_str();
        let audience_allowed = |a: &str| {
            if grant.audiences.is_empty() {
                a == default_audience
            } else {
                grant.audiences.iter().any(|g| g == a)
            }
        };
        let audiences_ok = match &claims.aud {
            AudienceIn::One(a) => audience_allowed(a),
            AudienceIn::Many(many) => !many.is_empty() && many.iter().all(|a| audience_allowed(a)),
        };
        entry.subject == claims.sub
            && audiences_ok
            && entry.accepts_version(&keys.verifier_key, claims.m2m_sv, now)
            && claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .all(|s| grant.scopes.contains(s))
    }
}

/// A token about to be issued: its claims, unsigned.
pub(crate) struct Issued {
    /// The claims, as JSON.
    pub(crate) claims_json: Vec<u8>,
    /// RFC 8693 `issued_token_type`, for a token exchange.
    issued_token_type: Option<&'static str>,
    scope: String,
    jti: String,
    iat: i64,
    exp: i64,
    version: i64,
    /// How the client authenticated (RFC 8414 method name).
    method: &'static str,
    entry: Arc<CredentialEntry>,
    /// The keys the client was authenticated with (and that sign).
    pub(crate) keys: Arc<KeyMaterial>,
    /// `DPoP` for a DPoP-bound token, else `Bearer`.
    token_type: &'static str,
    /// A `DPoP-Nonce` for the response (`--dpop-nonce`).
    dpop_nonce: Option<String>,
}

/// A refused token request and whom it was about.
pub(crate) struct Refusal {
    error: OAuthError,
    who: Option<Box<Who>>,
}

impl Refusal {
    /// Write the audit line (when a client was named) and return the error.
    pub(crate) fn audit(self) -> OAuthError {
        let Self { error, who } = self;
        if let Some(who) = who {
            tracing::info!(
                target: AUDIT_TARGET,
                event = "token",
                outcome = error.outcome(),
                client_id = %audit_field(&who.client_id),
                namespace = who.namespace.as_deref().map(audit_field).as_deref(),
                service_account = who.service_account.as_deref().map(audit_field).as_deref(),
                auth_method = who.method,
                reason = %audit_field(&error.description),
                "token refused"
            );
        }
        error
    }
}

/// Who a refused request was about, for the audit line. `client_id` is
/// already safe to log.
struct Who {
    client_id: String,
    namespace: Option<String>,
    service_account: Option<String>,
    method: &'static str,
}

impl Who {
    /// A client that did not authenticate: its presented id, logged in
    /// full only if `known` ([`loggable_client_id`]).
    fn unauthenticated(creds: &ClientCredentials, known: bool) -> Self {
        Self {
            client_id: loggable_client_id(&creds.client_id, known),
            namespace: None,
            service_account: None,
            method: creds.method.as_str(),
        }
    }

    /// A workload-identity request before it is authenticated: the
    /// `client_id` if sent, logged in full only if `known`, as for secrets
    /// ([`loggable_client_id`]); the token is never logged.
    fn asserted(assertion: &super::assertion::ClientAssertion, known: bool) -> Self {
        Self {
            client_id: assertion
                .client_id
                .as_deref()
                .map(|id| loggable_client_id(id, known))
                .unwrap_or_default(),
            namespace: None,
            service_account: None,
            method: super::assertion::METHOD,
        }
    }

    /// A token exchange before it is authenticated: the client id the
    /// subject token names (its non-secret lookup id), or a short hash of a
    /// malformed one; the token itself is never logged.
    fn exchanging(form: &super::form::Form) -> Self {
        let token = form.get("subject_token").unwrap_or_default();
        let client_id = crate::core::api_token::client_id_of(token)
            .unwrap_or_else(|| loggable_client_id(token, false));
        Self {
            client_id,
            namespace: None,
            service_account: None,
            method: super::api_token::METHOD,
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
pub async fn token(
    State(server): State<TokenServer>,
    request: OAuthRequest,
) -> Result<Response, OAuthError> {
    let issued = server
        .prepare_token(request)
        .await
        .map_err(Refusal::audit)?;
    let signer = issued
        .keys
        .ring
        .active()
        .cloned()
        .ok_or_else(|| OAuthError::unavailable("no active signing key"))?;
    let token = signer.sign(&issued.claims_json).map_err(|e| {
        tracing::error!(error = %e, "signing failed");
        OAuthError::unavailable("signing failed")
    })?;
    server.token_response(issued, &token)
}

/// `POST /oauth/introspect` (RFC 7662).
pub async fn introspect(
    State(server): State<TokenServer>,
    OAuthRequest {
        form,
        credentials,
        source,
        ..
    }: OAuthRequest,
) -> Result<Response, OAuthError> {
    let creds = credentials.ok_or_else(|| OAuthError::invalid_client(true))?;
    let now = Utc::now();
    let keys = server.keys()?;
    // Authentication gates access; the answer does not depend on who asks.
    server.authenticate(&creds, source, &keys, now)?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("missing token"))?;
    // API token hook: opaque `m2mt_` tokens are looked up, not verified as JWTs.
    if token.starts_with(crate::core::api_token::API_TOKEN_PREFIX) {
        let body = server.introspect_api_token(token, &keys, now);
        return Ok(json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ));
    }
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
            let cnf = c.cnf.unwrap_or_default();
            let mut body = serde_json::json!({
                "active": true,
                "scope": c.scope,
                "client_id": c.client_id,
                "token_type": cnf.token_type(),
                "exp": c.exp,
                "iat": c.iat,
                "nbf": c.nbf,
                "sub": c.sub,
                "aud": aud,
                "iss": c.iss,
                "jti": c.jti,
                SECRET_VERSION_CLAIM: c.m2m_sv,
            });
            if let Some(act) = &c.act {
                body["act"] = serde_json::json!(act);
            }
            // RFC 9449 §6.2, RFC 8705 §3.2: the binding, for the resource server to check.
            if !cnf.is_empty() {
                body["cnf"] = serde_json::json!(cnf);
            }
            body
        }
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    ))
}

/// `POST /oauth/revoke` (RFC 7009): 200 for unknown, foreign or already
/// expired tokens too. The caller authenticates as a client, or — for the
/// JWTs exchanged from an API token — with that API token as
/// `Authorization: Bearer` (RFC 6749 §2.3 allows other HTTP
/// authentication schemes), which may revoke only its own credential's tokens.
pub async fn revoke(
    State(server): State<TokenServer>,
    OAuthRequest {
        form,
        credentials,
        source,
        api_token,
        ..
    }: OAuthRequest,
) -> Result<Response, OAuthError> {
    let now = Utc::now();
    let keys = server.keys()?;
    let caller = match (credentials, api_token) {
        (Some(creds), _) => server.authenticate(&creds, source, &keys, now)?.0,
        (None, Some(token)) => match server.authenticate_api_token(&token, &keys, now) {
            Some((entry, _)) => entry,
            None => {
                let id = crate::core::api_token::client_id_of(&token)
                    .unwrap_or_else(|| "malformed-api-token".into());
                return Err(
                    match server.inner.limiter.failed(&id, source, Instant::now()) {
                        Ok(()) => OAuthError::invalid_client(true),
                        Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
                    },
                );
            }
        },
        (None, None) => return Err(OAuthError::invalid_client(true)),
    };
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("missing token"))?;
    if let Some(claims) = server.inspect(&keys, token, Some(&caller))
        && claims.exp > now.timestamp()
    {
        let token = Revoked {
            client_id: &claims.client_id,
            jti: &claims.jti,
            iat: claims.iat,
            exp: claims.exp,
        };
        server
            .inner
            .revocations
            .revoke(token, now.timestamp())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "recording a revocation failed");
                OAuthError::unavailable("the revocation could not be recorded; retry")
            })?;
        tracing::info!(
            target: AUDIT_TARGET,
            event = "revoke",
            outcome = "ok",
            client_id = %audit_field(&caller.client_id),
            namespace = %audit_field(&caller.namespace),
            service_account = %audit_field(&caller.service_account),
            jti = %audit_field(&claims.jti),
            "token revoked"
        );
    }
    let mut response = StatusCode::OK.into_response();
    no_store(&mut response);
    Ok(response)
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414), also served
/// at `/.well-known/openid-configuration` for OpenID Connect discovery
/// clients. Only what this server does: no authorization endpoint, no ID
/// token fields.
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
    // client assertions, at the token endpoint only; with client
    // certificates on, RFC 8705 `tls_client_auth` too.
    let client_certs = server.inner.config.sender.client_certificates;
    let mut token_auth_methods = vec![
        "client_secret_basic",
        "client_secret_post",
        super::assertion::METHOD,
    ];
    if client_certs {
        token_auth_methods.push(super::mtls::METHOD);
    }
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "grant_types_supported": [CLIENT_CREDENTIALS, super::api_token::TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": token_auth_methods,
        // Service-account tokens are signed by the cluster (RS256 or ES256).
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "access_token_signing_alg_values_supported": algs,
        // RFC 9449 §5.1: DPoP at the token endpoint, every grant.
        "dpop_signing_alg_values_supported": super::dpop::SIGNING_ALGS,
    });
    let mut body = body;
    if client_certs {
        // RFC 8705 §3.3.
        body["tls_client_certificate_bound_access_tokens"] = serde_json::json!(true);
    }
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
