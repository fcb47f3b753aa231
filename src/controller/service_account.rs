//! Reconcile one m2m `ServiceAccount` into its status: do its roles exist,
//! is it valid under the namespace's scope policy, is it enabled, which
//! scopes and roles it is effectively granted, how many credentials use it.
//! Its credentials react to its changes through their own watch mapping —
//! including role changes, which change this status (effective scopes,
//! roles or `Ready`) whenever they change a credential's grant.

use super::{Context, Error, Step, kube_err};
use crate::core::grant::resolve_account;
use crate::crd::{Condition, ConditionStatus, ServiceAccount, ServiceAccountStatus, set_condition};
use crate::labels::FIELD_MANAGER;
use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Reconcile one ServiceAccount.
pub(crate) async fn reconcile(
    account: Arc<ServiceAccount>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if account.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = account
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = account.name_any();
    let now = Utc::now();
    let generation = account.metadata.generation;
    let old = account.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    status.credential_count = ctx
        .credentials
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(&ns) && c.spec.service_account_name == name)
        .count()
        .try_into()
        .unwrap_or(i32::MAX);

    let policy = ctx.policy_for(&ns);
    let roles = ctx.roles_for(&ns, &account.spec);
    let valid = resolve_account(&account.spec, &roles, policy.as_ref());
    (status.effective_scopes, status.roles) = match &valid {
        Ok(g) => (g.scopes.iter().cloned().collect(), g.roles.names(&ns)),
        Err(_) => (vec![], vec![]),
    };
    let c = |t: &str, ok: bool, reason: &str, msg: String| {
        let s = if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        Condition::new(t, s, reason, msg, generation, now)
    };
    let scopes = match &valid {
        Ok(_) => c(
            "ScopesAllowed",
            true,
            "WithinNamespacePolicy",
            "all scopes are allowed in this namespace".into(),
        ),
        Err(e) => c("ScopesAllowed", false, e.reason(), e.to_string()),
    };
    set_condition(&mut status.conditions, scopes);
    let disabled = if account.spec.disabled {
        c(
            "Disabled",
            true,
            "Disabled",
            "spec.disabled is true: no token is issued for this identity".into(),
        )
    } else {
        c(
            "Disabled",
            false,
            "Enabled",
            "the identity is enabled".into(),
        )
    };
    set_condition(&mut status.conditions, disabled);
    let ready = match (&valid, account.spec.disabled) {
        (Err(e), _) => c("Ready", false, e.reason(), e.to_string()),
        (Ok(_), true) => c("Ready", false, "Disabled", "spec.disabled is true".into()),
        (Ok(_), false) => c(
            "Ready",
            true,
            "Valid",
            "the identity can be used by its credentials".into(),
        ),
    };
    let previous = old.conditions.iter().find(|x| x.type_ == "Ready").cloned();
    let event = match &previous {
        Some(p) if p.status == ready.status && p.reason == ready.reason => None,
        _ if ready.status == ConditionStatus::False => Some((
            EventType::Warning,
            ready.reason.clone(),
            ready.message.clone(),
        )),
        Some(_) => Some((
            EventType::Normal,
            "Ready".to_owned(),
            "the identity is usable again".to_owned(),
        )),
        None => None,
    };
    set_condition(&mut status.conditions, ready);

    if status != old {
        patch_status(&ctx, &account, &ns, &status).await?;
    }
    if let Some((t, reason, note)) = event {
        ctx.event(account.as_ref(), t, &reason, note).await;
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}

async fn patch_status(
    ctx: &Context,
    account: &ServiceAccount,
    ns: &str,
    status: &ServiceAccountStatus,
) -> Result<(), Error> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": ServiceAccount::api_version(&()),
        "kind": ServiceAccount::kind(&()),
        "status": status,
    });
    match api
        .patch_status(
            &account.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err(Step::PatchServiceAccountStatus)(e)),
    }
}

/// Error policy of the ServiceAccount controller.
pub(crate) fn error_policy(
    account: Arc<ServiceAccount>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(serviceaccount = %account.name_any(), error = %error, "reconcile failed");
    Action::requeue(error.retry_after())
}
