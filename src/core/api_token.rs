//! API tokens (`M2MCredential.spec.type: APIToken`): their format, and the
//! rule that every API token has an end.
//!
//! ```text
//! m2mt_<lookup id>_<44 base62 random><6 base62 checksum>
//! m2mt_6a1b2c3d00004000800000000000abcd_Xk3…(44)…q9ZTr0aB
//! ```
//!
//! - `m2mt_`: fixed prefix, so scanners and humans recognise an API token
//!   (client secrets are `m2ms_`, client ids `m2mc_`).
//! - lookup id: the credential's client id without `m2mc_` (lowercase
//!   `[a-z0-9]`, 32 characters for a Kubernetes UID). Not secret: it lets
//!   the token server find the credential from the token alone with one
//!   hash-map lookup, never a scan, and it is what introspection reports as
//!   `client_id` anyway.
//! - 44 base62 characters from the OS CSPRNG: 44·log2(62) ≈ 262 bits.
//! - checksum: CRC32 of everything before it (prefix, lookup id, `_`,
//!   random part), as 6 base62 digits, the scheme GitHub's tokens use. A
//!   secret scanner verifies it offline with the regular expression
//!   [`SCANNER_PATTERN`] and one CRC32, with almost no false positives; the
//!   token server uses it to refuse typos before any keyed hash.
//!
//! The token server never sees the token in storage: like a client secret,
//! only an HMAC-SHA256 under the operator's verifier key is kept, in the
//! credential's sealed `status.verifiers`.

use super::client_secret::{
    CLIENT_ID_PREFIX, ClientSecret, RandomnessError, base62_fixed, push_random_base62,
};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Prefix of every API token.
pub(crate) const API_TOKEN_PREFIX: &str = "m2mt_";
/// Random part: 44 base62 characters, ≈ 262 bits.
const RANDOM_LEN: usize = 44;
const CHECKSUM_LEN: usize = 6;
/// Longest lookup id accepted.
const MAX_LOOKUP_LEN: usize = 64;
/// A regular expression (RE2, PCRE) matching API tokens, for secret scanners.
pub const SCANNER_PATTERN: &str = r"\bm2mt_[a-z0-9]{1,64}_[0-9A-Za-z]{50}\b";

/// A new API token for the credential with `client_id`, from the OS CSPRNG.
/// Returned as a [`ClientSecret`]: the controller stores, hashes and
/// redacts it exactly as it does a client secret.
pub fn generate(client_id: &str) -> Result<ClientSecret, RandomnessError> {
    let lookup = client_id
        .strip_prefix(CLIENT_ID_PREFIX)
        .unwrap_or(client_id);
    let mut token = String::with_capacity(
        API_TOKEN_PREFIX.len() + lookup.len() + 1 + RANDOM_LEN + CHECKSUM_LEN,
    );
    token.push_str(API_TOKEN_PREFIX);
    token.push_str(lookup);
    token.push('_');
    push_random_base62(&mut token, RANDOM_LEN)?;
    let checksum = base62_fixed(crc32fast::hash(token.as_bytes()), CHECKSUM_LEN);
    token.push_str(&checksum);
    Ok(ClientSecret::from_stored(token))
}

/// The client id of the credential an API token belongs to, if the token
/// has the documented shape and a correct checksum. Says nothing about
/// whether the token is valid: that takes the keyed hash.
pub(crate) fn client_id_of(token: &str) -> Option<String> {
    let rest = token.strip_prefix(API_TOKEN_PREFIX)?;
    let (lookup, tail) = rest.split_once('_')?;
    if lookup.is_empty()
        || lookup.len() > MAX_LOOKUP_LEN
        || !lookup
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || tail.len() != RANDOM_LEN + CHECKSUM_LEN
        || !tail.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    let (body, checksum) = token.split_at(token.len() - CHECKSUM_LEN);
    (base62_fixed(crc32fast::hash(body.as_bytes()), CHECKSUM_LEN) == checksum)
        .then(|| format!("{CLIENT_ID_PREFIX}{lookup}"))
}

/// Whether `token` has the shape and checksum of an API token.
pub fn is_well_formed(token: &str) -> bool {
    client_id_of(token).is_some()
}

/// Why an API-token credential may not hold a token: it has no end, or
/// its end lies too far away. Each maps to a `Ready=False` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EndError {
    /// Neither `spec.expiresAt` nor `spec.rotation.every` is set.
    #[error(
        "an APIToken credential must have an end: set spec.expiresAt or spec.rotation.every (at most {max})"
    )]
    NoEnd {
        /// The operator-wide maximum, formatted.
        max: String,
    },
    /// `rotation.every` is longer than the maximum.
    #[error(
        "spec.rotation.every {every} is longer than the maximum API token lifetime {max} (--max-api-token-lifetime)"
    )]
    RotationTooLong {
        /// `rotation.every` as written.
        every: String,
        /// The maximum, formatted.
        max: String,
    },
    /// `expiresAt` lies more than the maximum after the token's issue.
    #[error(
        "spec.expiresAt {expires_at} is more than the maximum API token lifetime {max} (--max-api-token-lifetime) after the token was issued at {issued_at}: set an earlier expiresAt or a rotation.every"
    )]
    ExpiryTooFar {
        /// `spec.expiresAt`.
        expires_at: String,
        /// When the current (or about to be generated) token was issued.
        issued_at: String,
        /// The maximum, formatted.
        max: String,
    },
}

impl EndError {
    /// The machine-readable `Ready=False` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoEnd { .. } => "APITokenWithoutEnd",
            Self::RotationTooLong { .. } | Self::ExpiryTooFar { .. } => "APITokenLifetimeTooLong",
        }
    }
}

/// The end rule of an API token: a scheduled rotation of at most `max`
/// replaces it, or `expires_at` ends it at most `max` after `issued_at`
/// (when the current token was generated, or now for one about to be).
/// With both, the rotation bounds the token's life. A replaced token keeps
/// working for `rotation.gracePeriod` (≤ 168h) after its replacement.
pub(crate) fn check_end(
    expires_at: Option<DateTime<Utc>>,
    every: Option<(Duration, &str)>,
    issued_at: DateTime<Utc>,
    max: Duration,
) -> Result<(), EndError> {
    let max_text = || format_hours(max);
    match (every, expires_at) {
        (Some((every, written)), _) if every > max => Err(EndError::RotationTooLong {
            every: written.to_owned(),
            max: max_text(),
        }),
        (Some(_), _) => Ok(()),
        (None, None) => Err(EndError::NoEnd { max: max_text() }),
        (None, Some(end)) => {
            let limit = chrono::Duration::from_std(max)
                .ok()
                .and_then(|m| issued_at.checked_add_signed(m));
            if limit.is_some_and(|limit| end > limit) {
                Err(EndError::ExpiryTooFar {
                    expires_at: end.to_rfc3339(),
                    issued_at: issued_at.to_rfc3339(),
                    max: max_text(),
                })
            } else {
                Ok(())
            }
        }
    }
}

/// A duration as Go-style hours (`8760h`), or seconds below an hour.
fn format_hours(d: Duration) -> String {
    let secs = d.as_secs();
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::client_secret::client_id_for_uid;
    use chrono::TimeZone;
    use std::collections::HashSet;

    const ID: &str = "m2mc_6a1b2c3d00004000800000000000abcd";

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let t = generate(ID).unwrap();
        let t = t.expose();
        assert!(
            t.starts_with("m2mt_6a1b2c3d00004000800000000000abcd_"),
            "{t}"
        );
        assert_eq!(t.len(), 5 + 32 + 1 + 44 + 6);
        assert_eq!(client_id_of(t).as_deref(), Some(ID));
        assert!(is_well_formed(t));
        // What SCANNER_PATTERN states, checked by hand (no regex engine here).
        let (lookup, tail) = t["m2mt_".len()..].split_once('_').unwrap();
        assert!((1..=64).contains(&lookup.len()));
        assert!(
            lookup
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert!(tail.len() == 50 && tail.bytes().all(|b| b.is_ascii_alphanumeric()));
        // ≥ 256 bits from the CSPRNG.
        assert!(RANDOM_LEN as f64 * 62f64.log2() >= 256.0);
        let real = client_id_for_uid("6A1B2C3D-0000-4000-8000-00000000ABCD");
        assert_eq!(client_id_of(generate(&real).unwrap().expose()), Some(real));
    }

    /// The checksum a scanner computes: CRC32 over everything before the
    /// last six characters, as fixed-width base62 (`0-9A-Za-z`).
    #[test]
    fn checksum_is_crc32_base62_of_the_rest() {
        let body = "m2mt_abc_0123456789abcdefghijABCDEFGHIJ0123456789abcd";
        let crc = crc32fast::hash(body.as_bytes());
        let mut n = crc;
        let mut digits = Vec::new();
        for _ in 0..6 {
            digits.push(
                b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                    [(n % 62) as usize],
            );
            n /= 62;
        }
        digits.reverse();
        let token = format!("{body}{}", String::from_utf8(digits).unwrap());
        assert_eq!(client_id_of(&token).as_deref(), Some("m2mc_abc"));
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        let t = generate(ID).unwrap().expose().to_owned();
        let mut edited = t.clone().into_bytes();
        let i = t.len() - 20;
        edited[i] = if edited[i] == b'a' { b'b' } else { b'a' };
        let cases = [
            String::from_utf8(edited).unwrap(),
            t[..t.len() - 1].to_owned(),
            format!("{t}x"),
            t.replace("m2mt_", "m2ms_"),
            t.replace("m2mt_6a1b", "m2mt_6A1B"),
            "m2mt__".to_owned() + &t[t.len() - 50..],
            format!("m2mt_{}_{}", "a".repeat(65), &t[t.len() - 50..]),
            t.replacen('_', "-", 2),
            String::new(),
            "m2ms_0123456789abcdefghijABCDEFGHIJ0123456789abcdWXYZ12".to_owned(),
        ];
        for bad in cases {
            assert_eq!(client_id_of(&bad), None, "{bad}");
        }
        // A client secret is never an API token and vice versa.
        let secret = ClientSecret::generate().unwrap();
        assert!(!is_well_formed(secret.expose()));
        assert!(!crate::core::client_secret::is_well_formed(&t));
    }

    #[test]
    fn tokens_do_not_repeat_and_debug_redacts() {
        let set: HashSet<String> = (0..1000)
            .map(|_| generate(ID).unwrap().expose().to_owned())
            .collect();
        assert_eq!(set.len(), 1000);
        let t = generate(ID).unwrap();
        assert!(!format!("{t:?}").contains(&t.expose()[40..60]));
    }

    #[test]
    fn every_token_has_an_end_within_the_maximum() {
        let at = |h: i64| Utc.timestamp_opt(1_800_000_000 + h * 3600, 0).unwrap();
        let max = Duration::from_secs(8760 * 3600);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let reason = |r: Result<(), EndError>| r.err().map(|e| e.reason());
        let cases = [
            ("nothing", None, None, 0, Some("APITokenWithoutEnd")),
            ("rotation", None, Some((hours(720), "720h")), 0, None),
            ("rotation = max", None, Some((max, "8760h")), 0, None),
            (
                "rotation too long",
                None,
                Some((hours(8761), "8761h")),
                0,
                Some("APITokenLifetimeTooLong"),
            ),
            ("expiry", Some(at(24)), None, 0, None),
            ("expiry = max", Some(at(8760)), None, 0, None),
            (
                "expiry too far",
                Some(at(8761)),
                None,
                0,
                Some("APITokenLifetimeTooLong"),
            ),
            ("measured from issue", Some(at(9000)), None, 300, None),
            (
                "rotation bounds it",
                Some(at(99_999)),
                Some((hours(1), "1h")),
                0,
                None,
            ),
        ];
        for (what, expires, every, issued, want) in cases {
            assert_eq!(
                reason(check_end(expires, every, at(issued), max)),
                want,
                "{what}"
            );
        }
        let msg = check_end(None, None, at(0), max).unwrap_err().to_string();
        assert!(
            msg.contains("spec.expiresAt or spec.rotation.every"),
            "{msg}"
        );
        assert!(msg.contains("8760h"), "{msg}");
    }
}
