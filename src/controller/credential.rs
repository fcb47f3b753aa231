//! Reconcile one `M2MCredential`: dereference (account, namespace policy,
//! existing Secret) → validate (grant) → decide (create, rotate, repair,
//! finish an interrupted rotation, or nothing) → apply (Secret first, then
//! status). Writing the Secret before the status makes every crash point
//! recoverable: the Secret's HMAC annotations prove it was our write, so the
//! next reconcile adopts it instead of treating it as tampering.

use super::secret::{
    self, AuthenticSecret, FIELD_MANAGER, ObservedSecret, SecretContents, build_secret,
};
use super::{Context, Error, failpoint, kube_err};
use crate::core::client_secret::{ClientSecret, client_id_for_uid};
use crate::core::duration::parse_duration;
use crate::core::grant::{Grant, resolve_grant};
use crate::core::rotation::{
    RotationInputs, next_scheduled, prune_verifiers, rotate_verifiers, rotation_due,
};
use crate::core::verifier::{SecretBinding, next_expiry};
use crate::crd::{
    Condition, ConditionStatus, CredentialMode, M2MCredential, M2MCredentialStatus,
    ROTATE_ANNOTATION, SecretVerifier, set_condition,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Condition type: the credential can be used to obtain tokens.
pub const READY: &str = "Ready";
/// Condition type: the Secret exists and matches the verification state.
pub const SECRET_SYNCED: &str = "SecretSynced";

/// Requeue when nothing is scheduled sooner: a safety net, not a clock.
const IDLE_REQUEUE: Duration = Duration::from_secs(3600);

/// Why a new secret is generated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Generate {
    /// First secret of the credential.
    Initial,
    /// Requested by annotation or schedule.
    Rotation(crate::core::rotation::RotationTrigger),
    /// `spec.secretName` changed: a new Secret under the new name.
    Renamed { old: String },
    /// The Secret was deleted by hand.
    Deleted,
    /// The Secret was edited by hand (or restored from an old copy).
    Tampered,
}

impl Generate {
    fn event(&self) -> (EventType, &'static str, String) {
        match self {
            Self::Initial => (EventType::Normal, "SecretCreated", "generated the client secret".into()),
            Self::Rotation(t) => (EventType::Normal, t.reason(), format!("rotated the client secret: {}", t.message())),
            Self::Renamed { old } => (EventType::Normal, "SecretRenamed", format!("moved the credential from Secret {old:?} to a new Secret with a fresh client secret")),
            Self::Deleted => (EventType::Warning, "SecretDeleted", "the Secret was deleted by hand: repaired with a fresh client secret; the old one no longer works".into()),
            Self::Tampered => (EventType::Warning, "SecretTampered", "the Secret was edited by hand: repaired with a fresh client secret; the edited value is never accepted".into()),
        }
    }

    /// Only requested rotations honour the grace period: a secret that was
    /// tampered with or deleted may be compromised.
    fn grace(&self, spec_grace: Duration) -> Duration {
        match self {
            Self::Rotation(_) | Self::Renamed { .. } => spec_grace,
            Self::Initial | Self::Deleted | Self::Tampered => Duration::ZERO,
        }
    }
}

/// The default Secret name of a credential.
pub fn secret_name(cred: &M2MCredential) -> String {
    cred.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", cred.name_any()))
}

fn grace_period(cred: &M2MCredential) -> Duration {
    // The schema pattern admits only durations the parser accepts.
    cred.spec
        .rotation
        .grace_period
        .as_deref()
        .and_then(|g| parse_duration(g).ok())
        .unwrap_or_default()
}

fn rotation_every(cred: &M2MCredential) -> Option<Duration> {
    cred.spec
        .rotation
        .every
        .as_deref()
        .and_then(|e| parse_duration(e).ok())
}

/// Reconcile one credential.
pub async fn reconcile(cred: Arc<M2MCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cred.metadata.deletion_timestamp.is_some() {
        // The Secret is garbage-collected through its owner reference and
        // token servers drop the credential from their index: nothing to do.
        return Ok(Action::await_change());
    }
    let key = ctx.verifier_key.load_full().ok_or(Error::KeysNotReady)?;
    let ns = cred
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cred.name_any();
    let uid = cred.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let client_id = client_id_for_uid(&uid);
    let now = Utc::now();
    let generation = cred.metadata.generation;
    let secret_name = secret_name(&cred);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);

    // Dereference.
    let account = ctx
        .accounts
        .get(&ObjectRef::new(&cred.spec.service_account_name).within(&ns));
    let policy = ctx.policy_for(&ns);

    // Workload identity hook: no secret, no Secret (see super::workload).
    if let Some(wi) = &cred.spec.workload_identity {
        let grant = resolve_grant(
            &cred.spec,
            account.as_ref().map(|a| &a.spec),
            policy.as_ref(),
            now,
        );
        let input = super::workload::WorkloadInputs {
            namespace: &ns,
            client_id: &client_id,
            generation,
            spec: wi,
            expires_at: cred.spec.expires_at,
            grant: grant.as_ref(),
            issuer: &ctx.config.issuer,
        };
        return super::workload::reconcile(&cred, &ctx, &input, &uid, now).await;
    }
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_err("read Secret"))?;

    let old_status = cred.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let was_workload_identity = old_status.mode == Some(CredentialMode::WorkloadIdentity);
    status.mode = Some(CredentialMode::ClientSecret);
    status.workload_identity = None;
    status.observed_generation = generation;
    status.client_id = Some(client_id.clone());
    status.expires_at = cred.spec.expires_at;
    let binding = SecretBinding {
        namespace: &ns,
        name: &name,
        uid: &uid,
        client_id: &client_id,
        version: 0,
    };

    // Validate.
    let grant = resolve_grant(
        &cred.spec,
        account.as_ref().map(|a| &a.spec),
        policy.as_ref(),
        now,
    );
    let observed = secret::observe(existing.as_ref(), &uid, &key, &binding);
    let mut events: Vec<(EventType, &'static str, String)> = vec![];

    // Only verifiers this operator sealed are kept: anything else in status
    // was written by someone without the key and must never become valid.
    let before = status.verifiers.len();
    status.verifiers.retain(|v| key.is_sealed(&binding, v));
    if status.verifiers.len() != before {
        events.push((
            EventType::Warning,
            "VerifiersTampered",
            "status.verifiers held entries the operator did not write: they were dropped".into(),
        ));
    }

    let ready = match (&grant, observed) {
        (_, ObservedSecret::Foreign) => {
            let msg = format!(
                "Secret {secret_name:?} exists and is not owned by this credential: it is left untouched; choose another spec.secretName"
            );
            set_condition(
                &mut status.conditions,
                cond(
                    SECRET_SYNCED,
                    false,
                    "SecretNameConflict",
                    &msg,
                    generation,
                    now,
                ),
            );
            Err(("SecretNameConflict", msg))
        }
        (Err(e), _) => Err((e.reason(), e.to_string())),
        (Ok(grant), observed) => {
            let decision = match observed {
                // Back from workload identity: a first secret, not a repair.
                ObservedSecret::Missing if was_workload_identity => {
                    Decision::Generate(Generate::Initial)
                }
                observed => decide(&cred, &status, &secret_name, observed, now),
            };
            // The authentic Secret that stays (its non-secret fields are kept current).
            let kept = match decision {
                Decision::Generate(why) => {
                    let version = status.secret_version.max(highest_version(&status)) + 1;
                    let grace = why.grace(grace_period(&cred));
                    let value = ClientSecret::generate()?;
                    let digest = key.digest(&binding.with_version(version), value.expose());
                    let handled = match &why {
                        Generate::Rotation(crate::core::rotation::RotationTrigger::Annotation(
                            v,
                        )) => Some(v.clone()),
                        Generate::Initial => annotation(&cred),
                        _ => status.last_handled_rotate_annotation.clone(),
                    };
                    let grace_end = (!grace.is_zero() && status.secret_version > 0)
                        .then(|| now + chrono::Duration::from_std(grace).unwrap_or_default());
                    let contents = SecretContents {
                        client_id: &client_id,
                        secret: &value,
                        version,
                        digest: &digest,
                        rotated_at: now,
                        previous_not_after: grace_end,
                        handled_rotate: handled.as_deref(),
                        token_url: &ctx.config.token_url,
                        issuer: &ctx.config.issuer,
                        scope: scope_value(grant),
                    };
                    let desired = build_secret(&cred, &secret_name, &contents);
                    apply_secret(&secrets, &secret_name, &desired, existing.as_ref()).await?;
                    failpoint("after-secret-write");
                    if let Generate::Renamed { old } = &why {
                        delete_old_secret(&ctx, &ns, old, &uid).await?;
                    }
                    let new = SecretVerifier {
                        version,
                        digest,
                        not_after: None,
                        seal: None,
                    };
                    status.verifiers = rotate_verifiers(&status.verifiers, new, now, grace);
                    status.secret_version = version;
                    status.last_rotation_time = Some(now);
                    status.last_handled_rotate_annotation = handled;
                    status.secret_hint = Some(value.hint());
                    events.push(why.event());
                    None
                }
                Decision::Adopt(found) => {
                    // A rotation wrote its Secret but crashed before its status:
                    // finish it exactly as it was decided.
                    adopt(&mut status, &found);
                    events.push((
                        EventType::Normal,
                        "RotationCompleted",
                        format!(
                            "completed the interrupted rotation to secret version {}",
                            found.version
                        ),
                    ));
                    Some(found)
                }
                Decision::Steady(found) => {
                    // Repair a status that lost or altered the current verifier.
                    if !status.verifiers.iter().any(|v| {
                        v.version == found.version
                            && v.digest == found.digest
                            && v.not_after.is_none()
                    }) {
                        status
                            .verifiers
                            .retain(|v| v.version < found.version && v.not_after.is_some());
                        status.verifiers.insert(
                            0,
                            SecretVerifier {
                                version: found.version,
                                digest: found.digest.clone(),
                                not_after: None,
                                seal: None,
                            },
                        );
                    }
                    status.secret_hint = Some(found.secret.hint());
                    Some(found)
                }
            };
            if let Some(found) = kept {
                ensure_secret_fields(
                    &ctx,
                    &cred,
                    &secrets,
                    &secret_name,
                    existing.as_ref(),
                    &found,
                    &client_id,
                    grant,
                )
                .await?;
            }
            status.secret_name = Some(secret_name.clone());
            set_condition(
                &mut status.conditions,
                cond(
                    SECRET_SYNCED,
                    true,
                    "SecretCurrent",
                    &format!(
                        "Secret {secret_name:?} holds secret version {}",
                        status.secret_version
                    ),
                    generation,
                    now,
                ),
            );
            Ok(())
        }
    };

    // Status is derived from the spec and the clock as well as from actions.
    status.verifiers = prune_verifiers(&status.verifiers, now);
    for v in &mut status.verifiers {
        key.seal(&binding, v);
    }
    status.next_rotation_time = next_scheduled(&rotation_inputs(&cred, &status));
    let ready_condition = match &ready {
        Ok(()) => cond(
            READY,
            true,
            "Issuing",
            &format!("client {client_id} can obtain tokens"),
            generation,
            now,
        ),
        Err((reason, msg)) => cond(READY, false, reason, msg, generation, now),
    };
    let previous_ready = old_status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .cloned();
    let transitioned = previous_ready
        .as_ref()
        .is_none_or(|p| p.status != ready_condition.status || p.reason != ready_condition.reason);
    if transitioned {
        match &ready {
            Err((reason, msg)) => events.push((EventType::Warning, reason, msg.clone())),
            Ok(()) if previous_ready.is_some() => events.push((
                EventType::Normal,
                "Ready",
                "the credential is usable again".into(),
            )),
            Ok(()) => {}
        }
    }
    set_condition(&mut status.conditions, ready_condition);

    if status != old_status {
        patch_status(&ctx, &cred, &ns, &status).await?;
    }
    for (type_, reason, note) in events {
        ctx.event(cred.as_ref(), type_, reason, note).await;
    }
    Ok(next_action(&cred, &status, now))
}

pub(super) fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let status = if ok {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Condition::new(type_, status, reason, message, generation, now)
}

fn annotation(cred: &M2MCredential) -> Option<String> {
    cred.annotations().get(ROTATE_ANNOTATION).cloned()
}

fn highest_version(status: &M2MCredentialStatus) -> i64 {
    status
        .verifiers
        .iter()
        .map(|v| v.version)
        .max()
        .unwrap_or(0)
}

fn scope_value(grant: &Grant) -> String {
    grant.scopes.iter().cloned().collect::<Vec<_>>().join(" ")
}

fn rotation_inputs<'a>(
    cred: &'a M2MCredential,
    status: &'a M2MCredentialStatus,
) -> RotationInputs<'a> {
    RotationInputs {
        annotation: cred
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str),
        last_handled_annotation: status.last_handled_rotate_annotation.as_deref(),
        every: rotation_every(cred),
        last_rotation: status.last_rotation_time,
    }
}

/// What to do with a valid credential's Secret.
#[derive(Debug)]
enum Decision {
    Generate(Generate),
    Adopt(AuthenticSecret),
    Steady(AuthenticSecret),
}

fn decide(
    cred: &M2MCredential,
    status: &M2MCredentialStatus,
    secret_name: &str,
    observed: ObservedSecret,
    now: DateTime<Utc>,
) -> Decision {
    let renamed_from = status
        .secret_name
        .as_deref()
        .filter(|old| *old != secret_name && status.secret_version > 0);
    match observed {
        ObservedSecret::Missing => match renamed_from {
            Some(old) => Decision::Generate(Generate::Renamed {
                old: old.to_owned(),
            }),
            None if status.secret_version == 0 => Decision::Generate(Generate::Initial),
            None => Decision::Generate(Generate::Deleted),
        },
        ObservedSecret::Tampered | ObservedSecret::Foreign => {
            Decision::Generate(Generate::Tampered)
        }
        ObservedSecret::Authentic(found) if found.version > status.secret_version => {
            Decision::Adopt(found)
        }
        ObservedSecret::Authentic(found) if found.version < status.secret_version => {
            // An authentic but outdated copy (restored by hand): its secret
            // was already replaced, so it must not come back.
            Decision::Generate(Generate::Tampered)
        }
        ObservedSecret::Authentic(found) => match rotation_due(&rotation_inputs(cred, status), now)
        {
            Some(trigger) => Decision::Generate(Generate::Rotation(trigger)),
            None => Decision::Steady(found),
        },
    }
}

fn adopt(status: &mut M2MCredentialStatus, found: &AuthenticSecret) {
    let new = SecretVerifier {
        version: found.version,
        digest: found.digest.clone(),
        not_after: None,
        seal: None,
    };
    let mut verifiers = vec![new];
    for v in &status.verifiers {
        if v.version >= found.version {
            continue;
        }
        let not_after = match v.not_after {
            None => found.previous_not_after,
            Some(t) => Some(t),
        };
        if let Some(t) = not_after {
            verifiers.push(SecretVerifier {
                not_after: Some(t),
                ..v.clone()
            });
        }
    }
    status.verifiers = verifiers;
    status.secret_version = found.version;
    status.last_rotation_time = Some(found.rotated_at);
    if found.handled_rotate.is_some() {
        status.last_handled_rotate_annotation = found.handled_rotate.clone();
    }
    status.secret_hint = Some(found.secret.hint());
}

/// Keep the non-secret parts of an authentic Secret current (labels,
/// template, token URL, scopes) without touching the secret itself.
#[allow(clippy::too_many_arguments)]
async fn ensure_secret_fields(
    ctx: &Context,
    cred: &M2MCredential,
    secrets: &Api<Secret>,
    secret_name: &str,
    existing: Option<&Secret>,
    found: &AuthenticSecret,
    client_id: &str,
    grant: &Grant,
) -> Result<(), Error> {
    let contents = SecretContents {
        client_id,
        secret: &found.secret,
        version: found.version,
        digest: &found.digest,
        rotated_at: found.rotated_at,
        previous_not_after: found.previous_not_after,
        handled_rotate: found.handled_rotate.as_deref(),
        token_url: &ctx.config.token_url,
        issuer: &ctx.config.issuer,
        scope: scope_value(grant),
    };
    let desired = build_secret(cred, secret_name, &contents);
    apply_secret(secrets, secret_name, &desired, existing).await
}

async fn apply_secret(
    secrets: &Api<Secret>,
    name: &str,
    desired: &Secret,
    existing: Option<&Secret>,
) -> Result<(), Error> {
    if existing.is_some_and(|e| !secret::differs(e, desired)) {
        return Ok(());
    }
    secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(kube_err("apply Secret"))?;
    Ok(())
}

pub(super) async fn delete_old_secret(
    ctx: &Context,
    ns: &str,
    old: &str,
    uid: &str,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(s) = api
        .get_opt(old)
        .await
        .map_err(kube_err("read old Secret"))?
    else {
        return Ok(());
    };
    let ours = s
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true));
    if !ours {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: s.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(old, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(kube_err("delete old Secret")(e)),
    }
}

pub(super) async fn patch_status(
    ctx: &Context,
    cred: &M2MCredential,
    ns: &str,
    status: &M2MCredentialStatus,
) -> Result<(), Error> {
    let api: Api<M2MCredential> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": M2MCredential::api_version(&()),
        "kind": M2MCredential::kind(&()),
        "status": status,
    });
    match api
        .patch_status(
            &cred.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing left to report on.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err("patch credential status")(e)),
    }
}

/// Requeue at the next moment something is due: a scheduled rotation, the
/// end of a grace period, or expiry.
pub(super) fn next_action(
    cred: &M2MCredential,
    status: &M2MCredentialStatus,
    now: DateTime<Utc>,
) -> Action {
    let candidates = [
        status.next_rotation_time,
        next_expiry(&status.verifiers, now),
        cred.spec.expires_at.filter(|t| *t > now),
    ];
    match candidates.into_iter().flatten().min() {
        Some(t) => {
            let wait = (t - now).to_std().unwrap_or_default() + Duration::from_millis(50);
            Action::requeue(wait.min(IDLE_REQUEUE))
        }
        None => Action::requeue(IDLE_REQUEUE),
    }
}

/// Error policy: log, count, and retry after a delay chosen by the error kind.
pub fn error_policy(cred: Arc<M2MCredential>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(credential = %cred.name_any(), namespace = cred.namespace().unwrap_or_default(), error = %error, "reconcile failed");
    Action::requeue(error.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::M2MCredentialSpec;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().unwrap()
    }

    fn cred(annotation: Option<&str>, every: Option<&str>) -> M2MCredential {
        let mut c = M2MCredential::new(
            "c",
            M2MCredentialSpec {
                service_account_name: "sa".into(),
                ..Default::default()
            },
        );
        if let Some(a) = annotation {
            c.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), a.to_owned())].into());
        }
        c.spec.rotation.every = every.map(str::to_owned);
        c
    }

    fn found(version: i64) -> AuthenticSecret {
        AuthenticSecret {
            secret: ClientSecret::from_stored("m2ms_x".into()),
            version,
            digest: format!("d{version}"),
            rotated_at: at(100),
            previous_not_after: Some(at(160)),
            handled_rotate: Some("r2".into()),
        }
    }

    fn status(version: i64, handled: Option<&str>) -> M2MCredentialStatus {
        M2MCredentialStatus {
            secret_version: version,
            secret_name: Some("c-credentials".into()),
            last_handled_rotate_annotation: handled.map(str::to_owned),
            last_rotation_time: Some(at(0)),
            verifiers: (version > 0)
                .then(|| SecretVerifier {
                    version,
                    digest: format!("d{version}"),
                    not_after: None,
                    seal: None,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn kind(d: Decision) -> String {
        match d {
            Decision::Generate(g) => format!("generate:{g:?}"),
            Decision::Adopt(f) => format!("adopt:{}", f.version),
            Decision::Steady(f) => format!("steady:{}", f.version),
        }
    }

    #[test]
    fn decision_table() {
        let name = "c-credentials";
        let cases = [
            (
                "first reconcile",
                cred(None, None),
                status(0, None),
                ObservedSecret::Missing,
                "generate:Initial",
            ),
            (
                "deleted by hand",
                cred(None, None),
                status(2, None),
                ObservedSecret::Missing,
                "generate:Deleted",
            ),
            (
                "edited by hand",
                cred(None, None),
                status(2, None),
                ObservedSecret::Tampered,
                "generate:Tampered",
            ),
            (
                "crash after Secret write",
                cred(None, None),
                status(1, None),
                ObservedSecret::Authentic(found(2)),
                "adopt:2",
            ),
            (
                "old copy restored",
                cred(None, None),
                status(3, None),
                ObservedSecret::Authentic(found(2)),
                "generate:Tampered",
            ),
            (
                "converged",
                cred(Some("r1"), None),
                status(2, Some("r1")),
                ObservedSecret::Authentic(found(2)),
                "steady:2",
            ),
            (
                "annotation changed",
                cred(Some("r2"), None),
                status(2, Some("r1")),
                ObservedSecret::Authentic(found(2)),
                "generate:Rotation(Annotation(\"r2\"))",
            ),
            (
                "schedule due",
                cred(None, Some("10s")),
                status(2, None),
                ObservedSecret::Authentic(found(2)),
                "generate:Rotation(Scheduled",
            ),
        ];
        for (what, c, s, observed, want) in cases {
            let got = kind(decide(&c, &s, name, observed, at(1000)));
            assert!(got.starts_with(want), "{what}: got {got}, want {want}");
        }
        let mut renamed = status(2, None);
        renamed.secret_name = Some("old-name".into());
        assert_eq!(
            kind(decide(
                &cred(None, None),
                &renamed,
                name,
                ObservedSecret::Missing,
                at(0)
            )),
            "generate:Renamed { old: \"old-name\" }"
        );
    }

    #[test]
    fn adopting_finishes_the_rotation_with_its_recorded_grace() {
        let mut s = status(1, Some("r1"));
        adopt(&mut s, &found(2));
        assert_eq!(s.secret_version, 2);
        assert_eq!(s.last_handled_rotate_annotation.as_deref(), Some("r2"));
        assert_eq!(s.last_rotation_time, Some(at(100)));
        let versions: Vec<_> = s
            .verifiers
            .iter()
            .map(|v| (v.version, v.not_after))
            .collect();
        assert_eq!(versions, vec![(2, None), (1, Some(at(160)))]);
        let mut no_grace = found(2);
        no_grace.previous_not_after = None;
        let mut s = status(1, None);
        adopt(&mut s, &no_grace);
        assert_eq!(s.verifiers.len(), 1);
    }

    #[test]
    fn tampering_never_gets_a_grace_period() {
        assert_eq!(
            Generate::Tampered.grace(Duration::from_secs(60)),
            Duration::ZERO
        );
        assert_eq!(
            Generate::Deleted.grace(Duration::from_secs(60)),
            Duration::ZERO
        );
        let rotation = Generate::Rotation(crate::core::rotation::RotationTrigger::Annotation(
            "x".into(),
        ));
        assert_eq!(
            rotation.grace(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
