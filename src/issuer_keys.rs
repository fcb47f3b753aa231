//! Reading a trusted issuer's keys with its trust anchor, as both the
//! controller (for status) and every token-server replica (to verify) do:
//! the CA bundle or the named `ClusterTrustBundle`, then discovery, the
//! JWKS URL, or the ConfigMap holding a static JWK Set. The HTTP part is
//! [`crate::core::federation::fetch`]; the two Kubernetes reads (a
//! ConfigMap and a ClusterTrustBundle, by name) are here so that neither
//! the controller nor the token server imports the other.

use crate::core::federation::CompiledIssuer;
use crate::core::federation::fetch::{self, FetchError, Fetched, KeySource};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

/// Read what a ConfigMap key holds (`None`: no such ConfigMap or key).
pub async fn read_config_map(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|c| c.data)
        .and_then(|mut d| d.remove(key)))
}

/// The PEM certificates of a ClusterTrustBundle.
pub async fn read_trust_bundle(client: &Client, name: &str) -> Result<Option<String>, kube::Error> {
    use k8s_openapi::api::certificates::v1beta1::ClusterTrustBundle;
    let api: Api<ClusterTrustBundle> = Api::all(client.clone());
    Ok(api.get_opt(name).await?.map(|b| b.spec.trust_bundle))
}

/// Fetch `issuer`'s keys as every replica does: the CA first, then
/// discovery, URL or ConfigMap.
pub async fn fetch_issuer_keys(
    client: &Client,
    issuer: &CompiledIssuer,
) -> Result<Fetched, FetchError> {
    let ca = match &issuer.cluster_trust_bundle {
        Some(name) => Some(
            read_trust_bundle(client, name)
                .await
                .map_err(|e| FetchError::Client(format!("reading ClusterTrustBundle {name}: {e}")))?
                .ok_or_else(|| {
                    FetchError::Client(format!("ClusterTrustBundle {name} does not exist"))
                })?,
        ),
        None => issuer.ca_bundle.clone(),
    };
    match &issuer.key_source {
        KeySource::ConfigMap(ns, name, key) => {
            let data = read_config_map(client, ns, name, key).await.map_err(|e| {
                FetchError::ConfigMap(format!("reading ConfigMap {ns}/{name}: {e}"))
            })?;
            fetch::from_config_map((ns, name, key), data.as_deref())
        }
        source => {
            let http = fetch::client(ca.as_deref())?;
            fetch::fetch_keys(&http, &issuer.issuer, source).await
        }
    }
}
