//! Sender-constrained tokens on `M2MCredential` (SPEC §10): which binding a
//! credential requires (`spec.senderConstraint`) and the TLS client
//! certificate it accepts as client authentication (`spec.mtls`,
//! RFC 8705 `tls_client_auth`). The CEL rules these fields carry live here
//! too; each has a refused manifest in `examples/invalid/`.

use kube::KubeSchema;
use kube::core::{Message, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The proof of possession every token of a credential must be bound to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SenderConstraint {
    /// RFC 9449: every token request carries a `DPoP` proof; tokens are
    /// `token_type: DPoP` with `cnf.jkt`.
    #[serde(rename = "DPoP")]
    DPoP,
    /// RFC 8705: every token request comes over TLS with a client
    /// certificate; tokens carry `cnf["x5t#S256"]`.
    #[serde(rename = "MTLS")]
    Mtls,
}

impl SenderConstraint {
    /// The name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DPoP => "DPoP",
            Self::Mtls => "MTLS",
        }
    }
}

/// A TLS client certificate that authenticates this credential
/// (RFC 8705 §2.1 `tls_client_auth`): the token request sends `client_id`
/// and no secret over a TLS connection whose client certificate chains to
/// a CA the token server trusts (`--tls-client-ca`,
/// `--tls-client-ca-signer`) and carries exactly this subject alternative
/// name. Set exactly one of `sanURI` and `sanDNS`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = one_san())]
pub struct MutualTls {
    /// The URI SAN the certificate must carry, compared exactly (RFC 8705
    /// `tls_client_auth_san_uri`), e.g.
    /// `spiffe://cluster.local/ns/team-a/sa/uploader`.
    #[serde(default, rename = "sanURI", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(SAN_URI_PATTERN))]
    pub san_uri: Option<String>,

    /// The DNS SAN the certificate must carry, compared without regard to
    /// case (RFC 8705 `tls_client_auth_san_dns`), e.g.
    /// `uploader.team-a.example`. No wildcards.
    #[serde(default, rename = "sanDNS", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(super::DNS1123_SUBDOMAIN_PATTERN))]
    pub san_dns: Option<String>,
}

/// An absolute URI (RFC 3986 §3: a scheme, a colon, something after it),
/// without whitespace.
pub const SAN_URI_PATTERN: &str = r"^[a-zA-Z][a-zA-Z0-9+.-]*:[^\s]+$";

/// `spec.mtls` names exactly one SAN.
pub fn one_san() -> Rule {
    Rule::new("has(self.sanURI) != has(self.sanDNS)").message(Message::Message(
        "mtls must set exactly one of sanURI and sanDNS".into(),
    ))
}

/// An `APIToken` credential is never authenticated by a client
/// certificate: its API token is what authenticates (RFC 8693 exchange).
/// (`senderConstraint` is allowed: it binds the JWTs the exchange issues.)
pub fn api_token_has_no_mtls() -> Rule {
    Rule::new("!has(self.type) || self.type != 'APIToken' || !has(self.mtls)").message(
        Message::Message(
            "an APIToken credential cannot have mtls: its API token authenticates it; use a ClientSecret or workload-identity credential for tls_client_auth".into(),
        ),
    )
}
