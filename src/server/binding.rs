//! Sender-constrained tokens at the token endpoint (SPEC §10): the hooks
//! [`super::oauth`] calls for every grant.
//!
//! 1. [`TokenServer::check_sender`], before client authentication: the
//!    `DPoP` proof's stateless checks ([`super::dpop`]) and the
//!    connection's client certificate ([`super::mtls`]) give the token's
//!    `cnf`.
//! 2. [`TokenServer::authenticate_mtls`]: `tls_client_auth`, for a request
//!    with a `client_id`, no other client authentication, and a client
//!    certificate whose SAN a credential's `spec.mtls` names.
//! 3. [`TokenServer::bind`], once the client authenticated and its grant
//!    resolved: `spec.senderConstraint` (an unbound token is refused) and
//!    the proof's replay check (so only authenticated clients fill the
//!    replay cache).

use super::TokenServer;
use super::dpop::{DPOP_HEADER, Proof};
use super::error::OAuthError;
use super::index::{CredentialEntry, KeyMaterial};
use super::mtls::{ClientCert, PeerCertificate};
use crate::core::sender::{Confirmation, UnboundError, check_required};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The sender-constraint options of a token server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderOptions {
    /// How DPoP proofs are checked.
    pub dpop: super::dpop::DpopConfig,
    /// Client certificates are requested on the TLS listener (metadata
    /// then lists `tls_client_auth`).
    pub client_certificates: bool,
}

/// What a token request brings that may bind its token: its `DPoP`
/// header(s), method, and the connection's client certificate.
#[derive(Debug, Clone, Default)]
pub struct SenderContext {
    dpop: Vec<HeaderValue>,
    method: String,
    /// The TLS client certificate of the connection, if it sent one.
    pub client_cert: Option<Arc<ClientCert>>,
}

impl SenderContext {
    /// From the request head.
    pub fn from_parts(parts: &Parts) -> Self {
        Self {
            dpop: parts.headers.get_all(DPOP_HEADER).iter().cloned().collect(),
            method: parts.method.as_str().to_owned(),
            client_cert: parts
                .extensions
                .get::<PeerCertificate>()
                .map(|c| c.0.clone()),
        }
    }
}

/// The binding of a token about to be issued.
#[derive(Debug, Default)]
pub(crate) struct Binding {
    proof: Option<Proof>,
    /// The token's `cnf` (empty: a bearer token).
    pub(crate) cnf: Confirmation,
    /// A fresh `DPoP-Nonce` for the response, when nonces are on.
    pub(crate) nonce: Option<String>,
}

impl TokenServer {
    /// Step 1: the proof's stateless checks and the certificate's thumbprint.
    pub(crate) fn check_sender(
        &self,
        ctx: &SenderContext,
        keys: Option<&KeyMaterial>,
        now: DateTime<Utc>,
    ) -> Result<Binding, OAuthError> {
        let dpop = &self.inner.dpop;
        let nonce_key = (dpop.config().nonce)
            .then(|| keys.map(|k| super::dpop::nonce_key(k.verifier_key.as_bytes())))
            .flatten();
        let ts = now.timestamp();
        let proof = match ctx.dpop.as_slice() {
            [] => None,
            [one] => {
                let value = one
                    .to_str()
                    .map_err(|_| OAuthError::invalid_dpop_proof("the DPoP header is not a JWT"))?;
                let checked = dpop.check_proof(
                    value.trim(),
                    &ctx.method,
                    ts,
                    nonce_key.as_ref().map(|k| &k[..]),
                );
                // Refusals are counted by outcome in m2m_token_requests_total.
                Some(checked.map_err(super::dpop::DpopError::into_oauth)?)
            }
            _ => return Err(OAuthError::invalid_dpop_proof("more than one DPoP header")),
        };
        Ok(Binding {
            cnf: Confirmation {
                jkt: proof.as_ref().map(|p| p.jkt.clone()),
                x5t_s256: ctx.client_cert.as_ref().map(|c| c.x5t_s256.clone()),
            },
            proof,
            nonce: nonce_key.map(|k| super::dpop::nonce(&k, ts)),
        })
    }

    /// Step 3: the credential's required binding, then the replay check.
    pub(crate) fn bind(
        &self,
        binding: &Binding,
        entry: &CredentialEntry,
        now: DateTime<Utc>,
    ) -> Result<(), OAuthError> {
        check_required(entry.sender.constraint, &binding.cnf).map_err(|e| match e {
            UnboundError::MissingProof => OAuthError::invalid_dpop_proof(e.to_string()),
            UnboundError::MissingCertificate => OAuthError::invalid_request(e.to_string()),
        })?;
        if let Some(proof) = &binding.proof {
            self.inner
                .dpop
                .record(proof, now.timestamp())
                .map_err(super::dpop::DpopError::into_oauth)?;
        }
        Ok(())
    }

    /// Step 2: `tls_client_auth` (RFC 8705 §2.1). The same refusal as a
    /// wrong secret, counted by the same failure limit. The token carries
    /// the credential's current secret version (or workload-identity
    /// epoch), so a rotation without grace period or a switch of binding
    /// ends it as it ends every other token of the credential.
    pub(crate) fn authenticate_mtls(
        &self,
        client_id: &str,
        cert: &ClientCert,
        source: Option<IpAddr>,
        keys: &KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        let index = self.inner.state.credentials();
        let matched = index
            .get(client_id)
            .filter(|e| !e.api_token)
            .filter(|e| e.sender.mtls.as_ref().is_some_and(|m| cert.sans.matches(m)))
            .and_then(|e| current_version(e, keys, now).map(|v| (e.clone(), v)));
        if let Some((entry, version)) = &matched {
            let usage = &self.inner.state.usage().recorder;
            usage.record(&entry.client_id, *version, now.timestamp());
        }
        matched.ok_or_else(
            || match self.inner.limiter.failed(client_id, source, Instant::now()) {
                Ok(()) => OAuthError::invalid_client(false),
                Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
            },
        )
    }
}

/// The version a token authenticated other than by secret carries: the
/// workload-identity epoch, or the newest secret version accepted now.
fn current_version(entry: &CredentialEntry, keys: &KeyMaterial, now: DateTime<Utc>) -> Option<i64> {
    if entry.workload.is_some() {
        return entry.workload_epoch(&keys.verifier_key);
    }
    entry
        .verifiers
        .iter()
        .filter(|v| v.not_after.is_none())
        .map(|v| v.version)
        .filter(|v| entry.accepts_version(&keys.verifier_key, *v, now))
        .max()
}
