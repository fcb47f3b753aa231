//! The watches that keep [`TokenState`] current: M2MCredentials and
//! ServiceAccounts (m2m.dev) cluster-wide, Namespace metadata (for the
//! `m2m.dev/allowed-scopes` policy), the operator key Secret and the
//! revocation ConfigMap (each watched by name with a field selector, so
//! RBAC can restrict them with `resourceNames`).
//!
//! Each watch feeds a reflector store. After every change the affected
//! part of the state is rebuilt from the stores — with
//! [`CredentialIndex::build`], the same function tests use — and swapped in;
//! bursts of events are coalesced into one rebuild. Readiness: every watch
//! has completed its initial list and a signing key is loaded.

use super::index::{CredentialIndex, KeyMaterial, RevocationList, TokenState};
use super::revocation::REVOCATION_CONFIGMAP_NAME;
use crate::admin::ReadyFlag;
use crate::core::grant::ScopePolicy;
use crate::crd::{M2MCredential, ServiceAccount};
use crate::signing::store::KEY_SECRET_NAME;
use chrono::Utc;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, Event, watcher};
use std::pin::Pin;
use std::sync::Arc;

/// Which store an event touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Credentials = 0,
    Accounts = 1,
    Namespaces = 2,
    Keys = 3,
    Revocations = 4,
}

/// What a watch event means for the state.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// The store changed.
    Changed(Source),
    /// The initial list finished (the store changed too).
    Synced(Source),
    /// Nothing visible (an `Init`/`InitApply` buffered by the reflector, or an error).
    Nothing,
}

type ChangeStream = Pin<Box<dyn Stream<Item = Change> + Send>>;

fn tag<K, S>(source: Source, stream: S) -> ChangeStream
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    stream
        .map(move |event| match event {
            Ok(Event::Apply(_) | Event::Delete(_)) => Change::Changed(source),
            Ok(Event::InitDone) => Change::Synced(source),
            Ok(Event::Init | Event::InitApply(_)) => Change::Nothing,
            Err(error) => {
                tracing::warn!(?source, %error, "watch failed; retrying with backoff");
                Change::Nothing
            }
        })
        .boxed()
}

/// Where and what to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The operator namespace (key Secret, revocation ConfigMap).
    pub operator_namespace: String,
    /// Scope policy of namespaces without the annotation.
    pub default_policy: ScopePolicy,
    /// Watch credentials and ServiceAccounts of this namespace only
    /// (`--watch-namespace`); `None`: the whole cluster.
    pub watch_namespace: Option<String>,
}

/// Readiness flags the watches drive.
#[derive(Debug, Clone)]
pub struct WatchReadiness {
    /// Every watch completed its initial list.
    pub synced: ReadyFlag,
    /// A signing key is loaded.
    pub signing_key: ReadyFlag,
}

/// Run the watches forever, keeping `state` current.
pub async fn run_watches(
    client: kube::Client,
    cfg: WatchConfig,
    state: Arc<TokenState>,
    ready: WatchReadiness,
) {
    let ns = cfg.operator_namespace.as_str();
    let (credentials, w_credentials) = reflector::store::<M2MCredential>();
    let (accounts, w_accounts) = reflector::store::<ServiceAccount>();
    let (namespaces, w_namespaces) = reflector::store();
    let (keys, w_keys) = reflector::store::<Secret>();
    let (revocations, w_revocations) = reflector::store::<ConfigMap>();
    let all = watcher::Config::default();
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (credential_api, account_api, namespace_cfg): (Api<M2MCredential>, Api<ServiceAccount>, _) =
        match &cfg.watch_namespace {
            Some(watched) => (
                Api::namespaced(client.clone(), watched),
                Api::namespaced(client.clone(), watched),
                by_name(watched),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                all.clone(),
            ),
        };

    let streams: Vec<ChangeStream> = vec![
        tag(
            Source::Credentials,
            reflector(w_credentials, watcher(credential_api, all.clone())).default_backoff(),
        ),
        tag(
            Source::Accounts,
            reflector(w_accounts, watcher(account_api, all.clone())).default_backoff(),
        ),
        tag(
            Source::Namespaces,
            reflector(
                w_namespaces,
                watcher(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    namespace_cfg,
                ),
            )
            .default_backoff(),
        ),
        tag(
            Source::Keys,
            reflector(
                w_keys,
                watcher(
                    Api::namespaced(client.clone(), ns),
                    by_name(KEY_SECRET_NAME),
                ),
            )
            .default_backoff(),
        ),
        tag(
            Source::Revocations,
            reflector(
                w_revocations,
                watcher(
                    Api::namespaced(client.clone(), ns),
                    by_name(REVOCATION_CONFIGMAP_NAME),
                ),
            )
            .default_backoff(),
        ),
    ];
    let mut changes = futures::stream::select_all(streams);
    let mut synced = [false; 5];
    let stores = Stores {
        credentials,
        accounts,
        namespaces,
        keys,
        revocations,
    };
    while let Some(first) = changes.next().await {
        // Coalesce everything already queued into one rebuild.
        let mut dirty = [false; 5];
        let mut pending = Some(first);
        while let Some(change) = pending {
            match change {
                Change::Changed(s) => dirty[s as usize] = true,
                Change::Synced(s) => {
                    dirty[s as usize] = true;
                    synced[s as usize] = true;
                }
                Change::Nothing => {}
            }
            pending = changes.next().now_or_never().flatten();
        }
        if dirty[Source::Credentials as usize]
            || dirty[Source::Accounts as usize]
            || dirty[Source::Namespaces as usize]
        {
            state.set_credentials(stores.credential_index(&cfg.default_policy));
        }
        if dirty[Source::Keys as usize] {
            match stores.keys.state().first() {
                None => {
                    if synced[Source::Keys as usize] {
                        tracing::warn!(
                            namespace = ns,
                            name = KEY_SECRET_NAME,
                            "the operator key Secret does not exist (yet)"
                        );
                    }
                    state.set_keys(None);
                }
                Some(secret) => match KeyMaterial::from_secret(secret, Utc::now()) {
                    Ok(material) => {
                        tracing::info!(
                            active_kid = material.ring.active().map(|s| s.kid()),
                            "loaded the operator keys"
                        );
                        state.set_keys(Some(material));
                    }
                    Err(error) => {
                        tracing::error!(%error, "the operator key Secret is unusable; keeping the previous keys");
                    }
                },
            }
        }
        if dirty[Source::Revocations as usize] {
            let list = RevocationList::from_config_map(
                stores.revocations.state().first().map(|c| c.as_ref()),
            );
            state.set_revocations(list, Utc::now().timestamp());
        }
        ready.synced.set(synced.iter().all(|s| *s));
        ready
            .signing_key
            .set(state.keys().is_some_and(|k| k.ring.active().is_some()));
    }
}

struct Stores {
    credentials: Store<M2MCredential>,
    accounts: Store<ServiceAccount>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    keys: Store<Secret>,
    revocations: Store<ConfigMap>,
}

impl Stores {
    fn credential_index(&self, default_policy: &ScopePolicy) -> CredentialIndex {
        let credentials = self.credentials.state();
        let accounts = self.accounts.state();
        let namespaces = self.namespaces.state();
        CredentialIndex::build(
            credentials.iter().map(|c| c.as_ref()),
            accounts.iter().map(|a| a.as_ref()),
            namespaces.iter().map(|n| &n.metadata),
            default_policy,
            Utc::now(),
        )
    }
}
