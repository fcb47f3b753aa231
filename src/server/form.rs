//! Strict parsing of token-endpoint requests: the
//! `application/x-www-form-urlencoded` body (RFC 6749 §3.2, appendix B) and
//! client authentication (§2.3.1). Everything malformed is an
//! `invalid_request`, never a panic or a 5xx:
//! a body over [`MAX_BODY_BYTES`] (413), another content type (415),
//! a parameter sent twice, bytes that do not decode to UTF-8, a malformed
//! `Authorization: Basic` header, or two authentication methods at once.
//! Parameters sent with an empty value are treated as omitted (§3.1).

use super::error::OAuthError;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Largest accepted request body. A client-credentials request is a few
/// hundred bytes; an introspection or revocation request carries one token
/// of at most [`MAX_TOKEN_BYTES`] plus client authentication.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024;
/// Largest access token the endpoint issues: whatever can be issued can be
/// introspected and revoked within [`MAX_BODY_BYTES`] (1 KiB is left for
/// `token=`, `token_type_hint` and `client_id`/`client_secret`).
pub(crate) const MAX_TOKEN_BYTES: usize = MAX_BODY_BYTES - 1024;
/// At most this many parameters per request.
const MAX_PARAMS: usize = 32;

/// The decoded form parameters, each name at most once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    /// The value of `name`, if sent with a non-empty value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parse a form body strictly.
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in body.split(|b| *b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = decode_component(name)?;
            let value = decode_component(value)?;
            if params.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {:?} is repeated",
                    truncate(&name)
                )));
            }
            if params.len() >= MAX_PARAMS {
                return Err(OAuthError::invalid_request("too many parameters"));
            }
            // Empty values count as omitted, but still count for repetition.
            params.push((name, value));
        }
        params.retain(|(_, v)| !v.is_empty());
        Ok(Self { params })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode one form component (`+` is a space) and require UTF-8.
fn decode_component(raw: &[u8]) -> Result<String, OAuthError> {
    if !raw.iter().any(|b| matches!(b, b'%' | b'+')) {
        return String::from_utf8(raw.to_vec())
            .map_err(|_| OAuthError::invalid_request("the request body is not valid UTF-8"));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = raw
                    .get(i + 1)
                    .and_then(|h| hex(*h))
                    .zip(raw.get(i + 2).and_then(|l| hex(*l)))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or_else(|| {
                        OAuthError::invalid_request(
                            "malformed percent-encoding in the request body",
                        )
                    })?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| OAuthError::invalid_request("the request body is not valid UTF-8"))
}

/// Require `Content-Type: application/x-www-form-urlencoded` (any charset
/// parameter other than UTF-8 is refused).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let wrong = || {
        OAuthError::invalid_request_status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/x-www-form-urlencoded",
        )
    };
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let value = values.next().ok_or_else(wrong)?;
    if values.next().is_some() {
        return Err(wrong());
    }
    let value = value.to_str().map_err(|_| wrong())?;
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    {
        return Err(wrong());
    }
    for param in parts.filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').ok_or_else(wrong)?;
        if k.trim().eq_ignore_ascii_case("charset")
            && !v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err(wrong());
        }
    }
    Ok(())
}

/// A token-endpoint request, parsed strictly: content type, body size,
/// form syntax and client authentication. Rejections are [`OAuthError`]s.
#[derive(Debug)]
pub struct OAuthRequest {
    /// The form parameters.
    pub form: Form,
    /// The client credentials presented, if any.
    pub credentials: Option<ClientCredentials>,
    /// The client's address, when the server knows it.
    pub source: Option<std::net::IpAddr>,
    /// An API token sent as `Authorization: Bearer m2mt_…` (only
    /// revocation accepts it, for the JWTs exchanged from that token).
    pub api_token: Option<String>,
    /// The DPoP proof and TLS client certificate (sender-constraint hook).
    pub sender: super::binding::SenderContext,
}

impl<S: Send + Sync> FromRequest<S> for OAuthRequest {
    type Rejection = OAuthError;

    async fn from_request(request: Request, _: &S) -> Result<Self, OAuthError> {
        let (parts, body) = request.into_parts();
        check_content_type(&parts.headers)?;
        let body = read_body(&parts.headers, body).await?;
        let form = Form::parse(&body)?;
        let api_token = bearer_api_token(&parts.headers);
        let credentials = if api_token.is_some() {
            None
        } else {
            client_credentials(&parts.headers, &form)?
        };
        let source = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Self {
            form,
            credentials,
            source,
            api_token,
            sender: super::binding::SenderContext::from_parts(&parts),
        })
    }
}

/// What reading the body failed on: the size limit layer, the body
/// deadline layer, or the connection.
fn body_error(error: &axum::Error) -> OAuthError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return too_large();
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return OAuthError::invalid_request_status(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            );
        }
        source = e.source();
    }
    OAuthError::invalid_request("the request body could not be read")
}

fn too_large() -> OAuthError {
    OAuthError::invalid_request_status(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is larger than 8 KiB",
    )
}

/// Read the whole body, refusing more than [`MAX_BODY_BYTES`] (also when
/// no body-limit layer is in front).
pub(crate) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, OAuthError> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| OAuthError::invalid_request("malformed Content-Length"))?;
        if len > MAX_BODY_BYTES {
            return Err(too_large());
        }
    }
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e))?;
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// Form parameters (`client_secret_post`).
    Post,
}

impl AuthMethod {
    /// The RFC 8414 method name, used in audit lines and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "client_secret_basic",
            Self::Post => "client_secret_post",
        }
    }
}

/// The client credentials a request presented.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// How they were sent.
    pub method: AuthMethod,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Form-urlencoding decode of one Basic credential part (RFC 6749 §2.3.1).
fn decode_basic_part(part: &str) -> Result<String, OAuthError> {
    decode_component(part.as_bytes()).map_err(|_| {
        OAuthError::invalid_request("malformed credentials in the Authorization header")
    })
}

/// The API token of a single `Authorization: Bearer m2mt_…` header, if that
/// is what the request carries.
fn bearer_api_token(headers: &HeaderMap) -> Option<String> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let value = auth.next()?.to_str().ok()?;
    if auth.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && token.starts_with(crate::core::api_token::API_TOKEN_PREFIX))
    .then(|| token.to_owned())
}

/// The client credentials of a request: Basic or form parameters, never
/// both. `Ok(None)`: the request carries no client authentication.
pub fn client_credentials(
    headers: &HeaderMap,
    form: &Form,
) -> Result<Option<ClientCredentials>, OAuthError> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match auth.next() {
        None => None,
        Some(value) => {
            if auth.next().is_some() {
                return Err(OAuthError::invalid_request(
                    "more than one Authorization header",
                ));
            }
            let malformed = || OAuthError::invalid_request("malformed Authorization: Basic header");
            let value = value.to_str().map_err(|_| malformed())?;
            let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                // Another scheme (e.g. Bearer) is not a way to authenticate here.
                return Err(OAuthError::invalid_client(true));
            }
            let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
            let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
            Some((decode_basic_part(id)?, decode_basic_part(secret)?))
        }
    };
    let post_id = form.get("client_id");
    let post_secret = form.get("client_secret");
    match (basic, post_id, post_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::invalid_request(
            "use either client_secret_basic or client_secret_post, not both",
        )),
        (Some((id, _)), Some(post_id), None) if post_id != id => Err(OAuthError::invalid_request(
            "client_id in the body differs from the Authorization header",
        )),
        (Some((client_id, client_secret)), _, None) => Ok(Some(ClientCredentials {
            client_id,
            client_secret,
            method: AuthMethod::Basic,
        })),
        (None, Some(id), Some(secret)) => Ok(Some(ClientCredentials {
            client_id: id.to_owned(),
            client_secret: secret.to_owned(),
            method: AuthMethod::Post,
        })),
        (None, _, _) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn form_parsing_table() {
        let ok = |body: &str, name: &str| {
            Form::parse(body.as_bytes())
                .unwrap()
                .get(name)
                .map(str::to_owned)
        };
        assert_eq!(ok("a=1&b=2", "b").as_deref(), Some("2"));
        assert_eq!(ok("scope=a+b%3Ac", "scope").as_deref(), Some("a b:c"));
        assert_eq!(ok("a=&b=2", "a"), None, "empty = omitted");
        assert_eq!(ok("a", "a"), None);
        assert_eq!(ok("&&a=1&", "a").as_deref(), Some("1"));
        assert_eq!(ok("x=%C3%A9", "x").as_deref(), Some("é"));
        for bad in ["a=1&a=2", "a=&a=2", "a=%zz", "a=%4", "a=%FF", "a=%C3"] {
            let e = Form::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_request", "{bad}");
        }
        assert!(Form::parse(b"a=\xff").is_err());
    }

    #[test]
    fn content_type_table() {
        let check = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            check_content_type(&h).is_ok()
        };
        assert!(check(Some("application/x-www-form-urlencoded")));
        assert!(check(Some(
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
        )));
        assert!(!check(Some(
            "application/x-www-form-urlencoded; charset=latin1"
        )));
        assert!(!check(Some("application/json")));
        assert!(!check(Some("multipart/form-data")));
        assert!(!check(None));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let raw = STANDARD.encode("my%20id:s%2Bx");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap(),
        );
        let c = client_credentials(&h, &Form::default()).unwrap().unwrap();
        assert_eq!(c.client_id, "my id");
        assert_eq!(c.client_secret, "s+x");
        assert_eq!(c.method, AuthMethod::Basic);
        assert!(!format!("{c:?}").contains("s+x"));
    }
}
