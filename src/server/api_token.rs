//! API tokens at the token endpoint (`M2MCredential.spec.type: APIToken`):
//! introspection (RFC 7662) and token exchange (RFC 8693).
//!
//! Finding the credential: the token names its client id (the lookup id of
//! [`crate::core::api_token`]), so one hash-map lookup in the index finds
//! the entry; then the token is checked against that credential's sealed
//! keyed hashes with the same equal-work, constant-time comparison as a
//! client secret ([`CredentialEntry::authenticate`]). A malformed token or
//! an unknown lookup id costs the same keyed checks against a dummy entry.
//!
//! Kept apart: an API token is accepted only where a `subject_token` or an
//! introspected `token` is expected, and only for an `APIToken` credential;
//! a client secret is never accepted there, and an API token (or an
//! `APIToken` credential's client id) never authenticates a client.
//!
//! Token exchange: `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`
//! with `subject_token=<API token>` and `subject_token_type` either
//! [`ACCESS_TOKEN_TYPE`] or [`API_TOKEN_TYPE`]. The API token authenticates
//! the subject. A client may authenticate as well, by the usual methods
//! (RFC 8693 §2.1; many libraries always do): a wrong client authentication
//! is `401 invalid_client`, a right one is named in the token's `act` claim
//! (§4.1) and adds nothing to what the API token allows. The result is the
//! same JWT a
//! client-credentials request of that credential gets — same `sub`,
//! `client_id`, at most its scopes (`scope` narrows), its audiences
//! (`audience`/`resource`), with the API token's version as `m2m_sv`, so
//! rotating the API token without grace deactivates the JWTs exchanged
//! from it.

use super::TokenServer;
use super::error::OAuthError;
use super::form::Form;
use super::index::unknown_client;
use super::index::{CredentialEntry, CredentialIndex, KeyMaterial};
use crate::core::api_token::client_id_of;
use chrono::{DateTime, Utc};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// `grant_type` of RFC 8693 token exchange.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an OAuth access token: an API token is one.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of a JWT (accepted as `requested_token_type`).
pub(crate) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The m2m-operator's own token type for an API token, accepted as
/// `subject_token_type` as well.
pub(crate) const API_TOKEN_TYPE: &str = "urn:m2m.dev:params:oauth:token-type:api-token";
/// How a token-exchange request authenticated, in audit lines and metrics.
pub(crate) const METHOD: &str = "api_token";

/// The one answer for an API token that does not authenticate: nothing
/// tells a malformed token from an unknown, rotated or deleted one.
const INVALID_SUBJECT: &str = "subject_token is not a valid API token";

/// The `APIToken` credential a token names by its lookup id, if the token
/// is well formed and that credential exists (one map lookup, no scan).
pub(crate) fn entry_for(index: &CredentialIndex, token: &str) -> Option<Arc<CredentialEntry>> {
    client_id_of(token)
        .and_then(|id| index.get(&id).cloned())
        .filter(|e| e.api_token && e.workload.is_none())
}

/// The earliest known end of API token `version` of `entry`: the
/// credential's expiry, the grace end of a replaced token, or the scheduled
/// replacement of the current one. Introspection reports it as `exp`, and
/// no JWT exchanged from the token outlives it.
pub(crate) fn token_end(
    entry: &CredentialEntry,
    version: i64,
    grant: &crate::core::grant::Grant,
) -> Option<DateTime<Utc>> {
    let grace_end = entry
        .verifiers
        .iter()
        .find(|v| v.version == version)
        .and_then(|v| v.not_after);
    [grant.expires_at, grace_end, entry.api_token_end]
        .into_iter()
        .flatten()
        .min()
}

/// The RFC 8693 parameters every exchange checks, whatever its subject
/// token: no delegation (`actor_token`), and a `requested_token_type`, if
/// any, this server issues.
pub(crate) fn check_exchange(form: &Form) -> Result<(), OAuthError> {
    if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
        return Err(OAuthError::invalid_request(
            "actor_token is not supported (no delegation)",
        ));
    }
    if let Some(requested) = form.get("requested_token_type")
        && requested != ACCESS_TOKEN_TYPE
        && requested != JWT_TOKEN_TYPE
    {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type must be {ACCESS_TOKEN_TYPE} or {JWT_TOKEN_TYPE}"
        )));
    }
    Ok(())
}

impl TokenServer {
    /// The `APIToken` credential `token` belongs to and the token version
    /// it matched, if it is one of the credential's live tokens. Equal work
    /// for malformed tokens and unknown lookup ids.
    pub(crate) fn authenticate_api_token(
        &self,
        token: &str,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Option<(Arc<CredentialEntry>, i64)> {
        let index = self.inner.state.credentials();
        let entry = entry_for(&index, token);
        // Unknown or malformed: the same keyed checks against the dummy entry.
        let checked: &CredentialEntry = entry.as_deref().unwrap_or_else(|| unknown_client());
        let version = checked.authenticate(&keys.verifier_key, token, now)?;
        let entry = entry?;
        // Usage tracking (introspected or exchanged, the token was used):
        // a fetch_max in memory, no API call.
        let usage = &self.inner.state.usage().recorder;
        usage.record(&entry.client_id, version, now.timestamp());
        Some((entry, version))
    }

    /// The RFC 7662 answer for an API token: `active` while it is a live
    /// token of an `APIToken` credential whose grant resolves now.
    pub(crate) fn introspect_api_token(
        &self,
        token: &str,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> serde_json::Value {
        let inactive = serde_json::json!({ "active": false });
        let Some((entry, version)) = self.authenticate_api_token(token, keys, now) else {
            return inactive;
        };
        let Ok(grant) = entry.grant_at(now) else {
            return inactive;
        };
        let exp = token_end(&entry, version, grant).map(|t| t.timestamp());
        let mut body = serde_json::json!({
            "active": true,
            "scope": entry.default_scope,
            "client_id": entry.client_id,
            "sub": entry.subject,
            "token_type": "Bearer",
            "iss": self.inner.config.issuer,
            super::oauth::SECRET_VERSION_CLAIM: version,
        });
        if let Some(exp) = exp {
            body["exp"] = exp.into();
        }
        body
    }

    /// Authenticate an RFC 8693 token-exchange request by its subject
    /// token. Every malformed request is `invalid_request` (RFC 8693
    /// §2.2.2), as is a subject token that does not authenticate; repeated
    /// failures from one source or for one lookup id are rate limited
    /// (`429`) as failed client authentications are.
    pub(crate) fn authenticate_exchange(
        &self,
        form: &Form,
        source: Option<IpAddr>,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        check_exchange(form)?;
        let token = form
            .get("subject_token")
            .ok_or_else(|| OAuthError::invalid_request("missing subject_token"))?;
        match form.get("subject_token_type") {
            None => return Err(OAuthError::invalid_request("missing subject_token_type")),
            Some(ACCESS_TOKEN_TYPE | API_TOKEN_TYPE) => {}
            Some(_) => {
                return Err(OAuthError::invalid_request(format!(
                    "subject_token_type must be {ACCESS_TOKEN_TYPE} or {API_TOKEN_TYPE}"
                )));
            }
        }
        self.authenticate_api_token(token, keys, now)
            .ok_or_else(|| {
                let id = client_id_of(token).unwrap_or_else(|| "malformed-api-token".into());
                match self.inner.limiter.failed(&id, source, Instant::now()) {
                    Ok(()) => OAuthError::invalid_request(INVALID_SUBJECT),
                    Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
                }
            })
            .and_then(|(entry, version)| match entry.grant_at(now) {
                Ok(_) => Ok((entry, version)),
                Err(e) => Err(OAuthError::invalid_request(format!(
                    "subject_token is not active: {}",
                    e.reason()
                ))),
            })
    }
}
