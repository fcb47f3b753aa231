//! The revocation list as data, free of I/O: what one client has revoked
//! ([`ClientList`]), how entries are sealed and stored in that client's
//! ConfigMap, how a stored ConfigMap is read back ([`StoredList`]), and the
//! pure decisions — quota and compaction ([`plan`]), pruning, and which
//! writes bring a stored copy back to what the replica knows ([`repair`]).
//!
//! Storage: one ConfigMap per client that revoked something,
//! `m2m-revoked-tokens-<hash of the client id>`, labelled
//! [`LIST_LABEL`] and annotated with the client id. Its data:
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `<jti>` | `<iat>.<exp>.<seal>` | this token is revoked |
//! | [`CUTOFF_KEY`] | `<before>.<exp>.<seal>` | every token of the client issued before `before` (unix seconds) is revoked |
//!
//! The seal is an HMAC-SHA256 under the operator's verifier key over the
//! client id, the key and both numbers (length-prefixed, like the verifier
//! seals), so whoever cannot read the key Secret cannot add or change an
//! entry unnoticed. An entry without a valid seal — or whose value does not
//! parse — can only make tokens inactive, so it is honoured as a
//! revocation (never ignored), reported, and dropped one maximum token
//! lifetime after this replica first saw it (every token it could concern
//! has expired by then).

use crate::core::grant::MAX_TOKEN_TTL;
use crate::core::verifier::VerifierKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The longest token lifetime in seconds: no token outlives its issue time by more.
pub(crate) const MAX_TTL_SECS: i64 = MAX_TOKEN_TTL.as_secs() as i64;

/// Data key of the compact entry "all tokens issued before T".
pub(crate) const CUTOFF_KEY: &str = "issued-before";

/// Label every revocation ConfigMap carries (the watch selects on it).
pub const LIST_LABEL: (&str, &str) = ("m2m.dev/revocation-list", "v2");

/// Annotation naming the client whose revocations a ConfigMap holds.
pub(crate) const CLIENT_ID_ANNOTATION: &str = "m2m.dev/client-id";

/// Name prefix of the per-client revocation ConfigMaps.
pub(crate) const NAME_PREFIX: &str = "m2m-revoked-tokens-";

/// A replica puts back a missing entry only if its token still lives this
/// long: below that, replicas' clocks may disagree whether it expired, and
/// the replica keeps honouring it from memory anyway.
pub(crate) const READD_MARGIN_SECS: i64 = 30;

const SEAL_DOMAIN: &str = "m2m.dev/revocation-seal/v1";

/// The ConfigMap holding `client_id`'s revocations.
pub fn config_map_name(client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("{NAME_PREFIX}{hex}")
}

/// One revoked token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEntry {
    /// Its `iat` (unix seconds): a cutoff after it subsumes the entry.
    pub iat: i64,
    /// Its `exp`: the entry is dropped then.
    pub exp: i64,
}

/// "Every token of the client issued before `before` is revoked", in force
/// until `exp` (when the last token it can concern has expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// Tokens with `iat < before` are revoked.
    pub before: i64,
    /// `before + MAX_TTL_SECS`.
    pub exp: i64,
}

impl Cutoff {
    /// The cutoff revoking every token issued up to and including second `last_iat`.
    pub fn after(last_iat: i64) -> Self {
        let before = last_iat.saturating_add(1);
        Self {
            before,
            exp: before.saturating_add(MAX_TTL_SECS),
        }
    }
}

/// What one client has revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientList {
    /// Revoked tokens by `jti`.
    pub tokens: BTreeMap<String, TokenEntry>,
    /// The compact entry, if the client ever exceeded its quota.
    pub cutoff: Option<Cutoff>,
}

impl ClientList {
    /// Whether the token `jti` issued at `iat` is revoked by this list.
    pub fn revokes(&self, jti: &str, iat: i64) -> bool {
        self.tokens.contains_key(jti) || self.cutoff.is_some_and(|c| iat < c.before)
    }

    /// Drop what no longer matters at `now`: expired entries and tokens the
    /// cutoff covers.
    pub(crate) fn prune(&mut self, now: i64) {
        if self.cutoff.is_some_and(|c| c.exp <= now) {
            self.cutoff = None;
        }
        let cutoff = self.cutoff;
        self.tokens
            .retain(|_, t| t.exp > now && cutoff.is_none_or(|c| t.iat >= c.before));
    }

    /// Union with `other` (the later cutoff wins), then prune.
    pub(crate) fn merge(&mut self, other: &ClientList, now: i64) {
        for (jti, t) in &other.tokens {
            self.tokens.entry(jti.clone()).or_insert(*t);
        }
        self.cutoff = match (self.cutoff, other.cutoff) {
            (Some(a), Some(b)) => Some(if b.before > a.before { b } else { a }),
            (a, b) => a.or(b),
        };
        self.prune(now);
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.cutoff.is_none()
    }

    /// The sealed data this list is stored as, leaving out entries that
    /// expire within [`READD_MARGIN_SECS`] of `now`.
    pub(crate) fn stored_data(
        &self,
        key: &VerifierKey,
        client_id: &str,
        now: i64,
    ) -> BTreeMap<String, String> {
        let live = |exp: i64| exp > now.saturating_add(READD_MARGIN_SECS);
        let mut data: BTreeMap<String, String> = self
            .tokens
            .iter()
            .filter(|(_, t)| live(t.exp))
            .map(|(jti, t)| (jti.clone(), sealed_value(key, client_id, jti, t.iat, t.exp)))
            .collect();
        if let Some(c) = self.cutoff.filter(|c| live(c.exp)) {
            data.insert(
                CUTOFF_KEY.to_owned(),
                sealed_value(key, client_id, CUTOFF_KEY, c.before, c.exp),
            );
        }
        data
    }
}

fn seal_mac(key: &VerifierKey, client_id: &str, entry: &str, a: i64, b: i64) -> Hmac<Sha256> {
    // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
    let (a, b) = (a.to_string(), b.to_string());
    for field in [SEAL_DOMAIN, client_id, entry, &a, &b] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac
}

/// The stored value `<a>.<b>.<seal>` of entry `entry` of `client_id`.
pub(crate) fn sealed_value(
    key: &VerifierKey,
    client_id: &str,
    entry: &str,
    a: i64,
    b: i64,
) -> String {
    let seal = URL_SAFE_NO_PAD.encode(
        seal_mac(key, client_id, entry, a, b)
            .finalize()
            .into_bytes(),
    );
    format!("{a}.{b}.{seal}")
}

/// The two numbers of a value whose seal checks (constant-time comparison).
fn open_value(key: &VerifierKey, client_id: &str, entry: &str, value: &str) -> Option<(i64, i64)> {
    let mut parts = value.splitn(3, '.');
    let a: i64 = parts.next()?.parse().ok()?;
    let b: i64 = parts.next()?.parse().ok()?;
    let seal = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    seal_mac(key, client_id, entry, a, b)
        .verify_slice(&seal)
        .ok()
        .map(|()| (a, b))
}

/// The leading integer of a value, sealed or not (`before` of an unsealed cutoff).
fn leading_number(value: &str) -> Option<i64> {
    value.split('.').next()?.trim().parse().ok()
}

/// One revocation ConfigMap as read from the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoredList {
    /// The ConfigMap's name.
    pub name: String,
    /// The client it names (annotation), if any.
    pub client_id: Option<String>,
    /// Its resourceVersion (precondition for deleting it when empty).
    pub resource_version: Option<String>,
    /// Entries with a valid seal.
    pub sealed: ClientList,
    /// Entries without a valid seal or that do not parse: key → value.
    /// Honoured as revocations; never trusted for anything else.
    pub unsealed: BTreeMap<String, String>,
    /// The data as stored.
    pub data: BTreeMap<String, String>,
    /// Whether the ConfigMap carries the annotation and labels the operator writes.
    pub metadata_intact: bool,
}

impl StoredList {
    /// Read a revocation ConfigMap. Without `key` (not loaded yet) every
    /// entry counts as unsealed: still revoked, never absent.
    pub fn read(cm: &ConfigMap, key: Option<&VerifierKey>) -> Self {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let client_id = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLIENT_ID_ANNOTATION))
            .cloned();
        let data = cm.data.clone().unwrap_or_default();
        // Entries are bound to the client the ConfigMap's name was derived from.
        let bound = client_id
            .as_deref()
            .filter(|id| config_map_name(id) == name);
        let metadata_intact = bound.is_some()
            && cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LIST_LABEL.0))
                .is_some_and(|v| v == LIST_LABEL.1);
        let mut sealed = ClientList::default();
        let mut unsealed = BTreeMap::new();
        for (k, v) in &data {
            let opened = match (key, bound) {
                (Some(key), Some(id)) => open_value(key, id, k, v),
                _ => None,
            };
            match opened {
                Some((before, exp)) if k == CUTOFF_KEY => {
                    sealed.cutoff = Some(Cutoff { before, exp })
                }
                Some((iat, exp)) => {
                    sealed.tokens.insert(k.clone(), TokenEntry { iat, exp });
                }
                None => {
                    unsealed.insert(k.clone(), v.clone());
                }
            }
        }
        Self {
            name,
            client_id,
            resource_version: cm.metadata.resource_version.clone(),
            sealed,
            unsealed,
            data,
            metadata_intact,
        }
    }
}

/// A revocation request for one token.
#[derive(Debug, Clone, Copy)]
pub struct Revoked<'a> {
    /// Its `client_id` (the caller: only owners revoke).
    pub client_id: &'a str,
    /// Its `jti`.
    pub jti: &'a str,
    /// Its `iat`.
    pub iat: i64,
    /// Its `exp`.
    pub exp: i64,
}

/// What recording a revocation changes in its client's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Already revoked.
    Nothing,
    /// Add one entry.
    Token(TokenEntry),
    /// The client is at its quota: replace its entries by one cutoff that
    /// covers them and the token (and any token it was issued before).
    Compact(Cutoff),
}

/// Decide how to record `t` given what its client has revoked (`list`,
/// pruned at `now`) and the per-client `quota` of single entries.
pub fn plan(list: &ClientList, t: &Revoked<'_>, quota: usize, now: i64) -> Plan {
    let mut list = list.clone();
    list.prune(now);
    if list.revokes(t.jti, t.iat) {
        return Plan::Nothing;
    }
    if list.tokens.len() < quota {
        return Plan::Token(TokenEntry {
            iat: t.iat,
            exp: t.exp,
        });
    }
    let last = list.tokens.values().map(|e| e.iat).fold(t.iat, i64::max);
    Plan::Compact(Cutoff::after(last))
}

impl ClientList {
    /// Apply a plan for token `jti`.
    pub fn apply(&mut self, jti: &str, plan: &Plan, now: i64) {
        match plan {
            Plan::Nothing => {}
            Plan::Token(t) => {
                self.tokens.insert(jti.to_owned(), *t);
            }
            Plan::Compact(c) => {
                let other = ClientList {
                    tokens: BTreeMap::new(),
                    cutoff: Some(*c),
                };
                self.merge(&other, now);
            }
        }
        self.prune(now);
    }
}

/// A write that brings one stored ConfigMap back to what a replica knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repair {
    /// The ConfigMap is gone: create it with these entries.
    Create {
        /// Client id.
        client_id: String,
        /// Every entry.
        data: BTreeMap<String, String>,
    },
    /// Set (`Some`) or delete (`None`) these keys, and restore the metadata.
    Patch {
        /// ConfigMap name.
        name: String,
        /// Client id.
        client_id: String,
        /// Changes.
        data: BTreeMap<String, Option<String>>,
    },
    /// Nothing left in it: delete it if still at this resourceVersion.
    Delete {
        /// ConfigMap name.
        name: String,
        /// Precondition.
        resource_version: String,
    },
}

/// When an unsealed entry first seen at `first_seen` may be dropped.
pub(crate) fn unsealed_until(first_seen: i64) -> i64 {
    first_seen.saturating_add(MAX_TTL_SECS)
}

/// The write (if any) that makes `stored` hold what this replica knows of
/// the client (`known`, already pruned), drops expired and subsumed
/// entries, and unsealed ones past their time (`first_seen` of each).
pub(crate) fn repair(
    key: &VerifierKey,
    client_id: &str,
    known: &ClientList,
    stored: Option<&StoredList>,
    first_seen: impl Fn(&str) -> i64,
    now: i64,
) -> Option<Repair> {
    let desired = known.stored_data(key, client_id, now);
    let Some(stored) = stored else {
        return (!desired.is_empty()).then(|| Repair::Create {
            client_id: client_id.to_owned(),
            data: desired,
        });
    };
    let mut changes: BTreeMap<String, Option<String>> = desired
        .iter()
        .filter(|(k, v)| stored.data.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let cutoff = known.cutoff.or(stored.sealed.cutoff);
    let obsolete = stored
        .data
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .filter(|k| {
            if let Some(t) = stored.sealed.tokens.get(*k) {
                t.exp <= now || cutoff.is_some_and(|c| t.iat < c.before)
            } else if k.as_str() == CUTOFF_KEY && stored.sealed.cutoff.is_some() {
                stored.sealed.cutoff.is_some_and(|c| c.exp <= now)
            } else {
                unsealed_until(first_seen(k)) <= now
            }
        });
    changes.extend(obsolete.map(|k| (k.clone(), None)));
    if !changes.is_empty() || (!stored.metadata_intact && !desired.is_empty()) {
        return Some(Repair::Patch {
            name: stored.name.clone(),
            client_id: client_id.to_owned(),
            data: changes,
        });
    }
    match (
        &stored.resource_version,
        stored.data.is_empty() && desired.is_empty(),
    ) {
        (Some(rv), true) => Some(Repair::Delete {
            name: stored.name.clone(),
            resource_version: rv.clone(),
        }),
        _ => None,
    }
}

/// The keys that matter for lookups in unsealed entries of `stored`: token
/// ids, and the cutoff's `before`: its leading number, but never later
/// than `first_seen` (when it does not parse: `first_seen`, everything
/// issued before it was noticed). An unsealed entry can only revoke, so it
/// is honoured — yet a hand-written future `issued-before` must not block
/// the client's tokens issued after the edit, for as long as it is kept.
pub(crate) fn unsealed_effect(
    stored: &StoredList,
    first_seen: i64,
) -> (BTreeSet<String>, Option<i64>) {
    let mut tokens = BTreeSet::new();
    let mut cutoff = None;
    for (k, v) in &stored.unsealed {
        if k == CUTOFF_KEY {
            cutoff = Some(leading_number(v).map_or(first_seen, |t| t.min(first_seen)));
        } else {
            tokens.insert(k.clone());
        }
    }
    (tokens, cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    const CLIENT: &str = "m2mc_0123456789abcdef0123456789abcdef";

    fn key() -> VerifierKey {
        VerifierKey::from_bytes(&[9; 32]).unwrap()
    }

    fn cm(client: Option<&str>, data: &[(&str, String)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(config_map_name(CLIENT)),
                resource_version: Some("7".into()),
                labels: Some([(LIST_LABEL.0.into(), LIST_LABEL.1.into())].into()),
                annotations: client
                    .map(|c| [(CLIENT_ID_ANNOTATION.to_owned(), c.to_owned())].into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn revoked(jti: &str, iat: i64) -> Revoked<'_> {
        Revoked {
            client_id: CLIENT,
            jti,
            iat,
            exp: iat + 3600,
        }
    }

    #[test]
    fn names_are_valid_and_per_client() {
        let n = config_map_name(CLIENT);
        assert!(n.len() <= 63 && n.starts_with(NAME_PREFIX));
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(n, config_map_name("m2mc_other"));
    }

    #[test]
    fn sealed_entries_open_and_edited_ones_do_not() {
        let k = key();
        let good = sealed_value(&k, CLIENT, "jti1", 100, 3700);
        let stored = StoredList::read(
            &cm(
                Some(CLIENT),
                &[
                    ("jti1", good.clone()),
                    ("jti2", "not-a-number".into()),
                    ("jti3", good.replace("3700", "3701")),
                    ("jti4", "5000".into()),
                ],
            ),
            Some(&k),
        );
        assert_eq!(
            stored.sealed.tokens.get("jti1"),
            Some(&TokenEntry {
                iat: 100,
                exp: 3700
            })
        );
        // Unparseable, edited and unsealed entries are kept as unsealed: revoked, never absent.
        let unsealed: Vec<_> = stored.unsealed.keys().map(String::as_str).collect();
        assert_eq!(unsealed, ["jti2", "jti3", "jti4"]);
        assert!(stored.metadata_intact);
        // Moved to another client (or without the key): nothing is sealed, all still listed.
        for (client, key) in [
            (Some("m2mc_other"), Some(&k)),
            (None, Some(&k)),
            (Some(CLIENT), None),
        ] {
            let s = StoredList::read(&cm(client, &[("jti1", good.clone())]), key);
            assert!(s.sealed.is_empty());
            assert_eq!(s.unsealed.len(), 1);
        }
        let other_key = VerifierKey::from_bytes(&[1; 32]).unwrap();
        let s = StoredList::read(&cm(Some(CLIENT), &[("jti1", good)]), Some(&other_key));
        assert!(s.sealed.is_empty(), "a seal needs the operator's key");
    }

    #[test]
    fn quota_then_compaction_covers_every_entry_and_the_token() {
        let now = 1000;
        let mut list = ClientList::default();
        for i in 0..3 {
            let jti = format!("t{i}");
            let p = plan(&list, &revoked(&jti, 900 + i), 3, now);
            assert!(matches!(p, Plan::Token(_)));
            list.apply(&jti, &p, now);
        }
        assert_eq!(plan(&list, &revoked("t1", 901), 3, now), Plan::Nothing);
        // An older token beyond the quota: the cutoff still covers the newest entry.
        let p = plan(&list, &revoked("t9", 850), 3, now);
        assert_eq!(p, Plan::Compact(Cutoff::after(902)));
        list.apply("t9", &p, now);
        assert!(list.tokens.is_empty(), "entries subsumed: {list:?}");
        for (jti, iat) in [
            ("t0", 900),
            ("t2", 902),
            ("t9", 850),
            ("never-revoked", 902),
        ] {
            assert!(list.revokes(jti, iat), "{jti}");
        }
        assert!(
            !list.revokes("newer", 903),
            "tokens issued later stay valid"
        );
        // Room again for single entries.
        assert!(matches!(
            plan(&list, &revoked("n", 950), 3, now),
            Plan::Token(_)
        ));
    }

    #[test]
    fn pruned_as_soon_as_expired() {
        let mut list = ClientList::default();
        list.tokens
            .insert("a".into(), TokenEntry { iat: 0, exp: 100 });
        list.tokens
            .insert("b".into(), TokenEntry { iat: 0, exp: 200 });
        list.cutoff = Some(Cutoff {
            before: 1,
            exp: 150,
        });
        list.prune(99);
        assert_eq!(list.tokens.len(), 0, "both covered by the cutoff");
        list.tokens
            .insert("c".into(), TokenEntry { iat: 5, exp: 200 });
        list.prune(150);
        assert_eq!(list.cutoff, None);
        assert_eq!(list.tokens.len(), 1);
        list.prune(200);
        assert!(list.is_empty());
    }

    #[test]
    fn repair_recreates_restores_and_prunes() {
        let k = key();
        let now = 1000;
        let mut known = ClientList::default();
        known.tokens.insert(
            "live".into(),
            TokenEntry {
                iat: 900,
                exp: 5000,
            },
        );
        known.tokens.insert(
            "ending".into(),
            TokenEntry {
                iat: 900,
                exp: now + 10,
            },
        );
        let live = sealed_value(&k, CLIENT, "live", 900, 5000);
        // Deleted: recreated with what is known (not the entry about to expire).
        assert_eq!(
            repair(&k, CLIENT, &known, None, |_| now, now),
            Some(Repair::Create {
                client_id: CLIENT.into(),
                data: [("live".to_owned(), live.clone())].into()
            })
        );
        // Edited to a non-integer, plus an expired sealed entry and old hand-added junk.
        let expired = sealed_value(&k, CLIENT, "expired", 1, 999);
        let stored = StoredList::read(
            &cm(
                Some(CLIENT),
                &[
                    ("live", "garbage".into()),
                    ("expired", expired),
                    ("junk", "x".into()),
                    ("fresh-junk", "y".into()),
                ],
            ),
            Some(&k),
        );
        let first_seen = |key: &str| {
            if key == "junk" {
                now - MAX_TTL_SECS
            } else {
                now - 5
            }
        };
        let Some(Repair::Patch { data, .. }) =
            repair(&k, CLIENT, &known, Some(&stored), first_seen, now)
        else {
            panic!("a patch")
        };
        assert_eq!(
            data,
            BTreeMap::from([
                ("live".to_owned(), Some(live.clone())),
                ("expired".to_owned(), None),
                ("junk".to_owned(), None),
            ])
        );
        // In order: nothing to write.
        let stored = StoredList::read(&cm(Some(CLIENT), &[("live", live)]), Some(&k));
        assert_eq!(
            repair(&k, CLIENT, &known, Some(&stored), |_| now, now),
            None
        );
        // Empty and nothing known: delete, guarded by the resourceVersion.
        let empty = StoredList::read(&cm(Some(CLIENT), &[]), Some(&k));
        assert_eq!(
            repair(
                &k,
                CLIENT,
                &ClientList::default(),
                Some(&empty),
                |_| now,
                now
            ),
            Some(Repair::Delete {
                name: config_map_name(CLIENT),
                resource_version: "7".into()
            })
        );
    }

    #[test]
    fn unsealed_cutoff_that_does_not_parse_revokes_everything_before_it_was_seen() {
        let stored = StoredList::read(
            &cm(
                Some(CLIENT),
                &[(CUTOFF_KEY, "soon".into()), ("t", "1".into())],
            ),
            Some(&key()),
        );
        let (tokens, cutoff) = unsealed_effect(&stored, 777);
        assert_eq!(cutoff, Some(777));
        assert!(tokens.contains("t"));
    }

    /// A hand-written `issued-before` in the future must not block the
    /// client's tokens issued after the edit: an unsealed cutoff counts
    /// only up to when this replica first saw it.
    #[test]
    fn an_unsealed_cutoff_in_the_future_counts_only_until_it_was_first_seen() {
        let seen = 1_000_000;
        let stored = StoredList::read(
            &cm(
                Some(CLIENT),
                &[(CUTOFF_KEY, "4102444800.4102531200.forged".into())],
            ),
            Some(&key()),
        );
        let (_, cutoff) = unsealed_effect(&stored, seen);
        assert_eq!(cutoff, Some(seen), "a future cutoff blocks later tokens");
        // One in the past is taken as written.
        let stored = StoredList::read(
            &cm(Some(CLIENT), &[(CUTOFF_KEY, "999.1000.forged".into())]),
            Some(&key()),
        );
        assert_eq!(unsealed_effect(&stored, seen).1, Some(999));
    }

    #[test]
    fn a_full_list_stays_small() {
        // The default quota's worth of entries, as stored: what one revoke rewrites at most.
        let k = key();
        let mut list = ClientList::default();
        for i in 0..super::super::DEFAULT_QUOTA {
            list.tokens.insert(
                format!("{:022}", i),
                TokenEntry {
                    iat: 1_800_000_000,
                    exp: 1_800_086_400,
                },
            );
        }
        list.cutoff = Some(Cutoff::after(1_800_000_000));
        let data = list.stored_data(&k, CLIENT, 0);
        let bytes = serde_json::to_vec(&data).unwrap().len();
        println!("{} entries: {bytes} bytes of data", data.len());
        assert!(bytes < 32 * 1024, "{bytes}");
    }
}
