//! JWT signing keys, free of Kubernetes I/O: how keys are generated, how the
//! key set is stored in the operator's key Secret (`signing-keys.json`), how
//! a key is named (`kid`, the RFC 7638 thumbprint), which key signs, when a
//! new key is due, how long a retired key stays published, and the JWKS
//! resource servers verify against.
//!
//! - [`keyset`]: the stored format and the pure rotation decisions.
//! - [`signer`]: parsed keys that sign and verify access tokens; built once
//!   per key, never per request.
//! - [`store`]: the operator's key Secret: name, data keys, builder and parser.

pub mod keyset;
pub mod signer;
pub mod store;

pub use keyset::{
    KeyPolicy, KeySet, KeySetError, RotationReason, SigningKeyRecord, generate_key, publication_end,
};
pub use signer::{KeyRing, KeyRingError, TokenSigner, VerifiedToken};

use crate::cli::SigningAlg;

impl SigningAlg {
    /// The JOSE `alg` name (`ES256`, `EdDSA`, `RS256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    /// Parse a JOSE `alg` name; only the three algorithms this operator signs with.
    pub fn from_jose(alg: &str) -> Option<Self> {
        match alg {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    /// The same algorithm as `jsonwebtoken` names it.
    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}
