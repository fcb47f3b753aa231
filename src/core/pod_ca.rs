//! The Pod-certificate CA (SPEC §10): a self-signed ECDSA P-256 CA whose
//! key lives only in the operator's CA Secret, and the certificates it
//! signs for [`crate::core::podcert::Issuance`]s. Built with `rcgen` on
//! aws-lc-rs (the crypto provider the rest of the operator links); the
//! validity of a stored CA is read back with the RustCrypto `x509-cert`
//! parser that [`crate::server::mtls`] uses for client certificates.
//!
//! No Kubernetes I/O: the controller ([`crate::controller::podcert`])
//! stores and publishes what this module makes.

use super::podcert::{Issuance, KeyType};
use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};

/// Why a CA could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused (key generation, parsing, signing).
    #[error("{step}: {source}")]
    Rcgen {
        /// What was being done.
        step: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The stored CA certificate does not parse.
    #[error("the stored CA certificate does not parse")]
    Certificate,
    /// A time outside what a certificate can carry.
    #[error("a validity time is out of range")]
    Time,
}

fn rc(step: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { step, source }
}

/// A CA that signs Pod certificates.
pub struct PodCa {
    key: KeyPair,
    /// The CA certificate's subject common name (the issuer name of what it signs).
    pub common_name: String,
    /// PEM certificate.
    pub certificate: String,
    /// `notBefore`.
    pub not_before: DateTime<Utc>,
    /// `notAfter`.
    pub not_after: DateTime<Utc>,
}

impl std::fmt::Debug for PodCa {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCa")
            .field("common_name", &self.common_name)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|_| CaError::Time)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and 16 bytes long (RFC 5280 §4.1.2.2: at most 20).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from(bytes.to_vec())
}

/// The CA's parameters; the same for the self-signature and for every
/// certificate it signs (its subject and key identifier must match).
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "m2m.dev");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl PodCa {
    /// A new CA valid `[not_before, not_after]`, named after its start.
    pub fn generate(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> Result<Self, CaError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("generate CA key"))?;
        let common_name = format!(
            "m2m.dev workload-identity CA {}",
            not_before.format("%Y%m%dT%H%M%SZ")
        );
        let mut params = ca_params(&common_name);
        params.not_before = offset(not_before)?;
        params.not_after = offset(not_after)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(rc("self-sign the CA"))?;
        Ok(Self {
            key,
            common_name,
            certificate: cert.pem(),
            not_before,
            not_after,
        })
    }

    /// A CA as stored: its PEM certificate, PKCS#8 PEM key and name.
    pub fn load(certificate: &str, key_pem: &str, common_name: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("parse the CA key"))?;
        let (not_before, not_after) = validity_of(certificate).ok_or(CaError::Certificate)?;
        Ok(Self {
            key,
            common_name: common_name.to_owned(),
            certificate: certificate.to_owned(),
            not_before,
            not_after,
        })
    }

    /// The PKCS#8 PEM key, for the CA Secret only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Sign a Pod certificate: the requested key, the SPIFFE ID as the only
    /// (critical, the subject being empty) SAN, `clientAuth` and
    /// `serverAuth`, not a CA. Returns the PEM certificate.
    pub fn sign(&self, issuance: &Issuance) -> Result<String, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            issuance
                .spiffe_id
                .clone()
                .try_into()
                .map_err(rc("encode the SPIFFE ID"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if issuance.key.key_type.is_rsa() {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(issuance.not_before)?;
        params.not_after = offset(issuance.not_after)?;
        params.serial_number = Some(random_serial());
        let issuer = Issuer::new(ca_params(&self.common_name), &self.key);
        let cert = params
            .signed_by(&RequestedPublicKey(issuance), &issuer)
            .map_err(rc("sign the Pod certificate"))?;
        Ok(cert.pem())
    }
}

/// The requested key as rcgen's `PublicKeyData`: its `SubjectPublicKeyInfo`
/// goes into the certificate verbatim.
struct RequestedPublicKey<'a>(&'a Issuance);

impl PublicKeyData for RequestedPublicKey<'_> {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.0.key.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.0.key.raw
    }

    /// Only used by rcgen to encode a SPKI, which
    /// [`Self::subject_public_key_info`] gives verbatim.
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.0.key.key_type {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// `notBefore` and `notAfter` of a PEM certificate.
pub fn validity_of(pem: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use x509_cert::der::Decode;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    let v = &cert.tbs_certificate.validity;
    let at = |t: x509_cert::time::Time| {
        DateTime::from_timestamp(t.to_unix_duration().as_secs().try_into().ok()?, 0)
    };
    Some((at(v.not_before)?, at(v.not_after)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::podcert::{BindingState, RequestFacts, decide};
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_796_212_800, 0).unwrap()
    }

    fn openssl(args: &[&str], dir: &std::path::Path) -> std::process::Output {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    }

    /// openssl verifies the chain, the SAN, the purposes and the key, for
    /// every key type the signer supports; the stored CA signs the same.
    #[test]
    fn signed_certificates_verify_with_openssl_for_every_key_type() {
        let ca = PodCa::generate(now() - Duration::minutes(1), now() + Duration::days(31)).unwrap();
        let stored = PodCa::load(&ca.certificate, &ca.key_pem(), &ca.common_name).unwrap();
        assert_eq!(stored.not_before, ca.not_before);
        assert_eq!(stored.not_after, ca.not_after);
        assert!(!format!("{stored:?}").contains("PRIVATE"));
        let dir = std::env::temp_dir().join(format!("m2m-podca-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.certificate).unwrap();
        for kt in ["ECDSAP256", "ECDSAP384", "ED25519", "RSA3072"] {
            let csr = crate::core::podcert::tests::csr(kt);
            let facts = RequestFacts {
                namespace: "team-a",
                pod_name: "p",
                pod_uid: "u",
                service_account_name: "uploader",
                service_account_uid: "s",
                node_name: "n",
                node_uid: "nu",
                stub_pkcs10: &csr,
                ..Default::default()
            };
            let issuance = decide(
                &facts,
                &BindingState::Bound(vec!["c".into()]),
                "cluster.local",
                // openssl verifies against the real clock.
                Utc::now(),
            )
            .unwrap();
            let ca_now = PodCa::generate(
                Utc::now() - Duration::minutes(1),
                Utc::now() + Duration::days(2),
            )
            .unwrap();
            std::fs::write(dir.join("ca.pem"), &ca_now.certificate).unwrap();
            for (signer, name) in [
                (&ca_now, "fresh"),
                (
                    &PodCa::load(&ca_now.certificate, &ca_now.key_pem(), &ca_now.common_name)
                        .unwrap(),
                    "stored",
                ),
            ] {
                let pem = signer.sign(&issuance).unwrap();
                std::fs::write(dir.join("leaf.pem"), &pem).unwrap();
                let out = openssl(
                    &[
                        "verify",
                        "-purpose",
                        "sslclient",
                        "-CAfile",
                        "ca.pem",
                        "leaf.pem",
                    ],
                    &dir,
                );
                assert!(
                    out.status.success(),
                    "{kt} {name}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = openssl(&["x509", "-noout", "-text", "-in", "leaf.pem"], &dir);
                let text = String::from_utf8_lossy(&text.stdout);
                assert!(
                    text.contains("URI:spiffe://cluster.local/ns/team-a/sa/uploader"),
                    "{text}"
                );
                assert!(text.contains("CA:FALSE"), "{text}");
                // The certificate carries the requested key, byte for byte.
                let cert = x509_cert::Certificate::from_der(
                    &tokio_rustls::rustls::pki_types::pem::PemObject::from_pem_slice(
                        pem.as_bytes(),
                    )
                    .map(|d: tokio_rustls::rustls::pki_types::CertificateDer<'_>| d.to_vec())
                    .unwrap(),
                )
                .unwrap();
                use x509_cert::der::{Decode, Encode};
                assert_eq!(
                    cert.tbs_certificate
                        .subject_public_key_info
                        .to_der()
                        .unwrap(),
                    issuance.key.spki,
                    "{kt}"
                );
                let (nb, na) = validity_of(&pem).unwrap();
                assert_eq!((nb, na), (issuance.not_before, issuance.not_after));
                // The token server reads the SAN the same way.
                let client = crate::server::mtls::ClientCert::from_der(&cert.to_der().unwrap());
                assert_eq!(
                    client.sans.uris,
                    ["spiffe://cluster.local/ns/team-a/sa/uploader"]
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
