//! API tokens at the handlers (`oneshot`): introspection, RFC 8693 token
//! exchange, its strict errors, and API tokens and client secrets never
//! standing in for each other.

use super::*;
use crate::core::api_token;
use crate::crd::CredentialType;

const EXCHANGE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";

impl World {
    /// An `APIToken` credential with a live token, as the controller leaves
    /// it: ending at `expires_at`, else rotated every 720h.
    fn api_token(&mut self, name: &str, expires_at: Option<DateTime<Utc>>) -> String {
        let uid = uuid::Uuid::new_v4().to_string();
        let mut cred = M2MCredential {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                uid: Some(uid.clone()),
                ..Default::default()
            },
            spec: M2MCredentialSpec {
                service_account_name: "ci-bot".into(),
                type_: CredentialType::ApiToken,
                expires_at,
                rotation: crate::crd::CredentialRotation {
                    every: expires_at.is_none().then(|| "720h".into()),
                    grace_period: None,
                    ..Default::default()
                },
                ..Default::default()
            },
            status: Some(M2MCredentialStatus::default()),
        };
        let token = api_token::generate(&client_id_for_uid(&uid))
            .unwrap()
            .expose()
            .to_owned();
        let verifier = SecretVerifier {
            version: 1,
            digest: self.digest(&cred, 1, &token),
            not_after: None,
            seal: None,
        };
        cred.status.as_mut().unwrap().verifiers = vec![self.sealed(&cred, verifier)];
        self.credentials.push(cred);
        self.sync();
        token
    }

    /// Replace an API token (a rotation), the old one kept until `grace_end`.
    fn rotate_api_token(&mut self, name: &str, grace_end: Option<DateTime<Utc>>) -> String {
        let uid = self.cred_mut(name).metadata.uid.clone().unwrap();
        let token = api_token::generate(&client_id_for_uid(&uid))
            .unwrap()
            .expose()
            .to_owned();
        // World::rotate writes a client secret's digest; swap in the token's.
        self.rotate(name, grace_end);
        let cred = self.cred_mut(name).clone();
        let current = SecretVerifier {
            digest: self.digest(&cred, 2, &token),
            seal: None,
            ..cred.status.as_ref().unwrap().verifiers[0].clone()
        };
        let sealed = self.sealed(&cred, current);
        self.cred_mut(name).status.as_mut().unwrap().verifiers[0] = sealed;
        self.sync();
        token
    }

    async fn exchange(&self, body: &str) -> (StatusCode, HeaderMap, Value) {
        self.post("/oauth/token", &format!("{EXCHANGE}&{body}"), None)
            .await
    }

    async fn exchange_token(&self, token: &str, extra: &str) -> (StatusCode, HeaderMap, Value) {
        self.exchange(&format!(
            "subject_token={token}&subject_token_type={ACCESS_TOKEN_TYPE}{extra}"
        ))
        .await
    }
}

#[tokio::test]
async fn introspection_of_an_api_token_reports_its_grant() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let end = Utc::now() + chrono::Duration::days(30);
    let token = world.api_token("reports", Some(end));
    let info = world.introspect(&rs, &token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["scope"], "artifacts:read artifacts:write repo:read");
    assert_eq!(info["sub"], "m2m:team-a:ci-bot");
    assert_eq!(info["token_type"], "Bearer");
    assert_eq!(info["exp"], end.timestamp());
    let id = api_token::client_id_of(&token).unwrap();
    assert_eq!(info["client_id"], id.as_str());
    assert_eq!(info["iss"], ISSUER);
    // A token edited by one character, or forged with a valid checksum.
    let mut edited = token.clone().into_bytes();
    let i = token.len() - 10;
    edited[i] = if edited[i] == b'a' { b'b' } else { b'a' };
    let edited = String::from_utf8(edited).unwrap();
    let forged = api_token::generate(&id).unwrap().expose().to_owned();
    for bad in [edited.as_str(), forged.as_str()] {
        assert_eq!(
            world.introspect(&rs, bad).await,
            serde_json::json!({"active": false})
        );
    }
    // The caller must still authenticate.
    let (status, _, _) = world
        .post("/oauth/introspect", &format!("token={token}"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_api_token_is_exchanged_for_a_short_lived_jwt() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let token = world.api_token("reports", None);
    let resp = world.exchange_token(&token, "").await;
    let (status, headers, body) = &resp;
    assert_eq!(*status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "artifacts:read artifacts:write repo:read");
    let jwt = body["access_token"].as_str().unwrap();
    let claims = decode_with_jwks(&world, jwt, SigningAlg::Es256).await;
    assert_eq!(claims["sub"], "m2m:team-a:ci-bot");
    assert_eq!(
        claims["client_id"],
        api_token::client_id_of(&token).unwrap().as_str()
    );
    assert!(world.active(&rs, jwt).await);

    // The m2m token type works too; `scope` narrows.
    let (status, _, body) = world
        .exchange(&format!(
            "subject_token={token}&subject_token_type=urn%3Am2m.dev%3Aparams%3Aoauth%3Atoken-type%3Aapi-token&scope=repo%3Aread"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "repo:read");
    // Wider than the API token's scopes: invalid_scope.
    let resp = world.exchange_token(&token, "&scope=admin").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_scope");
    // An audience outside the credential's: invalid_target.
    let resp = world
        .exchange_token(&token, "&audience=https%3A%2F%2Felsewhere")
        .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_target");

    // Rotation without grace: the old token and the JWTs from it stop.
    let new = world.rotate_api_token("reports", None);
    assert!(!world.active(&rs, &token).await);
    assert!(!world.active(&rs, jwt).await);
    assert!(world.active(&rs, &new).await);
    let resp = world.exchange_token(&token, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, _, _) = world.exchange_token(&new, "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_replaced_token_works_until_its_grace_ends() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let old = world.api_token("reports", None);
    let end = Utc::now() + chrono::Duration::minutes(10);
    let new = world.rotate_api_token("reports", Some(end));
    let info = world.introspect(&rs, &old).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["exp"], end.timestamp(), "the grace end");
    assert!(world.active(&rs, &new).await);
}

#[tokio::test]
async fn an_expired_api_token_is_inactive_and_not_exchanged() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let token = world.api_token("reports", Some(Utc::now() - chrono::Duration::seconds(1)));
    assert!(!world.active(&rs, &token).await);
    let resp = world.exchange_token(&token, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        resp.2["error_description"]
            .as_str()
            .unwrap()
            .contains("Expired")
    );
}

/// RFC 8693 §2.2.2: a malformed exchange is `invalid_request`.
#[tokio::test]
async fn malformed_exchanges_are_invalid_requests() {
    let mut world = World::new(SigningAlg::Es256);
    let client = world.simple("uploads");
    let token = world.api_token("reports", None);
    let t = format!("subject_token={token}");
    let ty = format!("subject_token_type={ACCESS_TOKEN_TYPE}");
    let cases = [
        ("no subject_token", ty.clone()),
        ("no subject_token_type", t.clone()),
        (
            "unknown subject_token_type",
            format!("{t}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"),
        ),
        (
            "actor token",
            format!("{t}&{ty}&actor_token={token}&actor_token_type={ACCESS_TOKEN_TYPE}"),
        ),
        (
            "unsupported requested_token_type",
            format!(
                "{t}&{ty}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"
            ),
        ),
        ("repeated parameter", format!("{t}&{ty}&{ty}")),
        ("garbage", format!("subject_token=m2mt_nope&{ty}")),
    ];
    for (what, body) in cases {
        let resp = world.exchange(&body).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            !resp.2.to_string().contains(&token[20..]),
            "{what}: echoes the token"
        );
    }
    let (status, _, body) = world
        .post("/oauth/token", "grant_type=password", Some(&client))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");
    let (_, _, meta) = world
        .call(
            Request::get("/.well-known/oauth-authorization-server")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from(
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ))
    );
}

/// An API token is never a client secret, and a client secret never an API token.
#[tokio::test]
async fn api_tokens_and_client_secrets_do_not_stand_in_for_each_other() {
    let mut world = World::new(SigningAlg::Es256);
    let client = world.simple("uploads");
    let token = world.api_token("reports", None);
    let token_id = api_token::client_id_of(&token).unwrap();
    // The API token as the client secret of its own credential.
    let as_secret = Client {
        id: token_id.clone(),
        secret: token.clone(),
    };
    let resp = world.token(&as_secret, "").await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "invalid_client");
    let (status, _, _) = world
        .post(
            "/oauth/introspect",
            &format!("token={token}"),
            Some(&as_secret),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The API token as the client secret of another credential.
    let resp = world
        .token(
            &Client {
                id: client.id.clone(),
                secret: token.clone(),
            },
            "",
        )
        .await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "invalid_client");
    // A client secret as an API token: not exchanged, not active.
    let resp = world.exchange_token(&client.secret, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        world.introspect(&client, &client.secret).await["active"],
        false
    );
    // A JWT is not a subject token either.
    let jwt = world.access_token(&client).await;
    let resp = world.exchange_token(&jwt, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
}

/// The index refuses an API token without an end even before the
/// controller drops its verifiers.
#[tokio::test]
async fn an_api_token_without_an_end_never_works() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let token = world.api_token("reports", None);
    assert!(world.active(&rs, &token).await);
    world.cred_mut("reports").spec.rotation.every = None;
    world.sync();
    assert!(!world.active(&rs, &token).await);
    let resp = world.exchange_token(&token, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
}

/// Checking an API token costs the same keyed hashes whether it is
/// malformed, names no credential, names a client-secret credential, is
/// wrong, replaced (in grace) or right.
#[tokio::test]
async fn api_token_checks_do_equal_work() {
    let mut world = World::new(SigningAlg::Es256);
    let client = world.simple("uploads");
    let graced = world.api_token("reports", None);
    let rotated = world.rotate_api_token("reports", Some(Utc::now() + chrono::Duration::hours(1)));
    let current = world.api_token("other", None);
    let index = world.state.credentials();
    let now = Utc::now();
    // Seals are checked once per entry and key, before any request.
    for token in [&graced, &current] {
        let entry = super::super::api_token::entry_for(&index, token).unwrap();
        entry.authenticate(&world.key, "", now);
    }
    let count = |token: &str| {
        let k = CountingKey {
            key: &world.key,
            macs: std::cell::Cell::new(0),
            other_id: false,
        };
        let entry = super::super::api_token::entry_for(&index, token);
        let checked = entry
            .as_deref()
            .unwrap_or_else(|| super::super::index::unknown_client());
        let matched = checked.authenticate(&k, token, now);
        (k.macs.get(), matched.is_some() && entry.is_some())
    };
    let other_id = api_token::client_id_of(&current).unwrap();
    let wrong = api_token::generate(&other_id).unwrap().expose().to_owned();
    let unknown = api_token::generate("m2mc_0000")
        .unwrap()
        .expose()
        .to_owned();
    let on_client = api_token::generate(&client.id).unwrap().expose().to_owned();
    let cases = [
        ("malformed", "m2mt_nope".to_owned(), false),
        ("unknown lookup id", unknown, false),
        ("a client-secret credential's id", on_client, false),
        ("a client secret", client.secret.clone(), false),
        ("wrong token", wrong, false),
        ("replaced, in grace", graced, true),
        ("current after a rotation", rotated, true),
        ("current", current, true),
    ];
    let expected = super::super::secret_check::MAX_VERIFIERS;
    for (what, token, ok) in cases {
        assert_eq!(count(&token), (expected, ok), "{what}");
    }
}

/// A refused exchange leaves an audit line naming the client id the token
/// claims, never the token.
#[tokio::test]
async fn refused_exchanges_are_audited_without_the_token() {
    let (logs, _guard) = LogBuffer::capture();
    let mut world = World::new(SigningAlg::Es256);
    let token = world.api_token("reports", None);
    let id = api_token::client_id_of(&token).unwrap();
    let wrong = api_token::generate(&id).unwrap().expose().to_owned();
    let resp = world.exchange_token(&wrong, "").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, _, _) = world.exchange_token(&token, "").await;
    assert_eq!(status, StatusCode::OK);
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("token refused") && l.contains(&id) && l.contains("api_token")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("token issued") && l.contains(&id)),
        "{text}"
    );
    for t in [&token, &wrong] {
        assert!(
            !text.contains(&t[t.len() - 50..]),
            "a token reached the log"
        );
    }
}

/// Using an API token counts as using its credential (SPEC §8): a
/// successful introspection or exchange records the token's version for
/// the usage writer; a token that does not authenticate records nothing.
#[tokio::test]
async fn introspected_and_exchanged_api_tokens_record_usage() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let token = world.api_token("reports", None);
    let id = api_token::client_id_of(&token).unwrap();
    let used = |world: &World| -> Vec<i64> {
        world
            .state
            .usage()
            .recorder
            .snapshot(true)
            .into_iter()
            .filter(|(client, _)| *client == id)
            .flat_map(|(_, versions)| versions.into_keys())
            .collect()
    };
    let forged = api_token::generate(&id).unwrap().expose().to_owned();
    assert_eq!(world.introspect(&rs, &forged).await["active"], false);
    assert!(used(&world).is_empty(), "a forged token is no use");
    assert_eq!(world.introspect(&rs, &token).await["active"], true);
    assert_eq!(used(&world), vec![1]);

    let new = world.rotate_api_token("reports", None);
    let (status, _, body) = world.exchange_token(&new, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(used(&world), vec![1, 2]);
}

/// RFC 8693 §2.1: the client may authenticate as usual. A wrong client
/// authentication is `401 invalid_client`; a right one gets the subject's
/// token with an `act` claim naming the client (§4.1), never more than
/// the subject token allows, however much the client itself may hold.
#[tokio::test]
async fn an_exchange_with_client_authentication_names_the_actor() {
    let mut world = World::new(SigningAlg::Es256);
    world.account("broker", &["admin:all", "repo:read"]);
    let broker = world.credential(
        "broker",
        M2MCredentialSpec {
            service_account_name: "broker".into(),
            ..Default::default()
        },
    );
    let rs = world.simple("resource-server");
    let token = world.api_token("reports", None);
    let subject_id = api_token::client_id_of(&token).unwrap();
    let body = format!("{EXCHANGE}&subject_token={token}&subject_token_type={ACCESS_TOKEN_TYPE}");

    // HTTP Basic and client_secret_post.
    let post = format!(
        "{body}&client_id={}&client_secret={}",
        broker.id, broker.secret
    );
    for (how, resp) in [
        (
            "basic",
            world.post("/oauth/token", &body, Some(&broker)).await,
        ),
        ("post", world.post("/oauth/token", &post, None).await),
    ] {
        let (status, _, out) = &resp;
        assert_eq!(*status, StatusCode::OK, "{how}: {out}");
        let jwt = out["access_token"].as_str().unwrap();
        let claims = decode_with_jwks(&world, jwt, SigningAlg::Es256).await;
        assert_eq!(claims["sub"], "m2m:team-a:ci-bot", "{how}");
        assert_eq!(claims["client_id"], subject_id.as_str(), "{how}");
        assert_eq!(
            claims["act"],
            serde_json::json!({ "sub": "m2m:team-a:broker", "client_id": broker.id }),
            "{how}"
        );
        assert_eq!(claims["scope"], "artifacts:read artifacts:write repo:read");
        let info = world.introspect(&rs, jwt).await;
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["act"]["client_id"], broker.id.as_str());
    }
    // Never wider than the subject token: the broker's own scope is refused.
    let resp = world
        .post(
            "/oauth/token",
            &format!("{body}&scope=admin%3Aall"),
            Some(&broker),
        )
        .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_scope");
    // A wrong client secret is 401, whatever the subject token.
    let wrong = Client {
        id: broker.id.clone(),
        secret: rs.secret.clone(),
    };
    let resp = world.post("/oauth/token", &body, Some(&wrong)).await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(resp.1.contains_key(header::WWW_AUTHENTICATE));
    let resp = world
        .post(
            "/oauth/token",
            &format!("{body}&client_id={}&client_secret={}", broker.id, rs.secret),
            None,
        )
        .await;
    assert_error(&resp, StatusCode::UNAUTHORIZED, "invalid_client");
    // Without client authentication the exchange is as before: no act.
    let (status, _, out) = world.exchange_token(&token, "").await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let claims = decode_with_jwks(
        &world,
        out["access_token"].as_str().unwrap(),
        SigningAlg::Es256,
    )
    .await;
    assert!(claims.get("act").is_none(), "{claims}");
}

/// A JWT exchanged from an API token never outlives it (offline verifiers
/// see only `exp`): `exp` is capped at the credential's `expiresAt` and at
/// the grace end of a replaced token. And the API token may revoke the
/// JWTs exchanged from it (RFC 7009, authenticated by
/// `Authorization: Bearer <API token>`), no one else's.
#[tokio::test]
async fn exchanged_jwts_end_with_their_api_token_and_it_may_revoke_them() {
    let mut world = World::new(SigningAlg::Es256);
    let rs = world.simple("resource-server");
    let end = Utc::now() + chrono::Duration::minutes(10);
    let token = world.api_token("reports", Some(end));
    let (status, _, body) = world.exchange_token(&token, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jwt = body["access_token"].as_str().unwrap().to_owned();
    let claims = decode_with_jwks(&world, &jwt, SigningAlg::Es256).await;
    assert!(
        claims["exp"].as_i64().unwrap() <= end.timestamp(),
        "the JWT outlives its API token: exp {} > expiresAt {}",
        claims["exp"],
        end.timestamp()
    );
    assert!(body["expires_in"].as_i64().unwrap() <= 600, "{body}");

    // A replaced token in its grace period: capped at the grace end.
    let other = world.api_token("nightly", None);
    let grace_end = Utc::now() + chrono::Duration::minutes(5);
    world.rotate_api_token("nightly", Some(grace_end));
    let (status, _, body) = world.exchange_token(&other, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = decode_with_jwks(
        &world,
        body["access_token"].as_str().unwrap(),
        SigningAlg::Es256,
    )
    .await;
    assert!(
        claims["exp"].as_i64().unwrap() <= grace_end.timestamp(),
        "{claims}"
    );

    // RFC 7009 by the API token: another API token's revocation is a no-op,
    // the subject's own revokes.
    let stranger = world.api_token("stranger", None);
    let revoke = |bearer: String, jwt: String| {
        let req = Request::post("/oauth/revoke")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
            .body(Body::from(format!("token={jwt}")))
            .unwrap();
        world.call(req)
    };
    let (status, _, body) = revoke(stranger, jwt.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(world.active(&rs, &jwt).await, "a stranger revoked it");
    let (status, _, body) = revoke(token.clone(), jwt.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !world.active(&rs, &jwt).await,
        "still active after its API token revoked it"
    );
    // A Bearer that is no live API token is refused.
    let (status, _, _) = revoke("m2mt_bogus".into(), jwt.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
