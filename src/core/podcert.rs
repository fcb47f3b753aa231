//! Pod certificates (SPEC §10): what the `m2m.dev/workload-identity`
//! `PodCertificateRequest` signer decides, without I/O.
//!
//! - [`decide`]: sign or deny one request, from the tuple the apiserver
//!   vouches for (Pod, ServiceAccount, Node names and UIDs, which the
//!   NodeRestriction admission plugin checks against the live objects when
//!   a kubelet creates the request), the key in its stub PKCS#10 request,
//!   and whether a workload-identity `M2MCredential` binds the Pod's core
//!   ServiceAccount. Every refusal is a `(reason, message)`; the reasons
//!   `UnsupportedKeyType` and `InvalidUnverifiedUserAnnotations` are the
//!   ones the Kubernetes API defines.
//! - [`spiffe_id`], [`lifetime`]: the certificate's URI SAN and validity.
//! - [`CaPolicy`]: when the signing CA rotates, and how long a retired CA
//!   stays in the `ClusterTrustBundle` (until the last certificate it
//!   signed has expired).
//!
//! The signing itself (rcgen, aws-lc-rs) is [`crate::core::pod_ca`].

use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// The signer name (`spec.signerName` of the requests, the
/// `ClusterTrustBundle` and the RBAC `signers` resource name).
pub const SIGNER_NAME: &str = "m2m.dev/workload-identity";

/// The longest certificate this signer issues, whatever the request asks.
pub const MAX_LIFETIME: Duration = Duration::hours(24);

/// The shortest lifetime the apiserver accepts for a Pod certificate.
pub const MIN_LIFETIME: Duration = Duration::hours(1);

/// How far `notBefore` is set back, for clocks slightly behind ours. The
/// apiserver requires `notBefore` within 5 minutes of its own clock.
pub const BACKDATE: Duration = Duration::seconds(60);

/// The key types the kubelet can generate (`podCertificate.keyType`) that
/// this signer certifies. `ECDSAP521` is allowed by the API but refused
/// here (`UnsupportedKeyType`): rustls, which verifies the certificates at
/// the token endpoint, does not verify P-521 signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256 (`ECDSAP256`).
    EcdsaP256,
    /// ECDSA on P-384 (`ECDSAP384`).
    EcdsaP384,
    /// Ed25519 (`ED25519`).
    Ed25519,
    /// RSA with a 3072-bit modulus (`RSA3072`).
    Rsa3072,
    /// RSA with a 4096-bit modulus (`RSA4096`).
    Rsa4096,
}

impl KeyType {
    /// The name `podCertificate.keyType` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ECDSAP256",
            Self::EcdsaP384 => "ECDSAP384",
            Self::Ed25519 => "ED25519",
            Self::Rsa3072 => "RSA3072",
            Self::Rsa4096 => "RSA4096",
        }
    }

    /// Whether the key signs with RSA (the certificate then also allows
    /// `keyEncipherment`, as TLS 1.2 RSA key exchange needs).
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa3072 | Self::Rsa4096)
    }
}

/// The key types this signer supports, for the `UnsupportedKeyType` message.
pub const SUPPORTED_KEY_TYPES: &str = "ECDSAP256, ECDSAP384, ED25519, RSA3072, RSA4096";

/// Why a request's public key is not certified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `stubPKCS10Request` is not a DER PKCS#10 request.
    #[error("stubPKCS10Request is not a DER PKCS#10 certification request")]
    MalformedRequest,
    /// A key this signer does not certify.
    #[error("{0} keys are not supported; use one of {SUPPORTED_KEY_TYPES}")]
    Unsupported(String),
}

mod oid {
    pub const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    pub const P256: &str = "1.2.840.10045.3.1.7";
    pub const P384: &str = "1.3.132.0.34";
    pub const P521: &str = "1.3.132.0.35";
    pub const ED25519: &str = "1.3.101.112";
    pub const RSA: &str = "1.2.840.113549.1.1.1";
}

/// The public key of a request: its type and its DER `SubjectPublicKeyInfo`
/// (copied into the certificate as it is, so the apiserver's check that
/// the certificate was issued to the requested key holds byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedKey {
    /// The key type.
    pub key_type: KeyType,
    /// DER `SubjectPublicKeyInfo`.
    pub spki: Vec<u8>,
    /// The `subjectPublicKey` bits (for rcgen's `PublicKeyData`).
    pub raw: Vec<u8>,
}

/// The public key of a stub PKCS#10 request. The apiserver has verified
/// the request's self-signature at admission (proof of possession), so
/// only the key is read.
pub fn requested_key(stub_pkcs10: &[u8]) -> Result<RequestedKey, KeyError> {
    use x509_cert::der::{Decode, Encode};
    let req = x509_cert::request::CertReq::from_der(stub_pkcs10)
        .map_err(|_| KeyError::MalformedRequest)?;
    let spki = &req.info.public_key;
    let raw = spki
        .subject_public_key
        .as_bytes()
        .ok_or(KeyError::MalformedRequest)?
        .to_vec();
    let alg = spki.algorithm.oid.to_string();
    let param_oid = || {
        spki.algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
            .map(|o| o.to_string())
    };
    let key_type = match alg.as_str() {
        oid::EC_PUBLIC_KEY => match param_oid().as_deref() {
            Some(oid::P256) => KeyType::EcdsaP256,
            Some(oid::P384) => KeyType::EcdsaP384,
            Some(oid::P521) => return Err(KeyError::Unsupported("ECDSAP521".into())),
            _ => return Err(KeyError::Unsupported("ECDSA on this curve".into())),
        },
        oid::ED25519 => KeyType::Ed25519,
        oid::RSA => match rsa_modulus_bits(&raw) {
            Some(3072) => KeyType::Rsa3072,
            Some(4096) => KeyType::Rsa4096,
            Some(bits) => return Err(KeyError::Unsupported(format!("RSA-{bits}"))),
            None => return Err(KeyError::MalformedRequest),
        },
        other => return Err(KeyError::Unsupported(format!("algorithm {other}"))),
    };
    Ok(RequestedKey {
        key_type,
        spki: spki.to_der().map_err(|_| KeyError::MalformedRequest)?,
        raw,
    })
}

/// The modulus size of a PKCS#1 `RSAPublicKey` (`SEQUENCE { modulus,
/// publicExponent }`).
fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    use x509_cert::der::asn1::UintRef;
    use x509_cert::der::{Decode, Reader, SliceReader};
    let mut reader = SliceReader::new(pkcs1).ok()?;
    let modulus = reader
        .sequence(|r| {
            let modulus = UintRef::decode(r)?;
            let _exponent = UintRef::decode(r)?;
            Ok(modulus.as_bytes().to_vec())
        })
        .ok()?;
    let first = *modulus.first()?;
    Some(modulus.len() * 8 - first.leading_zeros() as usize)
}

/// The URI SAN of a Pod certificate: its SPIFFE ID.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The namespace and ServiceAccount a Pod certificate's SPIFFE ID names
/// (`spiffe://<any trust domain>/ns/<ns>/sa/<name>`), or `None`.
pub fn spiffe_service_account(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let (ns, sa) = path.strip_prefix("ns/")?.split_once("/sa/")?;
    let plain = |s: &str| !s.is_empty() && !s.contains('/');
    (is_trust_domain(td) && plain(ns) && plain(sa)).then_some((ns, sa))
}

/// Whether `td` is a SPIFFE trust domain name (SPIFFE-ID §2.1: lowercase
/// letters, digits, `.`, `-`, `_`; at most 255 bytes).
pub fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The default trust domain: the issuer URL's host, lowercased
/// (`http://m2m-operator.m2m-system.svc:8080` → `m2m-operator.m2m-system.svc`).
pub fn trust_domain_of_issuer(issuer: &str) -> Option<String> {
    let url = url::Url::parse(issuer).ok()?;
    let host = url
        .host_str()?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    is_trust_domain(&host).then_some(host)
}

/// A certificate's lifetime: what the request allows (`maxExpirationSeconds`,
/// 24 h when unset), at most [`MAX_LIFETIME`], at least [`MIN_LIFETIME`]
/// (the apiserver refuses requests that allow less).
pub fn lifetime(max_expiration_seconds: Option<i32>) -> Duration {
    let requested = max_expiration_seconds.map_or(MAX_LIFETIME, |s| Duration::seconds(s.into()));
    requested.clamp(MIN_LIFETIME, MAX_LIFETIME)
}

/// The validity of a certificate issued at `now`: `notBefore` (set back by
/// [`BACKDATE`], whole seconds as X.509 and `metav1.Time` carry them),
/// `beginRefreshAt` (at 3/4 of the lifetime: the kubelet then has a quarter
/// of it, at least 15 minutes, to obtain the next one) and `notAfter`.
pub fn validity(
    now: DateTime<Utc>,
    lifetime: Duration,
) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
    let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    let not_before = now - BACKDATE;
    let not_after = not_before + lifetime;
    let refresh = not_before + Duration::seconds(lifetime.num_seconds() * 3 / 4);
    (not_before, refresh, not_after)
}

/// What a `PodCertificateRequest` says, as [`decide`] reads it.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    /// The request's (and the Pod's) namespace.
    pub namespace: &'a str,
    /// `spec.podName`.
    pub pod_name: &'a str,
    /// `spec.podUID`.
    pub pod_uid: &'a str,
    /// `spec.serviceAccountName`.
    pub service_account_name: &'a str,
    /// `spec.serviceAccountUID`.
    pub service_account_uid: &'a str,
    /// `spec.nodeName`.
    pub node_name: &'a str,
    /// `spec.nodeUID`.
    pub node_uid: &'a str,
    /// `spec.maxExpirationSeconds`.
    pub max_expiration_seconds: Option<i32>,
    /// `spec.stubPKCS10Request` (DER).
    pub stub_pkcs10: &'a [u8],
    /// `spec.unverifiedUserAnnotations`.
    pub user_annotations: Option<&'a BTreeMap<String, String>>,
    /// The request's owner references to Pods: `(name, uid)`. The kubelet
    /// makes the Pod the owner (so the request goes with it).
    pub pod_owners: Vec<(&'a str, &'a str)>,
}

/// Whether a workload-identity credential binds a core ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingState {
    /// At least one credential in the namespace binds it (named, for the log).
    Bound(Vec<String>),
    /// None does.
    NotBound,
    /// Only credentials that bind `default` without
    /// `allowDefaultServiceAccount` (they are refused, so bind nothing).
    DefaultNotAllowed,
}

/// A certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    /// The requested key.
    pub key: RequestedKey,
    /// The URI SAN.
    pub spiffe_id: String,
    /// `notBefore`.
    pub not_before: DateTime<Utc>,
    /// `beginRefreshAt`.
    pub begin_refresh_at: DateTime<Utc>,
    /// `notAfter`.
    pub not_after: DateTime<Utc>,
}

/// A refusal: the `Denied` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Machine-readable reason (CamelCase).
    pub reason: &'static str,
    /// For humans.
    pub message: String,
}

impl Denial {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Denial reasons.
pub mod reason {
    /// The key type is not certified (API-defined reason).
    pub const UNSUPPORTED_KEY_TYPE: &str = "UnsupportedKeyType";
    /// `unverifiedUserAnnotations` has keys this signer does not know
    /// (API-defined reason; this signer knows none).
    pub const INVALID_USER_ANNOTATIONS: &str = "InvalidUnverifiedUserAnnotations";
    /// The Pod/ServiceAccount/Node tuple is incomplete or inconsistent.
    pub const INVALID_REQUEST: &str = "InvalidRequest";
    /// No workload-identity credential binds the ServiceAccount.
    pub const NOT_BOUND: &str = "ServiceAccountNotBound";
    /// Only a credential binding `default` without allowing it.
    pub const DEFAULT_NOT_ALLOWED: &str = "DefaultServiceAccountNotAllowed";
}

/// Sign or deny a request, in this order: the tuple, the user annotations,
/// the key, the binding (so a Pod that could never get a certificate
/// learns the first thing to fix).
pub fn decide(
    facts: &RequestFacts<'_>,
    binding: &BindingState,
    trust_domain: &str,
    now: DateTime<Utc>,
) -> Result<Issuance, Denial> {
    let tuple = [
        ("podName", facts.pod_name),
        ("podUID", facts.pod_uid),
        ("serviceAccountName", facts.service_account_name),
        ("serviceAccountUID", facts.service_account_uid),
        ("nodeName", facts.node_name),
        ("nodeUID", facts.node_uid),
    ];
    if let Some((field, _)) = tuple.iter().find(|(_, v)| v.is_empty()) {
        return Err(Denial::new(
            reason::INVALID_REQUEST,
            format!("spec.{field} is empty"),
        ));
    }
    // The kubelet's requests are owned by their Pod; one owned by another
    // Pod contradicts its own spec.
    if facts
        .pod_owners
        .iter()
        .any(|(name, uid)| *name != facts.pod_name || *uid != facts.pod_uid)
    {
        return Err(Denial::new(
            reason::INVALID_REQUEST,
            "the request's owner Pod is not the Pod it names in spec.podName/podUID",
        ));
    }
    if let Some(keys) = facts.user_annotations.filter(|a| !a.is_empty()) {
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        return Err(Denial::new(
            reason::INVALID_USER_ANNOTATIONS,
            format!(
                "signer {SIGNER_NAME} recognises no unverifiedUserAnnotations; remove {}",
                names.join(", ")
            ),
        ));
    }
    let key = requested_key(facts.stub_pkcs10).map_err(|e| match e {
        KeyError::MalformedRequest => Denial::new(reason::INVALID_REQUEST, e.to_string()),
        KeyError::Unsupported(_) => Denial::new(reason::UNSUPPORTED_KEY_TYPE, e.to_string()),
    })?;
    let sa = facts.service_account_name;
    let ns = facts.namespace;
    match binding {
        BindingState::Bound(_) => {}
        BindingState::NotBound => {
            return Err(Denial::new(
                reason::NOT_BOUND,
                format!(
                    "no M2MCredential in namespace {ns} binds ServiceAccount {sa} (spec.workloadIdentity.kubernetesServiceAccount)"
                ),
            ));
        }
        BindingState::DefaultNotAllowed => {
            return Err(Denial::new(
                reason::DEFAULT_NOT_ALLOWED,
                format!(
                    "the credentials binding ServiceAccount default in namespace {ns} do not set allowDefaultServiceAccount"
                ),
            ));
        }
    }
    let (not_before, begin_refresh_at, not_after) =
        validity(now, lifetime(facts.max_expiration_seconds));
    Ok(Issuance {
        key,
        spiffe_id: spiffe_id(trust_domain, ns, sa),
        not_before,
        begin_refresh_at,
        not_after,
    })
}

/// When the Pod-certificate CA rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaPolicy {
    /// How long a CA signs before a new one replaces it.
    pub rotate_every: Duration,
}

/// Margin between a CA's end of signing and its `notAfter`, beyond the
/// longest certificate it may sign.
const CA_MARGIN: Duration = Duration::hours(1);

impl CaPolicy {
    /// The validity of a CA created at `now`: long enough to sign for
    /// `rotate_every` and for its last certificate to live its full 24 h.
    pub fn ca_validity(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        (
            now - BACKDATE,
            now + self.rotate_every + MAX_LIFETIME + CA_MARGIN,
        )
    }

    /// Why the CA valid `[not_before, not_after]` must be replaced now, or
    /// `None` and when to look again.
    pub fn rotation(
        &self,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, (&'static str, String)> {
        let due = not_before + BACKDATE + self.rotate_every;
        // A CA must outlive every certificate it signs.
        let last_signing = not_after - MAX_LIFETIME - CA_MARGIN;
        if now >= due {
            return Err((
                "RotationDue",
                format!("the CA has signed for {}", human(self.rotate_every)),
            ));
        }
        if now >= last_signing {
            return Err((
                "ExpiresSoon",
                format!("the CA expires at {not_after}, too soon to sign a 24h certificate"),
            ));
        }
        Ok(due.min(last_signing))
    }
}

/// A CA that no longer signs but still verifies certificates it signed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredCa {
    /// PEM certificate.
    pub certificate: String,
    /// When it stopped signing.
    pub retired_at: DateTime<Utc>,
}

impl RetiredCa {
    /// The last certificate it signed expires by this time.
    pub fn needed_until(&self) -> DateTime<Utc> {
        self.retired_at + MAX_LIFETIME
    }
}

/// The retired CAs still needed at `now`: those whose certificates may
/// still be valid. The others leave the bundle.
pub fn retired_still_needed(retired: &[RetiredCa], now: DateTime<Utc>) -> Vec<RetiredCa> {
    retired
        .iter()
        .filter(|r| r.needed_until() > now)
        .cloned()
        .collect()
}

fn human(d: Duration) -> String {
    crate::core::duration::format_duration(d.to_std().unwrap_or_default())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T12:00:00.750Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A stub PKCS#10 request as the kubelet sends it (empty subject), by
    /// openssl, for each key type.
    pub(crate) fn csr(key_type: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!(
            "m2m-podcert-unit-{}-{key_type}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.pem");
        let genpkey: Vec<&str> = match key_type {
            "ECDSAP256" => vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "ECDSAP384" => vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            "ECDSAP521" => vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
            "ED25519" => vec!["-algorithm", "ED25519"],
            "RSA2048" => vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            "RSA3072" => vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
            other => panic!("{other}"),
        };
        let ok = std::process::Command::new("openssl")
            .arg("genpkey")
            .args(genpkey)
            .arg("-out")
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let out = std::process::Command::new("openssl")
            .args(["req", "-new", "-subj", "/", "-outform", "DER", "-key"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        out.stdout
    }

    fn facts(csr: &[u8]) -> RequestFacts<'_> {
        RequestFacts {
            namespace: "team-a",
            pod_name: "uploader-7f9",
            pod_uid: "pod-uid",
            service_account_name: "uploader",
            service_account_uid: "sa-uid",
            node_name: "node-1",
            node_uid: "node-uid",
            max_expiration_seconds: None,
            stub_pkcs10: csr,
            user_annotations: None,
            pod_owners: vec![("uploader-7f9", "pod-uid")],
        }
    }

    fn bound() -> BindingState {
        BindingState::Bound(vec!["uploader".into()])
    }

    #[test]
    fn key_types_of_the_api() {
        for (name, want) in [
            ("ECDSAP256", Ok(KeyType::EcdsaP256)),
            ("ECDSAP384", Ok(KeyType::EcdsaP384)),
            ("ED25519", Ok(KeyType::Ed25519)),
            ("RSA3072", Ok(KeyType::Rsa3072)),
            ("ECDSAP521", Err("ECDSAP521 keys are not supported")),
            ("RSA2048", Err("RSA-2048 keys are not supported")),
        ] {
            let der = csr(name);
            match (requested_key(&der), want) {
                (Ok(k), Ok(t)) => {
                    assert_eq!(k.key_type, t, "{name}");
                    assert_eq!(k.key_type.as_str(), name);
                }
                (Err(e), Err(prefix)) => {
                    assert!(e.to_string().starts_with(prefix), "{name}: {e}");
                    assert!(e.to_string().contains(SUPPORTED_KEY_TYPES));
                }
                (got, want) => panic!("{name}: {got:?} vs {want:?}"),
            }
        }
        assert_eq!(requested_key(b"junk"), Err(KeyError::MalformedRequest));
    }

    #[test]
    fn a_bound_service_account_gets_its_spiffe_id_for_at_most_a_day() {
        let der = csr("ECDSAP256");
        let issued = decide(&facts(&der), &bound(), "cluster.local", now()).unwrap();
        assert_eq!(
            issued.spiffe_id,
            "spiffe://cluster.local/ns/team-a/sa/uploader"
        );
        assert_eq!(issued.not_before.timestamp(), now().timestamp() - 60);
        assert_eq!(issued.not_after - issued.not_before, Duration::hours(24));
        assert_eq!(
            issued.begin_refresh_at - issued.not_before,
            Duration::hours(18)
        );
        assert_eq!(issued.not_before.timestamp_subsec_nanos(), 0);
    }

    #[test]
    fn lifetime_table() {
        for (requested, want) in [
            (None, 24 * 3600),
            (Some(3600), 3600),
            (Some(7200), 7200),
            (Some(86_400), 86_400),
            (Some(7_862_400), 86_400),
            (Some(60), 3600),
        ] {
            assert_eq!(lifetime(requested).num_seconds(), want, "{requested:?}");
        }
        // The apiserver's bounds on beginRefreshAt: ≥ notBefore + 10 min,
        // ≤ notAfter − 10 min, for every lifetime.
        for secs in [3600, 5000, 86_400] {
            let (nb, refresh, na) = validity(now(), lifetime(Some(secs)));
            assert!(refresh >= nb + Duration::minutes(10));
            assert!(refresh <= na - Duration::minutes(10));
            assert!(na - nb <= Duration::seconds(secs.into()));
        }
    }

    #[test]
    fn denials_name_the_first_thing_to_fix() {
        let der = csr("ECDSAP256");
        let deny = |f: &RequestFacts<'_>, b: &BindingState| {
            decide(f, b, "cluster.local", now()).unwrap_err().reason
        };
        assert_eq!(
            deny(&facts(&der), &BindingState::NotBound),
            reason::NOT_BOUND
        );
        assert_eq!(
            deny(&facts(&der), &BindingState::DefaultNotAllowed),
            reason::DEFAULT_NOT_ALLOWED
        );
        let mut f = facts(&der);
        f.node_uid = "";
        assert_eq!(deny(&f, &bound()), reason::INVALID_REQUEST);
        let mut f = facts(&der);
        f.pod_owners = vec![("other", "pod-uid")];
        assert_eq!(deny(&f, &bound()), reason::INVALID_REQUEST);
        let annotations = BTreeMap::from([("example.com/x".to_owned(), "y".to_owned())]);
        let mut f = facts(&der);
        f.user_annotations = Some(&annotations);
        assert_eq!(deny(&f, &bound()), reason::INVALID_USER_ANNOTATIONS);
        let empty = BTreeMap::new();
        f.user_annotations = Some(&empty);
        assert!(decide(&f, &bound(), "td", now()).is_ok());
        let p521 = csr("ECDSAP521");
        assert_eq!(deny(&facts(&p521), &bound()), reason::UNSUPPORTED_KEY_TYPE);
        // The key is checked before the binding.
        assert_eq!(
            deny(&facts(&p521), &BindingState::NotBound),
            reason::UNSUPPORTED_KEY_TYPE
        );
        assert_eq!(deny(&facts(b"x"), &bound()), reason::INVALID_REQUEST);
        // A message says what to do.
        let d = decide(&facts(&der), &BindingState::NotBound, "td", now()).unwrap_err();
        assert!(d.message.contains("team-a") && d.message.contains("uploader"));
    }

    #[test]
    fn trust_domain_defaults_to_the_issuer_host() {
        for (issuer, want) in [
            (
                "http://m2m-operator.m2m-system.svc:8080",
                Some("m2m-operator.m2m-system.svc"),
            ),
            ("https://ID.Example.com/", Some("id.example.com")),
            ("https://127.0.0.1:8443", Some("127.0.0.1")),
            ("https://[::1]:8443", None),
            ("not a url", None),
        ] {
            assert_eq!(trust_domain_of_issuer(issuer).as_deref(), want, "{issuer}");
        }
        assert_eq!(
            spiffe_service_account("spiffe://td/ns/team-a/sa/uploader"),
            Some(("team-a", "uploader"))
        );
        for bad in [
            "spiffe://td/ns/team-a/sa/up/loader",
            "spiffe://td/ns//sa/x",
            "spiffe://TD/ns/a/sa/b",
            "https://td/ns/a/sa/b",
            "spiffe://td/ns/a",
        ] {
            assert_eq!(spiffe_service_account(bad), None, "{bad}");
        }
        assert!(is_trust_domain("cluster.local"));
        assert!(!is_trust_domain("Cluster.local"));
        assert!(!is_trust_domain("a/b"));
        assert!(!is_trust_domain(""));
    }

    #[test]
    fn ca_rotation_policy() {
        let policy = CaPolicy {
            rotate_every: Duration::days(30),
        };
        let (nb, na) = policy.ca_validity(now());
        assert_eq!(na - nb, Duration::days(31) + Duration::hours(1) + BACKDATE);
        // Fresh: next look when the rotation is due.
        let next = policy.rotation(nb, na, now()).unwrap();
        assert_eq!(next.timestamp(), now().timestamp() + 30 * 86_400);
        let (reason, _) = policy
            .rotation(nb, na, now() + Duration::days(30))
            .unwrap_err();
        assert_eq!(reason, "RotationDue");
        // A CA made with a longer period than today's must still stop
        // signing 25 h before it expires.
        let short = CaPolicy {
            rotate_every: Duration::days(60),
        };
        let (reason, _) = short
            .rotation(nb, na, na - Duration::hours(24))
            .unwrap_err();
        assert_eq!(reason, "ExpiresSoon");
        let (reason, _) = short
            .rotation(nb, nb + Duration::hours(10), now())
            .unwrap_err();
        assert_eq!(reason, "ExpiresSoon");
        // Every certificate a CA signs expires before it does.
        let last = na - MAX_LIFETIME - CA_MARGIN - Duration::seconds(1);
        assert!(last + MAX_LIFETIME < na);
    }

    #[test]
    fn a_retired_ca_stays_until_its_last_certificate_expires() {
        let old = RetiredCa {
            certificate: "old".into(),
            retired_at: now(),
        };
        let kept = retired_still_needed(std::slice::from_ref(&old), now() + Duration::hours(23));
        assert_eq!(kept, std::slice::from_ref(&old));
        assert!(retired_still_needed(&[old], now() + Duration::hours(24)).is_empty());
    }
}
