//! The whole token endpoint (the production routes over the cluster-free
//! bench fixture: one credential, one signing key) on arbitrary requests.
//! Every answer must be a 2xx or a client error with an RFC 6749 JSON body;
//! never a 5xx, never a panic.
//!
//! Input: a route byte, a method byte, then
//! `<content-type>\n<authorization>\n<body>`. In the header and body,
//! `{ID}`, `{SECRET}`, `{BASIC}` (base64 of `id:secret`) and `{TOKEN}` (a
//! token the fixture issued) are replaced by real values, so the fuzzer gets
//! past authentication.
#![no_main]

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use m2m_operator::signing::SigningAlg;
use m2m_operator::server::bench::fixture;
use m2m_operator::server::router;
use std::sync::OnceLock;
use tower::ServiceExt;

const ROUTES: &[&str] = &[
    "/oauth/token",
    "/oauth/introspect",
    "/oauth/revoke",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
];
const METHODS: &[Method] = &[Method::POST, Method::GET, Method::PUT, Method::HEAD];

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    id: String,
    secret: String,
    basic: String,
    token: String,
}

fn fixture_once() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Paused clock: deliberate delays (failed-authentication padding,
        // rate-limit windows) advance instantly instead of costing real time.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let fx = fixture(SigningAlg::Es256).expect("bench fixture");
        let router = router(fx.server);
        let basic = STANDARD.encode(format!("{}:{}", fx.client_id, fx.client_secret));
        let token = rt.block_on(async {
            let req = Request::post("/oauth/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, format!("Basic {basic}"))
                .body(Body::from("grant_type=client_credentials"))
                .expect("request");
            let resp = router.clone().oneshot(req).await.expect("infallible");
            assert!(resp.status().is_success(), "the fixture issues tokens");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
            json["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned()
        });
        Fixture {
            rt,
            router,
            id: fx.client_id,
            secret: fx.client_secret,
            basic,
            token,
        }
    })
}

fn substitute(f: &Fixture, raw: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return raw.to_vec();
    };
    text.replace("{ID}", &f.id)
        .replace("{SECRET}", &f.secret)
        .replace("{BASIC}", &f.basic)
        .replace("{TOKEN}", &f.token)
        .into_bytes()
}

fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let [route, method, rest @ ..] = data else {
        return;
    };
    let f = fixture_once();
    let route = ROUTES[usize::from(*route) % ROUTES.len()];
    let method = METHODS[usize::from(*method) % METHODS.len()].clone();
    let (content_type, rest) = line(rest);
    let (authorization, body) = line(rest);
    let mut req = Request::builder().method(method.clone()).uri(route);
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::AUTHORIZATION, authorization),
    ] {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&substitute(f, value))
        {
            req = req.header(name, v);
        }
    }
    let req = req.body(Body::from(substitute(f, body))).expect("request");
    f.rt.block_on(async {
        let resp = f.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        assert!(!status.is_server_error(), "{method} {route}: {status}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        if status.is_client_error() && method != Method::HEAD {
            let json: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{method} {route}: {status} without a JSON body"));
            assert!(json["error"].is_string(), "{method} {route}: {json}");
        }
    });
});
