//! The aws-lc operations on signing keys, free of any stored format: key
//! generation, PKCS#8 parsing, the public JWK and its RFC 7638 thumbprint
//! (the `kid`), and signature verification. [`crate::signing::keyset`]
//! and [`crate::signing::ring`] build on it; it imports neither.

use super::algorithm::SigningAlg;
use aws_lc_rs::signature::{
    self as sig, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
    PublicKeyUse, RSAKeyParameters, RSAKeyType, ThumbprintHash,
};

/// Why a key could not be generated, parsed or named.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The crypto library could not generate a key.
    #[error("generating a {0} signing key failed")]
    Generate(&'static str),
    /// A stored private key does not parse for its algorithm.
    #[error("signing key {kid:?} ({alg}) is not a valid PKCS#8 key")]
    InvalidKey {
        /// Its key id.
        kid: String,
        /// Its algorithm.
        alg: &'static str,
    },
    /// The RFC 7638 thumbprint could not be computed.
    #[error("computing the key id failed")]
    Thumbprint(#[source] jsonwebtoken::errors::Error),
}

/// A fresh private key of `alg` from the OS CSPRNG (through aws-lc), as
/// PKCS#8 v1 DER.
pub(crate) fn generate_pkcs8(alg: SigningAlg) -> Result<Vec<u8>, CryptoError> {
    use aws_lc_rs::encoding::AsDer;
    let failed = || CryptoError::Generate(alg.as_str());
    Ok(match alg {
        SigningAlg::Es256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| failed())?
            .as_ref()
            .to_vec(),
        // PKCS#8 v1 (48 bytes): the form jsonwebtoken's `EncodingKey::from_ed_der` expects.
        SigningAlg::EdDsa => Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| failed())?
            .as_ref()
            .to_vec(),
        SigningAlg::Rs256 => aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .and_then(|k| k.as_der())
            .map_err(|_| failed())?
            .as_ref()
            .to_vec(),
    })
}

pub(crate) enum PrivateKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

pub(crate) fn parse_private(
    alg: SigningAlg,
    kid: &str,
    pkcs8: &[u8],
) -> Result<PrivateKey, CryptoError> {
    let invalid = || CryptoError::InvalidKey {
        kid: kid.to_owned(),
        alg: alg.as_str(),
    };
    Ok(match alg {
        SigningAlg::Es256 => PrivateKey::Es256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                .map_err(|_| invalid())?,
        ),
        SigningAlg::EdDsa => {
            PrivateKey::EdDsa(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| invalid())?)
        }
        SigningAlg::Rs256 => {
            let key = RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| invalid())?;
            if key.public_modulus_len() < 256 {
                return Err(invalid());
            }
            PrivateKey::Rs256(key)
        }
    })
}

impl PrivateKey {
    pub(crate) fn public_bytes(&self) -> &[u8] {
        match self {
            Self::Es256(k) => k.public_key().as_ref(),
            Self::EdDsa(k) => k.public_key().as_ref(),
            Self::Rs256(k) => k.public_key().as_ref(),
        }
    }

    fn jwk_parameters(&self) -> Option<AlgorithmParameters> {
        Some(match self {
            Self::Es256(k) => {
                // Uncompressed SEC1 point: 0x04 || x || y.
                let point = k.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return None;
                }
                AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                    key_type: EllipticCurveKeyType::EC,
                    curve: EllipticCurve::P256,
                    x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                    y: URL_SAFE_NO_PAD.encode(&point[33..]),
                })
            }
            Self::EdDsa(k) => AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(k.public_key().as_ref()),
            }),
            Self::Rs256(k) => {
                let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                AlgorithmParameters::RSA(RSAKeyParameters {
                    key_type: RSAKeyType::RSA,
                    n: URL_SAFE_NO_PAD.encode(&c.n),
                    e: URL_SAFE_NO_PAD.encode(&c.e),
                })
            }
        })
    }
}

pub(crate) fn public_jwk(
    alg: SigningAlg,
    key: &PrivateKey,
    kid: Option<String>,
) -> Result<Jwk, CryptoError> {
    let algorithm = key
        .jwk_parameters()
        .ok_or(CryptoError::Generate(alg.as_str()))?;
    Ok(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(match alg {
                SigningAlg::Es256 => KeyAlgorithm::ES256,
                SigningAlg::EdDsa => KeyAlgorithm::EdDSA,
                SigningAlg::Rs256 => KeyAlgorithm::RS256,
            }),
            key_id: kid,
            ..Default::default()
        },
        algorithm,
    })
}

/// The RFC 7638 SHA-256 thumbprint of the public half of a PKCS#8 key: its `kid`.
pub(crate) fn thumbprint(alg: SigningAlg, pkcs8: &[u8]) -> Result<String, CryptoError> {
    let key = parse_private(alg, "new", pkcs8)?;
    public_jwk(alg, &key, None)?
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(CryptoError::Thumbprint)
}

/// The order n of P-256, big-endian.
pub(crate) const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// ⌊n / 2⌋: an ECDSA `s` above it is the "high" twin of a valid signature.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether a fixed-size (r ‖ s) P-256 signature has s ≤ n/2. Big-endian
/// byte strings of equal length compare like the numbers they encode.
pub(crate) fn is_low_s(signature: &[u8]) -> bool {
    signature.len() == 64 && signature[32..] <= P256_HALF_N[..]
}

/// Replace s by n − s when s > n/2: (r, s) and (r, n − s) both verify, and
/// only the low one is accepted, so each token has one encoding.
pub(crate) fn to_low_s(signature: &mut [u8; 64]) {
    if is_low_s(signature) {
        return;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(signature[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        signature[32 + i] = (d + (borrow << 8)) as u8;
    }
}

pub(crate) struct PublicKey {
    pub(crate) alg: SigningAlg,
    pub(crate) bytes: Vec<u8>,
}

impl PublicKey {
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // ECDSA is malleable: refuse the high-S twin of a signature, so a
        // token cannot be re-encoded into a second valid string.
        if self.alg == SigningAlg::Es256 && !is_low_s(signature) {
            return false;
        }
        let params: &dyn sig::VerificationAlgorithm = match self.alg {
            SigningAlg::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
            SigningAlg::EdDsa => &sig::ED25519,
            SigningAlg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        };
        params.verify_sig(&self.bytes, message, signature).is_ok()
    }
}
