//! Sender-constrained tokens (SPEC §10): what a token is bound to (the
//! RFC 7800 `cnf` claim: RFC 9449 `jkt`, RFC 8705 `x5t#S256`), whether that
//! satisfies a credential's `spec.senderConstraint`, and whether a client
//! certificate's subject alternative names match a credential's `spec.mtls`.
//! No I/O: the token server ([`crate::server::dpop`],
//! [`crate::server::mtls`]) builds on these.

use crate::crd::{MutualTls, SenderConstraint};
use serde::{Deserialize, Serialize};

/// The `cnf` claim of a sender-constrained token (RFC 7800 §3.1).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// RFC 9449 §6.1: the base64url SHA-256 JWK thumbprint (RFC 7638) of the
    /// DPoP proof key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705 §3.1: the base64url SHA-256 of the DER client certificate.
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// Bound to nothing: a bearer token.
    pub fn is_empty(&self) -> bool {
        self.jkt.is_none() && self.x5t_s256.is_none()
    }

    /// `DPoP` when bound to a DPoP key (RFC 9449 §5), else `Bearer`. A
    /// certificate-bound token stays `Bearer` (RFC 8705 §3: it is used
    /// with the `Bearer` scheme over the same mutual-TLS connection).
    pub fn token_type(&self) -> &'static str {
        if self.jkt.is_some() { "DPoP" } else { "Bearer" }
    }
}

/// What a credential asks of the binding of its tokens (its spec's
/// `senderConstraint` and `mtls`), as the token server's index keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderPolicy {
    /// `spec.senderConstraint`.
    pub constraint: Option<SenderConstraint>,
    /// `spec.mtls`: the client certificate SAN `tls_client_auth` accepts.
    pub mtls: Option<MutualTls>,
}

impl SenderPolicy {
    /// The policy of a credential spec.
    pub fn of(spec: &crate::crd::M2MCredentialSpec) -> Self {
        Self {
            constraint: spec.sender_constraint,
            mtls: spec.mtls.clone(),
        }
    }
}

/// Why a token request does not satisfy the credential's `senderConstraint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnboundError {
    /// `DPoP` is required and the request carried no proof.
    #[error("this client requires DPoP-bound tokens (senderConstraint: DPoP): send a DPoP proof")]
    MissingProof,
    /// `MTLS` is required and the connection has no client certificate.
    #[error(
        "this client requires certificate-bound tokens (senderConstraint: MTLS): connect over TLS with a client certificate"
    )]
    MissingCertificate,
}

/// Whether a token bound as `cnf` may be issued to a credential that
/// requires `required`.
pub fn check_required(
    required: Option<SenderConstraint>,
    cnf: &Confirmation,
) -> Result<(), UnboundError> {
    match required {
        None => Ok(()),
        Some(SenderConstraint::DPoP) if cnf.jkt.is_none() => Err(UnboundError::MissingProof),
        Some(SenderConstraint::Mtls) if cnf.x5t_s256.is_none() => {
            Err(UnboundError::MissingCertificate)
        }
        Some(_) => Ok(()),
    }
}

/// The subject alternative names of a client certificate that
/// `tls_client_auth` compares (RFC 8705 §2.1.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    /// `uniformResourceIdentifier` entries, as written.
    pub uris: Vec<String>,
    /// `dNSName` entries, as written.
    pub dns: Vec<String>,
}

impl SubjectAltNames {
    /// Whether the certificate carries the SAN `expected` names: a URI
    /// compared exactly (RFC 8705 §2.1.2 says "string comparison"), a DNS
    /// name without regard to ASCII case (RFC 4343). Wildcard names in the
    /// certificate match nothing: `spec.mtls` names one client.
    pub fn matches(&self, expected: &MutualTls) -> bool {
        match (&expected.san_uri, &expected.san_dns) {
            (Some(uri), None) => self.uris.iter().any(|u| u == uri),
            (None, Some(dns)) => self
                .dns
                .iter()
                .any(|d| !d.contains('*') && d.eq_ignore_ascii_case(dns)),
            // Exactly one is set (CEL rule); anything else matches nothing.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_binding_table() {
        let none = Confirmation::default();
        let dpop = Confirmation {
            jkt: Some("k".into()),
            ..Default::default()
        };
        let mtls = Confirmation {
            x5t_s256: Some("c".into()),
            ..Default::default()
        };
        assert_eq!(check_required(None, &none), Ok(()));
        assert_eq!(
            check_required(Some(SenderConstraint::DPoP), &none),
            Err(UnboundError::MissingProof)
        );
        assert_eq!(
            check_required(Some(SenderConstraint::DPoP), &mtls),
            Err(UnboundError::MissingProof)
        );
        assert_eq!(check_required(Some(SenderConstraint::DPoP), &dpop), Ok(()));
        assert_eq!(
            check_required(Some(SenderConstraint::Mtls), &dpop),
            Err(UnboundError::MissingCertificate)
        );
        assert_eq!(check_required(Some(SenderConstraint::Mtls), &mtls), Ok(()));
        assert_eq!(none.token_type(), "Bearer");
        assert_eq!(mtls.token_type(), "Bearer");
        assert_eq!(dpop.token_type(), "DPoP");
    }

    #[test]
    fn cnf_serialises_with_rfc_member_names() {
        let cnf = Confirmation {
            jkt: Some("a".into()),
            x5t_s256: Some("b".into()),
        };
        assert_eq!(
            serde_json::to_string(&cnf).unwrap(),
            r#"{"jkt":"a","x5t#S256":"b"}"#
        );
        assert_eq!(
            serde_json::to_string(&Confirmation::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn san_matching_table() {
        let sans = SubjectAltNames {
            uris: vec!["spiffe://td/ns/a/sa/b".into()],
            dns: vec!["Client.Example".into(), "*.example".into()],
        };
        let uri = |u: &str| MutualTls {
            san_uri: Some(u.into()),
            san_dns: None,
        };
        let dns = |d: &str| MutualTls {
            san_uri: None,
            san_dns: Some(d.into()),
        };
        assert!(sans.matches(&uri("spiffe://td/ns/a/sa/b")));
        assert!(!sans.matches(&uri("spiffe://td/ns/a/sa/b/")));
        assert!(!sans.matches(&uri("SPIFFE://td/ns/a/sa/b")));
        assert!(sans.matches(&dns("client.example")));
        assert!(!sans.matches(&dns("other.example")), "no wildcard matching");
        assert!(!sans.matches(&MutualTls::default()));
        assert!(!sans.matches(&MutualTls {
            san_uri: Some("spiffe://td/ns/a/sa/b".into()),
            san_dns: Some("client.example".into()),
        }));
    }
}
