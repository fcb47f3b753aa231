//! Workload identity at the token endpoint (SPEC §6): RFC 7523 §2.2 client
//! authentication with a Kubernetes service-account token as
//! `client_assertion`.
//!
//! The apiserver is the authority: each assertion not in the cache is sent
//! to the TokenReview API (`authentication.k8s.io/v1`) with the bound
//! credential's audience, so Kubernetes checks the signature, expiry,
//! audience, and that the ServiceAccount — and for a pod-bound token, the
//! Pod — still exists. A successful review is cached under the SHA-256 of
//! audience and token (never the token) until the token's `exp`, at most
//! `--assertion-cache-ttl` (default 30 s); a refusal for at most 2 s. The
//! cache holds at most `--assertion-cache-entries` results; when full,
//! expired entries go first, then an arbitrary eighth of the rest (random
//! eviction: O(1) per insert amortised, no per-hit bookkeeping). So in the
//! steady state a pod's requests make no API call, and a deleted Pod or
//! ServiceAccount stops working within the cache bound (plus the 10 s for
//! which kube-apiserver itself caches successful token authentications). Everything the
//! m2m side decides — credential deleted, mode switched, account disabled —
//! is read from the index on every request and takes effect at once.
//!
//! What may reach the apiserver is bounded, whatever the callers send
//! (an unsigned assertion that merely *claims* a bound subject is free to
//! write, and each TokenReview shares the token server's client and API
//! priority with its watches and usage writes):
//!
//! 1. The assertion must name (in its unverified `sub`) a ServiceAccount
//!    that a credential binds, and pass a cheap plausibility check
//!    ([`check_plausible`]: asymmetric `alg`, `aud` containing the
//!    credential's audience, `exp`/`iat` present with a lifetime of at most
//!    a year, a signature of plausible length) — junk is refused with no call.
//! 2. The cache answers next: a valid result (bounded by
//!    `--assertion-cache-ttl` and the token's `exp`) or a refusal (2 s).
//!    Valid results and refusals are kept in **separate** bounded maps, so
//!    a flood of refusals never evicts a valid result.
//! 3. The source's failure limit ([`super::ratelimit`]) is consulted
//!    *before* the review: a source that has used up its failures gets
//!    `429` without an API call (a source's verified tokens keep working
//!    from the cache).
//! 4. A global cap per replica, `--token-review-max-concurrent` in flight
//!    and `--token-review-max-per-second`, whatever the sources: over it,
//!    `503 temporarily_unavailable` with `Retry-After`, never a call.
//!
//! Every refused assertion is the same `401 invalid_client`.

use super::TokenServer;
use super::error::OAuthError;
use super::form::{ClientCredentials, Form};
use super::index::CredentialEntry;
use crate::core::workload::{
    ClaimedIdentity, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL, DEFAULT_MAX_CONCURRENT_REVIEWS,
    DEFAULT_REVIEWS_PER_SECOND, JWT_BEARER_ASSERTION_TYPE, MAX_NEGATIVE_TTL, assertion_key,
    cache_until, check_plausible, claimed_identity,
};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The RFC 8414 / OpenID name of this client authentication method. The
/// registry has no name for "a JWT signed by a key the server trusts for
/// this client"; `private_key_jwt` is the registered method whose request
/// shape (RFC 7523 `client_assertion`) is exactly this one, so generic
/// clients send the right parameters.
pub(crate) const METHOD: &str = "private_key_jwt";

/// A `client_assertion` a request presented.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientAssertion {
    /// `client_id`, if sent (optional when one credential binds the ServiceAccount).
    pub client_id: Option<String>,
    /// The service-account token.
    pub token: String,
}

impl std::fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAssertion")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The RFC 7523 client assertion of a request, if it carries one. Mixing it
/// with another client authentication (a `client_secret`, HTTP Basic
/// `credentials`) or sending half of it is `invalid_request`.
pub fn client_assertion(
    form: &Form,
    credentials: Option<&ClientCredentials>,
) -> Result<Option<ClientAssertion>, OAuthError> {
    let kind = form.get("client_assertion_type");
    let token = form.get("client_assertion");
    let (kind, token) = match (kind, token) {
        (None, None) => return Ok(None),
        (Some(k), Some(t)) => (k, t),
        _ => {
            return Err(OAuthError::invalid_request(
                "client_assertion and client_assertion_type go together",
            ));
        }
    };
    if kind != JWT_BEARER_ASSERTION_TYPE {
        return Err(OAuthError::invalid_request(format!(
            "client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}"
        )));
    }
    if form.get("client_secret").is_some() || credentials.is_some() {
        return Err(OAuthError::invalid_request(
            "use one client authentication method: client_assertion, client_secret_basic or client_secret_post",
        ));
    }
    Ok(Some(ClientAssertion {
        client_id: form.get("client_id").map(str::to_owned),
        token: token.to_owned(),
    }))
}

/// Why the apiserver could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("TokenReview failed")]
pub(crate) struct ReviewError(#[source] pub kube::Error);

/// Asks Kubernetes whether a token is valid now for an audience; `Ok(Some(username))`
/// when it is, `Ok(None)` when it is not.
pub(crate) trait TokenReviewer: Send + Sync {
    /// Review `token` for `audience`.
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ReviewError>>;
}

/// The TokenReview API of the cluster the token server runs in.
#[derive(Clone)]
pub(crate) struct KubeTokenReviewer {
    client: kube::Client,
}

impl KubeTokenReviewer {
    /// Review through `client` (needs `create` on `tokenreviews`).
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ReviewError>> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(vec![audience.to_owned()]),
                },
                ..Default::default()
            };
            let answer = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(ReviewError)?;
            let Some(status) = answer.status else {
                return Ok(None);
            };
            // status.audiences is the intersection of the token's and ours:
            // it must contain ours, whatever the authenticator.
            let audience_ok = status
                .audiences
                .as_ref()
                .is_some_and(|a| a.iter().any(|x| x == audience));
            if status.authenticated != Some(true) || !audience_ok {
                return Ok(None);
            }
            Ok(status.user.and_then(|u| u.username))
        })
    }
}

/// A reviewer for servers without a cluster (tests, benchmark): refuses everything.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RefuseAll;

impl TokenReviewer for RefuseAll {
    fn review<'a>(
        &'a self,
        _token: &'a str,
        _audience: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ReviewError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A cached valid review: the subject Kubernetes named.
#[derive(Debug, Clone)]
struct Valid {
    subject: String,
}

/// A cached value and when it expires.
type Expiring<V> = (V, DateTime<Utc>);

/// One bounded map of review results by key, each with an expiry.
#[derive(Debug)]
struct BoundedMap<V> {
    entries: Mutex<HashMap<[u8; 32], Expiring<V>>>,
    capacity: usize,
}

impl<V: Clone> BoundedMap<V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn get(&self, key: &[u8; 32], now: DateTime<Utc>) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    /// Insert; when full, expired entries go first, then an arbitrary
    /// eighth (O(1) amortised, no per-hit bookkeeping).
    fn insert(&self, key: [u8; 32], value: V, until: DateTime<Utc>, now: DateTime<Utc>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= self.capacity {
                let drop = (self.capacity / 8).max(1);
                let victims: Vec<[u8; 32]> = entries.keys().take(drop).copied().collect();
                for k in victims {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (value, until));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

/// Bounds of the assertion cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheBounds {
    /// A successful review is reused at most this long (never past `exp`).
    pub ttl: Duration,
    /// At most this many results are held.
    pub entries: usize,
}

impl Default for CacheBounds {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_CACHE_TTL,
            entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// TokenReview results by SHA-256 of (audience, token), bounded in time
/// and size: valid results and refusals in separate maps of
/// `bounds.entries` each, so refusals can never evict a valid result.
#[derive(Debug)]
pub(crate) struct AssertionCache {
    valid: BoundedMap<Valid>,
    refused: BoundedMap<()>,
    bounds: CacheBounds,
}

/// The global cap on TokenReview calls of one replica.
#[derive(Debug, Clone, Copy)]
pub struct ReviewLimits {
    /// At most this many in flight at once.
    pub max_concurrent: usize,
    /// At most this many started per second (a token bucket of this size).
    pub per_second: u32,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        Self {
            max_concurrent: DEFAULT_MAX_CONCURRENT_REVIEWS,
            per_second: DEFAULT_REVIEWS_PER_SECOND,
        }
    }
}

/// Permits for TokenReview calls: a semaphore (in flight) and a token
/// bucket (per second). Never waits: no permit is an immediate `503`.
#[derive(Debug)]
struct ReviewBudget {
    in_flight: Arc<tokio::sync::Semaphore>,
    bucket: Mutex<(f64, std::time::Instant)>,
    limits: ReviewLimits,
}

impl ReviewBudget {
    fn new(limits: ReviewLimits) -> Self {
        Self {
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            bucket: Mutex::new((
                f64::from(limits.per_second.max(1)),
                std::time::Instant::now(),
            )),
            limits,
        }
    }

    /// A permit for one review now, if the cap allows it.
    fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.in_flight.clone().try_acquire_owned().ok()?;
        let rate = f64::from(self.limits.per_second.max(1));
        let mut bucket = self.bucket.lock().ok()?;
        let now = std::time::Instant::now();
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return None;
        }
        *bucket = (tokens - 1.0, now);
        Some(permit)
    }
}

/// How an assertion check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AssertionOutcome {
    /// Valid for this subject.
    Valid(String),
    /// Not valid (or not valid for the audience).
    Refused,
    /// The apiserver could not be asked.
    Unavailable,
    /// Not asked: the source has no failures left (retry after this long).
    Limited(Duration),
    /// Not asked: the global TokenReview cap is reached.
    Busy,
}

impl AssertionCache {
    /// An empty cache.
    pub fn new(bounds: CacheBounds) -> Self {
        Self {
            valid: BoundedMap::new(bounds.entries),
            refused: BoundedMap::new(bounds.entries),
            bounds,
        }
    }

    /// Number of entries, valid and refused (expired ones included until evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.valid.len() + self.refused.len()
    }

    /// Record that `token` is valid for `audience` as `subject` until
    /// `until` (the benchmark pre-seeds the cache with this).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn seed(&self, audience: &str, token: &str, subject: &str, until: DateTime<Utc>) {
        self.valid.insert(
            assertion_key(audience, token),
            Valid {
                subject: subject.to_owned(),
            },
            until,
            Utc::now(),
        );
    }
}

/// Checks assertions: the cache first, else a TokenReview.
pub(crate) struct AssertionVerifier {
    cache: AssertionCache,
    budget: ReviewBudget,
    reviewer: Arc<dyn TokenReviewer>,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionVerifier")
            .field("cache", &self.cache.bounds)
            .field("reviews", &self.budget.limits)
            .finish_non_exhaustive()
    }
}

impl AssertionVerifier {
    /// A verifier asking `reviewer`, caching within `bounds`, with the
    /// default TokenReview cap.
    pub fn new(reviewer: Arc<dyn TokenReviewer>, bounds: CacheBounds) -> Self {
        Self::with_limits(reviewer, bounds, ReviewLimits::default())
    }

    /// A verifier asking `reviewer` at most as often as `limits` allow.
    pub fn with_limits(
        reviewer: Arc<dyn TokenReviewer>,
        bounds: CacheBounds,
        limits: ReviewLimits,
    ) -> Self {
        Self {
            cache: AssertionCache::new(bounds),
            budget: ReviewBudget::new(limits),
            reviewer,
        }
    }

    /// A verifier that refuses every assertion not seeded into its cache.
    pub(crate) fn refuse_all() -> Self {
        Self::new(Arc::new(RefuseAll), CacheBounds::default())
    }

    /// The cache (for seeding and inspection).
    #[cfg(feature = "bench")]
    pub fn cache(&self) -> &AssertionCache {
        &self.cache
    }

    /// Check `token` for `audience` at `now`; `claimed` is what the token
    /// says about itself (only its `exp` is used, and only once Kubernetes
    /// has confirmed the token). Before a TokenReview, `gate` may refuse
    /// (the caller's failure limit: `Err(retry_after)`), then the global
    /// cap. `observe` counts how it was decided.
    pub async fn verify(
        &self,
        token: &str,
        audience: &str,
        claimed: &ClaimedIdentity,
        now: DateTime<Utc>,
        gate: impl FnOnce() -> Result<(), Duration>,
        observe: impl Fn(&'static str),
    ) -> AssertionOutcome {
        let key = assertion_key(audience, token);
        if let Some(valid) = self.cache.valid.get(&key, now) {
            observe("cache_hit");
            return AssertionOutcome::Valid(valid.subject);
        }
        if self.cache.refused.get(&key, now).is_some() {
            observe("negative_cache_hit");
            return AssertionOutcome::Refused;
        }
        // An expired token is refused without asking.
        if claimed.exp.is_some_and(|exp| exp <= now) {
            observe("not_reviewed");
            return AssertionOutcome::Refused;
        }
        if let Err(retry) = gate() {
            observe("limited");
            return AssertionOutcome::Limited(retry);
        }
        let Some(_permit) = self.budget.try_acquire() else {
            observe("over_review_cap");
            return AssertionOutcome::Busy;
        };
        match self.reviewer.review(token, audience).await {
            Ok(Some(subject)) => {
                observe("review_ok");
                let until = cache_until(now, claimed.exp, self.cache.bounds.ttl);
                let valid = Valid {
                    subject: subject.clone(),
                };
                self.cache.valid.insert(key, valid, until, now);
                AssertionOutcome::Valid(subject)
            }
            Ok(None) => {
                observe("review_refused");
                let negative = self.cache.bounds.ttl.min(MAX_NEGATIVE_TTL);
                let until = now + chrono::Duration::from_std(negative).unwrap_or_default();
                self.cache.refused.insert(key, (), until, now);
                AssertionOutcome::Refused
            }
            Err(error) => {
                observe("review_error");
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "TokenReview failed; the assertion is neither accepted nor cached");
                AssertionOutcome::Unavailable
            }
        }
    }
}

impl TokenServer {
    /// Authenticate a client by its RFC 7523 assertion: find the credential
    /// (by `client_id`, else the only one binding the token's claimed
    /// ServiceAccount), then have Kubernetes confirm the token for that
    /// credential's audience and subject.
    pub(super) async fn authenticate_assertion(
        &self,
        assertion: &ClientAssertion,
        source: Option<std::net::IpAddr>,
        keys: &super::index::KeyMaterial,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CredentialEntry>, i64), OAuthError> {
        let claimed = claimed_identity(&assertion.token);
        // Failures count against the client id, else the claimed subject,
        // and the source, as for secrets (a valid assertion is never refused).
        let limiter_key = assertion
            .client_id
            .clone()
            .or_else(|| claimed.as_ref().map(|c| c.subject.clone()))
            .unwrap_or_default();
        let fail =
            || match self
                .inner
                .limiter
                .failed(&limiter_key, source, std::time::Instant::now())
            {
                Ok(()) => OAuthError::invalid_client(false),
                Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
            };
        let claimed = claimed.ok_or_else(fail)?;
        let index = self.inner.state.credentials();
        let client_id = match &assertion.client_id {
            Some(id) => id.as_str(),
            None => match index.by_subject(&claimed.subject) {
                [only] => only.as_str(),
                _ => {
                    self.inner.metrics.observe_assertion("not_reviewed");
                    return Err(fail());
                }
            },
        };
        let entry = index.get(client_id).cloned();
        let binding = entry.as_ref().and_then(|e| match &e.workload {
            Some(Ok(b)) if b.subject() == claimed.subject => Some(b.clone()),
            _ => None,
        });
        let (Some(entry), Some(binding)) = (entry, binding) else {
            self.inner.metrics.observe_assertion("not_reviewed");
            return Err(fail());
        };
        let audience = binding.audience_or(&self.inner.config.issuer);
        let metrics = &self.inner.metrics;
        if check_plausible(&assertion.token, audience, now).is_err() {
            metrics.observe_assertion("implausible");
            return Err(fail());
        }
        let limiter = &self.inner.limiter;
        // Whether the gate charged the source (only before a review).
        let reserved = std::sync::atomic::AtomicBool::new(false);
        let gate = || {
            let r = limiter.reserve_source(source, std::time::Instant::now());
            reserved.store(r.is_ok(), std::sync::atomic::Ordering::Relaxed);
            r
        };
        let outcome = self
            .inner
            .assertions
            .verify(&assertion.token, audience, &claimed, now, gate, |r| {
                metrics.observe_assertion(r)
            })
            .await;
        match outcome {
            AssertionOutcome::Valid(subject) if subject == binding.subject() => {
                if reserved.load(std::sync::atomic::Ordering::Relaxed) {
                    limiter.refund_source(source, std::time::Instant::now());
                }
                // The token carries the binding's current epoch; until the
                // controller has sealed one for this binding (just after a
                // switch) there is none to give.
                let Some(epoch) = entry.workload_epoch(&keys.verifier_key) else {
                    return Err(OAuthError::unavailable(
                        "the credential's workload-identity binding is not confirmed by the controller yet; retry",
                    ));
                };
                let usage = &self.inner.state.usage().recorder;
                usage.record(
                    &entry.client_id,
                    crate::core::workload::WORKLOAD_IDENTITY_VERSION,
                    now.timestamp(),
                );
                Ok((entry, epoch))
            }
            // After a review its failure is already charged to the source.
            AssertionOutcome::Valid(_) | AssertionOutcome::Refused
                if reserved.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                let now = std::time::Instant::now();
                Err(
                    match limiter.failed_after_reserve(&limiter_key, source, now) {
                        Ok(()) => OAuthError::invalid_client(false),
                        Err(retry) => OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64),
                    },
                )
            }
            AssertionOutcome::Valid(_) | AssertionOutcome::Refused => Err(fail()),
            AssertionOutcome::Unavailable => Err(OAuthError::unavailable(
                "the client assertion could not be checked; retry",
            )),
            AssertionOutcome::Limited(retry) => {
                Err(OAuthError::rate_limited(retry.as_secs_f64().ceil() as u64))
            }
            AssertionOutcome::Busy => Err(OAuthError::unavailable(
                "too many client assertions are being checked; retry",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Accepts exactly one token, counting the calls.
    struct OneToken {
        token: &'static str,
        calls: AtomicUsize,
    }

    impl TokenReviewer for OneToken {
        fn review<'a>(
            &'a self,
            token: &'a str,
            audience: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, ReviewError>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let ok = token == self.token && audience == "aud";
            Box::pin(async move { Ok(ok.then(|| "system:serviceaccount:a:b".to_owned())) })
        }
    }

    fn claimed(exp: Option<i64>) -> ClaimedIdentity {
        ClaimedIdentity {
            subject: "system:serviceaccount:a:b".into(),
            exp: exp.and_then(|e| DateTime::from_timestamp(e, 0)),
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    /// A gate that never refuses.
    fn ok() -> Result<(), Duration> {
        Ok(())
    }

    #[tokio::test]
    async fn reviews_once_then_serves_from_the_cache_within_its_bound() {
        let reviewer = Arc::new(OneToken {
            token: "good",
            calls: AtomicUsize::new(0),
        });
        let bounds = CacheBounds {
            ttl: Duration::from_secs(30),
            entries: 100,
        };
        let v = AssertionVerifier::new(reviewer.clone(), bounds);
        let c = claimed(Some(1_000));
        let valid = AssertionOutcome::Valid("system:serviceaccount:a:b".into());
        assert_eq!(
            v.verify("good", "aud", &c, at(100), ok, |_| {}).await,
            valid
        );
        assert_eq!(
            v.verify("good", "aud", &c, at(129), ok, |_| {}).await,
            valid
        );
        assert_eq!(
            reviewer.calls.load(Ordering::Relaxed),
            1,
            "second was a hit"
        );
        // The bound passed: asked again.
        assert_eq!(
            v.verify("good", "aud", &c, at(131), ok, |_| {}).await,
            valid
        );
        assert_eq!(reviewer.calls.load(Ordering::Relaxed), 2);
        // Another audience is another review (and refused).
        assert_eq!(
            v.verify("good", "other", &c, at(131), ok, |_| {}).await,
            AssertionOutcome::Refused
        );
        // The token's exp bounds the entry below the TTL.
        let short = claimed(Some(200));
        v.verify("good", "aud", &short, at(190), ok, |_| {}).await;
        let calls = reviewer.calls.load(Ordering::Relaxed);
        assert_eq!(
            v.verify("good", "aud", &short, at(201), ok, |_| {}).await,
            AssertionOutcome::Refused,
            "expired: refused without a review"
        );
        assert_eq!(reviewer.calls.load(Ordering::Relaxed), calls);
    }

    #[tokio::test]
    async fn refusals_are_cached_briefly() {
        let reviewer = Arc::new(OneToken {
            token: "good",
            calls: AtomicUsize::new(0),
        });
        let v = AssertionVerifier::new(reviewer.clone(), CacheBounds::default());
        let c = claimed(Some(10_000));
        for t in [100, 101] {
            assert_eq!(
                v.verify("bad", "aud", &c, at(t), ok, |_| {}).await,
                AssertionOutcome::Refused
            );
        }
        assert_eq!(reviewer.calls.load(Ordering::Relaxed), 1);
        v.verify("bad", "aud", &c, at(103), ok, |_| {}).await;
        assert_eq!(
            reviewer.calls.load(Ordering::Relaxed),
            2,
            "negative entry expired after 2 s"
        );
    }

    #[test]
    fn the_cache_is_bounded_and_holds_no_token() {
        let cache = AssertionCache::new(CacheBounds {
            ttl: Duration::from_secs(30),
            entries: 16,
        });
        let until = Utc::now() + chrono::Duration::seconds(60);
        for i in 0..100 {
            cache.seed("aud", &format!("token-{i}"), "s", until);
            assert!(cache.len() <= 16);
        }
        let dump = format!("{:?}", cache.valid.entries.lock().unwrap());
        assert!(!dump.contains("token-"));
    }

    #[test]
    fn client_assertion_parsing_table() {
        use super::super::form::AuthMethod;
        let form = |s: &str| Form::parse(s.as_bytes()).unwrap();
        let t = "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
        let got = client_assertion(&form(&format!("{t}&client_assertion=x.y.z")), None)
            .unwrap()
            .unwrap();
        assert_eq!(got.client_id, None);
        assert_eq!(got.token, "x.y.z");
        assert!(!format!("{got:?}").contains("x.y.z"));
        assert!(
            client_assertion(&form("grant_type=client_credentials"), None)
                .unwrap()
                .is_none()
        );
        let basic = ClientCredentials {
            client_id: "a".into(),
            client_secret: "b".into(),
            method: AuthMethod::Basic,
        };
        let bad = [
            (None, t.to_owned()),
            (None, "client_assertion=x.y.z".to_owned()),
            (
                None,
                "client_assertion_type=saml&client_assertion=x".to_owned(),
            ),
            (None, format!("{t}&client_assertion=x.y.z&client_secret=s")),
            (Some(&basic), format!("{t}&client_assertion=x.y.z")),
        ];
        for (creds, body) in bad {
            let e = client_assertion(&form(&body), creds).unwrap_err();
            assert_eq!(e.code, "invalid_request", "{body}");
        }
    }
}
