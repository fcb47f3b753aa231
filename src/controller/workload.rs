//! Reconcile an `M2MCredential` in workload-identity mode
//! (`spec.workloadIdentity`, SPEC §6): there is no secret, so there is no
//! Secret — one written while the credential was secret-based is deleted,
//! and its verifiers are dropped, so neither the old secret nor tokens
//! obtained with it work any more. Status shows the binding
//! (`status.workloadIdentity.subject`) and `mode: WorkloadIdentity`.
//!
//! [`plan`] decides everything from the old status, the spec and the
//! resolved grant without I/O; [`reconcile`] applies it: delete the old
//! Secret (only if this credential owns it), then patch status, then emit
//! Events. Switching back to a client secret is the ordinary path in
//! [`super::credential`], which then creates a fresh Secret.

use super::credential::{
    READY, SECRET_SYNCED, cond_at as cond, delete_old_secret, next_requeue, patch_status,
};
use super::{Context, Error};
use crate::core::grant::{Grant, GrantError};
use crate::core::workload::resolve_binding;
use crate::crd::{
    CredentialMode, M2MCredential, M2MCredentialStatus, WorkloadIdentity, WorkloadIdentityStatus,
    set_condition,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

/// What a workload-identity reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadPlan {
    /// The status to write (written only if it differs from the old one).
    pub status: M2MCredentialStatus,
    /// Delete this Secret first (the one the secret-based mode wrote).
    pub delete_secret: Option<String>,
    /// Events to emit after the status is written.
    pub events: Vec<(EventType, &'static str, String)>,
}

/// The inputs [`plan`] decides from.
#[derive(Debug)]
pub struct WorkloadInputs<'a> {
    /// Credential namespace.
    pub namespace: &'a str,
    /// The credential's client id.
    pub client_id: &'a str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The workload-identity spec.
    pub spec: &'a WorkloadIdentity,
    /// `spec.expiresAt`.
    pub expires_at: Option<DateTime<Utc>>,
    /// The resolved grant of the credential.
    pub grant: Result<&'a Grant, &'a GrantError>,
    /// The issuer URL (the default audience).
    pub issuer: &'a str,
    /// The credential's name and UID (bound into the epoch's seal).
    pub name: &'a str,
    /// See `name`.
    pub uid: &'a str,
    /// The verifier key that seals the epoch.
    pub key: &'a crate::core::verifier::VerifierKey,
}

/// Decide the status, the Secret deletion and the Events of a
/// workload-identity credential.
pub fn plan(
    old: &M2MCredentialStatus,
    input: &WorkloadInputs<'_>,
    now: DateTime<Utc>,
) -> WorkloadPlan {
    let mut status = old.clone();
    let mut events = vec![];
    status.observed_generation = input.generation;
    status.client_id = Some(input.client_id.to_owned());
    status.expires_at = input.expires_at;
    let switched = old.mode != Some(CredentialMode::WorkloadIdentity)
        && (old.secret_version > 0 || old.secret_name.is_some());
    let delete_secret = status.secret_name.take();
    // No secret is accepted any more; the version counter stays so that a
    // switch back starts at a new version (old tokens never revive).
    status.verifiers.clear();
    status.secret_hint = None;
    status.last_rotation_time = None;
    status.next_rotation_time = None;
    status.mode = Some(CredentialMode::WorkloadIdentity);
    status.federation = None;
    status.conditions.retain(|c| c.type_ != SECRET_SYNCED);

    let binding = resolve_binding(input.namespace, input.spec);
    status.workload_identity = binding
        .as_ref()
        .ok()
        .map(|b| epoch_status(old, input, b.subject(), b.audience_or(input.issuer)));
    if switched {
        events.push((
            EventType::Normal,
            "WorkloadIdentityEnabled",
            match &delete_secret {
                Some(name) => format!(
                    "switched to workload identity: Secret {name:?} is deleted and its client secret no longer works"
                ),
                None => "switched to workload identity: the client secret no longer works".into(),
            },
        ));
    }
    let ready: Result<String, (&'static str, String)> = match (&input.grant, &binding) {
        (Err(e), _) => Err((e.reason(), e.to_string())),
        (_, Err(e)) => Err((e.reason(), e.to_string())),
        (Ok(_), Ok(b)) => Ok(format!(
            "client {} obtains tokens with service-account tokens of {} (audience {})",
            input.client_id,
            b.subject(),
            b.audience_or(input.issuer)
        )),
    };
    let condition = match &ready {
        Ok(msg) => cond(READY, true, "Issuing", msg, input.generation, now),
        Err((reason, msg)) => cond(READY, false, reason, msg, input.generation, now),
    };
    let previous = old.conditions.iter().find(|c| c.type_ == READY);
    let transitioned =
        previous.is_none_or(|p| p.status != condition.status || p.reason != condition.reason);
    if transitioned {
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
    WorkloadPlan {
        status,
        delete_secret,
        events,
    }
}

/// `status.workloadIdentity` for the binding `subject`/`audience`, with its
/// epoch: kept while the binding is the one the old status carries (sealed,
/// and no spec generation went unseen since, which might have hidden a
/// switch away and back); otherwise renewed to the current generation,
/// which is above every earlier epoch of this credential. So tokens of an
/// earlier binding, or of the same binding before it was removed and added
/// again, never come back. Sealed under the verifier key.
fn epoch_status(
    old: &M2MCredentialStatus,
    input: &WorkloadInputs<'_>,
    subject: String,
    audience: &str,
) -> WorkloadIdentityStatus {
    use crate::core::verifier::SecretBinding;
    use crate::core::workload::epoch_verifier;
    let binding = SecretBinding {
        namespace: input.namespace,
        name: input.name,
        uid: input.uid,
        client_id: input.client_id,
        version: 0,
    };
    let old_wi = old.workload_identity.as_ref();
    let epoch = choose_epoch(
        old_wi.map(|o| o.epoch),
        |e| {
            old_wi.is_some_and(|o| {
                o.subject == subject
                    && o.audience == audience
                    && input
                        .key
                        .is_sealed(&binding.with_version(e), &epoch_verifier(o))
            })
        },
        old.observed_generation,
        input.generation,
    );
    let mut status = WorkloadIdentityStatus {
        subject,
        audience: audience.to_owned(),
        epoch,
        seal: None,
    };
    let mut sealed = epoch_verifier(&status);
    input.key.seal(&binding.with_version(epoch), &mut sealed);
    status.seal = sealed.seal;
    status
}

/// The epoch of a binding (workload identity or federation): the old one
/// when `same_and_sealed` says it names this same binding with a valid
/// seal and no spec generation went unseen since (which might have hidden
/// a switch away and back); otherwise the current generation, above every
/// earlier epoch of the credential.
pub(super) fn choose_epoch(
    old_epoch: Option<i64>,
    same_and_sealed: impl FnOnce(i64) -> bool,
    observed_generation: Option<i64>,
    generation: Option<i64>,
) -> i64 {
    let nothing_unseen = crate::core::workload::epoch_may_stand(observed_generation, generation);
    match old_epoch {
        Some(e) if e > 0 && nothing_unseen && same_and_sealed(e) => e,
        _ => generation
            .unwrap_or(1)
            .max(1)
            .max(old_epoch.unwrap_or(0).saturating_add(1)),
    }
}

/// Apply [`plan`] for `cred`.
pub(crate) async fn reconcile(
    cred: &M2MCredential,
    ctx: &Context,
    input: &WorkloadInputs<'_>,
    uid: &str,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let old = cred.status.clone().unwrap_or_default();
    let mut plan = plan(&old, input, now);
    // spec.dormantAfter applies to workload identity too (usage version 0).
    let dormant_after = cred
        .spec
        .dormant_after
        .as_deref()
        .and_then(|d| crate::core::duration::parse_duration(d).ok());
    let dormant_due = super::credential::dormancy_of(
        cred,
        &mut plan.status,
        ctx.usage_memory.observe(cred, now).last_used,
        dormant_after,
        now,
        &mut plan.events,
    );
    if let Some(name) = &plan.delete_secret {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), input.namespace);
        delete_old_secret(&secrets, name, uid).await?;
    }
    if plan.status != old {
        patch_status(ctx, cred, &plan.status).await?;
    }
    for (type_, reason, note) in plan.events {
        ctx.event(cred, type_, reason, note).await;
    }
    let mut requeue = next_requeue(cred, &plan.status, now);
    if let Some(due) = dormant_due {
        let wait = (due - now).to_std().unwrap_or_default() + std::time::Duration::from_millis(50);
        requeue = requeue.min(wait);
    }
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConditionStatus, SecretVerifier};
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

    fn spec(sa: &str) -> WorkloadIdentity {
        WorkloadIdentity {
            kubernetes_service_account: sa.into(),
            ..Default::default()
        }
    }

    fn key() -> crate::core::verifier::VerifierKey {
        crate::core::verifier::VerifierKey::from_bytes(&[3; 32]).unwrap()
    }

    fn run(
        old: &M2MCredentialStatus,
        wi: &WorkloadIdentity,
        g: Result<&Grant, &GrantError>,
    ) -> WorkloadPlan {
        run_at(old, wi, g, 2)
    }

    fn run_at(
        old: &M2MCredentialStatus,
        wi: &WorkloadIdentity,
        g: Result<&Grant, &GrantError>,
        generation: i64,
    ) -> WorkloadPlan {
        let key = key();
        plan(
            old,
            &WorkloadInputs {
                namespace: "team-a",
                client_id: "m2m_x",
                generation: Some(generation),
                spec: wi,
                expires_at: None,
                grant: g,
                issuer: "https://iss",
                name: "c",
                uid: "u",
                key: &key,
            },
            at(100),
        )
    }

    /// The epoch stays while the binding does, and is renewed on a change
    /// of binding, on re-entering the mode and when a generation went unseen.
    #[test]
    fn the_epoch_is_renewed_on_every_binding_change() {
        let g = grant();
        let first = run_at(&M2MCredentialStatus::default(), &spec("a"), Ok(&g), 2).status;
        let epoch = |s: &M2MCredentialStatus| s.workload_identity.as_ref().unwrap().epoch;
        assert_eq!(epoch(&first), 2);
        // An unrelated spec change (generation 3, seen 2): kept.
        let same = run_at(&first, &spec("a"), Ok(&g), 3).status;
        assert_eq!(epoch(&same), 2);
        // Another ServiceAccount: renewed.
        let other = run_at(&same, &spec("b"), Ok(&g), 4).status;
        assert_eq!(epoch(&other), 4);
        // Back to the first after an unseen generation: renewed again.
        let back = run_at(&other, &spec("a"), Ok(&g), 6).status;
        assert_eq!(epoch(&back), 6);
        // Left the mode (no workloadIdentity in status) and came back.
        let mut left = back.clone();
        left.workload_identity = None;
        left.observed_generation = Some(7);
        assert_eq!(epoch(&run_at(&left, &spec("a"), Ok(&g), 8).status), 8);
        // A forged (unsealed) epoch is not kept: the current generation
        // is taken again, never the forged number.
        let mut forged = back.clone();
        forged.workload_identity.as_mut().unwrap().epoch = 1;
        let renewed = run_at(&forged, &spec("a"), Ok(&g), 6).status;
        assert_eq!(epoch(&renewed), 6);
        assert_ne!(renewed.workload_identity.unwrap().seal, None);
    }

    fn ready(p: &WorkloadPlan) -> (ConditionStatus, String) {
        let c = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        (c.status, c.reason.clone())
    }

    #[test]
    fn switching_from_a_secret_deletes_it_and_drops_every_verifier() {
        let old = M2MCredentialStatus {
            mode: Some(CredentialMode::ClientSecret),
            secret_name: Some("c-credentials".into()),
            secret_version: 3,
            secret_hint: Some("…abcd".into()),
            verifiers: vec![SecretVerifier {
                version: 3,
                digest: "d".into(),
                not_after: None,
                seal: Some("s".into()),
            }],
            ..Default::default()
        };
        let g = grant();
        let p = run(&old, &spec("uploader"), Ok(&g));
        assert_eq!(p.delete_secret.as_deref(), Some("c-credentials"));
        assert!(p.status.verifiers.is_empty());
        assert_eq!(p.status.secret_name, None);
        assert_eq!(p.status.secret_hint, None);
        assert_eq!(
            p.status.secret_version, 3,
            "kept: a switch back moves on to 4"
        );
        assert_eq!(p.status.mode, Some(CredentialMode::WorkloadIdentity));
        let wi = p.status.workload_identity.clone().unwrap();
        assert_eq!(wi.subject, "system:serviceaccount:team-a:uploader");
        assert_eq!(wi.audience, "https://iss");
        assert_eq!(wi.epoch, 2, "the generation of the switch");
        assert!(wi.seal.is_some());
        assert_eq!(ready(&p), (ConditionStatus::True, "Issuing".into()));
        let reasons: Vec<_> = p.events.iter().map(|e| e.1).collect();
        assert_eq!(reasons, ["WorkloadIdentityEnabled"]);
        // Converged: the same plan again writes nothing and says nothing.
        let again = run(&p.status, &spec("uploader"), Ok(&g));
        assert_eq!(again.status, p.status);
        assert_eq!(again.delete_secret, None);
        assert!(again.events.is_empty());
    }

    #[test]
    fn the_default_service_account_needs_the_opt_in() {
        let g = grant();
        let p = run(&M2MCredentialStatus::default(), &spec("default"), Ok(&g));
        assert_eq!(
            ready(&p),
            (
                ConditionStatus::False,
                "DefaultServiceAccountNotAllowed".into()
            )
        );
        assert_eq!(p.status.workload_identity, None);
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].0, EventType::Warning);
        let mut allowed = spec("default");
        allowed.allow_default_service_account = true;
        let p = run(&p.status, &allowed, Ok(&g));
        assert_eq!(ready(&p), (ConditionStatus::True, "Issuing".into()));
    }

    #[test]
    fn an_invalid_grant_is_not_ready_with_its_reason() {
        let e = GrantError::ServiceAccountNotFound("ci-bot".into());
        let p = run(&M2MCredentialStatus::default(), &spec("uploader"), Err(&e));
        assert_eq!(
            ready(&p),
            (ConditionStatus::False, "ServiceAccountNotFound".into())
        );
        assert!(p.events.is_empty() || p.events[0].1 == "ServiceAccountNotFound");
    }
}
