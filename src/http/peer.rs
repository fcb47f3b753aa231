//! The client certificate of a connection, as the accept loop hands it to
//! the handlers (a request extension): its SHA-256 thumbprint and SANs.
//! Here, not in the token server's mTLS module, because the HTTP layer
//! produces it and must not import the server.

use crate::core::sender::SubjectAltNames;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;

/// What the token endpoint knows about a connection's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// base64url SHA-256 of the DER certificate (`cnf["x5t#S256"]`).
    pub x5t_s256: String,
    /// Its subject alternative names.
    pub sans: SubjectAltNames,
}

impl ClientCert {
    /// From the end-entity certificate of a verified handshake. A SAN
    /// extension that does not parse leaves the SANs empty (the
    /// certificate still binds tokens, but authenticates no credential).
    pub fn from_der(der: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
            sans: subject_alt_names(der).unwrap_or_default(),
        }
    }
}

fn subject_alt_names(der: &[u8]) -> Option<SubjectAltNames> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let (_, san) = cert.tbs_certificate.get::<SubjectAltName>().ok()??;
    let mut out = SubjectAltNames::default();
    for name in san.0 {
        match name {
            GeneralName::UniformResourceIdentifier(uri) => out.uris.push(uri.as_str().to_owned()),
            GeneralName::DnsName(dns) => out.dns.push(dns.as_str().to_owned()),
            _ => {}
        }
    }
    Some(out)
}

/// The client certificate of a connection, as a request extension.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<ClientCert>);
