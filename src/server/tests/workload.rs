//! Workload identity at the handlers (`oneshot`): what reaches the
//! TokenReview API (a counting reviewer stands in for it) and what the
//! audit log and introspection make of assertion-authenticated requests.

use super::*;
use crate::crd::WorkloadIdentity;
use crate::server::assertion::{AssertionVerifier, CacheBounds, ReviewError, TokenReviewer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const ASSERTION: &str =
    "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

/// The TokenReview API as the tests see it: valid tokens by subject,
/// every call counted, optionally slow.
#[derive(Default)]
struct Reviewer {
    valid: Mutex<BTreeMap<String, String>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Option<Duration>,
}

impl Reviewer {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenReviewer for Reviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        _audience: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ReviewError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(self.valid.lock().unwrap().get(token).cloned())
        })
    }
}

/// A service-account-token-shaped JWT with these header and payload
/// fields (the signature is junk: only the reviewer decides validity).
fn assertion(header: Value, payload: Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

/// A plausible assertion for `sa` in [`NS`], unique by `n`.
fn plausible(sa: &str, n: usize) -> String {
    let now = Utc::now().timestamp();
    assertion(
        serde_json::json!({ "alg": "RS256", "kid": "k1" }),
        serde_json::json!({
            "iss": "https://kubernetes.default.svc",
            "sub": format!("system:serviceaccount:{NS}:{sa}"),
            "aud": [ISSUER],
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "jti": format!("forged-{n}"),
        }),
    )
}

fn world_with(reviewer: Arc<Reviewer>, bounds: CacheBounds) -> World {
    World::with_assertions(Arc::new(AssertionVerifier::new(reviewer, bounds)))
}

impl World {
    /// A workload-identity credential binding core ServiceAccount `sa`,
    /// with the sealed epoch the controller writes; its client id.
    fn workload(&mut self, name: &str, sa: &str) -> String {
        let id = self
            .credential(
                name,
                M2MCredentialSpec {
                    service_account_name: "ci-bot".into(),
                    workload_identity: Some(WorkloadIdentity {
                        kubernetes_service_account: sa.into(),
                        audience: None,
                        allow_default_service_account: false,
                    }),
                    ..Default::default()
                },
            )
            .id;
        self.set_epoch(name, sa, 2);
        id
    }

    /// Write `status.workloadIdentity` of `name` as the controller does:
    /// binding `sa` at `epoch`, sealed.
    fn set_epoch(&mut self, name: &str, sa: &str, epoch: i64) {
        let cred = self.cred_mut(name).clone();
        let mut status = crate::crd::WorkloadIdentityStatus {
            subject: format!("system:serviceaccount:{NS}:{sa}"),
            audience: ISSUER.into(),
            epoch,
            seal: None,
        };
        let sealed = self.sealed(&cred, crate::core::workload::epoch_verifier(&status));
        status.seal = sealed.seal;
        self.cred_mut(name)
            .status
            .as_mut()
            .unwrap()
            .workload_identity = Some(status);
        self.sync();
    }

    /// A client_credentials request authenticated by `token` from `ip`.
    async fn assert_from(
        &self,
        ip: &str,
        token: &str,
        client_id: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut body =
            format!("grant_type=client_credentials&{ASSERTION}&client_assertion={token}");
        if let Some(id) = client_id {
            body.push_str(&format!("&client_id={}", urlencoding(id)));
        }
        let mut req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        self.call(req).await
    }
}

/// Percent-encode everything but unreserved characters.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Junk that merely names a bound ServiceAccount never reaches the
/// apiserver: a symmetric or missing `alg`, the wrong or no `aud`, no
/// `exp`, a lifetime no Kubernetes token has, a malformed signature.
#[tokio::test]
async fn implausible_assertions_are_refused_before_any_token_review() {
    let reviewer = Arc::new(Reviewer::default());
    let mut world = world_with(reviewer.clone(), CacheBounds::default());
    let client_id = world.workload("uploads", "uploader");
    let now = Utc::now().timestamp();
    let sub = format!("system:serviceaccount:{NS}:uploader");
    let rs256 = serde_json::json!({ "alg": "RS256" });
    let good = serde_json::json!({ "sub": sub, "aud": [ISSUER], "exp": now + 600, "iat": now });
    let with = |k: &str, v: Value| {
        let mut p = good.clone();
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v;
        }
        p
    };
    let junk = [
        assertion(serde_json::json!({ "alg": "HS256" }), good.clone()),
        assertion(serde_json::json!({ "alg": "none" }), good.clone()),
        assertion(serde_json::json!({}), good.clone()),
        assertion(
            rs256.clone(),
            with("aud", serde_json::json!(["https://elsewhere"])),
        ),
        assertion(rs256.clone(), with("aud", Value::Null)),
        assertion(rs256.clone(), with("exp", Value::Null)),
        assertion(rs256.clone(), with("iat", Value::Null)),
        assertion(
            rs256.clone(),
            with("exp", serde_json::json!(now + 10 * 365 * 86_400)),
        ),
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(rs256.to_string()),
            URL_SAFE_NO_PAD.encode(good.to_string())
        ),
        format!(
            "{}.{}.!!",
            URL_SAFE_NO_PAD.encode(rs256.to_string()),
            URL_SAFE_NO_PAD.encode(good.to_string())
        ),
    ];
    for (i, token) in junk.iter().enumerate() {
        // A fresh source each time: the failure limit is not what stops them.
        let r = world.assert_from(&format!("10.9.0.{i}"), token, None).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    assert_eq!(reviewer.calls(), 0, "junk reached the TokenReview API");
    // The control: a plausible one is reviewed (with its client id: the
    // junk above used up the failures of the subject it claimed).
    let r = world
        .assert_from("10.9.1.1", &plausible("uploader", 0), Some(&client_id))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    assert_eq!(reviewer.calls(), 1);
}

/// One source flooding plausible forgeries costs the apiserver at most the
/// failure burst, not one TokenReview per request; a token verified before
/// the flood keeps working from the cache.
#[tokio::test]
async fn a_flood_of_forged_assertions_is_limited_before_the_token_review() {
    let reviewer = Arc::new(Reviewer::default());
    let mut world = world_with(reviewer.clone(), CacheBounds::default());
    world.workload("uploads", "uploader");
    let real = plausible("uploader", 1_000_000);
    reviewer
        .valid
        .lock()
        .unwrap()
        .insert(real.clone(), format!("system:serviceaccount:{NS}:uploader"));
    assert_eq!(
        world.assert_from("10.0.0.1", &real, None).await.0,
        StatusCode::OK
    );
    let before = reviewer.calls();
    let mut limited = 0;
    for n in 0..200 {
        let (status, _, body) = world
            .assert_from("10.6.6.6", &plausible("uploader", n), None)
            .await;
        match status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("{other}: {body}"),
        }
    }
    let reviews = reviewer.calls() - before;
    assert!(
        reviews <= 11,
        "200 forged assertions from one source made {reviews} TokenReviews"
    );
    assert!(limited >= 189, "{limited} answered 429");
    assert_eq!(
        world.assert_from("10.0.0.1", &real, None).await.0,
        StatusCode::OK
    );
    // A real token not seen before, from another source: reviewed and accepted.
    let fresh = plausible("uploader", 2_000_000);
    reviewer.valid.lock().unwrap().insert(
        fresh.clone(),
        format!("system:serviceaccount:{NS}:uploader"),
    );
    let (status, _, body) = world.assert_from("10.0.0.2", &fresh, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// However many sources and identities a flood uses, the TokenReviews in
/// flight and per second stay under the global cap; what is over it is
/// `503 temporarily_unavailable` with `Retry-After`, not a review.
#[tokio::test]
async fn token_reviews_are_capped_globally_whatever_the_sources() {
    let reviewer = Arc::new(Reviewer {
        delay: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let mut world = world_with(reviewer.clone(), CacheBounds::default());
    let sas: Vec<String> = (0..200).map(|i| format!("sa-{i}")).collect();
    for sa in &sas {
        world.workload(&format!("wi-{sa}"), sa);
    }
    let world = Arc::new(world);
    let started = std::time::Instant::now();
    let requests = sas.iter().enumerate().map(|(i, sa)| {
        let world = world.clone();
        let token = plausible(sa, i);
        async move {
            let ip = format!("10.{}.{}.1", i / 200, i % 200);
            world.assert_from(&ip, &token, None).await
        }
    });
    let answers = futures::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let busy = answers
        .iter()
        .filter(|(s, h, _)| {
            *s == StatusCode::SERVICE_UNAVAILABLE && h.contains_key(header::RETRY_AFTER)
        })
        .count();
    let max = reviewer.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max <= crate::core::workload::DEFAULT_MAX_CONCURRENT_REVIEWS,
        "{max} TokenReviews in flight at once"
    );
    let calls = reviewer.calls();
    let bound =
        crate::core::workload::DEFAULT_REVIEWS_PER_SECOND as f64 * (elapsed.as_secs_f64() + 1.0);
    assert!(
        (calls as f64) <= bound,
        "{calls} TokenReviews in {elapsed:?} (bound {bound})"
    );
    assert_eq!(
        busy + calls,
        answers.len(),
        "every request is a review or a 503"
    );
}

/// Refusals are cached apart from valid results: a flood of refused
/// assertions never evicts a valid one (which would cost a TokenReview
/// per request for a legitimate pod).
#[tokio::test]
async fn refused_assertions_never_evict_valid_ones_from_the_cache() {
    let reviewer = Arc::new(Reviewer::default());
    let bounds = CacheBounds {
        ttl: Duration::from_secs(30),
        entries: 8,
    };
    let mut world = world_with(reviewer.clone(), bounds);
    let sas: Vec<String> = (0..40).map(|i| format!("sa-{i}")).collect();
    for sa in &sas {
        world.workload(&format!("wi-{sa}"), sa);
    }
    world.workload("uploads", "uploader");
    let real = plausible("uploader", 1_000_000);
    reviewer
        .valid
        .lock()
        .unwrap()
        .insert(real.clone(), format!("system:serviceaccount:{NS}:uploader"));
    assert_eq!(
        world.assert_from("10.0.0.1", &real, None).await.0,
        StatusCode::OK
    );
    for (i, sa) in sas.iter().enumerate() {
        let r = world
            .assert_from(&format!("10.1.{i}.1"), &plausible(sa, i), None)
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let before = reviewer.calls();
    assert_eq!(
        world.assert_from("10.0.0.1", &real, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        reviewer.calls(),
        before,
        "the valid result was evicted by refusals"
    );
}

/// The workload-identity path logs a presented `client_id` as the secret
/// path does: a client secret sent as `client_id` shows as a short hash,
/// and a `client_id` carrying a newline cannot forge an audit line in the
/// text format (every audit field is escaped).
#[tokio::test]
async fn the_audit_log_of_assertions_shows_no_secret_and_cannot_be_forged() {
    let (logs, _guard) = LogBuffer::capture();
    let reviewer = Arc::new(Reviewer::default());
    let mut world = world_with(reviewer, CacheBounds::default());
    world.workload("uploads", "uploader");
    let secret_client = world.simple("secrets");
    let token = plausible("uploader", 7);
    let r = world
        .assert_from("10.0.0.1", &token, Some(&secret_client.secret))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    let forged = "x\n2026-12-02T01:00:00.000000Z  INFO audit: token issued event=\"token\" \
                  outcome=\"ok\" client_id=m2mc_admin namespace=kube-system scope=admin:all";
    let r = world.assert_from("10.0.0.2", &token, Some(forged)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    let text = logs.text();
    assert!(
        !text.contains(&secret_client.secret[5..]),
        "secret in the log:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.contains("token issued")),
        "a forged audit line:\n{text}"
    );
    assert_eq!(
        text.matches("client_id=unknown:sha256:").count(),
        2,
        "{text}"
    );
}

/// Credential `uploads` bound to `uploader` at epoch 2, a resource server,
/// a valid assertion for the binding and the token it got.
async fn epoch_world() -> (World, Client, String, String) {
    let reviewer = Arc::new(Reviewer::default());
    let mut world = world_with(reviewer.clone(), CacheBounds::default());
    let rs = world.simple("resource-server");
    world.workload("uploads", "uploader");
    let real = plausible("uploader", 1);
    reviewer
        .valid
        .lock()
        .unwrap()
        .insert(real.clone(), format!("system:serviceaccount:{NS}:uploader"));
    let (status, _, body) = world.assert_from("10.0.0.1", &real, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    (world, rs, real, token)
}

/// A binding removed and re-added before the controller looked (two spec
/// generations it never saw) leaves the old epoch in the status, which the
/// controller will renew: until it has, that epoch is honoured nowhere, so
/// the tokens of before the removal do not revive in between.
#[tokio::test]
async fn an_epoch_behind_unseen_generations_revives_nothing() {
    let (mut world, rs, real, token) = epoch_world().await;
    assert!(world.active(&rs, &token).await);
    // One spec edit the controller has not seen yet (a scope change, say)
    // keeps the epoch: the controller keeps it too.
    world.cred_mut("uploads").metadata.generation = Some(2);
    world.sync();
    assert!(
        world.active(&rs, &token).await,
        "one unseen edit dropped the epoch"
    );
    // Removed and re-added: two generations unseen.
    world.cred_mut("uploads").metadata.generation = Some(3);
    world.sync();
    assert!(
        !world.active(&rs, &token).await,
        "a token of before the removal revived"
    );
    let (status, _, body) = world.assert_from("10.0.0.1", &real, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The controller catches up with a new epoch: tokens again, the old one stays inactive.
    world
        .cred_mut("uploads")
        .status
        .as_mut()
        .unwrap()
        .observed_generation = Some(3);
    world.set_epoch("uploads", "uploader", 3);
    let (status, _, body) = world.assert_from("10.0.0.1", &real, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!world.active(&rs, &token).await);
}

/// A workload-identity token carries its binding's epoch as `m2m_sv` and
/// is active only while that epoch is current and sealed.
#[tokio::test]
async fn workload_identity_tokens_are_active_only_in_their_epoch() {
    let (mut world, rs, real, token) = epoch_world().await;
    let claims = decode_with_jwks(&world, &token, SigningAlg::Es256).await;
    assert_eq!(claims["m2m_sv"], 2);
    assert!(world.active(&rs, &token).await);
    // A new epoch (the binding switched away and back): inactive.
    world.set_epoch("uploads", "uploader", 5);
    assert!(!world.active(&rs, &token).await);
    // An epoch that is not sealed is no epoch: nothing is issued.
    world
        .cred_mut("uploads")
        .status
        .as_mut()
        .unwrap()
        .workload_identity
        .as_mut()
        .unwrap()
        .epoch = 2;
    world.sync();
    let (status, _, body) = world.assert_from("10.0.0.1", &real, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        !world.active(&rs, &token).await,
        "a forged epoch revived it"
    );
}
