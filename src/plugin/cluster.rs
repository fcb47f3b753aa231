//! The connection to the cluster, as kubectl makes it: `--kubeconfig` (else
//! `$KUBECONFIG`, else `~/.kube/config`, else in-cluster), `--context`, and
//! the namespace from `-n` or the context. API errors become messages that
//! name the resource and the fix.

use super::PluginError;
use super::cli::GlobalArgs;
use crate::crd::M2MCredential;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client for the chosen context and the namespace commands act in.
#[derive(Clone)]
pub struct Cluster {
    /// The client, authenticated as the caller.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    /// The kubeconfig context in use, for messages.
    pub context: Option<String>,
}

impl Cluster {
    /// Connect with the kubeconfig and context `g` names.
    pub async fn connect(g: &GlobalArgs) -> Result<Self, PluginError> {
        let kubeconfig_error = |message: String| PluginError::Kubeconfig {
            context: g.context.clone(),
            message,
        };
        let kubeconfig = match &g.kubeconfig {
            // kube's message already names the path.
            Some(path) => Some(
                Kubeconfig::read_from(path)
                    .map_err(|e| kubeconfig_error(super::error_chain(&e)))?,
            ),
            None => match Kubeconfig::read() {
                Ok(k) => Some(k),
                // kubectl's fallback: a pod with a mounted service-account token.
                Err(_)
                    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                        && g.context.is_none() =>
                {
                    None
                }
                Err(e) => return Err(kubeconfig_error(super::error_chain(&e))),
            },
        };
        let (config, context) = match kubeconfig {
            Some(kubeconfig) => {
                let context = g
                    .context
                    .clone()
                    .or_else(|| kubeconfig.current_context.clone());
                let options = KubeConfigOptions {
                    context: g.context.clone(),
                    ..Default::default()
                };
                let config = Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| kubeconfig_error(super::error_chain(&e)))?;
                (config, context)
            }
            None => (
                Config::incluster().map_err(|e| kubeconfig_error(super::error_chain(&e)))?,
                None,
            ),
        };
        let namespace = g
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| PluginError::Unreachable {
            context: context.clone(),
            message: super::error_chain(&e),
        })?;
        Ok(Self {
            client,
            namespace,
            context,
        })
    }

    /// Typed credentials in the current namespace.
    pub fn credentials(&self) -> Api<M2MCredential> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Credentials as plain JSON objects (every field the apiserver returns,
    /// including ones newer than this build's CRD types), in `namespace` or
    /// in all namespaces.
    pub(crate) fn credentials_dynamic(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = ApiResource::erase::<M2MCredential>(&());
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// Turn an API error into a message naming the resource and the fix.
    /// `name` is the credential (or Secret) being read, if any; `action`
    /// says what was being done.
    pub fn error(&self, e: kube::Error, target: Target<'_>, action: &str) -> PluginError {
        match e {
            kube::Error::Api(status) => {
                if status.code == 404 {
                    return match target {
                        Target::Credential(name) => {
                            // A 404 for a named object and a 404 for a missing
                            // resource type look alike; both are real answers.
                            if status
                                .details
                                .as_ref()
                                .is_some_and(|d| d.kind == "m2mcredentials")
                                || !status
                                    .message
                                    .contains("the server could not find the requested resource")
                            {
                                PluginError::CredentialNotFound {
                                    name: name.to_owned(),
                                    namespace: self.namespace.clone(),
                                }
                            } else {
                                PluginError::CrdMissing
                            }
                        }
                        Target::Credentials => PluginError::CrdMissing,
                        Target::Secret { secret, credential } => PluginError::Credential(format!(
                            "Secret {secret:?} of m2mcredential {credential:?} not found in namespace {:?}; the operator creates it once the credential is Ready (see kubectl m2m status -n {} {credential})",
                            self.namespace, self.namespace
                        )),
                    };
                }
                if status.code == 403 {
                    let fix = match target {
                        Target::Credential(_) | Target::Credentials => format!(
                            "ask your cluster admin for {action_verb} on m2mcredentials.m2m.dev in namespace {:?}",
                            self.namespace,
                            action_verb = verb(action)
                        ),
                        Target::Secret { secret, .. } => format!(
                            "kubectl m2m token reads the Secret with your own credentials: ask for get on Secret {secret:?} in namespace {:?}",
                            self.namespace
                        ),
                    };
                    return PluginError::Forbidden {
                        message: status.message.clone(),
                        fix,
                    };
                }
                PluginError::Api {
                    action: action.to_owned(),
                    message: format!(
                        "{} ({}, HTTP {})",
                        status.message, status.reason, status.code
                    ),
                }
            }
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                PluginError::Unreachable {
                    context: self.context.clone(),
                    message: super::error_chain(&e),
                }
            }
            e => PluginError::Api {
                action: action.to_owned(),
                message: super::error_chain(&e),
            },
        }
    }
}

/// What an API call was about, for error messages.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One named credential.
    Credential(&'a str),
    /// A list of credentials.
    Credentials,
    /// The Secret of a credential.
    Secret {
        /// The Secret's name.
        secret: &'a str,
        /// The credential's name.
        credential: &'a str,
    },
}

fn verb(action: &str) -> &'static str {
    if action.starts_with("listing") {
        "list"
    } else if action.starts_with("rotating") {
        "patch"
    } else if action.starts_with("watching") {
        "watch"
    } else {
        "get"
    }
}
