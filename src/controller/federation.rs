//! Reconcile an `M2MCredential` in federation mode (`spec.federation`,
//! SPEC §9): like workload identity there is no secret, so no Secret (one
//! written before is deleted and its verifiers dropped); status shows the
//! binding (`status.federation`: issuer, subject and a sealed epoch) and
//! `mode: Federation`.
//!
//! The binding is valid when the issuer exists, may be bound from this
//! namespace (a `TrustedIssuer` is always looked up in the credential's
//! own namespace; a `ClusterTrustedIssuer` only from a namespace its
//! `allowedNamespaces` selects), compiles, and the optional `condition`
//! compiles. Otherwise `Ready=False` with a precise reason and an Event.
//! The token servers decide the same from their own watches, so a
//! refusal here is a report, not the enforcement.

use super::credential::{
    READY, SECRET_SYNCED, cond_at as cond, delete_old_secret, next_requeue, patch_status,
};
use super::{Context, Error};
use crate::core::federation::{FederationBinding, IssuerId, epoch_verifier};
use crate::core::grant::{Grant, GrantError};
use crate::core::verifier::{SecretBinding, VerifierKey};
use crate::crd::{
    CredentialMode, Federation, FederationStatus, M2MCredential, M2MCredentialStatus, set_condition,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use std::collections::BTreeMap;

/// How a federation binding was found.
#[derive(Debug, Clone, PartialEq)]
pub enum IssuerState {
    /// No such issuer object.
    Missing,
    /// It exists but this namespace may not bind it.
    NotAllowed,
    /// Its spec does not compile (the issuer's own status says why).
    Invalid(String),
    /// Usable: its `iss` and whether its `Ready` is `True`.
    Found {
        /// The issuer URL.
        issuer: String,
        /// Its status says Ready.
        ready: bool,
    },
}

/// The inputs [`plan`] decides from.
pub struct FederationInputs<'a> {
    /// Credential namespace.
    pub namespace: &'a str,
    /// Credential name.
    pub name: &'a str,
    /// Credential UID.
    pub uid: &'a str,
    /// The client id.
    pub client_id: &'a str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.federation`.
    pub spec: &'a Federation,
    /// `spec.expiresAt`.
    pub expires_at: Option<DateTime<Utc>>,
    /// The resolved grant.
    pub grant: Result<&'a Grant, &'a GrantError>,
    /// What was found of the issuer.
    pub issuer: IssuerState,
    /// The verifier key that seals the epoch.
    pub key: &'a VerifierKey,
}

/// What a federation reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub struct FederationPlan {
    /// The status to write (if it differs).
    pub status: M2MCredentialStatus,
    /// Delete this Secret first (the one the secret-based mode wrote).
    pub delete_secret: Option<String>,
    /// Events after the status.
    pub events: Vec<(EventType, &'static str, String)>,
}

/// Decide status, Secret deletion and Events.
pub fn plan(
    old: &M2MCredentialStatus,
    input: &FederationInputs<'_>,
    now: DateTime<Utc>,
) -> FederationPlan {
    let mut status = old.clone();
    let mut events = vec![];
    status.observed_generation = input.generation;
    status.client_id = Some(input.client_id.to_owned());
    status.expires_at = input.expires_at;
    let switched = old.mode != Some(CredentialMode::Federation)
        && (old.secret_version > 0 || old.secret_name.is_some() || old.workload_identity.is_some());
    let delete_secret = status.secret_name.take();
    status.verifiers.clear();
    status.secret_hint = None;
    status.last_rotation_time = None;
    status.next_rotation_time = None;
    status.workload_identity = None;
    status.mode = Some(CredentialMode::Federation);
    status.conditions.retain(|c| c.type_ != SECRET_SYNCED);

    let binding = FederationBinding::resolve(input.namespace, input.spec);
    let id = binding.issuer.to_string();
    let binding_ok: Result<String, (&'static str, String)> =
        match (&input.issuer, &binding.condition) {
            (IssuerState::Missing, _) => Err(("IssuerNotFound", format!("{id} does not exist"))),
            (IssuerState::NotAllowed, _) => Err((
                "IssuerNotAllowed",
                format!(
                    "{id} does not allow namespace {} (its allowedNamespaces does not select it)",
                    input.namespace
                ),
            )),
            (IssuerState::Invalid(why), _) => {
                Err(("IssuerInvalid", format!("{id} is invalid: {why}")))
            }
            (_, Some(Err(e))) => Err((
                "InvalidCondition",
                format!("spec.federation.condition: {e}"),
            )),
            (IssuerState::Found { issuer, .. }, _) => Ok(issuer.clone()),
        };
    status.federation = binding_ok
        .as_ref()
        .ok()
        .map(|issuer| epoch_status(old, input, &id, issuer, &binding.subject));
    if switched {
        events.push((
            EventType::Normal,
            "FederationEnabled",
            match &delete_secret {
                Some(name) => format!("switched to federation: Secret {name:?} is deleted and its client secret no longer works"),
                None => "switched to federation: the previous authentication no longer works".into(),
            },
        ));
    }
    let ready: Result<String, (&'static str, String)> = match (
        &input.grant,
        &binding_ok,
        &input.issuer,
    ) {
        (Err(e), _, _) => Err((e.reason(), e.to_string())),
        (_, Err(e), _) => Err(e.clone()),
        // The issuer's own readiness (keys reachable) is its status,
        // not the binding's: the credential says so without turning
        // unready, which would flap every credential of an issuer with
        // the issuer's network.
        (Ok(_), Ok(iss), issuer) => Ok(format!(
            "client {} obtains tokens with JWTs of {iss} ({id}) whose sub is {:?}{}",
            input.client_id,
            binding.subject,
            if matches!(issuer, IssuerState::Found { ready: false, .. }) {
                "; the issuer is not ready (see its conditions): its tokens may be refused until it is"
            } else {
                ""
            }
        )),
    };
    let condition = match &ready {
        Ok(msg) => cond(READY, true, "Issuing", msg, input.generation, now),
        Err((reason, msg)) => cond(READY, false, reason, msg, input.generation, now),
    };
    let previous = old.conditions.iter().find(|c| c.type_ == READY);
    if previous.is_none_or(|p| p.status != condition.status || p.reason != condition.reason) {
        match &ready {
            Err((reason, msg)) => events.push((EventType::Warning, reason, msg.clone())),
            Ok(_) if previous.is_some() && !switched => events.push((
                EventType::Normal,
                "Ready",
                "the credential is usable again".into(),
            )),
            Ok(_) => {}
        }
    }
    set_condition(&mut status.conditions, condition);
    FederationPlan {
        status,
        delete_secret,
        events,
    }
}

/// `status.federation` with its epoch: kept while the binding is the one
/// the old status names (sealed, no generation unseen), else renewed to
/// the current generation — so tokens of an earlier binding never return.
fn epoch_status(
    old: &M2MCredentialStatus,
    input: &FederationInputs<'_>,
    issuer_ref: &str,
    issuer: &str,
    subject: &str,
) -> FederationStatus {
    let binding = SecretBinding {
        namespace: input.namespace,
        name: input.name,
        uid: input.uid,
        client_id: input.client_id,
        version: 0,
    };
    let old_f = old.federation.as_ref();
    let epoch = super::workload::choose_epoch(
        old_f.map(|o| o.epoch),
        |e| {
            old_f.is_some_and(|o| {
                o.issuer_ref == issuer_ref
                    && o.issuer == issuer
                    && o.subject == subject
                    && input
                        .key
                        .is_sealed(&binding.with_version(e), &epoch_verifier(o))
            })
        },
        old.observed_generation,
        input.generation,
    );
    let mut status = FederationStatus {
        issuer_ref: issuer_ref.to_owned(),
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        epoch,
        seal: None,
    };
    let mut sealed = epoch_verifier(&status);
    input.key.seal(&binding.with_version(epoch), &mut sealed);
    status.seal = sealed.seal;
    status
}

/// Find the issuer a credential binds, as the token servers would.
pub(crate) fn issuer_state(ctx: &Context, namespace: &str, spec: &Federation) -> IssuerState {
    let id = IssuerId::referenced(namespace, &spec.issuer_ref);
    let Some(found) = ctx.issuers.lookup(&id, &ctx.config.operator_namespace) else {
        return IssuerState::Missing;
    };
    let compiled = match found.compiled {
        Ok(c) => c,
        Err(e) => return IssuerState::Invalid(e.to_string()),
    };
    let labels: BTreeMap<String, String> = ctx
        .namespaces
        .get(&kube::runtime::reflector::ObjectRef::new(namespace))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    if !compiled.binds_from(namespace, &labels) {
        return IssuerState::NotAllowed;
    }
    IssuerState::Found {
        issuer: compiled.issuer,
        ready: found.ready,
    }
}

/// Apply [`plan`] for `cred`.
pub(crate) async fn reconcile(
    cred: &M2MCredential,
    ctx: &Context,
    input: &FederationInputs<'_>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let old = cred.status.clone().unwrap_or_default();
    let plan = plan(&old, input, now);
    if let Some(name) = &plan.delete_secret {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), input.namespace);
        delete_old_secret(&secrets, name, input.uid).await?;
    }
    if plan.status != old {
        patch_status(ctx, cred, &plan.status).await?;
    }
    for (type_, reason, note) in plan.events {
        ctx.event(cred, type_, reason, note).await;
    }
    Ok(Action::requeue(next_requeue(cred, &plan.status, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConditionStatus, IssuerKind, IssuerRef};
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    fn grant() -> Grant {
        Grant {
            scopes: BTreeSet::from(["a".to_owned()]),
            audiences: vec![],
            token_ttl: Duration::from_secs(60),
            expires_at: None,
            roles: Default::default(),
        }
    }

    fn spec(subject: &str, condition: Option<&str>) -> Federation {
        Federation {
            issuer_ref: IssuerRef {
                kind: IssuerKind::ClusterTrustedIssuer,
                name: "ci".into(),
            },
            subject: subject.into(),
            condition: condition.map(str::to_owned),
        }
    }

    fn run(
        old: &M2MCredentialStatus,
        f: &Federation,
        issuer: IssuerState,
        generation: i64,
    ) -> FederationPlan {
        let key = VerifierKey::from_bytes(&[3; 32]).unwrap();
        let g = grant();
        plan(
            old,
            &FederationInputs {
                namespace: "team-a",
                name: "c",
                uid: "u",
                client_id: "m2m_x",
                generation: Some(generation),
                spec: f,
                expires_at: None,
                grant: Ok(&g),
                issuer,
                key: &key,
            },
            at(100),
        )
    }

    fn found() -> IssuerState {
        IssuerState::Found {
            issuer: "https://ci.example".into(),
            ready: true,
        }
    }

    fn ready(p: &FederationPlan) -> (ConditionStatus, String) {
        let c = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        (c.status, c.reason.clone())
    }

    #[test]
    fn every_bad_binding_is_not_ready_with_its_reason() {
        let old = M2MCredentialStatus::default();
        let f = spec("repo:acme/app:ref:refs/heads/main", None);
        for (issuer, reason) in [
            (IssuerState::Missing, "IssuerNotFound"),
            (IssuerState::NotAllowed, "IssuerNotAllowed"),
            (IssuerState::Invalid("x".into()), "IssuerInvalid"),
        ] {
            let p = run(&old, &f, issuer, 1);
            assert_eq!(ready(&p), (ConditionStatus::False, reason.into()));
            assert_eq!(p.events[0].1, reason);
        }
        // An issuer whose keys are unreachable: the binding is still valid.
        let unready = IssuerState::Found {
            issuer: "https://ci.example".into(),
            ready: false,
        };
        let p = run(&old, &f, unready, 1);
        assert_eq!(ready(&p), (ConditionStatus::True, "Issuing".into()));
        let message = &p.status.conditions[0].message;
        assert!(message.contains("the issuer is not ready"), "{message}");
        let bad = spec("s", Some("claims.x =="));
        assert_eq!(ready(&run(&old, &bad, found(), 1)).1, "InvalidCondition");
    }

    #[test]
    fn the_epoch_is_sealed_kept_and_renewed_on_a_binding_change() {
        let f = spec("repo:acme/app:ref:refs/heads/main", None);
        let first = run(&M2MCredentialStatus::default(), &f, found(), 2);
        assert_eq!(ready(&first), (ConditionStatus::True, "Issuing".into()));
        let fs = first.status.federation.clone().unwrap();
        assert_eq!(
            (fs.epoch, fs.issuer_ref.as_str()),
            (2, "ClusterTrustedIssuer/ci")
        );
        assert!(fs.seal.is_some());
        let again = run(&first.status, &f, found(), 3);
        assert_eq!(again.status.federation.unwrap().epoch, 2);
        let other = run(
            &first.status,
            &spec("repo:acme/other:ref:refs/heads/main", None),
            found(),
            4,
        );
        assert_eq!(other.status.federation.unwrap().epoch, 4);
    }

    #[test]
    fn switching_from_a_secret_deletes_it() {
        let old = M2MCredentialStatus {
            mode: Some(CredentialMode::ClientSecret),
            secret_name: Some("c-credentials".into()),
            secret_version: 2,
            ..Default::default()
        };
        let p = run(&old, &spec("s", None), found(), 3);
        assert_eq!(p.delete_secret.as_deref(), Some("c-credentials"));
        assert_eq!(p.status.mode, Some(CredentialMode::Federation));
        assert_eq!(p.events[0].1, "FederationEnabled");
    }
}
