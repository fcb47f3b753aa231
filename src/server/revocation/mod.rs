//! Where `/oauth/revoke` records revocations so every replica honours them,
//! also after restarts, and why they cannot be undone or exhausted.
//!
//! - Storage ([`list`]): one ConfigMap per client that revoked something,
//!   entries sealed with the operator's verifier key. A revoke is one JSON
//!   merge patch of that client's ConfigMap only, so it rewrites at most
//!   that client's list: at most `--revocation-quota` entries (~95 bytes
//!   each) plus one compact cutoff, about 25 KiB at the default quota,
//!   whatever other clients do.
//! - Quota: beyond `--revocation-quota` live entries, a client's next
//!   revocation replaces all of its entries with "every token of this
//!   client issued up to the newest revoked one is revoked" (RFC 7009 §2.1
//!   lets a server revoke more than asked). Introspection honours it.
//! - Undoing is impossible from the stored copy alone ([`state`]): replicas
//!   keep every sealed entry they know until its token expires, honour
//!   unsealed or unparseable entries as revocations (and report them), and
//!   the repairer ([`ConfigMapRevocations::run_repairs`]) writes known
//!   entries back into deleted or edited ConfigMaps and prunes expired ones
//!   as soon as they expire.
//!
//! A revocation that cannot be stored is refused (`503
//! temporarily_unavailable`) rather than pretended.

pub mod list;
pub mod state;

pub use list::{LIST_LABEL, Plan, Revoked};
pub use state::Revocations;

use super::index::TokenState;
use crate::labels::MANAGED_BY;
use chrono::Utc;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use list::{CLIENT_ID_ANNOTATION, Repair, config_map_name};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Label selector of the revocation ConfigMaps (for the watch).
pub(crate) const REVOCATION_SELECTOR: &str = "m2m.dev/revocation-list=v2";

/// Default `--revocation-quota`: single-token entries per client.
pub const DEFAULT_QUOTA: usize = 256;

/// Why a revocation could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The API server refused or could not be reached.
    #[error("writing ConfigMap {0}")]
    Write(String, #[source] kube::Error),
    /// Entries cannot be sealed before the key Secret is loaded.
    #[error("the verifier key is not loaded yet")]
    NoKey,
}

/// Records revocations.
pub trait RevocationStore: Send + Sync + 'static {
    /// Record that `token` is revoked; `now` in unix seconds.
    fn revoke<'a>(
        &'a self,
        token: Revoked<'a>,
        now: i64,
    ) -> BoxFuture<'a, Result<(), RevocationError>>;
}

/// Revocations kept in this process only (tests and the benchmark server),
/// with the same quota and compaction as the stored ones.
#[cfg(any(test, feature = "bench"))]
#[derive(Debug, Clone)]
pub(crate) struct LocalRevocations {
    state: Arc<TokenState>,
    quota: usize,
}

#[cfg(any(test, feature = "bench"))]
impl LocalRevocations {
    /// Record into `state` directly, with the default quota.
    pub fn new(state: Arc<TokenState>) -> Self {
        Self::with_quota(state, DEFAULT_QUOTA)
    }

    /// Record into `state` with `quota` single entries per client.
    pub(crate) fn with_quota(state: Arc<TokenState>, quota: usize) -> Self {
        Self { state, quota }
    }
}

#[cfg(any(test, feature = "bench"))]
impl RevocationStore for LocalRevocations {
    fn revoke<'a>(
        &'a self,
        t: Revoked<'a>,
        now: i64,
    ) -> BoxFuture<'a, Result<(), RevocationError>> {
        let r = self.state.revocations();
        let plan = list::plan(&r.known(t.client_id, now), &t, self.quota, now);
        r.record(t.client_id, t.jti, &plan, now);
        Box::pin(async { Ok(()) })
    }
}

/// Revocations in per-client ConfigMaps of the operator namespace.
#[derive(Clone)]
pub(crate) struct ConfigMapRevocations {
    api: Api<ConfigMap>,
    state: Arc<TokenState>,
    quota: usize,
}

fn metadata(client_id: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(config_map_name(client_id)),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (LIST_LABEL.0.to_owned(), LIST_LABEL.1.to_owned()),
        ])),
        annotations: Some(BTreeMap::from([(
            CLIENT_ID_ANNOTATION.to_owned(),
            client_id.to_owned(),
        )])),
        ..Default::default()
    }
}

/// The merge patch setting (`Some`) or deleting (`None`) keys of
/// `client_id`'s ConfigMap, restoring its labels and annotation.
pub(crate) fn merge_patch(
    client_id: &str,
    data: &BTreeMap<String, Option<String>>,
) -> serde_json::Value {
    let meta = metadata(client_id);
    serde_json::json!({
        "metadata": {"labels": meta.labels, "annotations": meta.annotations},
        "data": data,
    })
}

impl ConfigMapRevocations {
    /// Revocations in `namespace`, mirrored into `state`, with `quota`
    /// single entries per client.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        state: Arc<TokenState>,
        quota: usize,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            state,
            quota,
        }
    }

    fn write_error(name: &str) -> impl FnOnce(kube::Error) -> RevocationError + '_ {
        move |e| RevocationError::Write(name.to_owned(), e)
    }

    /// Merge-patch `client_id`'s ConfigMap; if it does not exist, create it
    /// with `full` (every entry this replica knows, the change included).
    async fn write(
        &self,
        client_id: &str,
        change: &BTreeMap<String, Option<String>>,
        full: impl FnOnce() -> BTreeMap<String, String>,
    ) -> Result<(), RevocationError> {
        let name = config_map_name(client_id);
        let patch = merge_patch(client_id, change);
        let params = PatchParams::default();
        match self.api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let cm = ConfigMap {
                    metadata: metadata(client_id),
                    data: Some(full()),
                    ..Default::default()
                };
                match self.api.create(&PostParams::default(), &cm).await {
                    Ok(_) => Ok(()),
                    // Created meanwhile by another replica: patch it after all.
                    Err(kube::Error::Api(s)) if s.code == 409 => self
                        .api
                        .patch(&name, &params, &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                        .map_err(Self::write_error(&name)),
                    Err(e) => Err(RevocationError::Write(name, e)),
                }
            }
            Err(e) => Err(RevocationError::Write(name, e)),
        }
    }

    async fn apply_repair(&self, repair: Repair) -> Result<(), RevocationError> {
        match repair {
            Repair::Create { client_id, data } => {
                tracing::warn!(
                    config_map = %config_map_name(&client_id),
                    entries = data.len(),
                    "revocation ConfigMap missing; recreating it from what this replica knows"
                );
                let change = data
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect();
                self.write(&client_id, &change, || data).await
            }
            Repair::Patch {
                name,
                client_id,
                data,
            } => {
                let restored = data.values().filter(|v| v.is_some()).count();
                if restored > 0 {
                    tracing::warn!(
                        config_map = %name,
                        restored,
                        "revocation entries missing or altered; writing them back"
                    );
                }
                let full = data
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                    .collect();
                self.write(&client_id, &data, || full).await
            }
            Repair::Delete {
                name,
                resource_version,
            } => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: Some(resource_version),
                        uid: None,
                    }),
                    ..Default::default()
                };
                match self.api.delete(&name, &params).await {
                    // Gone already, or written meanwhile: nothing to do.
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    r => r.map(|_| ()).map_err(Self::write_error(&name)),
                }
            }
        }
    }

    /// Keep the stored copies in line with what this replica knows, forever:
    /// after every change the watch delivers, and when an entry expires.
    pub(crate) async fn run_repairs(self) {
        const MAX_SLEEP: Duration = Duration::from_secs(60);
        let r = self.state.revocations();
        loop {
            let now = Utc::now().timestamp();
            let sleep = r
                .next_expiry()
                .map(|at| Duration::from_secs(u64::try_from(at - now + 1).unwrap_or(0)))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                () = r.changed() => {}
                () = tokio::time::sleep(sleep) => {}
            }
            // Let a burst of watch events settle (and other replicas act).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Utc::now().timestamp();
            r.prune(now);
            let Some(keys) = self.state.keys() else {
                continue;
            };
            for repair in r.repairs(&keys.verifier_key, now) {
                if let Err(error) = self.apply_repair(repair).await {
                    tracing::warn!(%error, "repairing the revocation list failed; will retry");
                }
            }
        }
    }
}

impl RevocationStore for ConfigMapRevocations {
    fn revoke<'a>(
        &'a self,
        t: Revoked<'a>,
        now: i64,
    ) -> BoxFuture<'a, Result<(), RevocationError>> {
        Box::pin(async move {
            let keys = self.state.keys().ok_or(RevocationError::NoKey)?;
            let key = &keys.verifier_key;
            let r = self.state.revocations();
            let known = r.known(t.client_id, now);
            let plan = list::plan(&known, &t, self.quota, now);
            let mut after = known.clone();
            after.apply(t.jti, &plan, now);
            let stored = after.stored_data(key, t.client_id, now);
            let mut change: BTreeMap<String, Option<String>> = BTreeMap::new();
            match &plan {
                Plan::Nothing => return Ok(()),
                Plan::Token(e) => {
                    change.insert(
                        t.jti.to_owned(),
                        Some(list::sealed_value(key, t.client_id, t.jti, e.iat, e.exp)),
                    );
                }
                Plan::Compact(_) => {
                    change.extend(known.tokens.keys().map(|k| (k.clone(), None)));
                    change.insert(
                        list::CUTOFF_KEY.to_owned(),
                        stored.get(list::CUTOFF_KEY).cloned(),
                    );
                    tracing::info!(
                        client_id = %t.client_id,
                        entries = known.tokens.len(),
                        "revocation quota reached; compacting into a cutoff"
                    );
                }
            }
            self.write(t.client_id, &change, || stored).await?;
            r.record(t.client_id, t.jti, &plan, now);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_patch_touches_one_key_of_one_client() {
        let change = BTreeMap::from([("jti1".to_owned(), Some("1.2.seal".to_owned()))]);
        let p = merge_patch("m2mc_a", &change);
        assert_eq!(p["data"], serde_json::json!({"jti1": "1.2.seal"}));
        assert_eq!(p["metadata"]["annotations"][CLIENT_ID_ANNOTATION], "m2mc_a");
        assert_eq!(p["metadata"]["labels"][LIST_LABEL.0], LIST_LABEL.1);
        let bytes = serde_json::to_vec(&p).unwrap().len();
        println!("revoke patch: {bytes} bytes");
        assert!(bytes < 512);
        let deleted = BTreeMap::from([("old".to_owned(), None)]);
        assert_eq!(
            merge_patch("m2mc_a", &deleted)["data"]["old"],
            serde_json::Value::Null
        );
    }
}
