//! The stored signing-key set (`signing-keys.json` in the operator's key
//! Secret) and the pure decisions over it: which key signs, when a new key
//! is due, and when a retired key may leave the JWKS.
//!
//! Format (stable, versioned by `format`):
//! ```json
//! { "format": 1,
//!   "keys": [ { "kid": "<RFC 7638 SHA-256 thumbprint>", "alg": "ES256",
//!               "privateKeyPkcs8": "<base64 PKCS#8 v1 DER>",
//!               "createdAt": "2026-11-24T00:00:00Z",
//!               "retiredAt": "2026-12-24T00:00:00Z" } ] }
//! ```
//! The active key is the newest key without `retiredAt`. A retired key is
//! still published (it may have signed tokens that have not expired) until
//! `retiredAt + 24h` (the longest token lifetime) plus [`PUBLICATION_SKEW`].

use super::algorithm::SigningAlg;
use super::crypto::{CryptoError, generate_pkcs8, thumbprint};
use crate::core::grant::MAX_TOKEN_TTL;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The version of the `signing-keys.json` format this code writes.
pub(crate) const KEY_SET_FORMAT: u32 = 1;
/// Extra publication time of a retired key beyond the longest token
/// lifetime, so resource servers with skewed clocks still find it.
pub(crate) const PUBLICATION_SKEW: Duration = Duration::from_secs(300);

/// Why the key set could not be read, written or extended.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// `signing-keys.json` is not valid JSON of the expected shape.
    #[error("signing-keys.json does not parse")]
    Parse(#[source] serde_json::Error),
    /// `signing-keys.json` was written by a newer operator.
    #[error("signing-keys.json has format {0}, this version understands {KEY_SET_FORMAT}")]
    UnknownFormat(u32),
    /// Serialising the key set failed.
    #[error("serialising signing-keys.json failed")]
    Serialize(#[source] serde_json::Error),
    /// A key could not be generated, parsed or named.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

mod alg_serde {
    use crate::signing::algorithm::SigningAlg;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(alg: &SigningAlg, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(alg.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SigningAlg, D::Error> {
        let name = String::deserialize(d)?;
        SigningAlg::from_jose(&name)
            .ok_or_else(|| D::Error::custom(format!("unsupported signing algorithm {name:?}")))
    }
}

mod b64_serde {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(D::Error::custom)
    }
}

/// One signing key. `Debug` never prints the private key.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRecord {
    /// Key id: the RFC 7638 SHA-256 thumbprint of the public key.
    pub kid: String,
    /// Its algorithm.
    #[serde(with = "alg_serde")]
    pub alg: SigningAlg,
    /// The private key, PKCS#8 v1 DER.
    #[serde(with = "b64_serde")]
    pub private_key_pkcs8: Vec<u8>,
    /// When it was generated (and started signing).
    pub created_at: DateTime<Utc>,
    /// When a newer key replaced it; unset for the active key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_key_pkcs8", &"[redacted]")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// Generate a fresh key of `alg` from the OS CSPRNG (through aws-lc).
pub fn generate_key(alg: SigningAlg, now: DateTime<Utc>) -> Result<SigningKeyRecord, KeySetError> {
    let pkcs8 = generate_pkcs8(alg)?;
    let kid = thumbprint(alg, &pkcs8)?;
    Ok(SigningKeyRecord {
        kid,
        alg,
        private_key_pkcs8: pkcs8,
        created_at: now,
        retired_at: None,
    })
}

/// The whole key set, as stored in `signing-keys.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeySet {
    /// Format version, [`KEY_SET_FORMAT`].
    pub format: u32,
    /// Every key still published, active or retired.
    pub keys: Vec<SigningKeyRecord>,
}

impl Default for KeySet {
    fn default() -> Self {
        Self {
            format: KEY_SET_FORMAT,
            keys: Vec::new(),
        }
    }
}

impl KeySet {
    /// Parse `signing-keys.json`.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, KeySetError> {
        let set: Self = serde_json::from_slice(bytes).map_err(KeySetError::Parse)?;
        if set.format != KEY_SET_FORMAT {
            return Err(KeySetError::UnknownFormat(set.format));
        }
        Ok(set)
    }

    /// Render `signing-keys.json`.
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, KeySetError> {
        serde_json::to_vec_pretty(self).map_err(KeySetError::Serialize)
    }

    /// The key that signs new tokens: the newest one not retired.
    pub fn active(&self) -> Option<&SigningKeyRecord> {
        self.keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
    }

    /// The keys the JWKS lists at `now`: every key not retired, and retired
    /// keys until their publication window ends.
    pub fn published(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SigningKeyRecord> {
        self.keys
            .iter()
            .filter(move |k| publication_end(k).is_none_or(|end| now < end))
    }
}

/// Until when a key must stay in the JWKS: `None` while it is not retired,
/// else its retirement plus the longest token lifetime plus skew.
pub fn publication_end(key: &SigningKeyRecord) -> Option<DateTime<Utc>> {
    let window = chrono::Duration::from_std(MAX_TOKEN_TTL + PUBLICATION_SKEW).ok()?;
    key.retired_at.map(|at| at + window)
}

/// What the controller is configured to maintain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Algorithm of new keys (`--signing-alg`).
    pub alg: SigningAlg,
    /// Age at which the active key is replaced (`--signing-key-rotation`).
    pub rotate_every: Duration,
}

/// Why a new signing key is needed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationReason {
    /// There is no active key.
    NoActiveKey,
    /// `--signing-alg` differs from the active key's algorithm.
    AlgorithmChanged {
        /// The active key's algorithm.
        from: SigningAlg,
        /// The configured one.
        to: SigningAlg,
    },
    /// The active key reached `--signing-key-rotation`.
    KeyExpired {
        /// When the active key was created.
        created_at: DateTime<Utc>,
    },
}

impl RotationReason {
    /// Machine-readable reason, for logs and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoActiveKey => "NoActiveKey",
            Self::AlgorithmChanged { .. } => "AlgorithmChanged",
            Self::KeyExpired { .. } => "KeyExpired",
        }
    }

    /// Human-readable message.
    pub fn message(&self) -> String {
        match self {
            Self::NoActiveKey => "no active signing key: generating one".into(),
            Self::AlgorithmChanged { from, to } => format!(
                "signing algorithm changed from {} to {}: generating a new key",
                from.as_str(),
                to.as_str()
            ),
            Self::KeyExpired { created_at } => {
                format!("the active signing key from {created_at} reached its rotation age")
            }
        }
    }
}

fn rotation_at(key: &SigningKeyRecord, policy: &KeyPolicy) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(policy.rotate_every)
        .ok()
        .and_then(|d| key.created_at.checked_add_signed(d))
}

/// Whether a new key must be generated at `now`, and why.
pub(crate) fn rotation_due(
    set: &KeySet,
    policy: &KeyPolicy,
    now: DateTime<Utc>,
) -> Option<RotationReason> {
    let Some(active) = set.active() else {
        return Some(RotationReason::NoActiveKey);
    };
    if active.alg != policy.alg {
        return Some(RotationReason::AlgorithmChanged {
            from: active.alg,
            to: policy.alg,
        });
    }
    match rotation_at(active, policy) {
        Some(at) if at <= now => Some(RotationReason::KeyExpired {
            created_at: active.created_at,
        }),
        _ => None,
    }
}

/// The next moment at which [`plan`] would change something (a rotation or a
/// pruning), so the controller can wake up exactly then.
pub(crate) fn next_due(set: &KeySet, policy: &KeyPolicy) -> Option<DateTime<Utc>> {
    let rotation = set.active().and_then(|k| rotation_at(k, policy));
    let prunes = set.keys.iter().filter_map(publication_end);
    rotation.into_iter().chain(prunes).min()
}

/// What to do with a key set at `now`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPlan {
    /// Generate a new active key (retiring the current one), and why.
    pub rotate: Option<RotationReason>,
    /// Key ids whose publication window has ended.
    pub prune: Vec<String>,
}

impl KeyPlan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.rotate.is_none() && self.prune.is_empty()
    }
}

/// Decide what the key set needs at `now`. Pure; the caller applies it.
pub fn plan(set: &KeySet, policy: &KeyPolicy, now: DateTime<Utc>) -> KeyPlan {
    KeyPlan {
        rotate: rotation_due(set, policy, now),
        prune: set
            .keys
            .iter()
            .filter(|k| publication_end(k).is_some_and(|end| end <= now))
            .map(|k| k.kid.clone())
            .collect(),
    }
}

/// Apply a plan: drop pruned keys, and when rotating retire every active key
/// and append `new_key`. Returns the new set.
pub(crate) fn apply_plan(
    set: &KeySet,
    plan: &KeyPlan,
    new_key: Option<SigningKeyRecord>,
    now: DateTime<Utc>,
) -> KeySet {
    let mut keys: Vec<SigningKeyRecord> = set
        .keys
        .iter()
        .filter(|k| !plan.prune.contains(&k.kid))
        .cloned()
        .collect();
    if let Some(new_key) = new_key {
        for key in keys.iter_mut().filter(|k| k.retired_at.is_none()) {
            key.retired_at = Some(now);
        }
        keys.push(new_key);
    }
    KeySet {
        format: KEY_SET_FORMAT,
        keys,
    }
}

/// The key set after applying what is due at `now` (a rotation, pruning),
/// or `None` when nothing is due. Pure apart from key generation.
pub(crate) fn next_key_set(
    set: &KeySet,
    policy: &KeyPolicy,
    now: DateTime<Utc>,
) -> Result<Option<(KeyPlan, KeySet)>, KeySetError> {
    let plan = plan(set, policy, now);
    if plan.is_empty() {
        return Ok(None);
    }
    let new_key = match &plan.rotate {
        Some(_) => Some(generate_key(policy.alg, now)?),
        None => None,
    };
    let next = apply_plan(set, &plan, new_key, now);
    Ok(Some((plan, next)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use chrono::TimeZone;

    fn at(h: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + h * 3600, 0)
            .single()
            .unwrap()
    }

    fn record(kid: &str, alg: SigningAlg, created: i64, retired: Option<i64>) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.into(),
            alg,
            private_key_pkcs8: vec![1, 2, 3],
            created_at: at(created),
            retired_at: retired.map(at),
        }
    }

    const POLICY: KeyPolicy = KeyPolicy {
        alg: SigningAlg::Es256,
        rotate_every: Duration::from_secs(720 * 3600),
    };

    #[test]
    fn rotation_table() {
        let es = SigningAlg::Es256;
        let cases: Vec<(&str, Vec<SigningKeyRecord>, i64, Option<&str>)> = vec![
            ("empty set", vec![], 0, Some("NoActiveKey")),
            (
                "only retired",
                vec![record("a", es, 0, Some(1))],
                2,
                Some("NoActiveKey"),
            ),
            ("fresh", vec![record("a", es, 0, None)], 719, None),
            (
                "at rotation age",
                vec![record("a", es, 0, None)],
                720,
                Some("KeyExpired"),
            ),
            (
                "alg changed",
                vec![record("a", SigningAlg::Rs256, 0, None)],
                1,
                Some("AlgorithmChanged"),
            ),
            (
                "newest active counts",
                vec![record("a", es, 0, Some(700)), record("b", es, 700, None)],
                800,
                None,
            ),
        ];
        for (name, keys, now, want) in cases {
            let set = KeySet { format: 1, keys };
            let got = rotation_due(&set, &POLICY, at(now));
            assert_eq!(got.as_ref().map(RotationReason::reason), want, "{name}");
        }
    }

    #[test]
    fn retired_keys_stay_published_for_the_longest_token_lifetime() {
        let set = KeySet {
            format: 1,
            keys: vec![
                record("old", SigningAlg::Es256, 0, Some(10)),
                record("new", SigningAlg::Es256, 10, None),
            ],
        };
        let kids = |h: i64, extra_s: i64| {
            set.published(at(h) + chrono::Duration::seconds(extra_s))
                .map(|k| k.kid.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(33, 0), vec!["old", "new"]);
        assert_eq!(kids(34, 299), vec!["old", "new"]);
        assert_eq!(kids(34, 300), vec!["new"]);
        let p = plan(&set, &POLICY, at(34) + chrono::Duration::seconds(300));
        assert_eq!(p.prune, vec!["old".to_string()]);
        assert!(p.rotate.is_none());
        assert!(plan(&set, &POLICY, at(20)).is_empty());
        assert_eq!(
            next_due(&set, &POLICY),
            Some(at(34) + chrono::Duration::seconds(300))
        );
    }

    #[test]
    fn applying_a_rotation_retires_the_active_key() {
        let set = KeySet {
            format: 1,
            keys: vec![record("a", SigningAlg::Es256, 0, None)],
        };
        let p = plan(&set, &POLICY, at(720));
        let new = record("b", SigningAlg::Es256, 720, None);
        let next = apply_plan(&set, &p, Some(new), at(720));
        assert_eq!(next.keys.len(), 2);
        assert_eq!(next.keys[0].retired_at, Some(at(720)));
        assert_eq!(next.active().map(|k| k.kid.as_str()), Some("b"));
        assert_eq!(
            next_due(&next, &POLICY),
            Some(at(744) + chrono::Duration::seconds(300))
        );
    }

    #[test]
    fn key_set_round_trips_and_redacts() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256] {
            let key = generate_key(alg, at(0)).unwrap();
            assert!(!format!("{key:?}").contains(&STANDARD.encode(&key.private_key_pkcs8)));
            let set = KeySet {
                format: 1,
                keys: vec![key],
            };
            let json = set.to_json().unwrap();
            assert_eq!(KeySet::from_json(&json).unwrap(), set);
        }
        assert!(matches!(
            KeySet::from_json(br#"{"format":2,"keys":[]}"#),
            Err(KeySetError::UnknownFormat(2))
        ));
        assert!(KeySet::from_json(b"nope").is_err());
        let ed = generate_key(SigningAlg::EdDsa, at(0)).unwrap();
        assert_eq!(ed.private_key_pkcs8.len(), 48, "PKCS#8 v1 Ed25519");
    }

    #[test]
    fn nothing_is_written_when_nothing_is_due() {
        let policy = KeyPolicy {
            alg: SigningAlg::Es256,
            rotate_every: Duration::from_secs(10 * 3600),
        };
        let (_, set) = next_key_set(&KeySet::default(), &policy, at(0))
            .unwrap()
            .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(next_key_set(&set, &policy, at(9)).unwrap().is_none());
        let (plan, rotated) = next_key_set(&set, &policy, at(10)).unwrap().unwrap();
        assert_eq!(plan.rotate.unwrap().reason(), "KeyExpired");
        assert_eq!(rotated.keys.len(), 2);
        assert!(next_key_set(&rotated, &policy, at(19)).unwrap().is_none());
        let (plan, twice) = next_key_set(&rotated, &policy, at(20)).unwrap().unwrap();
        assert!(plan.rotate.is_some(), "the second key is due at 20h");
        assert!(
            plan.prune.is_empty(),
            "the first key is published until 34h05m"
        );
        assert_eq!(twice.keys.len(), 3);
        let first = set.keys[0].kid.clone();
        assert!(next_key_set(&twice, &policy, at(29)).unwrap().is_none());
        assert_eq!(next_due(&twice, &policy), Some(at(30)));
        let late = at(34) + chrono::Duration::minutes(5);
        let (plan, pruned) = next_key_set(&twice, &policy, late).unwrap().unwrap();
        assert_eq!(plan.prune, vec![first]);
        assert_eq!(pruned.keys.len(), 3, "pruned one, rotated the active one");
        let policy_rs = KeyPolicy {
            alg: SigningAlg::EdDsa,
            ..policy
        };
        let (plan, _) = next_key_set(&set, &policy_rs, at(1)).unwrap().unwrap();
        assert_eq!(plan.rotate.unwrap().reason(), "AlgorithmChanged");
    }
}
