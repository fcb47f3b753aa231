//! Where `/oauth/revoke` records revocations so every replica honours them,
//! also after restarts: the ConfigMap [`REVOCATION_CONFIGMAP_NAME`] in the
//! operator namespace, data `<jti>: <exp unix seconds>`.
//!
//! Each revocation is one JSON merge patch that adds its entry and, in the
//! same patch, deletes the entries whose token has expired (as this
//! replica sees them). Merge patches of different keys never conflict, so
//! replicas need no coordination. Every replica watches the ConfigMap.
//!
//! Bound: an entry lives at most as long as the token it revokes (≤ 24 h)
//! plus the time until the next revocation prunes it, so the ConfigMap
//! holds at most the tokens revoked in the last 24 h — about 40 bytes each,
//! ~25,000 revocations per day within the 1 MiB object limit. Past that the
//! API server refuses the patch and `/oauth/revoke` answers 503
//! `temporarily_unavailable` rather than pretending.

use super::index::TokenState;
use crate::labels::{FIELD_MANAGER, MANAGED_BY};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Name of the revocation ConfigMap.
pub const REVOCATION_CONFIGMAP_NAME: &str = "m2m-revoked-tokens";

/// Why a revocation could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The API server refused or could not be reached.
    #[error("patching ConfigMap {0}")]
    Patch(String, #[source] kube::Error),
}

/// Records revocations.
pub trait RevocationStore: Send + Sync + 'static {
    /// Record that `jti` (expiring at `exp`) is revoked; `now` in unix seconds.
    fn revoke<'a>(
        &'a self,
        jti: &'a str,
        exp: i64,
        now: i64,
    ) -> BoxFuture<'a, Result<(), RevocationError>>;
}

/// Revocations kept in this process only (tests and the benchmark server).
#[derive(Debug, Clone)]
pub struct LocalRevocations {
    state: Arc<TokenState>,
}

impl LocalRevocations {
    /// Record into `state` directly.
    pub fn new(state: Arc<TokenState>) -> Self {
        Self { state }
    }
}

impl RevocationStore for LocalRevocations {
    fn revoke<'a>(
        &'a self,
        jti: &'a str,
        exp: i64,
        _now: i64,
    ) -> BoxFuture<'a, Result<(), RevocationError>> {
        self.state.revoke_locally(jti, exp);
        Box::pin(async { Ok(()) })
    }
}

/// Revocations in the shared ConfigMap.
#[derive(Clone)]
pub struct ConfigMapRevocations {
    api: Api<ConfigMap>,
    state: Arc<TokenState>,
}

impl ConfigMapRevocations {
    /// Revocations in `namespace`'s ConfigMap, mirrored into `state`.
    pub fn new(client: kube::Client, namespace: &str, state: Arc<TokenState>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            state,
        }
    }

    /// Create the ConfigMap if it is missing (server-side apply of its
    /// metadata only: entries written by merge patches are left alone).
    pub async fn ensure_exists(&self) -> Result<(), RevocationError> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(REVOCATION_CONFIGMAP_NAME.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_owned(),
                    MANAGED_BY.1.to_owned(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        self.api
            .patch(
                REVOCATION_CONFIGMAP_NAME,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|e| RevocationError::Patch(REVOCATION_CONFIGMAP_NAME.into(), e))?;
        Ok(())
    }
}

/// The merge patch adding `jti` and deleting `expired` entries.
pub fn revocation_patch<'a>(
    jti: &str,
    exp: i64,
    expired: impl IntoIterator<Item = &'a str>,
) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    for old in expired {
        data.insert(old.to_owned(), serde_json::Value::Null);
    }
    data.insert(jti.to_owned(), serde_json::Value::String(exp.to_string()));
    serde_json::json!({ "data": data })
}

impl RevocationStore for ConfigMapRevocations {
    fn revoke<'a>(
        &'a self,
        jti: &'a str,
        exp: i64,
        now: i64,
    ) -> BoxFuture<'a, Result<(), RevocationError>> {
        Box::pin(async move {
            let current = self.state.revoked();
            let patch = revocation_patch(jti, exp, current.expired(now).take(1000));
            let params = PatchParams::default();
            let result = self
                .api
                .patch(REVOCATION_CONFIGMAP_NAME, &params, &Patch::Merge(&patch))
                .await;
            match result {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // Deleted by hand: recreate it, then retry once.
                    self.ensure_exists().await?;
                    self.api
                        .patch(REVOCATION_CONFIGMAP_NAME, &params, &Patch::Merge(&patch))
                        .await
                        .map_err(|e| RevocationError::Patch(REVOCATION_CONFIGMAP_NAME.into(), e))?;
                }
                Err(e) => return Err(RevocationError::Patch(REVOCATION_CONFIGMAP_NAME.into(), e)),
                Ok(_) => {}
            }
            self.state.revoke_locally(jti, exp);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_adds_one_and_prunes_expired() {
        let p = revocation_patch("abc", 1700, ["old1", "old2"]);
        assert_eq!(
            p,
            serde_json::json!({"data": {"abc": "1700", "old1": null, "old2": null}})
        );
    }
}
