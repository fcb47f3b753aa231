//! The JWT signing algorithms this operator signs with, and their names in
//! JOSE and in `jsonwebtoken`. The bottom of the signing layer: everything
//! else in [`crate::signing`] builds on it.

/// JWT signing algorithm of the keys the controller generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256.
    #[default]
    Es256,
    /// Ed25519.
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    Rs256,
}

impl SigningAlg {
    /// Every algorithm, in the order the CLI lists them.
    pub(crate) const ALL: [Self; 3] = [Self::Es256, Self::EdDsa, Self::Rs256];

    /// The JOSE `alg` name (`ES256`, `EdDSA`, `RS256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    /// Parse a JOSE `alg` name; only the three algorithms this operator signs with.
    pub(crate) fn from_jose(alg: &str) -> Option<Self> {
        match alg {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    /// The same algorithm as `jsonwebtoken` names it.
    #[cfg(test)]
    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}
