//! The keyed checks of client authentication and the equal-work padding
//! they run under: the index (which checks seals) and the token handlers
//! (which check secrets) both use them, so they live below both.

use crate::core::verifier::{SecretBinding, VerifierKey};
use crate::crd::SecretVerifier;

/// A digest no secret matches, for the equal-work padding.
const DUMMY_DIGEST: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Authentication checks this many verifier slots (current version and
/// grace periods) for every client id, known or not, padding with a
/// verifier nothing matches. A credential with more verifiers costs more;
/// the controller keeps at most a handful.
pub(crate) const MAX_VERIFIERS: usize = 4;

/// The two keyed checks of authentication (a seam for counting them).
pub trait SecretCheck {
    /// Whether the verifier carries a valid seal.
    fn is_sealed(&self, binding: &SecretBinding<'_>, verifier: &SecretVerifier) -> bool;
    /// Whether `secret` matches `digest`.
    fn verify(&self, binding: &SecretBinding<'_>, secret: &str, digest: &str) -> bool;
    /// Identifies the key: results under one id hold for that key only.
    fn key_id(&self) -> u64;
}

impl SecretCheck for VerifierKey {
    fn is_sealed(&self, binding: &SecretBinding<'_>, verifier: &SecretVerifier) -> bool {
        VerifierKey::is_sealed(self, binding, verifier)
    }

    fn verify(&self, binding: &SecretBinding<'_>, secret: &str, digest: &str) -> bool {
        VerifierKey::verify(self, binding, secret, digest)
    }

    fn key_id(&self) -> u64 {
        self.id()
    }
}

/// The verifier padding the slots: well-formed, so both MACs are computed
/// and compared, and matched by nothing.
pub(crate) fn padding_verifier() -> &'static SecretVerifier {
    static PAD: std::sync::LazyLock<SecretVerifier> = std::sync::LazyLock::new(|| SecretVerifier {
        version: 0,
        digest: DUMMY_DIGEST.to_owned(),
        not_after: None,
        seal: Some(DUMMY_DIGEST.to_owned()),
    });
    &PAD
}
