//! `kubectl m2m decode`: a JWT's header and claims, and its signature
//! checked with `jsonwebtoken` — the verifier resource servers use —
//! against a JWKS the caller trusts: `--jwks-url`, or the issuer this
//! cluster knows for the token's client (the `issuer` key of the Secret of
//! the credential whose `status.clientId` is the token's `client_id`, in
//! the namespace of `-n`/the context). Never the JWKS the token's own
//! `iss` names: whoever signs a token chooses its `iss`.
//!
//! Three outcomes, never confused: `verified by kid …` (exit 0); `INVALID`
//! (the key is unknown or the signature does not match: exit 1); `not
//! verified` (no trusted JWKS, or it could not be fetched, e.g. an
//! in-cluster issuer seen from a laptop: exit 1, the claims are still shown).

use super::cli::{DecodeArgs, GlobalArgs, OutputFormat};
use super::table::relative;
use super::{PluginError, error_chain, http_client, write_out};
use crate::signing::ring::ACCESS_TOKEN_TYP;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Serialize;
use serde_json::Value;
use std::io::{Read, Write};

/// The two readable parts of a compact JWS, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedJwt {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
}

/// Split and decode a compact JWS (`header.claims.signature`).
pub(crate) fn decode_unverified(token: &str) -> Result<DecodedJwt, PluginError> {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(PluginError::MalformedToken(format!(
            "expected 3 dot-separated parts, found {}",
            parts.len()
        )));
    }
    let part = |i: usize, what: &str| -> Result<Value, PluginError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(parts[i].trim_end_matches('='))
            .map_err(|e| {
                PluginError::MalformedToken(format!("the {what} is not base64url: {e}"))
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::MalformedToken(format!("the {what} is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(PluginError::MalformedToken(format!(
                "the {what} is not a JSON object"
            )));
        }
        Ok(value)
    };
    Ok(DecodedJwt {
        header: part(0, "header")?,
        claims: part(1, "claims part")?,
    })
}

/// The result of checking a signature.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "camelCase")]
pub(crate) enum SignatureCheck {
    /// A key of the JWKS verifies it.
    #[serde(rename_all = "camelCase")]
    Verified {
        /// The key that signed it.
        kid: String,
        /// Its algorithm.
        alg: String,
        /// Where the JWKS came from.
        jwks_url: String,
    },
    /// No key of the JWKS verifies it.
    #[serde(rename_all = "camelCase")]
    Invalid {
        /// Why.
        reason: String,
        /// Where the JWKS came from.
        jwks_url: String,
    },
    /// The JWKS could not be fetched or there is nowhere to fetch it from.
    #[serde(rename_all = "camelCase")]
    NotChecked {
        /// Why.
        reason: String,
    },
}

impl SignatureCheck {
    /// The `signature:` line.
    pub fn line(&self) -> String {
        match self {
            Self::Verified { kid, alg, jwks_url } => {
                format!("signature: verified by kid {kid} ({alg}) from {jwks_url}")
            }
            Self::Invalid { reason, jwks_url } => {
                format!("signature: INVALID ({reason}; JWKS {jwks_url})")
            }
            Self::NotChecked { reason } => format!("signature: NOT VERIFIED ({reason})"),
        }
    }
}

/// Verify `token` against a JWKS: the key named by the header's `kid`, the
/// header's algorithm. Expiry and audience are not checked here (they are
/// shown, not judged). Returns the kid and algorithm, or why it failed.
pub(crate) fn verify_against(token: &str, jwks: &JwkSet) -> Result<(String, String), String> {
    let header = jsonwebtoken::decode_header(token.trim())
        .map_err(|e| format!("the header does not parse or names an unsupported alg: {e}"))?;
    let kid = header.kid.clone().ok_or("the header has no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("no key with kid {kid} in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {kid} is unusable: {e}"))?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let alg = format!("{:?}", header.alg);
    match jsonwebtoken::decode::<Value>(token.trim(), &key, &validation) {
        Ok(_) => Ok((kid, alg)),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                Err(format!("the signature does not match key {kid}"))
            }
            _ => Err(format!("key {kid} ({alg}) does not verify it: {e}")),
        },
    }
}

/// `<iss>/.well-known/jwks.json` of a trusted issuer (`claims["iss"]`).
pub(crate) fn default_jwks_url(claims: &Value) -> Option<String> {
    let iss = claims.get("iss")?.as_str()?.trim_end_matches('/');
    (!iss.is_empty()).then(|| format!("{iss}/.well-known/jwks.json"))
}

/// Fetch a JWKS document.
pub(crate) async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = http.get(url).send().await.map_err(|e| error_chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {} from {url}", response.status().as_u16()));
    }
    let body = response.bytes().await.map_err(|e| error_chain(&e))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url} is not a JWKS: {e}"))
}

/// Check `token`'s signature against the trusted JWKS at `jwks_url`;
/// without one, nothing is verified (the token's own `iss` is not trusted).
pub(crate) async fn check_signature(token: &str, jwks_url: Option<&str>) -> SignatureCheck {
    let Some(url) = jwks_url.map(str::to_owned) else {
        return SignatureCheck::NotChecked {
            reason: "no trusted JWKS: pass --jwks-url, or -n the namespace of the credential the token was issued to (its Secret names the issuer)".into(),
        };
    };
    let http = match http_client() {
        Ok(h) => h,
        Err(e) => {
            return SignatureCheck::NotChecked {
                reason: e.to_string(),
            };
        }
    };
    match fetch_jwks(&http, &url).await {
        Err(reason) => SignatureCheck::NotChecked {
            reason: format!(
                "JWKS unreachable: {url}: {reason}; pass --jwks-url, e.g. http://127.0.0.1:8080/.well-known/jwks.json after kubectl port-forward to the token server"
            ),
        },
        Ok(jwks) => match verify_against(token, &jwks) {
            Ok((kid, alg)) => SignatureCheck::Verified {
                kid,
                alg,
                jwks_url: url,
            },
            Err(reason) => SignatureCheck::Invalid {
                reason,
                jwks_url: url,
            },
        },
    }
}

fn claim_time(claims: &Value, name: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(claims.get(name)?.as_i64()?, 0)
}

/// The text `decode` prints: header, claims, times, signature.
pub(crate) fn render_text(
    decoded: &DecodedJwt,
    check: &SignatureCheck,
    now: DateTime<Utc>,
) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = format!(
        "Header:\n{}\nClaims:\n{}\n",
        pretty(&decoded.header),
        pretty(&decoded.claims)
    );
    if let Some(typ) = decoded.header.get("typ").and_then(Value::as_str)
        && !typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
    {
        out.push_str(&format!(
            "note:      typ is {typ:?}, not {ACCESS_TOKEN_TYP:?}: not an RFC 9068 access token\n"
        ));
    }
    if let Some(iat) = claim_time(&decoded.claims, "iat") {
        out.push_str(&format!(
            "issued:    {} ({})\n",
            iat.to_rfc3339(),
            relative(iat, now)
        ));
    }
    if let Some(exp) = claim_time(&decoded.claims, "exp") {
        let when = if exp <= now {
            format!("EXPIRED {}", relative(exp, now))
        } else {
            relative(exp, now)
        };
        out.push_str(&format!("expires:   {} ({when})\n", exp.to_rfc3339()));
    }
    // Sender-constraint hook: what the token is bound to (`cnf`).
    out.push_str(&super::dpop::binding_line(&decoded.claims));
    out.push('\n');
    out.push_str(&check.line());
    out.push('\n');
    out
}

/// The `-o json|yaml` document of `decode` and `token --decode`.
#[derive(Serialize)]
struct DecodeDocument<'a> {
    header: &'a Value,
    claims: &'a Value,
    signature: &'a SignatureCheck,
}

/// Decode, verify and print `token`; an invalid or unverified signature is
/// an error (exit 1) after the output is written.
pub(crate) async fn decode_and_print(
    token: &str,
    jwks_url: Option<&str>,
    output: Option<OutputFormat>,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let decoded = decode_unverified(token)?;
    let check = check_signature(token, jwks_url).await;
    let doc = DecodeDocument {
        header: &decoded.header,
        claims: &decoded.claims,
        signature: &check,
    };
    let text = match output {
        Some(OutputFormat::Json) => serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| PluginError::Output(e.to_string()))?,
        Some(OutputFormat::Yaml) => {
            serde_yaml::to_string(&doc).map_err(|e| PluginError::Output(e.to_string()))?
        }
        _ => render_text(&decoded, &check, Utc::now()),
    };
    write_out(out, &text)?;
    match check {
        SignatureCheck::Invalid { reason, .. } => Err(PluginError::InvalidSignature(reason)),
        SignatureCheck::NotChecked { reason } => Err(PluginError::Unverified(reason)),
        SignatureCheck::Verified { .. } => Ok(()),
    }
}

/// `kubectl m2m decode TOKEN|-`.
pub async fn run(
    g: &GlobalArgs,
    args: &DecodeArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let token = if args.token == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            PluginError::MalformedToken(format!("reading standard input failed: {e}"))
        })?;
        text
    } else {
        args.token.clone()
    };
    let token = token.trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token)
        .trim();
    let jwks = match &args.jwks_url {
        Some(url) => Some(url.clone()),
        None => cluster_jwks_url(g, token).await,
    };
    decode_and_print(token, jwks.as_deref(), g.output, out).await
}

/// The JWKS of the issuer this cluster knows for `token`'s client: the
/// `issuer` key of the Secret of the credential (in the namespace of
/// `-n`/the context) whose `status.clientId` is the token's `client_id`.
/// `None` when there is none to be found or read (then nothing is verified).
async fn cluster_jwks_url(g: &GlobalArgs, token: &str) -> Option<String> {
    use k8s_openapi::api::core::v1::Secret;
    let decoded = decode_unverified(token).ok()?;
    let client_id = decoded.claims.get("client_id")?.as_str()?.to_owned();
    let cluster = super::cluster::Cluster::connect(g).await.ok()?;
    let creds = cluster.credentials().list(&Default::default()).await.ok()?;
    let status = creds
        .items
        .into_iter()
        .filter_map(|c| c.status)
        .find(|s| s.client_id.as_deref() == Some(client_id.as_str()))?;
    let secrets: kube::Api<Secret> =
        kube::Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secret = secrets.get(status.secret_name.as_deref()?).await.ok()?;
    let issuer = secret.data?.get("issuer")?.0.clone();
    let issuer = String::from_utf8(issuer).ok()?;
    default_jwks_url(&serde_json::json!({ "iss": issuer.trim() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningAlg;
    use crate::signing::{KeyRing, KeySet, generate_key};

    fn ring() -> KeyRing {
        let set = KeySet {
            format: 1,
            keys: vec![generate_key(SigningAlg::Es256, Utc::now()).unwrap()],
        };
        KeyRing::new(&set, Utc::now()).unwrap()
    }

    fn token(ring: &KeyRing, claims: Value) -> String {
        ring.active()
            .unwrap()
            .sign(claims.to_string().as_bytes())
            .unwrap()
    }

    /// A token signed by an attacker's key whose `iss` points at the
    /// attacker's own JWKS (served here on loopback) must not come out as
    /// verified, and "could not verify" is a failure, not exit 0: without
    /// `--jwks-url` or the issuer the cluster knows there is nothing to
    /// verify against.
    #[tokio::test]
    async fn a_token_is_never_verified_against_the_jwks_its_own_iss_names() {
        let attacker = ring();
        let jwks = String::from_utf8(attacker.jwks_json().to_vec()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { jwks }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let t = token(
            &attacker,
            serde_json::json!({"iss": format!("http://{addr}"), "sub": "m2m:kube-system:admin", "exp": 4_102_444_800_i64}),
        );
        let mut out = Vec::new();
        let result = decode_and_print(&t, None, None, &mut out).await;
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("signature: verified"),
            "verified against the token's own iss:\n{text}"
        );
        assert!(result.is_err(), "an unverified token exits 0:\n{text}");
        // An unreachable JWKS given explicitly is a failure too.
        let mut out = Vec::new();
        let result =
            decode_and_print(&t, Some("http://127.0.0.1:9/jwks.json"), None, &mut out).await;
        assert!(result.is_err(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn header_and_claims_are_decoded_without_a_key() {
        let ring = ring();
        let t = token(
            &ring,
            serde_json::json!({"iss": "https://m2m.example/", "sub": "m2m:a:b", "exp": 1}),
        );
        let d = decode_unverified(&t).unwrap();
        assert_eq!(d.header["typ"], "at+jwt");
        assert_eq!(d.header["kid"], ring.active().unwrap().kid());
        assert_eq!(d.claims["sub"], "m2m:a:b");
        assert_eq!(
            default_jwks_url(&d.claims).as_deref(),
            Some("https://m2m.example/.well-known/jwks.json")
        );
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        for (input, want) in [
            ("abc", "3 dot-separated parts"),
            ("a.b.c.d", "found 4"),
            ("!!.e30.x", "header is not base64url"),
            ("e30.bm90IGpzb24.x", "claims part is not JSON"),
            ("WzFd.e30.x", "header is not a JSON object"),
        ] {
            let e = decode_unverified(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn the_signature_verifies_against_the_jwks_and_tampering_is_caught() {
        let ring = ring();
        let jwks: JwkSet = serde_json::from_slice(&ring.jwks_json()).unwrap();
        let t = token(&ring, serde_json::json!({"sub": "m2m:a:b", "exp": 1}));
        let (kid, alg) = verify_against(&t, &jwks).unwrap();
        assert_eq!(kid, ring.active().unwrap().kid());
        assert_eq!(alg, "ES256");

        // Claims swapped for others: same header and signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"m2m:a:admin","exp":1}"#);
        parts[1] = &forged;
        let e = verify_against(&parts.join("."), &jwks).unwrap_err();
        assert!(e.contains("does not match"), "{e}");

        // Signed by a key the JWKS does not hold.
        let other = token(&super::tests::ring(), serde_json::json!({}));
        assert!(
            verify_against(&other, &jwks)
                .unwrap_err()
                .contains("no key with kid")
        );

        // alg none is never accepted.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#),
            URL_SAFE_NO_PAD.encode(b"{}")
        );
        assert!(verify_against(&none, &jwks).is_err());
    }

    #[test]
    fn text_output_shows_times_and_the_signature_line() {
        let ring = ring();
        let now = Utc::now();
        let t = token(
            &ring,
            serde_json::json!({"iat": now.timestamp() - 60, "exp": now.timestamp() - 30, "sub": "x"}),
        );
        let d = decode_unverified(&t).unwrap();
        let check = SignatureCheck::NotChecked {
            reason: "JWKS unreachable: x".into(),
        };
        let text = render_text(&d, &check, now);
        assert!(
            text.starts_with("Header:\n{\n  \"alg\": \"ES256\""),
            "{text}"
        );
        assert!(text.contains("Claims:\n{"), "{text}");
        assert!(text.contains("issued:    "), "{text}");
        assert!(text.contains("(EXPIRED 30s ago)"), "{text}");
        assert!(
            text.ends_with("signature: NOT VERIFIED (JWKS unreachable: x)\n"),
            "{text}"
        );
        let v = SignatureCheck::Verified {
            kid: "k".into(),
            alg: "ES256".into(),
            jwks_url: "u".into(),
        };
        assert_eq!(v.line(), "signature: verified by kid k (ES256) from u");
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"status": "verified", "kid": "k", "alg": "ES256", "jwksUrl": "u"})
        );
    }
}
