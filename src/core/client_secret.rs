//! Client ids and client secrets: how they are generated and what they look
//! like. Secrets carry a fixed prefix and a CRC32 checksum (the scheme GitHub
//! tokens use) so secret scanners can recognise them with few false positives.

use rand::TryRngCore;
use rand::rngs::OsRng;
use std::fmt;

/// Prefix of every client secret.
pub(crate) const SECRET_PREFIX: &str = "m2ms_";
/// Prefix of every client id.
pub(crate) const CLIENT_ID_PREFIX: &str = "m2mc_";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 44 base62 characters carry 44·log2(62) ≈ 262 bits of entropy.
const BODY_LEN: usize = 44;
const CHECKSUM_LEN: usize = 6;
/// Total length of a client secret.
pub(crate) const SECRET_LEN: usize = SECRET_PREFIX.len() + BODY_LEN + CHECKSUM_LEN;

/// The OS random generator failed; nothing safe can be generated.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomnessError(#[source] rand::rand_core::OsError);

/// Fill `buf` from the OS CSPRNG (getrandom), never from a userspace PRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomnessError> {
    OsRng.try_fill_bytes(buf).map_err(RandomnessError)
}

/// A freshly generated or loaded client secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientSecret(…{})", self.hint())
    }
}

impl ClientSecret {
    /// A new secret of ≥ 256 bits from the OS CSPRNG.
    pub fn generate() -> Result<Self, RandomnessError> {
        let mut body = String::with_capacity(SECRET_LEN);
        body.push_str(SECRET_PREFIX);
        let mut buf = [0u8; 64];
        while body.len() < SECRET_PREFIX.len() + BODY_LEN {
            fill_random(&mut buf)?;
            for b in buf {
                // Rejection sampling keeps every character uniform: 248 = 4·62.
                if b < 248 && body.len() < SECRET_PREFIX.len() + BODY_LEN {
                    body.push(ALPHABET[usize::from(b % 62)] as char);
                }
            }
        }
        let checksum = base62_fixed(crc32fast::hash(body.as_bytes()), CHECKSUM_LEN);
        body.push_str(&checksum);
        Ok(Self(body))
    }

    /// Wrap a secret read back from a Secret, whatever its shape.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The secret text, for writing into the Secret and hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fingerprint, safe to show in status: see [`hint`].
    pub fn hint(&self) -> String {
        hint(&self.0)
    }
}

/// A fingerprint of a secret to tell versions apart: `sha256:` and the
/// first 8 hex digits of the SHA-256 of the whole secret. It reveals
/// nothing about the secret's characters (the former hint, its last four
/// characters, gave away 4 of the 6 checksum characters, ~24 bits), and
/// anyone holding a secret can compute it:
/// `printf %s "$SECRET" | sha256sum | cut -c1-8`.
pub fn hint(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether `candidate` has the shape and checksum of a generated secret.
/// A cheap pre-check; it says nothing about validity for any client.
pub fn is_well_formed(candidate: &str) -> bool {
    if candidate.len() != SECRET_LEN || !candidate.starts_with(SECRET_PREFIX) {
        return false;
    }
    let (body, checksum) = candidate.split_at(SECRET_LEN - CHECKSUM_LEN);
    body[SECRET_PREFIX.len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric())
        && base62_fixed(crc32fast::hash(body.as_bytes()), CHECKSUM_LEN) == checksum
}

fn base62_fixed(mut n: u32, len: usize) -> String {
    let mut out = vec![b'0'; len];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The client id of a credential, derived from its immutable UID: stable for
/// the credential's life, recomputable by anyone holding the object (so no
/// state is lost in a crash), and different for a re-created credential.
pub fn client_id_for_uid(uid: &str) -> String {
    let compact: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{CLIENT_ID_PREFIX}{}", compact.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let s = ClientSecret::generate().unwrap();
        assert_eq!(s.expose().len(), SECRET_LEN);
        assert!(s.expose().starts_with("m2ms_"));
        assert!(is_well_formed(s.expose()));
        assert!(!format!("{s:?}").contains(&s.expose()[5..20]));
        // ≥ 256 bits of entropy.
        assert!(BODY_LEN as f64 * 62f64.log2() >= 256.0);
    }

    /// The hint is derived from the whole secret, shows none of its
    /// checksum characters, and is what `sha256sum` prints.
    #[test]
    fn the_hint_reveals_no_secret_characters() {
        let secret = "m2ms_0123456789abcdefghijABCDEFGHIJ0123456789abcdWXYZ12";
        let s = ClientSecret::from_stored(secret.into());
        assert_eq!(s.hint(), "sha256:57abbbab");
        assert!(
            !s.hint().contains("YZ12"),
            "checksum characters in the hint"
        );
        let a = ClientSecret::generate().unwrap();
        let b = ClientSecret::generate().unwrap();
        assert_ne!(a.hint(), b.hint(), "tells versions apart");
    }

    #[test]
    fn secrets_do_not_repeat() {
        let set: HashSet<_> = (0..1000)
            .map(|_| ClientSecret::generate().unwrap().0)
            .collect();
        assert_eq!(set.len(), 1000);
    }

    #[test]
    fn checksum_catches_edits() {
        let s = ClientSecret::generate().unwrap().0;
        let mut edited = s.clone().into_bytes();
        edited[10] = if edited[10] == b'a' { b'b' } else { b'a' };
        assert!(!is_well_formed(std::str::from_utf8(&edited).unwrap()));
        assert!(!is_well_formed(&s[..s.len() - 1]));
        assert!(!is_well_formed(&s.replace("m2ms_", "m2mx_")));
        assert!(!is_well_formed(""));
    }

    #[test]
    fn client_id_is_derived_from_uid() {
        assert_eq!(
            client_id_for_uid("6A1B2C3D-0000-4000-8000-00000000ABCD"),
            "m2mc_6a1b2c3d00004000800000000000abcd"
        );
    }
}
