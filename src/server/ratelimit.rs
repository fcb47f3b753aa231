//! Rate limiting of failed client authentication, per presented client id
//! (known or not, so the limiter reveals nothing about which ids exist).
//!
//! A token bucket per client id: [`BURST`] failures at once, then one more
//! every [`REFILL`]. Only failures take tokens; while a bucket is empty the
//! client id is refused with `429` + `Retry-After` *without* checking the
//! secret, which caps guessing at ~30 attempts a minute per id. The cost
//! is that someone who knows a client id (ids are not secret) and keeps
//! sending wrong secrets locks the real client out for as long as they
//! keep going; this shows in the audit log and in
//! `m2m_token_requests_total{outcome="rate_limited"}`.
//!
//! Memory is bounded: [`SHARDS`] mutex-guarded maps of at most
//! [`SHARD_CAPACITY`] buckets. A full shard first forgets buckets that
//! have refilled (they carry no information), then the least recently used
//! eighth.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed back to back.
pub const BURST: f64 = 10.0;
/// One more failure allowed per this interval.
pub const REFILL: Duration = Duration::from_secs(2);
/// Number of independently locked shards.
pub const SHARDS: usize = 16;
/// Buckets per shard (16 × 4096 ≈ 65k client ids, a few MiB at most).
pub const SHARD_CAPACITY: usize = 4096;
/// Longest client id tracked as is; longer ids are truncated for the key.
const MAX_KEY_LEN: usize = 128;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed / REFILL.as_secs_f64()).min(BURST);
        self.updated = now;
    }
}

/// The failed-authentication limiter.
#[derive(Debug)]
pub struct FailureLimiter {
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

    /// `Err(retry_after)` while `client_id` has no failures left.
    pub fn check(&self, client_id: &str, now: Instant) -> Result<(), Duration> {
        let key = key(client_id);
        let Ok(mut shard) = self.shard(key).lock() else {
            return Ok(());
        };
        match shard.get_mut(key) {
            None => Ok(()),
            Some(bucket) => {
                bucket.refill(now);
                if bucket.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(REFILL.mul_f64(1.0 - bucket.tokens))
                }
            }
        }
    }

    /// Record one failed authentication for `client_id`.
    pub fn record_failure(&self, client_id: &str, now: Instant) {
        let key = key(client_id);
        let Ok(mut shard) = self.shard(key).lock() else {
            return;
        };
        if !shard.contains_key(key) && shard.len() >= SHARD_CAPACITY {
            shard.retain(|_, b| {
                b.refill(now);
                b.tokens < BURST
            });
            if shard.len() >= SHARD_CAPACITY {
                // Evict the least recently used eighth at once, so a flood of
                // fresh ids costs O(1) amortised per failure.
                let mut by_age: Vec<(Instant, String)> =
                    shard.iter().map(|(k, b)| (b.updated, k.clone())).collect();
                by_age.sort_unstable();
                for (_, k) in by_age.into_iter().take(SHARD_CAPACITY / 8) {
                    shard.remove(&k);
                }
            }
        }
        let bucket = shard.entry(key.to_owned()).or_insert(Bucket {
            tokens: BURST,
            updated: now,
        });
        bucket.refill(now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    /// Number of tracked client ids.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}
