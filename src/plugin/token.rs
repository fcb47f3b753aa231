//! `kubectl m2m token NAME`: an access token from a credential's Secret,
//! read with the caller's own kubeconfig (so it works exactly when the
//! caller may read that Secret), requested at `--token-url` or the
//! Secret's `token_url`: by `client_credentials` with `client_secret_basic`
//! for a client secret, by RFC 8693 token exchange of the Secret's `token`
//! for an API token.
//!
//! The Secret's `token_url` is the in-cluster address; from a laptop it
//! usually does not resolve, and the error says how to port-forward.

use super::cli::{GlobalArgs, TokenArgs};
use super::cluster::{Cluster, Target};
use super::status::{CredentialSummary, CredentialType, describe_get, summarize};
use super::{PluginError, error_chain, http_client, write_out};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::Url;
use serde::Deserialize;
use std::io::Write;

/// RFC 8693 grant type and the subject token type API tokens are sent as.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Path of the token endpoint (SPEC §4).
pub(crate) const TOKEN_PATH: &str = "/oauth/token";

/// `--token-url` as given, with `/oauth/token` added to a bare base URL.
pub(crate) fn normalize_token_url(input: &str) -> Result<Url, String> {
    let mut url = Url::parse(input).map_err(|e| format!("{input:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{input:?} is not an http(s) URL"));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(TOKEN_PATH);
    }
    Ok(url)
}

/// The JWKS served next to a token endpoint: `<base>/.well-known/jwks.json`.
pub(crate) fn jwks_url_for(token_url: &Url) -> String {
    let mut base = token_url.clone();
    let path = base
        .path()
        .strip_suffix(TOKEN_PATH)
        .unwrap_or("")
        .to_owned();
    base.set_path(&format!("{path}/.well-known/jwks.json"));
    base.set_query(None);
    base.to_string()
}

/// How to reach an in-cluster URL (`http://<svc>.<ns>.svc[.cluster.local][:port]/…`)
/// from outside: a `kubectl port-forward` command and the `--token-url` to pass.
pub(crate) fn port_forward_hint(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let labels: Vec<&str> = host.split('.').collect();
    let port = url.port_or_known_default().unwrap_or(80);
    let scheme = url.scheme();
    match labels.as_slice() {
        [svc, ns, "svc", ..] => format!(
            "use --token-url, e.g. after kubectl port-forward -n {ns} svc/{svc} 8080:{port} pass --token-url {scheme}://127.0.0.1:8080{TOKEN_PATH}"
        ),
        _ => format!(
            "use --token-url with an address of the token server you can reach, e.g. after kubectl port-forward -n <operator namespace> svc/<token-server service> 8080:{port} pass --token-url {scheme}://127.0.0.1:8080{TOKEN_PATH}"
        ),
    }
}

/// Form-urlencode one part of HTTP Basic client authentication (RFC 6749 §2.3.1).
fn basic_part(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The parameters of the token request.
pub(crate) fn request_form(args: &TokenArgs) -> Vec<(&'static str, String)> {
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    let scopes: Vec<&str> = args
        .scope
        .iter()
        .flat_map(|s| s.split_whitespace())
        .collect();
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    if let Some(aud) = &args.audience {
        form.push(("audience", aud.clone()));
    }
    form
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn secret_key(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `kubectl m2m token`.
pub async fn run(
    cluster: &Cluster,
    g: &GlobalArgs,
    args: &TokenArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let name = args.name.as_str();
    let ns = cluster.namespace.as_str();
    let summary = usable_summary(cluster, name, ns).await?;
    let request = read_request(cluster, args, &summary, name, ns).await?;
    let access_token = fetch_token(&request, args, &summary, name, ns).await?;
    if args.decode {
        let jwks = args
            .jwks_url
            .clone()
            .unwrap_or_else(|| jwks_url_for(&request.url));
        super::jwt::decode_and_print(&access_token, Some(&jwks), g.output, out).await
    } else {
        write_out(out, &format!("{access_token}\n"))
    }
}

/// The credential's summary, if it is one `token` can use (a client
/// secret or an API token, with a Secret); otherwise an error that says
/// what to do instead.
async fn usable_summary(
    cluster: &Cluster,
    name: &str,
    ns: &str,
) -> Result<CredentialSummary, PluginError> {
    let obj = cluster
        .credentials_dynamic(Some(ns))
        .get(name)
        .await
        .map_err(|e| cluster.error(e, Target::Credential(name), &describe_get(name, ns)))?;
    let obj = serde_json::to_value(obj).map_err(|e| PluginError::Output(e.to_string()))?;
    let summary = summarize(&obj, chrono::Utc::now());
    match summary.type_ {
        CredentialType::ClientSecret | CredentialType::ApiToken => {}
        CredentialType::WorkloadIdentity => {
            return Err(PluginError::Credential(format!(
                "m2mcredential {name:?} in namespace {ns:?} uses workload identity ({}): it has no client secret; a pod running as that ServiceAccount gets a token with its projected ServiceAccount token (client_assertion), see docs/workload-identity.md",
                summary.identity.short()
            )));
        }
    }
    if summary.secret_name.is_none() {
        return Err(PluginError::Credential(format!(
            "m2mcredential {name:?} in namespace {ns:?} has no Secret yet (Ready={}{}); see kubectl m2m status -n {ns} {name}",
            summary.ready,
            summary
                .ready_reason
                .as_deref()
                .map(|r| format!(", reason {r}"))
                .unwrap_or_default()
        )));
    }
    Ok(summary)
}

/// How `token` authenticates: read from the credential's Secret.
enum Auth {
    /// `client_id` and `client_secret`, by HTTP Basic.
    Client { id: String, secret: String },
    /// The Secret's `token`, exchanged (RFC 8693).
    ApiToken(String),
}

/// Where and as whom `token` asks: read from the credential's Secret.
struct ClientRequest {
    secret_name: String,
    auth: Auth,
    url: Url,
    /// The URL came from `--token-url`, not from the Secret.
    from_flag: bool,
}

async fn read_request(
    cluster: &Cluster,
    args: &TokenArgs,
    summary: &CredentialSummary,
    name: &str,
    ns: &str,
) -> Result<ClientRequest, PluginError> {
    let secret_name = summary.secret_name.clone().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(cluster.client.clone(), ns)
        .get(&secret_name)
        .await
        .map_err(|e| {
            cluster.error(
                e,
                Target::Secret {
                    secret: &secret_name,
                    credential: name,
                },
                &format!("reading Secret {secret_name:?} in namespace {ns:?}"),
            )
        })?;
    let missing = |key: &str| {
        PluginError::Credential(format!(
            "Secret {secret_name:?} in namespace {ns:?} (of m2mcredential {name:?}) has no {key} key; the operator repairs it on its next reconcile"
        ))
    };
    let auth = match summary.type_ {
        CredentialType::ApiToken => {
            Auth::ApiToken(secret_key(&secret, "token").ok_or_else(|| missing("token"))?)
        }
        _ => Auth::Client {
            id: secret_key(&secret, "client_id").ok_or_else(|| missing("client_id"))?,
            secret: secret_key(&secret, "client_secret").ok_or_else(|| missing("client_secret"))?,
        },
    };
    let (url, from_flag) = match &args.token_url {
        Some(u) => (
            normalize_token_url(u).map_err(|e| PluginError::Usage(format!("--token-url: {e}")))?,
            true,
        ),
        None => {
            let u = secret_key(&secret, "token_url").ok_or_else(|| missing("token_url"))?;
            let url = normalize_token_url(&u).map_err(|e| {
                PluginError::Credential(format!(
                    "the token_url of Secret {secret_name:?} in namespace {ns:?}: {e}; pass --token-url"
                ))
            })?;
            (url, false)
        }
    };
    Ok(ClientRequest {
        secret_name,
        auth,
        url,
        from_flag,
    })
}

/// POST the client_credentials request; the access token or an error
/// naming the credential and the likely fix.
async fn fetch_token(
    request: &ClientRequest,
    args: &TokenArgs,
    summary: &CredentialSummary,
    name: &str,
    ns: &str,
) -> Result<String, PluginError> {
    let url = &request.url;
    // DPoP hook (`--dpop`): a proof of the key with every attempt.
    let dpop = match args.dpop {
        true => Some(super::dpop::key(args.dpop_key.as_deref())?),
        false => None,
    };
    let mut nonce: Option<String> = None;
    loop {
        let response = send_token_request(request, args, dpop.as_ref(), nonce.as_deref()).await?;
        match response {
            Sent::Nonce(n) if nonce.is_none() => nonce = Some(n),
            Sent::Nonce(_) => {
                return Err(PluginError::TokenEndpoint(format!(
                    "the token endpoint {url} asked for a DPoP nonce twice"
                )));
            }
            Sent::Answer(status, body) => {
                return token_from_answer(url, status, &body, summary, name, ns);
            }
        }
    }
}

/// What one attempt of the token request got.
enum Sent {
    /// `use_dpop_nonce` with this `DPoP-Nonce` (RFC 9449 §8): try again.
    Nonce(String),
    /// Any other answer.
    Answer(u16, Vec<u8>),
}

async fn send_token_request(
    request: &ClientRequest,
    args: &TokenArgs,
    dpop: Option<&crate::server::dpop::client::ProofKey>,
    nonce: Option<&str>,
) -> Result<Sent, PluginError> {
    let url = &request.url;
    let mut form = request_form(args);
    let mut post = http_client()?.post(url.clone());
    if let Some(key) = dpop {
        let proof = super::dpop::proof(key, url, nonce)?;
        post = post.header("DPoP", proof);
    }
    let post = match &request.auth {
        Auth::Client { id, secret } => post.basic_auth(basic_part(id), Some(basic_part(secret))),
        Auth::ApiToken(token) => {
            form[0] = ("grant_type", TOKEN_EXCHANGE.to_owned());
            form.push(("subject_token", token.clone()));
            form.push(("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()));
            post
        }
    };
    let response = post
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| {
            let reason = error_chain(&e);
            if request.from_flag {
                PluginError::TokenEndpoint(format!(
                    "cannot reach the token endpoint {url} (--token-url): {reason}; is the port-forward running?"
                ))
            } else {
                PluginError::TokenEndpoint(format!(
                    "cannot reach the token endpoint {url} (the in-cluster token_url of Secret {:?}) from here: {reason}; {}",
                    request.secret_name,
                    port_forward_hint(url)
                ))
            }
        })?;
    let status = response.status();
    let server_nonce = response
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.map_err(|e| {
        PluginError::TokenEndpoint(format!(
            "reading the answer of {url} failed: {}",
            error_chain(&e)
        ))
    })?;
    if let Some(n) = server_nonce
        && dpop.is_some()
        && status.as_u16() == 400
        && serde_json::from_slice::<ErrorResponse>(&body).is_ok_and(|e| e.error == "use_dpop_nonce")
    {
        return Ok(Sent::Nonce(n));
    }
    Ok(Sent::Answer(status.as_u16(), body.to_vec()))
}

/// The access token of an answer, or the refusal.
fn token_from_answer(
    url: &Url,
    status: u16,
    body: &[u8],
    summary: &CredentialSummary,
    name: &str,
    ns: &str,
) -> Result<String, PluginError> {
    if !(200..300).contains(&status) {
        let err: ErrorResponse = serde_json::from_slice(body).unwrap_or_default();
        return Err(refusal(url, status, err, summary, name, ns));
    }
    let token: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        PluginError::TokenEndpoint(format!("{url} answered without an access_token: {e}"))
    })?;
    Ok(token.access_token)
}

/// The error for a refused token request, with what to check next.
fn refusal(
    url: &Url,
    status: u16,
    err: ErrorResponse,
    summary: &CredentialSummary,
    name: &str,
    ns: &str,
) -> PluginError {
    let hint = match err.error.as_str() {
        "invalid_client" => format!(
            "; the Secret may hold a secret that was just rotated or the credential is not Ready: check kubectl m2m status -n {ns} {name}"
        ),
        "invalid_request" if summary.type_ == CredentialType::ApiToken => format!(
            "; the API token in the Secret may have just been rotated, expired, or the credential is not Ready: check kubectl m2m status -n {ns} {name}"
        ),
        "invalid_scope" => " ; ask only for scopes in the credential's spec.scopes".to_owned(),
        "invalid_dpop_proof" => {
            " ; with spec.senderConstraint: DPoP pass --dpop (and --dpop-key to keep the key)"
                .to_owned()
        }
        "unauthorized_client" => format!(
            "; its ServiceAccount may be disabled or invalid: check kubectl get m2msa -n {ns} {}",
            summary.service_account_name
        ),
        _ => String::new(),
    };
    PluginError::TokenEndpoint(format!(
        "the token endpoint {url} refused m2mcredential {name:?} (HTTP {status}{}{}){hint}",
        if err.error.is_empty() {
            String::new()
        } else {
            format!(" {}", err.error)
        },
        err.error_description
            .map(|d| format!(": {d}"))
            .unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_urls_get_the_token_path_when_bare() {
        assert_eq!(
            normalize_token_url("http://127.0.0.1:8080")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/oauth/token"
        );
        assert_eq!(
            normalize_token_url("https://m2m.example/prefix/oauth/token")
                .unwrap()
                .as_str(),
            "https://m2m.example/prefix/oauth/token"
        );
        assert!(normalize_token_url("127.0.0.1:8080").is_err());
        assert!(normalize_token_url("ftp://x").is_err());
    }

    #[test]
    fn the_jwks_sits_next_to_the_token_endpoint() {
        let u = normalize_token_url("http://127.0.0.1:8080/oauth/token").unwrap();
        assert_eq!(
            jwks_url_for(&u),
            "http://127.0.0.1:8080/.well-known/jwks.json"
        );
        let u = normalize_token_url("https://x.example/m2m/oauth/token").unwrap();
        assert_eq!(
            jwks_url_for(&u),
            "https://x.example/m2m/.well-known/jwks.json"
        );
    }

    #[test]
    fn in_cluster_urls_get_a_port_forward_hint() {
        let u =
            Url::parse("http://m2m-operator-token-server.m2m-system.svc:8080/oauth/token").unwrap();
        assert_eq!(
            port_forward_hint(&u),
            "use --token-url, e.g. after kubectl port-forward -n m2m-system svc/m2m-operator-token-server 8080:8080 pass --token-url http://127.0.0.1:8080/oauth/token"
        );
        let u = Url::parse("https://tokens.internal/oauth/token").unwrap();
        assert!(port_forward_hint(&u).contains("8080:443"));
    }

    #[test]
    fn scopes_are_joined_and_audience_passed() {
        let args = TokenArgs {
            name: "x".into(),
            scope: vec!["a:r b:w".into(), "c".into()],
            audience: Some("api".into()),
            token_url: None,
            decode: false,
            jwks_url: None,
            dpop: false,
            dpop_key: None,
        };
        assert_eq!(
            request_form(&args),
            [
                ("grant_type", "client_credentials".to_owned()),
                ("scope", "a:r b:w c".to_owned()),
                ("audience", "api".to_owned())
            ]
        );
        assert_eq!(basic_part("a b:c"), "a+b%3Ac");
    }
}
