//! Limits on failed client authentication, per presented client id (known
//! or not, so the limiter reveals nothing about which ids exist) and per
//! source IP address.
//!
//! Threat model. Client secrets carry ≥ 256 bits from a CSPRNG and are
//! checked against keyed hashes, so online guessing is hopeless whatever the
//! rate: the limiter does not protect secrecy. Client ids are not secret
//! (every token carries one in `client_id`). So the limiter must never let
//! someone who knows an id lock its owner out: **the presented secret is
//! always verified, and a correct secret is always accepted.** What the
//! limiter does is answer repeated *failures* with `429` + `Retry-After`
//! instead of `401`: a misconfigured client or a scanner is told to slow
//! down, and shows up in the audit log and in
//! `m2m_token_requests_total{outcome="rate_limited"}`. The CPU a failure
//! costs is small and bounded (a checksum pre-check, then a fixed number of
//! HMACs, [`super::secret_check::MAX_VERIFIERS`] slots); the request-level limits of
//! [`crate::http`] bound the rest.
//!
//! A token bucket per key: [`BURST`] failures at once, then one more every
//! [`REFILL`]; only failures take tokens. Memory is bounded: [`SHARDS`]
//! mutex-guarded maps of at most [`SHARD_CAPACITY`] buckets. A full shard
//! first forgets buckets that have refilled (they carry no information),
//! then the eighth carrying the least information: fullest first, and among
//! equally full ones the least recently failed — so a flood of fresh keys
//! does not evict an exhausted bucket.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed back to back.
pub(crate) const BURST: f64 = 10.0;
/// One more failure allowed per this interval.
pub(crate) const REFILL: Duration = Duration::from_secs(2);
/// Number of independently locked shards.
pub(crate) const SHARDS: usize = 16;
/// Buckets per shard (16 × 4096 ≈ 65k keys, a few MiB at most).
pub(crate) const SHARD_CAPACITY: usize = 4096;
/// Longest key tracked as is; longer ones are truncated.
const MAX_KEY_LEN: usize = 128;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When the last failure was recorded.
    updated: Instant,
}

impl Bucket {
    /// The tokens at `now`, without changing the bucket.
    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed / REFILL.as_secs_f64()).min(BURST)
    }
}

/// One token-bucket map.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    hasher: RandomState,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new()
    }
}

fn key(client_id: &str) -> &str {
    match client_id.char_indices().nth(MAX_KEY_LEN) {
        Some((i, _)) => &client_id[..i],
        None => client_id,
    }
}

impl FailureLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Bucket>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    /// `Err(retry_after)` while `key` has no failures left.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let key = self::key(key);
        let Ok(shard) = self.shard(key).lock() else {
            return Ok(());
        };
        match shard.get(key).map(|b| b.tokens_at(now)) {
            Some(tokens) if tokens < 1.0 => Err(REFILL.mul_f64(1.0 - tokens)),
            _ => Ok(()),
        }
    }

    /// Record one failure for `key`.
    pub(crate) fn record_failure(&self, key: &str, now: Instant) {
        let key = self::key(key);
        let Ok(mut shard) = self.shard(key).lock() else {
            return;
        };
        if !shard.contains_key(key) && shard.len() >= SHARD_CAPACITY {
            // Pure: reading the tokens must not touch `updated`, or the
            // age order below would be lost.
            shard.retain(|_, b| b.tokens_at(now) < BURST);
            if shard.len() >= SHARD_CAPACITY {
                // Evict an eighth at once (O(1) amortised per failure):
                // fullest buckets first, then the least recently failed.
                let mut order: Vec<(u64, Instant, String)> = shard
                    .iter()
                    .map(|(k, b)| ((b.tokens_at(now) * 1000.0) as u64, b.updated, k.clone()))
                    .collect();
                order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                for (_, _, k) in order.into_iter().take(SHARD_CAPACITY / 8) {
                    shard.remove(&k);
                }
            }
        }
        let bucket = shard.entry(key.to_owned()).or_insert(Bucket {
            tokens: BURST,
            updated: now,
        });
        bucket.tokens = (bucket.tokens_at(now) - 1.0).max(0.0);
        bucket.updated = now;
    }

    /// Take one failure from `key` now, if it has one left (checked and
    /// taken under one lock, so concurrent callers cannot all pass a check
    /// made before any of them recorded): `Err(retry_after)` otherwise.
    pub(crate) fn try_take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let k = self::key(key);
        {
            let Ok(shard) = self.shard(k).lock() else {
                return Ok(());
            };
            if let Some(tokens) = shard.get(k).map(|b| b.tokens_at(now))
                && tokens < 1.0
            {
                return Err(REFILL.mul_f64(1.0 - tokens));
            }
        }
        // Between the two locks another caller may take the last one: then
        // this one goes into debt (the bucket floors at zero), never more
        // than the callers racing at that instant.
        self.record_failure(key, now);
        Ok(())
    }

    /// Give back one failure taken by [`FailureLimiter::try_take`] (the
    /// check it guarded succeeded).
    pub(crate) fn refund(&self, key: &str, now: Instant) {
        let key = self::key(key);
        let Ok(mut shard) = self.shard(key).lock() else {
            return;
        };
        if let Some(b) = shard.get_mut(key) {
            b.tokens = (b.tokens_at(now) + 1.0).min(BURST);
            b.updated = now;
        }
    }

    /// Number of tracked keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }
}

/// Failed-authentication limits per client id and per source address.
#[derive(Debug, Default)]
pub(crate) struct AuthLimiter {
    by_client_id: FailureLimiter,
    by_source: FailureLimiter,
}

impl AuthLimiter {
    /// Empty limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gate in front of checks that cost an API call
    /// (workload-identity TokenReviews, [`super::assertion`]): take one
    /// failure from `source` *before* the check, `Err(retry_after)` when it
    /// has none left. Taken first, so concurrent requests of one source
    /// cannot all pass before any failure is recorded; give it back with
    /// [`AuthLimiter::refund_source`] when the check succeeds, and record a
    /// failed check with [`AuthLimiter::failed_after_reserve`].
    pub fn reserve_source(
        &self,
        source: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        match source {
            Some(ip) => self.by_source.try_take(&ip.to_string(), now),
            None => Ok(()),
        }
    }

    /// Give back what [`AuthLimiter::reserve_source`] took.
    pub fn refund_source(&self, source: Option<std::net::IpAddr>, now: Instant) {
        if let Some(ip) = source {
            self.by_source.refund(&ip.to_string(), now);
        }
    }

    /// Record a failure whose source was already charged by
    /// [`AuthLimiter::reserve_source`]: the client id only.
    /// `Err(retry_after)` when the id or the source has run out.
    pub fn failed_after_reserve(
        &self,
        client_id: &str,
        source: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let by_id = self.by_client_id.check(client_id, now);
        self.by_client_id.record_failure(client_id, now);
        let by_source = match source {
            Some(ip) => self.by_source.check(&ip.to_string(), now),
            None => Ok(()),
        };
        match (by_id, by_source) {
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(a),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Record a failed authentication. `Err(retry_after)`: the client id or
    /// the source has run out of failures (answer `429`, not `401`).
    pub fn failed(
        &self,
        client_id: &str,
        source: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let source = source.map(|ip| ip.to_string());
        let by_id = self.by_client_id.check(client_id, now);
        let by_source = match &source {
            Some(ip) => self.by_source.check(ip, now),
            None => Ok(()),
        };
        self.by_client_id.record_failure(client_id, now);
        if let Some(ip) = &source {
            self.by_source.record_failure(ip, now);
        }
        match (by_id, by_source) {
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(a),
            (Ok(()), Ok(())) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.check("a", t0).is_ok());
            l.record_failure("a", t0);
        }
        let retry = l.check("a", t0).unwrap_err();
        assert!(retry <= REFILL && retry > Duration::ZERO);
        assert!(l.check("b", t0).is_ok(), "other ids are unaffected");
        assert!(l.check("a", t0 + REFILL).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        for i in 0..(SHARDS * SHARD_CAPACITY + 5000) {
            l.record_failure(&format!("id-{i}"), t0);
        }
        assert!(l.len() <= SHARDS * SHARD_CAPACITY);
        let long = "x".repeat(10_000);
        l.record_failure(&long, t0);
        assert!(l.check(&long, t0).is_ok());
    }

    /// A flood of fresh ids must not evict a bucket an attacker keeps
    /// empty (the old `retain` refreshed every bucket's age, so eviction
    /// fell back to key order).
    #[test]
    fn a_flood_of_fresh_ids_does_not_evict_an_exhausted_bucket() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        for _ in 0..20 {
            l.record_failure("a-exhausted", t0);
        }
        assert!(l.check("a-exhausted", t0).is_err());
        for i in 0..(SHARDS * SHARD_CAPACITY * 2) {
            l.record_failure(&format!("id-{i}"), t0 + Duration::from_millis(1));
        }
        assert!(
            l.check("a-exhausted", t0 + Duration::from_millis(2))
                .is_err(),
            "the exhausted bucket was evicted"
        );
    }

    #[test]
    fn failures_are_limited_per_id_and_per_source() {
        let l = AuthLimiter::new();
        let t0 = Instant::now();
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let other: std::net::IpAddr = "10.0.0.8".parse().unwrap();
        // Many ids from one source: the source runs out.
        for i in 0..10 {
            assert!(l.failed(&format!("ghost-{i}"), Some(ip), t0).is_ok());
        }
        assert!(l.failed("ghost-new", Some(ip), t0).is_err());
        assert!(l.failed("ghost-new-2", Some(other), t0).is_ok());
        // One id from many sources: the id runs out.
        for i in 0..10 {
            let src: std::net::IpAddr = format!("10.1.0.{i}").parse().unwrap();
            assert!(l.failed("target", Some(src), t0).is_ok());
        }
        assert!(
            l.failed("target", Some("10.2.0.1".parse().unwrap()), t0)
                .is_err()
        );
    }
}
