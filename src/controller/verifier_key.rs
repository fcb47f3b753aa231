//! The HMAC key of the verification state, kept in the operator's key
//! Secret (`m2m-operator-keys`, key `verifier-key`). Created once and never
//! replaced: a new key would invalidate every credential's digests.

use super::secret::FIELD_MANAGER;
use super::{Error, kube_err};
use crate::core::verifier::VerifierKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// Name of the operator's key Secret.
pub const KEYS_SECRET_NAME: &str = "m2m-operator-keys";
/// Data key of the verifier key.
pub const VERIFIER_KEY_FIELD: &str = "verifier-key";

/// Load the verifier key, creating it (and the Secret) when missing.
pub async fn ensure_verifier_key(client: &Client, namespace: &str) -> Result<VerifierKey, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = api
        .get_opt(KEYS_SECRET_NAME)
        .await
        .map_err(kube_err("read key Secret"))?;
    if let Some(bytes) = existing
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(VERIFIER_KEY_FIELD))
        && let Ok(key) = VerifierKey::from_bytes(&bytes.0)
    {
        return Ok(key);
    }
    let key = VerifierKey::generate()?;
    let mut secret = Secret {
        type_: Some("Opaque".into()),
        data: Some(
            [(
                VERIFIER_KEY_FIELD.to_owned(),
                ByteString(key.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    secret.metadata.name = Some(KEYS_SECRET_NAME.into());
    secret.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_owned(),
            "m2m-operator".to_owned(),
        )]
        .into(),
    );
    // Not forced: if another replica created a key in between, the conflict
    // makes us re-read theirs instead of overwriting it.
    match api
        .patch(
            KEYS_SECRET_NAME,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&secret),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(namespace, "created the verifier key");
            Ok(key)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Box::pin(ensure_verifier_key(client, namespace)).await
        }
        Err(e) => Err(kube_err("create key Secret")(e)),
    }
}
