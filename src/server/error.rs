//! OAuth 2.0 error responses (RFC 6749 §5.2, RFC 7009 §2.2.1): a JSON body
//! `{"error": …, "error_description": …}`, `Cache-Control: no-store` and
//! `Pragma: no-cache`, and the status each code calls for.
//!
//! | code | status | when |
//! |---|---|---|
//! | `invalid_request` | 400 (413 for an oversized body, 415 for a wrong content type) | malformed or repeated parameters, non-UTF-8, two authentication methods, malformed `Authorization` |
//! | `invalid_client` | 401, with `WWW-Authenticate: Basic` when Basic was used or no authentication was sent | unknown client or wrong secret — the same response for both |
//! | `invalid_client` | 429 with `Retry-After` | too many failed authentications for this client id |
//! | `invalid_grant` | 400 | the credential expired (`spec.expiresAt`) |
//! | `unauthorized_client` | 400 | the credential may not be granted tokens now: its ServiceAccount is disabled, missing or invalid, or its grant is invalid |
//! | `unsupported_grant_type` | 400 | `grant_type` other than `client_credentials` or RFC 8693 token exchange |
//! | `invalid_request` | 400 | token exchange: missing or unsupported `subject_token_type`, missing `subject_token`, an `actor_token`, client authentication sent, or a `subject_token` that is not a live API token (RFC 8693 §2.2.2) |
//! | `invalid_scope` | 400 | a requested scope outside the credential's grant |
//! | `invalid_target` | 400 | a requested `audience`/`resource` the credential may not use (RFC 8707) |
//! | `invalid_dpop_proof` | 400 | a `DPoP` proof failed a check of RFC 9449 §4.3, was replayed, or is missing for a `senderConstraint: DPoP` credential ([`super::dpop`]) |
//! | `use_dpop_nonce` | 400, with `DPoP-Nonce` | `--dpop-nonce` is on and the proof has no current nonce (RFC 9449 §8) |
//! | `temporarily_unavailable` | 503 | no signing key loaded yet, or the revocation list could not be written |

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

/// An OAuth error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The RFC error code.
    pub code: &'static str,
    /// A human-readable description (never reveals whether a client exists).
    pub description: Cow<'static, str>,
    /// The HTTP status.
    pub status: StatusCode,
    /// Add `WWW-Authenticate: Basic realm=…`.
    pub basic_challenge: bool,
    /// Add `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    /// Add `DPoP-Nonce` (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
}

impl OAuthError {
    fn new(
        code: &'static str,
        status: StatusCode,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            description: description.into(),
            status,
            basic_challenge: false,
            retry_after: None,
            dpop_nonce: None,
        }
    }

    /// `invalid_request`, 400.
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_request", StatusCode::BAD_REQUEST, description)
    }

    /// `invalid_request` with another status (413, 415).
    pub(crate) fn invalid_request_status(
        status: StatusCode,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new("invalid_request", status, description)
    }

    /// `invalid_client`, 401. The description is fixed so that nothing
    /// tells an unknown client id from a wrong secret.
    pub fn invalid_client(basic_challenge: bool) -> Self {
        Self {
            basic_challenge,
            ..Self::new(
                "invalid_client",
                StatusCode::UNAUTHORIZED,
                "client authentication failed",
            )
        }
    }

    /// `invalid_client`, 429: too many failed authentications.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                "invalid_client",
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentication attempts for this client; retry later",
            )
        }
    }

    /// `invalid_grant`, 400.
    pub(crate) fn invalid_grant(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_grant", StatusCode::BAD_REQUEST, description)
    }

    /// `unauthorized_client`, 400.
    pub(crate) fn unauthorized_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new("unauthorized_client", StatusCode::BAD_REQUEST, description)
    }

    /// `unsupported_grant_type`, 400.
    pub(crate) fn unsupported_grant_type() -> Self {
        Self::new(
            "unsupported_grant_type",
            StatusCode::BAD_REQUEST,
            "only grant_type=client_credentials and urn:ietf:params:oauth:grant-type:token-exchange are supported",
        )
    }

    /// `invalid_scope`, 400.
    pub fn invalid_scope(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_scope", StatusCode::BAD_REQUEST, description)
    }

    /// `invalid_target`, 400 (RFC 8707).
    pub(crate) fn invalid_target(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_target", StatusCode::BAD_REQUEST, description)
    }

    /// `invalid_dpop_proof`, 400 (RFC 9449 §5): a proof that fails a check.
    pub(crate) fn invalid_dpop_proof(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_dpop_proof", StatusCode::BAD_REQUEST, description)
    }

    /// `use_dpop_nonce`, 400, with the nonce to use (RFC 9449 §8).
    pub(crate) fn use_dpop_nonce(nonce: String) -> Self {
        Self {
            dpop_nonce: Some(nonce),
            ..Self::new(
                "use_dpop_nonce",
                StatusCode::BAD_REQUEST,
                "the authorization server requires a nonce in the DPoP proof: use the DPoP-Nonce response header",
            )
        }
    }

    /// `temporarily_unavailable`, 503.
    pub(crate) fn unavailable(description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                "temporarily_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                description,
            )
        }
    }

    /// The outcome label for metrics and audit lines.
    pub fn outcome(&self) -> &'static str {
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limited"
        } else {
            self.code
        }
    }
}

/// The outcome label of an error response, for the metrics middleware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome(pub &'static str);

/// A bare error response made by a tower layer (the body limit's 413, the
/// request timeout's 503, the body deadline's 408) as the RFC 6749 JSON
/// error every token-endpoint error is. Other responses pass unchanged.
pub(crate) fn as_oauth_error(response: Response) -> Response {
    if response.extensions().get::<Outcome>().is_some() {
        return response;
    }
    let error = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => OAuthError::invalid_request_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than 8 KiB",
        ),
        StatusCode::REQUEST_TIMEOUT => OAuthError::invalid_request_status(
            StatusCode::REQUEST_TIMEOUT,
            "the request was not received in time",
        ),
        StatusCode::SERVICE_UNAVAILABLE => OAuthError::unavailable("the request timed out"),
        _ => return response,
    };
    error.into_response()
}

/// `Cache-Control: no-store` and `Pragma: no-cache`, required on every
/// token-endpoint response (RFC 6749 §5.1).
pub(crate) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            error: self.code,
            error_description: &self.description,
        })
        .unwrap_or_default();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        no_store(&mut response);
        response.extensions_mut().insert(Outcome(self.outcome()));
        let headers = response.headers_mut();
        if self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"m2m-operator\", charset=\"UTF-8\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(nonce) = self
            .dpop_nonce
            .as_deref()
            .and_then(super::dpop::nonce_header)
        {
            headers.insert(super::dpop::DPOP_NONCE_HEADER, nonce);
        }
        response
    }
}
