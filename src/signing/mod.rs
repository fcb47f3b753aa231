//! JWT signing keys, free of Kubernetes I/O: how keys are generated, how the
//! key set is stored in the operator's key Secret (`signing-keys.json`), how
//! a key is named (`kid`, the RFC 7638 thumbprint), which key signs, when a
//! new key is due, how long a retired key stays published, and the JWKS
//! resource servers verify against.
//!
//! Layers, each importing only those above it (no cycles):
//! - [`algorithm`]: [`SigningAlg`] and its JOSE / `jsonwebtoken` names.
//! - [`crypto`]: aws-lc key generation, parsing, JWK and `kid` thumbprint.
//! - [`keyset`]: the stored format and the pure rotation decisions.
//! - [`ring`]: parsed keys that sign and verify access tokens; built once
//!   per key, never per request.
//! - [`store`]: the operator's key Secret: name, data keys, builder and parser.

pub mod algorithm;
pub mod crypto;
pub mod keyset;
pub mod ring;
pub mod store;

pub use algorithm::SigningAlg;
pub use keyset::{
    KeyPolicy, KeySet, KeySetError, RotationReason, SigningKeyRecord, generate_key, publication_end,
};
pub use ring::{KeyRing, KeyRingError, TokenSigner, VerifiedToken};
