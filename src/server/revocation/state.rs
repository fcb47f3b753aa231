//! What one replica knows about revocations, and the lock-free view the
//! request path reads.
//!
//! A replica *knows* every sealed entry it wrote or saw in a stored copy,
//! until the token it concerns has expired — whatever later happens to the
//! stored copy. Lookups honour the union of what it knows and what is
//! stored now (unsealed entries included), so deleting or editing the
//! ConfigMaps can only ever add revocations, never remove one; the
//! repairer ([`super::ConfigMapRevocations::run_repairs`]) writes the known
//! entries back.

use super::list::{
    ClientList, Plan, Repair, StoredList, config_map_name, repair, unsealed_effect, unsealed_until,
};
use crate::core::verifier::VerifierKey;
use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the request path reads: revoked token ids and per-client cutoffs.
#[derive(Debug, Default)]
pub(crate) struct RevocationView {
    tokens: HashSet<String>,
    cutoffs: HashMap<String, i64>,
}

impl RevocationView {
    /// Whether the token `jti` of `client_id`, issued at `iat`, is revoked.
    pub fn revokes(&self, client_id: &str, jti: &str, iat: i64) -> bool {
        self.tokens.contains(jti) || self.cutoffs.get(client_id).is_some_and(|b| iat < *b)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Sealed entries this replica knows, by client id.
    known: HashMap<String, ClientList>,
    /// The stored ConfigMaps as last observed, by name.
    stored: HashMap<String, StoredList>,
    /// When this replica first saw each unsealed entry (`(name, key)`).
    first_seen: HashMap<(String, String), i64>,
}

/// One replica's revocation state.
#[derive(Debug, Default)]
pub struct Revocations {
    view: ArcSwap<RevocationView>,
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
}

impl Revocations {
    /// Nothing revoked.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the token `jti` of `client_id`, issued at `iat`, is revoked.
    pub(crate) fn is_revoked(&self, client_id: &str, jti: &str, iat: i64) -> bool {
        self.view.load().revokes(client_id, jti, iat)
    }

    /// What this replica knows `client_id` has revoked, pruned at `now`.
    pub fn known(&self, client_id: &str, now: i64) -> ClientList {
        let mut list = self
            .lock()
            .known
            .get(client_id)
            .cloned()
            .unwrap_or_default();
        list.prune(now);
        list
    }

    /// Record a revocation of `jti` that was stored (or is kept in memory only).
    pub(crate) fn record(&self, client_id: &str, jti: &str, plan: &Plan, now: i64) {
        let mut inner = self.lock();
        inner
            .known
            .entry(client_id.to_owned())
            .or_default()
            .apply(jti, plan, now);
        self.rebuild(&mut inner, now);
    }

    /// Take in the revocation ConfigMaps as the watch sees them now, read
    /// with `key` (`None` until the key Secret is loaded).
    pub(crate) fn observe<'a>(
        &self,
        config_maps: impl IntoIterator<Item = &'a ConfigMap>,
        key: Option<&VerifierKey>,
        now: i64,
    ) {
        let mut inner = self.lock();
        let stored: HashMap<String, StoredList> = config_maps
            .into_iter()
            .map(|cm| StoredList::read(cm, key))
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut first_seen = HashMap::new();
        for s in stored.values() {
            if let (Some(client_id), false) = (&s.client_id, s.sealed.is_empty()) {
                inner
                    .known
                    .entry(client_id.clone())
                    .or_default()
                    .merge(&s.sealed, now);
            }
            for (k, v) in &s.unsealed {
                let id = (s.name.clone(), k.clone());
                let seen = match inner.first_seen.get(&id) {
                    Some(seen) => *seen,
                    None => {
                        if key.is_some() {
                            let value: String = v.chars().take(80).collect();
                            tracing::warn!(
                                config_map = %s.name,
                                entry = %k,
                                value = %value,
                                "revocation entry not sealed with the operator's key \
                                 (added or edited by hand?): honoured as a revocation"
                            );
                        }
                        now
                    }
                };
                first_seen.insert(id, seen);
            }
        }
        // Without the key everything looks unsealed: remember nothing as
        // first seen, so entries are judged (and reported) once it loads.
        if key.is_some() {
            inner.first_seen = first_seen;
        }
        inner.stored = stored;
        self.rebuild(&mut inner, now);
        drop(inner);
        self.changed.notify_one();
    }

    fn rebuild(&self, inner: &mut Inner, now: i64) {
        inner.known.retain(|_, list| {
            list.prune(now);
            !list.is_empty()
        });
        let mut view = RevocationView::default();
        for (client_id, list) in &inner.known {
            view.tokens.extend(list.tokens.keys().cloned());
            if let Some(c) = list.cutoff {
                view.cutoffs.insert(client_id.clone(), c.before);
            }
        }
        for s in inner.stored.values() {
            let first = |k: &str| {
                inner
                    .first_seen
                    .get(&(s.name.clone(), k.to_owned()))
                    .copied()
                    .unwrap_or(now)
            };
            let cutoff_seen = first(super::list::CUTOFF_KEY);
            let (tokens, cutoff) = unsealed_effect(s, cutoff_seen);
            view.tokens.extend(
                tokens
                    .into_iter()
                    .filter(|k| unsealed_until(first(k)) > now),
            );
            if let (Some(client_id), Some(before)) = (&s.client_id, cutoff)
                && unsealed_until(cutoff_seen) > now
            {
                let b = view.cutoffs.entry(client_id.clone()).or_insert(before);
                *b = (*b).max(before);
            }
        }
        self.view.store(Arc::new(view));
    }

    /// Drop what expired by `now` from memory and the view.
    pub(crate) fn prune(&self, now: i64) {
        let mut inner = self.lock();
        self.rebuild(&mut inner, now);
    }

    /// The writes that bring every stored copy in line with what this
    /// replica knows.
    pub(crate) fn repairs(&self, key: &VerifierKey, now: i64) -> Vec<Repair> {
        let inner = self.lock();
        let mut clients: HashMap<String, String> = inner
            .known
            .keys()
            .map(|c| (config_map_name(c), c.clone()))
            .collect();
        for s in inner.stored.values() {
            if let Some(c) = &s.client_id {
                clients.entry(s.name.clone()).or_insert_with(|| c.clone());
            }
        }
        let empty = ClientList::default();
        let mut out = Vec::new();
        for (name, client_id) in &clients {
            let mut known = inner.known.get(client_id).cloned().unwrap_or_default();
            known.prune(now);
            let known = if known.is_empty() { &empty } else { &known };
            let stored = inner.stored.get(name);
            let first = |k: &str| {
                inner
                    .first_seen
                    .get(&(name.clone(), k.to_owned()))
                    .copied()
                    .unwrap_or(now)
            };
            out.extend(repair(key, client_id, known, stored, first, now));
        }
        // ConfigMaps with our label but no (valid) client: prune their junk in time.
        for s in inner.stored.values().filter(|s| s.client_id.is_none()) {
            let first = |k: &str| {
                inner
                    .first_seen
                    .get(&(s.name.clone(), k.to_owned()))
                    .copied()
                    .unwrap_or(now)
            };
            if s.data.keys().all(|k| unsealed_until(first(k)) <= now)
                && let Some(rv) = &s.resource_version
            {
                out.push(Repair::Delete {
                    name: s.name.clone(),
                    resource_version: rv.clone(),
                });
            }
        }
        out
    }

    /// The earliest moment (unix seconds) something known or stored expires.
    pub(crate) fn next_expiry(&self) -> Option<i64> {
        let inner = self.lock();
        let known = inner.known.values().flat_map(|l| {
            l.tokens
                .values()
                .map(|t| t.exp)
                .chain(l.cutoff.map(|c| c.exp))
        });
        let unsealed = inner.first_seen.values().map(|s| unsealed_until(*s));
        known.chain(unsealed).min()
    }

    /// Number of unsealed entries currently stored.
    #[cfg(test)]
    pub(crate) fn unsealed_count(&self) -> usize {
        self.lock().stored.values().map(|s| s.unsealed.len()).sum()
    }

    /// Wait until the stored copies changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::list::{CLIENT_ID_ANNOTATION, LIST_LABEL, TokenEntry, sealed_value};
    use super::*;
    use kube::api::ObjectMeta;

    const A: &str = "m2mc_aaaa";
    const B: &str = "m2mc_bbbb";

    fn key() -> VerifierKey {
        VerifierKey::from_bytes(&[3; 32]).unwrap()
    }

    fn cm(client: &str, data: &[(&str, String)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(config_map_name(client)),
                resource_version: Some("1".into()),
                labels: Some([(LIST_LABEL.0.into(), LIST_LABEL.1.into())].into()),
                annotations: Some([(CLIENT_ID_ANNOTATION.to_owned(), client.to_owned())].into()),
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

    #[test]
    fn deleting_or_editing_the_stored_copy_never_reactivates() {
        let k = key();
        let now = 1000;
        let r = Revocations::new();
        let sealed = sealed_value(&k, A, "j1", 900, 5000);
        r.observe([&cm(A, &[("j1", sealed.clone())])], Some(&k), now);
        assert!(r.is_revoked(A, "j1", 900));
        // Deleted: still revoked from memory, and the repair recreates it.
        r.observe([], Some(&k), now + 1);
        assert!(r.is_revoked(A, "j1", 900));
        assert!(matches!(
            r.repairs(&k, now + 1).as_slice(),
            [Repair::Create { data, .. }] if data.get("j1") == Some(&sealed)
        ));
        // A fresh replica (restart) that only sees a non-integer edit: still revoked.
        let fresh = Revocations::new();
        fresh.observe([&cm(A, &[("j1", "oops".into())])], Some(&k), now);
        assert!(fresh.is_revoked(A, "j1", 900));
        assert_eq!(fresh.unsealed_count(), 1);
        // ... until no token it can concern is alive.
        fresh.prune(now + super::super::list::MAX_TTL_SECS);
        assert!(!fresh.is_revoked(A, "j1", 900));
        // Nothing else is affected.
        assert!(!r.is_revoked(A, "j2", 900));
        assert!(!r.is_revoked(B, "j2", 900));
    }

    #[test]
    fn entries_expire_with_their_token() {
        let r = Revocations::new();
        r.record(A, "j", &Plan::Token(TokenEntry { iat: 1, exp: 100 }), 50);
        assert!(r.is_revoked(A, "j", 1));
        r.prune(100);
        assert!(!r.is_revoked(A, "j", 1));
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn cutoffs_apply_to_their_client_only() {
        let r = Revocations::new();
        r.record(
            A,
            "j",
            &Plan::Compact(super::super::list::Cutoff::after(500)),
            50,
        );
        assert!(r.is_revoked(A, "any", 500));
        assert!(!r.is_revoked(A, "any", 501));
        assert!(!r.is_revoked(B, "any", 400));
    }
}
