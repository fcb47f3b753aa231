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
//! Before any API call the assertion must name (in its unverified `sub`) a
//! ServiceAccount that a credential binds, so unbound garbage never reaches
//! the apiserver. Every failure is the same `401 invalid_client`.

use super::TokenServer;
use super::error::OAuthError;
use super::form::{ClientCredentials, Form};
use super::index::CredentialEntry;
use crate::core::workload::{
    ClaimedIdentity, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL, JWT_BEARER_ASSERTION_TYPE,
    MAX_NEGATIVE_TTL, assertion_key, cache_until, claimed_identity,
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

#[derive(Debug, Clone)]
enum Cached {
    Valid {
        subject: String,
        until: DateTime<Utc>,
    },
    Refused {
        until: DateTime<Utc>,
    },
}

impl Cached {
    fn until(&self) -> DateTime<Utc> {
        match self {
            Self::Valid { until, .. } | Self::Refused { until } => *until,
        }
    }
}

/// Bounds of the assertion cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheBounds {
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

/// TokenReview results by SHA-256 of (audience, token), bounded in time and size.
#[derive(Debug)]
pub(crate) struct AssertionCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
    bounds: CacheBounds,
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
}

impl AssertionCache {
    /// An empty cache.
    pub fn new(bounds: CacheBounds) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            bounds,
        }
    }

    fn lookup(&self, key: &[u8; 32], now: DateTime<Utc>) -> Option<Cached> {
        let entries = self.entries.lock().ok()?;
        entries.get(key).filter(|c| c.until() > now).cloned()
    }

    fn insert(&self, key: [u8; 32], value: Cached, now: DateTime<Utc>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.bounds.entries && !entries.contains_key(&key) {
            entries.retain(|_, c| c.until() > now);
            if entries.len() >= self.bounds.entries {
                let drop = (self.bounds.entries / 8).max(1);
                let victims: Vec<[u8; 32]> = entries.keys().take(drop).copied().collect();
                for k in victims {
                    entries.remove(&k);
                }
            }
        }
        if self.bounds.entries > 0 {
            entries.insert(key, value);
        }
    }

    /// Number of entries (expired ones included until evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Record that `token` is valid for `audience` as `subject` until
    /// `until` (the benchmark pre-seeds the cache with this).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn seed(&self, audience: &str, token: &str, subject: &str, until: DateTime<Utc>) {
        self.insert(
            assertion_key(audience, token),
            Cached::Valid {
                subject: subject.to_owned(),
                until,
            },
            Utc::now(),
        );
    }
}

/// Checks assertions: the cache first, else a TokenReview.
pub(crate) struct AssertionVerifier {
    cache: AssertionCache,
    reviewer: Arc<dyn TokenReviewer>,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionVerifier")
            .field("cache", &self.cache.bounds)
            .finish_non_exhaustive()
    }
}

impl AssertionVerifier {
    /// A verifier asking `reviewer`, caching within `bounds`.
    pub fn new(reviewer: Arc<dyn TokenReviewer>, bounds: CacheBounds) -> Self {
        Self {
            cache: AssertionCache::new(bounds),
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
    /// has confirmed the token). `observe` counts how it was decided.
    pub async fn verify(
        &self,
        token: &str,
        audience: &str,
        claimed: &ClaimedIdentity,
        now: DateTime<Utc>,
        observe: impl Fn(&'static str),
    ) -> AssertionOutcome {
        let key = assertion_key(audience, token);
        match self.cache.lookup(&key, now) {
            Some(Cached::Valid { subject, .. }) => {
                observe("cache_hit");
                return AssertionOutcome::Valid(subject);
            }
            Some(Cached::Refused { .. }) => {
                observe("negative_cache_hit");
                return AssertionOutcome::Refused;
            }
            None => {}
        }
        // An expired token is refused without asking.
        if claimed.exp.is_some_and(|exp| exp <= now) {
            observe("not_reviewed");
            return AssertionOutcome::Refused;
        }
        match self.reviewer.review(token, audience).await {
            Ok(Some(subject)) => {
                observe("review_ok");
                let until = cache_until(now, claimed.exp, self.cache.bounds.ttl);
                self.cache.insert(
                    key,
                    Cached::Valid {
                        subject: subject.clone(),
                        until,
                    },
                    now,
                );
                AssertionOutcome::Valid(subject)
            }
            Ok(None) => {
                observe("review_refused");
                let negative = self.cache.bounds.ttl.min(MAX_NEGATIVE_TTL);
                let until = now + chrono::Duration::from_std(negative).unwrap_or_default();
                self.cache.insert(key, Cached::Refused { until }, now);
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
        now: DateTime<Utc>,
    ) -> Result<Arc<CredentialEntry>, OAuthError> {
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
        let outcome = self
            .inner
            .assertions
            .verify(&assertion.token, audience, &claimed, now, |r| {
                metrics.observe_assertion(r)
            })
            .await;
        match outcome {
            AssertionOutcome::Valid(subject) if subject == binding.subject() => {
                let usage = &self.inner.state.usage().recorder;
                usage.record(
                    &entry.client_id,
                    crate::core::workload::WORKLOAD_IDENTITY_VERSION,
                    now.timestamp(),
                );
                Ok(entry)
            }
            AssertionOutcome::Valid(_) | AssertionOutcome::Refused => Err(fail()),
            AssertionOutcome::Unavailable => Err(OAuthError::unavailable(
                "the client assertion could not be checked; retry",
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
        assert_eq!(v.verify("good", "aud", &c, at(100), |_| {}).await, valid);
        assert_eq!(v.verify("good", "aud", &c, at(129), |_| {}).await, valid);
        assert_eq!(
            reviewer.calls.load(Ordering::Relaxed),
            1,
            "second was a hit"
        );
        // The bound passed: asked again.
        assert_eq!(v.verify("good", "aud", &c, at(131), |_| {}).await, valid);
        assert_eq!(reviewer.calls.load(Ordering::Relaxed), 2);
        // Another audience is another review (and refused).
        assert_eq!(
            v.verify("good", "other", &c, at(131), |_| {}).await,
            AssertionOutcome::Refused
        );
        // The token's exp bounds the entry below the TTL.
        let short = claimed(Some(200));
        v.verify("good", "aud", &short, at(190), |_| {}).await;
        let calls = reviewer.calls.load(Ordering::Relaxed);
        assert_eq!(
            v.verify("good", "aud", &short, at(201), |_| {}).await,
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
                v.verify("bad", "aud", &c, at(t), |_| {}).await,
                AssertionOutcome::Refused
            );
        }
        assert_eq!(reviewer.calls.load(Ordering::Relaxed), 1);
        v.verify("bad", "aud", &c, at(103), |_| {}).await;
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
        let dump = format!("{:?}", cache.entries.lock().unwrap());
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
