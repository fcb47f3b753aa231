//! Fetching an issuer's keys over HTTPS: OpenID Connect discovery
//! (`<issuer>/.well-known/openid-configuration` → `jwks_uri`) or a JWKS
//! URL, verified with the issuer's CA bundle or the built-in roots. The
//! controller (for status) and every token-server replica (to verify) use
//! this same code. HTTP only — no Kubernetes API here; a ConfigMap JWKS is
//! read by the caller and parsed with [`super::keys::parse_jwks`].
//!
//! Bounded: 5 s to connect, 10 s in all, at most [`MAX_DOCUMENT_BYTES`]
//! per document, no redirects (a redirect could move trust to another
//! host), `https://` only — for a discovered `jwks_uri` too.

use super::keys::{JwksError, KeySet, parse_jwks};
use std::time::Duration;

/// Largest discovery document or JWK Set read.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// OpenID Connect discovery under the issuer URL.
    Discovery,
    /// A JWK Set URL.
    Url(String),
    /// A ConfigMap key: (namespace, name, key).
    ConfigMap(String, String, String),
}

/// Why keys could not be fetched (no secret in any message: these reach
/// status, Events and logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The CA bundle holds no usable certificate.
    #[error("the CA bundle holds no usable PEM certificate")]
    CaBundle,
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
    /// The request failed (connect, TLS, timeout).
    #[error("fetching {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A non-200 answer.
    #[error("fetching {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Over [`MAX_DOCUMENT_BYTES`].
    #[error("fetching {0}: the document is larger than 1 MiB")]
    TooLarge(String),
    /// The discovery document is not usable.
    #[error("discovery document of {url}: {reason}")]
    Discovery {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The JWK Set is unusable.
    #[error("JWK Set at {url}: {error}")]
    Jwks {
        /// Where it came from.
        url: String,
        /// What is wrong.
        error: JwksError,
    },
    /// The ConfigMap or its key is missing.
    #[error("{0}")]
    ConfigMap(String),
}

impl FetchError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CaBundle => "ca_bundle",
            Self::Client(_) => "client",
            Self::Request { .. } => "unreachable",
            Self::Status { .. } => "http_status",
            Self::TooLarge(_) => "too_large",
            Self::Discovery { .. } => "discovery",
            Self::Jwks { .. } => "jwks",
            Self::ConfigMap(_) => "configmap",
        }
    }

    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CaBundle => "InvalidCABundle",
            Self::Jwks { .. } => "NoUsableKeys",
            Self::ConfigMap(_) => "JWKSConfigMapUnavailable",
            Self::Discovery { .. } => "DiscoveryFailed",
            _ => "KeysUnreachable",
        }
    }
}

/// Keys fetched from one place.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The parsed keys.
    pub keys: KeySet,
    /// Where they came from (status `jwksURL`).
    pub jwks_url: String,
}

/// An HTTPS client for one issuer: its CA bundle (PEM) or the built-in roots.
pub fn client(ca_pem: Option<&str>) -> Result<reqwest::Client, FetchError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TIMEOUT)
        .https_only(true);
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|_| FetchError::CaBundle)?;
        if certs.is_empty() {
            return Err(FetchError::CaBundle);
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| FetchError::Client(error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    if !url.starts_with("https://") {
        return Err(FetchError::Discovery {
            url: url.to_owned(),
            reason: "not an https:// URL".into(),
        });
    }
    let mut response = http
        .get(url)
        // Kubernetes answers 406 to a JWKS request accepting only application/json.
        .header("accept", "application/json, application/jwk-set+json")
        .send()
        .await
        .map_err(|e| FetchError::Request {
            url: url.to_owned(),
            reason: error_chain(&e),
        })?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| FetchError::Request {
        url: url.to_owned(),
        reason: error_chain(&e),
    })? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge(url.to_owned()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The discovery URL of `issuer`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Resolve the JWKS URL of `issuer` by discovery; its `issuer` must equal
/// ours exactly (OpenID Connect Discovery §4.3).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, FetchError> {
    let url = discovery_url(issuer);
    let body = get(http, &url).await?;
    #[derive(serde::Deserialize)]
    struct Document {
        issuer: Option<String>,
        jwks_uri: Option<String>,
    }
    let doc: Document = serde_json::from_slice(&body).map_err(|e| FetchError::Discovery {
        url: url.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    if doc.issuer.as_deref() != Some(issuer) {
        return Err(FetchError::Discovery {
            url,
            reason: format!(
                "its issuer {:?} is not {issuer:?}",
                doc.issuer.unwrap_or_default()
            ),
        });
    }
    let jwks = doc.jwks_uri.ok_or_else(|| FetchError::Discovery {
        url: url.clone(),
        reason: "no jwks_uri".into(),
    })?;
    if !jwks.starts_with("https://") {
        return Err(FetchError::Discovery {
            url,
            reason: format!("jwks_uri {jwks:?} is not https://"),
        });
    }
    Ok(jwks)
}

/// Fetch and parse the JWK Set at `url`.
pub async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Fetched, FetchError> {
    let body = get(http, url).await?;
    let keys = parse_jwks(&body).map_err(|error| FetchError::Jwks {
        url: url.to_owned(),
        error,
    })?;
    Ok(Fetched {
        keys,
        jwks_url: url.to_owned(),
    })
}

/// Fetch by discovery or URL (a ConfigMap source is the caller's).
pub async fn fetch_keys(
    http: &reqwest::Client,
    issuer: &str,
    source: &KeySource,
) -> Result<Fetched, FetchError> {
    match source {
        KeySource::Discovery => {
            let url = discover(http, issuer).await?;
            fetch_jwks(http, &url).await
        }
        KeySource::Url(url) => fetch_jwks(http, url).await,
        KeySource::ConfigMap(ns, name, key) => Err(FetchError::ConfigMap(format!(
            "ConfigMap {ns}/{name} key {key} is read through the Kubernetes API"
        ))),
    }
}

/// Parse a JWK Set read from a ConfigMap.
pub fn from_config_map(
    (ns, name, key): (&str, &str, &str),
    data: Option<&str>,
) -> Result<Fetched, FetchError> {
    let url = format!("configmap:{ns}/{name}#{key}");
    let data = data.ok_or_else(|| {
        FetchError::ConfigMap(format!(
            "ConfigMap {ns}/{name} or its key {key:?} does not exist"
        ))
    })?;
    let keys = parse_jwks(data.as_bytes()).map_err(|error| FetchError::Jwks {
        url: url.clone(),
        error,
    })?;
    Ok(Fetched {
        keys,
        jwks_url: url,
    })
}
