//! Reconcile one `M2MCredential`: dereference (account, namespace policy,
//! existing Secret, in [`reconcile`]) → [`plan`], pure and table-tested:
//! validate (grant, rotation settings), decide (create, rotate, repair,
//! finish an interrupted rotation, or nothing), build the Secret and the
//! status → apply (Secret first, then status, then Events). Writing the Secret before the status makes every crash point
//! recoverable: the Secret's HMAC annotations prove it was our write, so the
//! next reconcile adopts it instead of treating it as tampering.

use super::secret::{self, AuthenticSecret, ObservedSecret, SecretContents, build_secret};
use super::{Context, Error, Step, failpoint, kube_err};
use crate::core::api_token;
use crate::core::client_secret::{ClientSecret, RandomnessError, client_id_for_uid};
use crate::core::duration::{DurationError, parse_duration};
use crate::core::grant::{Grant, ScopePolicy, ScopePolicyError, resolve_grant};
use crate::core::roles::{RoleGrant, RoleResolution};
use crate::core::rotation::{
    DEFAULT_IN_USE_WINDOW, RotationInputs, early_retirement, next_scheduled, prune_verifiers,
    retire_unused as retire_unused_versions, rotate_verifiers, rotation_due, still_in_use,
};
use crate::core::verifier::{SecretBinding, VerifierKey, next_expiry};
use crate::crd::{
    Condition, ConditionStatus, CredentialMode, CredentialType, M2MCredential, M2MCredentialStatus,
    ROTATE_ANNOTATION, SecretVerifier, ServiceAccountSpec, set_condition,
};
use crate::labels::FIELD_MANAGER;
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
pub(crate) const SECRET_SYNCED: &str = "SecretSynced";

/// `Ready=False` reason: the credential was sealed under another verifier key.
pub(crate) const VERIFIER_KEY_CONFLICT: &str = "VerifierKeyConflict";

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

/// `spec.rotation`, parsed once: an unparseable duration is a
/// `Ready=False` reason (`InvalidRotation`), never a silent default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RotationSettings {
    every: Option<Duration>,
    grace: Duration,
    /// `retireWhenUnusedFor`: adoption-aware retirement.
    retire_unused: Option<Duration>,
    /// `spec.dormantAfter`.
    dormant_after: Option<Duration>,
}

fn rotation_settings(cred: &M2MCredential) -> Result<RotationSettings, NotReady> {
    let parse = |field: &str, value: Option<&str>| -> Result<Option<Duration>, NotReady> {
        value
            .map(parse_duration)
            .transpose()
            .map_err(|e: DurationError| ("InvalidRotation", format!("spec.rotation.{field}: {e}")))
    };
    let rotation = &cred.spec.rotation;
    let dormant_after = cred
        .spec
        .dormant_after
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ("InvalidDormantAfter", format!("spec.dormantAfter: {e}")))?;
    Ok(RotationSettings {
        every: parse("every", rotation.every.as_deref())?,
        grace: parse("gracePeriod", rotation.grace_period.as_deref())?.unwrap_or_default(),
        retire_unused: parse(
            "retireWhenUnusedFor",
            rotation.retire_when_unused_for.as_deref(),
        )?,
        dormant_after,
    })
}

/// A `Ready=False` reason and message.
type NotReady = (&'static str, String);

/// An Event to publish about the credential: type, reason, note.
pub(crate) type PlannedEvent = (EventType, &'static str, String);

/// Everything [`plan`] decides from, read by [`reconcile`] (dereference).
pub(crate) struct Observed<'a> {
    /// The credential.
    pub cred: &'a M2MCredential,
    /// Its ServiceAccount's spec, if the account exists.
    pub account: Option<&'a ServiceAccountSpec>,
    /// The roles of its ServiceAccount.
    pub roles: &'a RoleResolution,
    /// The scope policy of its namespace.
    pub policy: Result<&'a ScopePolicy, &'a ScopePolicyError>,
    /// The Secret at its `secretName`, if any.
    pub existing: Option<&'a Secret>,
    /// The HMAC key of the verification state.
    pub key: &'a VerifierKey,
    /// Fingerprints of verifier keys this controller held earlier: a
    /// `VerifierKeyConflict` report naming one of them as the holder is its
    /// own, now stale (the keys match again), not another installation's.
    pub former_key_ids: &'a [String],
    /// `token_url` written into the Secret.
    pub token_url: &'a str,
    /// `issuer` written into the Secret.
    pub issuer: &'a str,
    /// Longest life of an API token (`--max-api-token-lifetime`).
    pub max_api_token_lifetime: Duration,
    /// The usage in status the controller believes ([`super::usage`]):
    /// owned by the token server, not in the future, never less than seen.
    pub usage: super::usage::TrustedUsage,
    /// The clock.
    pub now: DateTime<Utc>,
}

/// What one reconcile writes, in order: the Secret first, then the status
/// (so every crash point is recoverable), then Events.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The Secret to apply, when it is not already as desired.
    pub secret_write: Option<Secret>,
    /// Whether `secret_write` holds a newly generated client secret.
    pub generated: bool,
    /// A Secret under the previous `spec.secretName` to delete after the write.
    pub delete_old_secret: Option<String>,
    /// The status to apply, when it changed.
    pub status: Option<M2MCredentialStatus>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// When to reconcile again at the latest.
    pub requeue: Duration,
    /// Grace periods ending now while their version is still in use
    /// (`StaleSecretInUse`, counted in a metric).
    pub stale_in_use: u64,
    /// Restart `rotation.restartTargets` for this secret version, after the
    /// status is written; then record it in `status.restartedVersion`.
    pub restart_for: Option<i64>,
}

/// The credential's identity: namespace, name, UID.
fn identity(cred: &M2MCredential) -> Result<(String, String, String), Error> {
    let ns = cred
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = cred.uid().ok_or(Error::MissingField("metadata.uid"))?;
    Ok((ns, cred.name_any(), uid))
}

/// Reconcile one credential: dereference, [`plan`], apply.
pub(crate) async fn reconcile(
    cred: Arc<M2MCredential>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if cred.metadata.deletion_timestamp.is_some() {
        // The Secret is garbage-collected through its owner reference and
        // token servers drop the credential from their index: nothing to do.
        if let Some(uid) = &cred.metadata.uid {
            ctx.usage_memory.forget(uid);
        }
        return Ok(Action::await_change());
    }
    let key = ctx.verifier_key.load_full().ok_or(Error::KeysNotReady)?;
    let (ns, cred_name, uid) = identity(&cred)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let account = ctx
        .accounts
        .get(&ObjectRef::new(&cred.spec.service_account_name).within(&ns));
    let policy = ctx.policy_for(&ns);
    let roles = match &account {
        Some(a) => ctx.roles_for(&ns, &a.spec),
        None => Ok(RoleGrant::none()),
    };
    let now = Utc::now();

    let client_id = client_id_for_uid(&uid);
    // The grant of the secretless modes below (the secret path resolves
    // it inside plan()).
    let grant = || {
        resolve_grant(
            &cred.spec,
            account.as_ref().map(|a| &a.spec),
            &roles,
            policy.as_ref(),
            now,
        )
    };

    // Workload identity hook: no secret, no Secret (see super::workload).
    // An APIToken credential never takes it: plan() refuses the combination.
    if let Some(wi) = &cred.spec.workload_identity
        && cred.spec.type_ == CredentialType::ClientSecret
    {
        let grant = grant();
        let input = super::workload::WorkloadInputs {
            namespace: &ns,
            client_id: &client_id,
            generation: cred.metadata.generation,
            spec: wi,
            expires_at: cred.spec.expires_at,
            grant: grant.as_ref(),
            issuer: &ctx.config.issuer,
            name: &cred_name,
            uid: &uid,
            key: &key,
        };
        return super::workload::reconcile(&cred, &ctx, &input, &uid, now).await;
    }
    // Federation hook: no secret, no Secret either (see super::federation).
    if let Some(f) = &cred.spec.federation
        && cred.spec.type_ == CredentialType::ClientSecret
    {
        if !ctx.issuers.synced() {
            // Not listed yet: an issuer not seen is not known to be missing.
            return Ok(Action::requeue(std::time::Duration::from_millis(500)));
        }
        let grant = grant();
        let input = super::federation::FederationInputs {
            namespace: &ns,
            name: &cred_name,
            uid: &uid,
            client_id: &client_id,
            generation: cred.metadata.generation,
            spec: f,
            expires_at: cred.spec.expires_at,
            grant: grant.as_ref(),
            issuer: super::federation::issuer_state(&ctx, &ns, f),
            key: &key,
        };
        return super::federation::reconcile(&cred, &ctx, &input, now).await;
    }
    let existing = secrets
        .get_opt(&secret_name(&cred))
        .await
        .map_err(kube_err(Step::ReadSecret))?;
    let observed = Observed {
        cred: &cred,
        account: account.as_ref().map(|a| &a.spec),
        roles: &roles,
        policy: policy.as_ref(),
        existing: existing.as_ref(),
        key: &key,
        former_key_ids: &ctx.former_key_ids.load(),
        token_url: &ctx.config.token_url,
        issuer: &ctx.config.issuer,
        max_api_token_lifetime: ctx.config.max_api_token_lifetime,
        usage: ctx.usage_memory.observe(&cred, now),
        now,
    };
    let plan = plan(&observed, || match cred.spec.type_ {
        CredentialType::ClientSecret => ClientSecret::generate(),
        CredentialType::ApiToken => api_token::generate(&client_id),
    })?;
    apply(&ctx, &cred, &secrets, &uid, plan).await
}

/// Carry out a plan: Secret, then old Secret, then status, then Events.
async fn apply(
    ctx: &Context,
    cred: &M2MCredential,
    secrets: &Api<Secret>,
    uid: &str,
    plan: Plan,
) -> Result<Action, Error> {
    if let Some(desired) = &plan.secret_write {
        apply_secret(secrets, desired).await?;
    }
    if plan.generated {
        failpoint("after-secret-write");
    }
    if let Some(old) = &plan.delete_old_secret {
        delete_old_secret(secrets, old, uid).await?;
    }
    if let Some(status) = &plan.status {
        patch_status(ctx, cred, status).await?;
    }
    for _ in 0..plan.stale_in_use {
        ctx.metrics.observe_stale_secret_in_use();
    }
    for (type_, reason, note) in plan.events {
        ctx.event(cred, type_, reason, note).await;
    }
    if let Some(version) = plan.restart_for {
        // After the Secret and the verifiers: restarted pods read a secret
        // the token servers already accept.
        let targets = &cred.spec.rotation.restart_targets;
        let now = chrono::Utc::now();
        if let Some(wait) =
            super::restart::restart_targets(ctx, cred, version, targets, now).await?
        {
            return Ok(Action::requeue(wait.min(plan.requeue)));
        }
        let mut status = plan
            .status
            .or_else(|| cred.status.clone())
            .unwrap_or_default();
        status.restarted_version = Some(version);
        patch_status(ctx, cred, &status).await?;
    }
    Ok(Action::requeue(plan.requeue))
}

/// Decide everything one reconcile writes. Pure: the only effect is
/// `generate`, called once when a new client secret is needed.
pub(crate) fn plan(
    o: &Observed<'_>,
    generate: impl FnOnce() -> Result<ClientSecret, RandomnessError>,
) -> Result<Plan, Error> {
    let (ns, name, uid) = identity(o.cred)?;
    let client_id = client_id_for_uid(&uid);
    let binding = SecretBinding {
        namespace: &ns,
        name: &name,
        uid: &uid,
        client_id: &client_id,
        version: 0,
    };
    let old_status = o.cred.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let was_workload_identity = matches!(
        old_status.mode,
        Some(CredentialMode::WorkloadIdentity | CredentialMode::Federation)
    );
    let mode = match o.cred.spec.type_ {
        CredentialType::ClientSecret => CredentialMode::ClientSecret,
        CredentialType::ApiToken => CredentialMode::ApiToken,
    };
    // spec.type is immutable (a CEL rule); where the apiserver does not
    // enforce it, the credential keeps its mode and reports the change.
    let type_changed = status.secret_version > 0
        && old_status.mode.is_some_and(|m| {
            m != mode && m != CredentialMode::WorkloadIdentity && m != CredentialMode::Federation
        });
    status.mode = if type_changed {
        old_status.mode
    } else {
        Some(mode)
    };
    status.workload_identity = None;
    status.federation = None;
    status.observed_generation = o.cred.metadata.generation;
    status.client_id = Some(client_id.clone());
    status.expires_at = o.cred.spec.expires_at;
    let mut plan = Plan::default();

    // Sealed under another verifier key (a second installation, or a
    // replaced key Secret): neither a hand edit to repair nor a secret to
    // re-issue. Report once and touch nothing else until the keys match.
    if let Some(other) = key_conflict(o, &uid) {
        report_key_conflict(o, &old_status, &other, &mut plan);
        return Ok(plan);
    }

    // Only verifiers this operator sealed are kept: anything else in status
    // was written by someone without the key and must never become valid.
    let before = status.verifiers.len();
    status.verifiers.retain(|v| o.key.is_sealed(&binding, v));
    if status.verifiers.len() != before {
        plan.events.push((
            EventType::Warning,
            "VerifiersTampered",
            "status.verifiers held entries the operator did not write: they were dropped".into(),
        ));
    }

    let rotation = rotation_settings(o.cred);
    let type_rules = type_rules(o, &status, type_changed, &rotation);
    let ready = match type_rules.and_then(|()| validate(o, &mut status, &binding, &rotation)) {
        Err(not_ready) if is_type_reason(not_ready.0) => {
            // A token that may not exist must not work meanwhile: the
            // verifiers go (restored from the Secret once fixed).
            status.verifiers.clear();
            Err(not_ready)
        }
        Err(not_ready) => Err(not_ready),
        Ok((grant, observed, settings)) => {
            let s = SecretPlan {
                o,
                binding: &binding,
                grant,
                settings,
                was_workload_identity,
            };
            s.plan(&mut status, &mut plan, observed, generate)?;
            Ok(())
        }
    };
    let settings = rotation.ok();
    let targets = &o.cred.spec.rotation.restart_targets;
    let (recorded, restart_for) = super::restart::restart_due(
        !targets.is_empty(),
        status.restarted_version,
        old_status.secret_version,
        status.secret_version,
    );
    status.restarted_version = recorded;
    plan.restart_for = restart_for;
    finish_status(o, &binding, &old_status, status, ready, settings, &mut plan);
    Ok(plan)
}

/// The fingerprint of the other verifier key the credential's own Secret
/// was sealed under, if it was.
fn key_conflict(o: &Observed<'_>, uid: &str) -> Option<String> {
    let existing = o.existing?;
    let controlled = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.controller == Some(true));
    controlled
        .then(|| secret::sealed_under_other_key(Some(existing), o.key))
        .flatten()
}

/// The `Ready` message of a key conflict; names both fingerprints (the
/// holder's in a fixed phrase, see [`holder_phrase`]).
fn key_conflict_message(other: &str, ours: &str) -> String {
    format!(
        "the credential's Secret and status.verifiers were sealed under verifier key {other}, but {}: another m2m-operator installation with other keys manages this namespace, or the key Secret was replaced. Nothing is rotated or repaired until the keys match again (restore the original key Secret, or remove the other installation); to re-issue the credential under this operator's key instead, delete its Secret",
        holder_phrase(ours)
    )
}

fn holder_phrase(key_id: &str) -> String {
    format!("this operator holds verifier key {key_id}")
}

/// Ready=False with [`VERIFIER_KEY_CONFLICT`] (a Warning Event on the
/// transition only); status otherwise as found, no Secret write.
fn report_key_conflict(
    o: &Observed<'_>,
    old_status: &M2MCredentialStatus,
    other: &str,
    plan: &mut Plan,
) {
    let msg = key_conflict_message(other, &o.key.key_id());
    let ready = cond(READY, false, VERIFIER_KEY_CONFLICT, &msg, o);
    let mut status = old_status.clone();
    if let Some(event) = ready_transition(
        old_status,
        &ready,
        &Err((VERIFIER_KEY_CONFLICT, msg.clone())),
    ) {
        plan.events.push(event);
    }
    set_condition(&mut status.conditions, ready);
    plan.requeue = IDLE_REQUEUE;
    if status != *old_status {
        plan.status = Some(status);
    }
}

/// Another installation's [`VERIFIER_KEY_CONFLICT`] report on a credential
/// this controller can verify: kept as it is, so the two installations do
/// not flip `Ready` back and forth. A report naming this controller's own
/// current or former key as the holder is stale and is not kept, nor is
/// one made for an older generation (a spec change clears a report left by
/// an installation that is gone; a live one reports again).
fn foreign_conflict_report<'s>(
    o: &Observed<'_>,
    old_status: &'s M2MCredentialStatus,
) -> Option<&'s Condition> {
    let report = old_status.conditions.iter().find(|c| {
        c.type_ == READY
            && c.status == ConditionStatus::False
            && c.reason == VERIFIER_KEY_CONFLICT
            && c.observed_generation == o.cred.metadata.generation
    })?;
    let ours = std::iter::once(o.key.key_id()).chain(o.former_key_ids.iter().cloned());
    let own = ours
        .map(|id| holder_phrase(&id))
        .any(|phrase| report.message.contains(&phrase));
    (!own).then_some(report)
}

/// The `Ready=False` reasons of [`type_rules`]: the credential may hold no
/// usable secret at all while one of them stands.
fn is_type_reason(reason: &str) -> bool {
    matches!(
        reason,
        "TypeChanged"
            | "APITokenWithWorkloadIdentity"
            | "APITokenWithoutEnd"
            | "APITokenLifetimeTooLong"
    )
}

/// What `spec.type` demands: it never changes, and an API token has no
/// workload identity and an end within `--max-api-token-lifetime`
/// ([`api_token::check_end`]), measured from when the current token was
/// issued (or now, for one about to be generated).
fn type_rules(
    o: &Observed<'_>,
    status: &M2MCredentialStatus,
    type_changed: bool,
    rotation: &Result<RotationSettings, NotReady>,
) -> Result<(), NotReady> {
    let spec = &o.cred.spec;
    if type_changed {
        return Err((
            "TypeChanged",
            format!(
                "spec.type changed to {:?} after the credential was created with another type: restore it, or create another M2MCredential",
                spec.type_
            ),
        ));
    }
    if spec.type_ != CredentialType::ApiToken {
        return Ok(());
    }
    if spec.workload_identity.is_some() {
        return Err((
            "APITokenWithWorkloadIdentity",
            "spec.workloadIdentity does not apply to an APIToken credential: remove one of them"
                .into(),
        ));
    }
    // An unparseable rotation is reported by validate() (InvalidRotation).
    let Ok(settings) = rotation else {
        return Ok(());
    };
    let inputs = rotation_inputs(o.cred, status, settings.every);
    let issued_at = if status.secret_version == 0 || rotation_due(&inputs, o.now).is_some() {
        o.now
    } else {
        status.last_rotation_time.unwrap_or(o.now)
    };
    let every = settings.every.zip(spec.rotation.every.as_deref());
    api_token::check_end(spec.expires_at, every, issued_at, o.max_api_token_lifetime)
        .map_err(|e| (e.reason(), e.to_string()))
}

/// Whether the credential can hold a Secret at all: a free Secret name, a
/// grant, valid rotation settings.
fn validate(
    o: &Observed<'_>,
    status: &mut M2MCredentialStatus,
    binding: &SecretBinding<'_>,
    rotation: &Result<RotationSettings, NotReady>,
) -> Result<(Grant, ObservedSecret, RotationSettings), NotReady> {
    let value_key = secret::value_key_and_type(o.cred.spec.type_).0;
    let observed = secret::observe_as(o.existing, binding.uid, o.key, binding, value_key);
    if observed == ObservedSecret::Foreign {
        let msg = format!(
            "Secret {:?} exists and is not owned by this credential: it is left untouched; choose another spec.secretName",
            secret_name(o.cred)
        );
        let c = cond(SECRET_SYNCED, false, "SecretNameConflict", &msg, o);
        set_condition(&mut status.conditions, c);
        return Err(("SecretNameConflict", msg));
    }
    let grant = resolve_grant(&o.cred.spec, o.account, o.roles, o.policy, o.now)
        .map_err(|e| (e.reason(), e.to_string()))?;
    let settings = rotation.clone()?;
    Ok((grant, observed, settings))
}

/// The Secret part of a plan for a valid credential.
struct SecretPlan<'a> {
    o: &'a Observed<'a>,
    binding: &'a SecretBinding<'a>,
    grant: Grant,
    settings: RotationSettings,
    /// The credential was in workload-identity mode: a missing Secret is
    /// its first one, not a deletion to repair.
    was_workload_identity: bool,
}

impl SecretPlan<'_> {
    fn plan(
        &self,
        status: &mut M2MCredentialStatus,
        plan: &mut Plan,
        observed: ObservedSecret,
        generate: impl FnOnce() -> Result<ClientSecret, RandomnessError>,
    ) -> Result<(), Error> {
        let cred = self.o.cred;
        let name = secret_name(cred);
        let inputs = rotation_inputs(cred, status, self.settings.every);
        let decision = match observed {
            ObservedSecret::Missing if self.was_workload_identity => {
                Decision::Generate(Generate::Initial)
            }
            observed => decide(status, &name, inputs, observed, self.o.now),
        };
        let kept = match decision {
            Decision::Generate(why) => {
                self.generate(status, plan, &name, why, generate()?);
                None
            }
            Decision::Adopt(found) => {
                // A rotation wrote its Secret but crashed before its
                // status: finish it exactly as it was decided.
                adopt(status, &found);
                plan.events.push((
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
                repair_current_verifier(status, &found);
                Some(found)
            }
        };
        if let Some(found) = kept {
            // Keep the non-secret parts current (labels, template, token
            // URL, scopes) without touching the secret itself.
            let contents = self.contents(
                &found.secret,
                found.version,
                &found.digest,
                found.rotated_at,
                found.previous_not_after,
                found.handled_rotate.as_deref(),
            );
            self.write(plan, build_secret(cred, &name, &contents));
        }
        status.secret_name = Some(name.clone());
        let msg = format!(
            "Secret {name:?} holds secret version {}",
            status.secret_version
        );
        let c = cond(SECRET_SYNCED, true, "SecretCurrent", &msg, self.o);
        set_condition(&mut status.conditions, c);
        Ok(())
    }

    fn generate(
        &self,
        status: &mut M2MCredentialStatus,
        plan: &mut Plan,
        name: &str,
        why: Generate,
        value: ClientSecret,
    ) {
        let (cred, now) = (self.o.cred, self.o.now);
        let version = status.secret_version.max(highest_version(status)) + 1;
        let grace = why.grace(self.settings.grace);
        let digest = self
            .o
            .key
            .digest(&self.binding.with_version(version), value.expose());
        let handled = match &why {
            Generate::Rotation(crate::core::rotation::RotationTrigger::Annotation(v)) => {
                Some(v.clone())
            }
            Generate::Initial => annotation(cred),
            _ => status.last_handled_rotate_annotation.clone(),
        };
        let grace_end = (!grace.is_zero() && status.secret_version > 0)
            .then(|| now + chrono::Duration::from_std(grace).unwrap_or_default());
        let contents = self.contents(&value, version, &digest, now, grace_end, handled.as_deref());
        self.write(plan, build_secret(cred, name, &contents));
        plan.generated = true;
        if let Generate::Renamed { old } = &why {
            plan.delete_old_secret = Some(old.clone());
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
        let (type_, reason, note) = why.event();
        let note = match cred.spec.type_ {
            CredentialType::ClientSecret => note,
            CredentialType::ApiToken => note.replace("client secret", "API token"),
        };
        plan.events.push((type_, reason, note));
    }

    fn contents<'s>(
        &'s self,
        secret: &'s ClientSecret,
        version: i64,
        digest: &'s str,
        rotated_at: DateTime<Utc>,
        previous_not_after: Option<DateTime<Utc>>,
        handled_rotate: Option<&'s str>,
    ) -> SecretContents<'s> {
        SecretContents {
            client_id: self.binding.client_id,
            secret,
            version,
            digest,
            rotated_at,
            previous_not_after,
            handled_rotate,
            token_url: self.o.token_url,
            issuer: self.o.issuer,
            scope: scope_value(&self.grant),
        }
    }

    /// Write `desired` unless the existing Secret already is exactly that.
    fn write(&self, plan: &mut Plan, desired: Secret) {
        let desired = secret::stamp_key_id(desired, self.o.key);
        if self.o.existing.is_none_or(|e| secret::differs(e, &desired)) {
            plan.secret_write = Some(desired);
        }
    }
}

/// Repair a status that lost or altered the current verifier.
fn repair_current_verifier(status: &mut M2MCredentialStatus, found: &AuthenticSecret) {
    if !status
        .verifiers
        .iter()
        .any(|v| v.version == found.version && v.digest == found.digest && v.not_after.is_none())
    {
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
}

/// What the status derives from the spec and the clock as well as from
/// actions: pruned and sealed verifiers, the next rotation, `Ready` and its
/// transition Event, and the requeue.
fn finish_status(
    o: &Observed<'_>,
    binding: &SecretBinding<'_>,
    old_status: &M2MCredentialStatus,
    mut status: M2MCredentialStatus,
    ready: Result<(), NotReady>,
    settings: Option<RotationSettings>,
    plan: &mut Plan,
) {
    let every = settings.and_then(|s| s.every);
    let mut wake_at = retire_previous(o, &mut status, settings, plan);
    status.verifiers = prune_verifiers(&status.verifiers, o.now);
    for v in &mut status.verifiers {
        o.key.seal(binding, v);
    }
    wake_at.extend(dormancy(
        o,
        &mut status,
        settings.and_then(|s| s.dormant_after),
        plan,
    ));
    status.next_rotation_time = next_scheduled(&rotation_inputs(o.cred, &status, every));
    let ready = match (ready, foreign_conflict_report(o, old_status)) {
        (Ok(()), Some(report)) => Err((VERIFIER_KEY_CONFLICT, report.message.clone())),
        (ready, _) => ready,
    };
    let ready_condition = match &ready {
        Ok(()) if o.cred.spec.type_ == CredentialType::ApiToken => {
            let msg = format!("the API token of client {} is active", binding.client_id);
            cond(READY, true, "Issuing", &msg, o)
        }
        Ok(()) => {
            let msg = format!("client {} can obtain tokens", binding.client_id);
            cond(READY, true, "Issuing", &msg, o)
        }
        Err((reason, msg)) => cond(READY, false, reason, msg, o),
    };
    if let Some(event) = ready_transition(old_status, &ready_condition, &ready) {
        plan.events.push(event);
    }
    set_condition(&mut status.conditions, ready_condition);
    plan.requeue = next_requeue(o.cred, &status, o.now);
    if let Some(t) = wake_at.into_iter().min() {
        let wait = (t - o.now).to_std().unwrap_or_default() + Duration::from_millis(50);
        plan.requeue = plan.requeue.min(wait);
    }
    if status != *old_status {
        plan.status = Some(status);
    }
}

/// Adoption-aware retirement (`rotation.retireWhenUnusedFor`) and the
/// `StaleSecretInUse` warning, from the usage the token servers wrote:
/// drops the previous versions unused long enough since the rotation, warns
/// about versions whose grace period ends while still in use. Returns when
/// a kept previous version may retire.
fn retire_previous(
    o: &Observed<'_>,
    status: &mut M2MCredentialStatus,
    settings: Option<RotationSettings>,
    plan: &mut Plan,
) -> Vec<DateTime<Utc>> {
    let Some(rotated_at) = status.last_rotation_time else {
        return Vec::new();
    };
    let retire_unused = settings.and_then(|s| s.retire_unused);
    let mut wake_at = Vec::new();
    if let Some(unused_for) = retire_unused {
        let (kept, retired) = retire_unused_versions(
            &status.verifiers,
            &o.usage.versions,
            rotated_at,
            unused_for,
            o.now,
        );
        status.verifiers = kept;
        for r in retired {
            plan.events.push((
                EventType::Normal,
                "PreviousSecretRetired",
                format!(
                    "retired secret version {} before the end of its grace period: unused since {} (rotation.retireWhenUnusedFor {})",
                    r.version,
                    r.unused_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    o.cred.spec.rotation.retire_when_unused_for.as_deref().unwrap_or_default(),
                ),
            ));
        }
        wake_at.extend(
            status
                .verifiers
                .iter()
                .filter_map(|v| early_retirement(v, &o.usage.versions, rotated_at, unused_for)),
        );
    }
    let window = retire_unused.unwrap_or(DEFAULT_IN_USE_WINDOW);
    let (ns, name) = (o.cred.namespace().unwrap_or_default(), o.cred.name_any());
    for v in &status.verifiers {
        let Some(end) = v.not_after.filter(|end| *end <= o.now) else {
            continue;
        };
        if let Some(last) = still_in_use(&o.usage.versions, v.version, rotated_at, end, window) {
            plan.stale_in_use += 1;
            plan.events.push((
                EventType::Warning,
                "StaleSecretInUse",
                format!(
                    "M2MCredential {ns}/{name}: secret version {} was still in use (last used {}) when its grace period ended; clients still presenting it are now refused: make them re-read the Secret, or list them in rotation.restartTargets",
                    v.version,
                    last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            ));
        }
    }
    wake_at
}

/// Condition type: unused for `spec.dormantAfter`.
pub(crate) const DORMANT: &str = "Dormant";

/// The `Dormant` condition (`spec.dormantAfter`): `True` with a Warning
/// Event once unused that long, `False` again on the next use. Its message
/// never carries the last-use time while `False`, so usage writes do not
/// make the controller write. Returns when it would turn `True`.
fn dormancy(
    o: &Observed<'_>,
    status: &mut M2MCredentialStatus,
    dormant_after: Option<Duration>,
    plan: &mut Plan,
) -> Option<DateTime<Utc>> {
    dormancy_of(
        o.cred,
        status,
        o.usage.last_used,
        dormant_after,
        o.now,
        &mut plan.events,
    )
}

/// [`dormancy`] for any mode (the workload-identity reconcile calls it too).
pub(super) fn dormancy_of(
    cred: &M2MCredential,
    status: &mut M2MCredentialStatus,
    last_used: Option<DateTime<Utc>>,
    dormant_after: Option<Duration>,
    now: DateTime<Utc>,
    events: &mut Vec<PlannedEvent>,
) -> Option<DateTime<Utc>> {
    let Some(after) = dormant_after else {
        status.conditions.retain(|c| c.type_ != DORMANT);
        return None;
    };
    let generation = cred.metadata.generation;
    let created = cred
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    // The trusted last use (super::usage), not status.lastUsedTime as written.
    let since = last_used.max(created).unwrap_or(now);
    let after_text = cred.spec.dormant_after.as_deref().unwrap_or_default();
    let due = since.checked_add_signed(chrono::Duration::from_std(after).ok()?)?;
    let was_dormant = status
        .conditions
        .iter()
        .any(|c| c.type_ == DORMANT && c.status == ConditionStatus::True);
    if due <= now {
        let what = if last_used.is_some() {
            "not used since"
        } else {
            "never used since its creation at"
        };
        let msg = format!(
            "{what} {} (spec.dormantAfter {after_text}): remove it if nothing needs it",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if !was_dormant {
            events.push((EventType::Warning, "Dormant", msg.clone()));
        }
        let c = cond_at(DORMANT, true, "Unused", &msg, generation, now);
        set_condition(&mut status.conditions, c);
        None
    } else {
        let msg = format!("used within spec.dormantAfter ({after_text}), or created since");
        if was_dormant {
            events.push((
                EventType::Normal,
                "InUse",
                "used again: no longer dormant".into(),
            ));
        }
        let c = cond_at(DORMANT, false, "InUse", &msg, generation, now);
        set_condition(&mut status.conditions, c);
        Some(due)
    }
}

/// The Event of a `Ready` transition (none when `Ready` keeps its status
/// and reason, or becomes true for the first time).
fn ready_transition(
    old_status: &M2MCredentialStatus,
    ready_condition: &Condition,
    ready: &Result<(), NotReady>,
) -> Option<PlannedEvent> {
    let previous = old_status.conditions.iter().find(|c| c.type_ == READY);
    if previous
        .is_some_and(|p| p.status == ready_condition.status && p.reason == ready_condition.reason)
    {
        return None;
    }
    match ready {
        Err((reason, msg)) => Some((EventType::Warning, reason, msg.clone())),
        Ok(()) if previous.is_some() => Some((
            EventType::Normal,
            "Ready",
            "the credential is usable again".into(),
        )),
        Ok(()) => None,
    }
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str, o: &Observed<'_>) -> Condition {
    cond_at(
        type_,
        ok,
        reason,
        message,
        o.cred.metadata.generation,
        o.now,
    )
}

/// A condition for `generation` observed at `now`.
pub(super) fn cond_at(
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
    every: Option<Duration>,
) -> RotationInputs<'a> {
    RotationInputs {
        annotation: cred
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str),
        last_handled_annotation: status.last_handled_rotate_annotation.as_deref(),
        every,
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
    status: &M2MCredentialStatus,
    secret_name: &str,
    inputs: RotationInputs<'_>,
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
        ObservedSecret::Authentic(found) => match rotation_due(&inputs, now) {
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

async fn apply_secret(secrets: &Api<Secret>, desired: &Secret) -> Result<(), Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(kube_err(Step::ApplySecret))?;
    Ok(())
}

pub(super) async fn delete_old_secret(
    api: &Api<Secret>,
    old: &str,
    uid: &str,
) -> Result<(), Error> {
    let Some(s) = api
        .get_opt(old)
        .await
        .map_err(kube_err(Step::ReadOldSecret))?
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
        Err(e) => Err(kube_err(Step::DeleteOldSecret)(e)),
    }
}

pub(super) async fn patch_status(
    ctx: &Context,
    cred: &M2MCredential,
    status: &M2MCredentialStatus,
) -> Result<(), Error> {
    let ns = cred.namespace().unwrap_or_default();
    let api: Api<M2MCredential> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": M2MCredential::api_version(&()),
        "kind": M2MCredential::kind(&()),
        "status": controller_fields(status),
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
        Err(e) => Err(kube_err(Step::PatchCredentialStatus)(e)),
    }
}

/// The status fields the controller owns: usage (`lastUsedTime`,
/// `versionUsage`) belongs to the token server's field manager and is
/// never sent, so a controller apply can neither clobber nor claim it.
fn controller_fields(status: &M2MCredentialStatus) -> M2MCredentialStatus {
    M2MCredentialStatus {
        last_used_time: None,
        version_usage: Vec::new(),
        ..status.clone()
    }
}

/// Requeue at the next moment something is due: a scheduled rotation, the
/// end of a grace period, or expiry.
pub(super) fn next_requeue(
    cred: &M2MCredential,
    status: &M2MCredentialStatus,
    now: DateTime<Utc>,
) -> Duration {
    let candidates = [
        status.next_rotation_time,
        next_expiry(&status.verifiers, now),
        cred.spec.expires_at.filter(|t| *t > now),
    ];
    match candidates.into_iter().flatten().min() {
        Some(t) => {
            let wait = (t - now).to_std().unwrap_or_default() + Duration::from_millis(50);
            wait.min(IDLE_REQUEUE)
        }
        None => IDLE_REQUEUE,
    }
}

/// Error policy: log, count, and retry after a delay chosen by the error kind.
pub(crate) fn error_policy(cred: Arc<M2MCredential>, error: &Error, _ctx: Arc<Context>) -> Action {
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
            let every = rotation_settings(&c).unwrap().every;
            let got = kind(decide(
                &s,
                name,
                rotation_inputs(&c, &s, every),
                observed,
                at(1000),
            ));
            assert!(got.starts_with(want), "{what}: got {got}, want {want}");
        }
        let mut renamed = status(2, None);
        renamed.secret_name = Some("old-name".into());
        assert_eq!(
            kind(decide(
                &renamed,
                name,
                rotation_inputs(&cred(None, None), &renamed, None),
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
    fn the_controller_never_sends_usage_fields() {
        let mut s = status(2, None);
        s.last_used_time = Some(at(5));
        s.version_usage = vec![crate::crd::VersionUsage {
            version: 2,
            last_used_time: at(5),
        }];
        let sent = serde_json::to_value(controller_fields(&s)).expect("serialize");
        assert!(sent.get("lastUsedTime").is_none(), "{sent}");
        assert!(sent.get("versionUsage").is_none(), "{sent}");
        assert_eq!(sent["secretVersion"], 2);
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

/// Table tests of [`plan`]: each row starts from a world (credential,
/// account, Secret), optionally converges it, changes one thing and checks
/// what the plan writes.
#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::crd::M2MCredentialSpec;
    use chrono::TimeZone;
    use k8s_openapi::ByteString;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    struct World {
        cred: M2MCredential,
        account: Option<ServiceAccountSpec>,
        secret: Option<Secret>,
        key: VerifierKey,
        former_key_ids: Vec<String>,
        policy: Result<ScopePolicy, ScopePolicyError>,
        now: DateTime<Utc>,
    }

    impl World {
        fn new() -> Self {
            let mut cred = M2MCredential::new(
                "c",
                M2MCredentialSpec {
                    service_account_name: "sa".into(),
                    ..Default::default()
                },
            );
            cred.metadata.namespace = Some("team".into());
            cred.metadata.uid = Some("uid-1".into());
            cred.metadata.generation = Some(1);
            Self {
                cred,
                account: Some(ServiceAccountSpec {
                    scopes: vec!["orders.read".into()],
                    ..Default::default()
                }),
                secret: None,
                key: VerifierKey::from_bytes(&[7; 32]).unwrap(),
                former_key_ids: Vec::new(),
                policy: Ok(ScopePolicy::allow_all()),
                now: at(0),
            }
        }

        fn plan(&self) -> Plan {
            let o = Observed {
                cred: &self.cred,
                account: self.account.as_ref(),
                roles: &Ok(RoleGrant::none()),
                policy: self.policy.as_ref(),
                existing: self.secret.as_ref(),
                key: &self.key,
                former_key_ids: &self.former_key_ids,
                token_url: "https://id.example/oauth/token",
                issuer: "https://id.example",
                max_api_token_lifetime: Duration::from_secs(8760 * 3600),
                usage: super::super::usage::TrustedUsage::of(&self.cred, self.now),
                now: self.now,
            };
            plan(&o, || match self.cred.spec.type_ {
                CredentialType::ClientSecret => ClientSecret::generate(),
                CredentialType::ApiToken => api_token::generate(&client_id_for_uid("uid-1")),
            })
            .unwrap()
        }

        /// Plan and apply the plan to the world, as the cluster would.
        fn step(&mut self) -> Plan {
            let p = self.plan();
            if let Some(s) = &p.secret_write {
                self.secret = Some(s.clone());
            }
            if p.delete_old_secret.is_some() {
                unreachable!("no renames in these tests");
            }
            if let Some(s) = &p.status {
                self.cred.status = Some(s.clone());
            }
            p
        }

        fn converged() -> Self {
            let mut w = Self::new();
            w.step();
            w
        }

        fn status(&self) -> &M2MCredentialStatus {
            self.cred.status.as_ref().unwrap()
        }

        fn ready(&self) -> (ConditionStatus, String) {
            let c = self.status().conditions.iter().find(|c| c.type_ == READY);
            let c = c.unwrap();
            (c.status, c.reason.clone())
        }
    }

    fn event_reasons(p: &Plan) -> Vec<&'static str> {
        p.events.iter().map(|(_, r, _)| *r).collect()
    }

    fn versions(w: &World) -> Vec<(i64, bool)> {
        let s = w.status();
        s.verifiers
            .iter()
            .map(|v| (v.version, v.not_after.is_some()))
            .collect()
    }

    #[test]
    fn create_writes_secret_then_status() {
        let mut w = World::new();
        let p = w.step();
        assert!(p.secret_write.is_some() && p.generated && p.status.is_some());
        assert_eq!(event_reasons(&p), ["SecretCreated"]);
        assert_eq!(w.ready(), (ConditionStatus::True, "Issuing".into()));
        assert_eq!(w.status().secret_version, 1);
        assert_eq!(versions(&w), [(1, false)]);
        assert_eq!(p.requeue, IDLE_REQUEUE);
    }

    #[test]
    fn converged_credential_plans_nothing() {
        let w = World::converged();
        let p = w.plan();
        assert!(p.secret_write.is_none() && !p.generated);
        assert!(p.status.is_none(), "{:?}", p.status);
        assert!(p.events.is_empty());
    }

    #[test]
    fn rotations_keep_the_old_secret_for_the_grace_period() {
        // By annotation, with a grace period.
        let mut w = World::converged();
        w.cred.spec.rotation.grace_period = Some("60s".into());
        w.cred.metadata.annotations = Some([(ROTATE_ANNOTATION.into(), "r1".into())].into());
        w.now = at(10);
        let p = w.step();
        assert!(p.generated);
        assert_eq!(event_reasons(&p), ["RotateAnnotationChanged"]);
        assert_eq!(versions(&w), [(2, false), (1, true)]);
        assert_eq!(p.requeue, Duration::from_millis(60_050));
        assert!(w.plan().status.is_none(), "converged again");
        // Grace expiry: the old verifier goes, nothing else is written.
        w.now = at(71);
        let p = w.step();
        assert!(p.secret_write.is_none() && p.events.is_empty());
        assert_eq!(versions(&w), [(2, false)]);
        // By schedule.
        w.cred.spec.rotation.every = Some("1h".into());
        w.now = at(10 + 3600);
        let p = w.step();
        assert_eq!(event_reasons(&p), ["ScheduledRotation"]);
        assert_eq!(w.status().secret_version, 3);
    }

    /// What a token server writes: `version` used at `t` (and the
    /// managedFields entry server-side apply records for it).
    fn use_version(w: &mut World, version: i64, t: i64) {
        forge_use(w, version, t);
        let owned: serde_json::Map<String, serde_json::Value> = w
            .status()
            .version_usage
            .iter()
            .map(|u| {
                (
                    format!("k:{{\"version\":{}}}", u.version),
                    serde_json::json!({}),
                )
            })
            .collect();
        w.cred.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(crate::labels::USAGE_FIELD_MANAGER.into()),
                operation: Some("Apply".into()),
                subresource: Some("status".into()),
                fields_type: Some("FieldsV1".into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    serde_json::json!({ "f:status": {
                        "f:lastUsedTime": {}, "f:versionUsage": owned,
                    }}),
                )),
                ..Default::default()
            },
        ]);
    }

    /// Usage written into status by someone else (`kubectl patch
    /// --subresource=status`): no managedFields entry of the token server.
    fn forge_use(w: &mut World, version: i64, t: i64) {
        let status = w.cred.status.as_mut().unwrap();
        status.last_used_time = Some(at(t));
        status.version_usage.retain(|u| u.version != version);
        status.version_usage.push(crate::crd::VersionUsage {
            version,
            last_used_time: at(t),
        });
    }

    /// Usage the token server did not write is not believed, nor a time in
    /// the future: a forged use of the previous version (another field
    /// manager's, or in 2100) raises no false `StaleSecretInUse`.
    #[test]
    fn forged_or_future_usage_does_not_steer_retirement_or_dormancy() {
        const Y2100: i64 = 4_102_444_800;
        let mut w = rotated(None);
        forge_use(&mut w, 1, 590);
        w.now = at(610);
        assert!(
            event_reasons(&w.plan()).is_empty(),
            "usage written by another field manager raised StaleSecretInUse"
        );
        let mut w = rotated(None);
        use_version(&mut w, 1, Y2100);
        w.now = at(610);
        assert!(
            event_reasons(&w.plan()).is_empty(),
            "a use in 2100 raised StaleSecretInUse"
        );
    }

    /// Converged, then rotated at 10 with a 600s grace period.
    fn rotated(retire: Option<&str>) -> World {
        let mut w = World::converged();
        w.cred.spec.rotation.grace_period = Some("600s".into());
        w.cred.spec.rotation.retire_when_unused_for = retire.map(str::to_owned);
        w.cred.metadata.annotations = Some([(ROTATE_ANNOTATION.into(), "r1".into())].into());
        w.now = at(10);
        w.step();
        assert_eq!(versions(&w), [(2, false), (1, true)]);
        w
    }

    #[test]
    fn an_unused_previous_version_retires_early() {
        let mut w = rotated(Some("60s"));
        // Wake up when it could retire, not only at the end of the grace period.
        assert_eq!(w.plan().requeue, Duration::from_millis(60_050));
        w.now = at(69);
        assert!(w.plan().status.is_none(), "not yet");
        w.now = at(70);
        let p = w.step();
        assert_eq!(event_reasons(&p), ["PreviousSecretRetired"]);
        assert!(p.secret_write.is_none(), "the Secret is not rewritten");
        assert_eq!(versions(&w), [(2, false)]);
        assert!(w.plan().status.is_none(), "converged again");
    }

    #[test]
    fn a_used_previous_version_is_kept_and_the_grace_period_stays_the_bound() {
        let mut w = rotated(Some("60s"));
        // Used at 50: it may retire at 110 at the earliest.
        use_version(&mut w, 1, 50);
        w.now = at(70);
        let p = w.plan();
        assert!(
            p.status.is_none(),
            "usage alone writes nothing: {:?}",
            p.status
        );
        assert_eq!(p.requeue, Duration::from_millis(40_050));
        // Used every minute until the end of its grace period: kept, then
        // warned about as the grace period ends.
        for t in (100..560).step_by(60) {
            use_version(&mut w, 1, t);
            w.now = at(t + 30);
            assert!(w.plan().status.is_none(), "kept at {t}");
        }
        use_version(&mut w, 1, 600);
        w.now = at(610);
        let p = w.step();
        assert_eq!(event_reasons(&p), ["StaleSecretInUse"]);
        assert_eq!(p.stale_in_use, 1);
        let (_, _, note) = &p.events[0];
        assert!(
            note.contains("team/c") && note.contains("secret version 1"),
            "{note}"
        );
        assert_eq!(versions(&w), [(2, false)]);
    }

    #[test]
    fn stale_in_use_without_early_retirement() {
        let mut w = rotated(None);
        use_version(&mut w, 1, 250);
        w.now = at(610);
        assert!(
            event_reasons(&w.plan()).is_empty(),
            "last use 6 minutes before the end"
        );
        let mut w = rotated(None);
        use_version(&mut w, 1, 590);
        w.now = at(610);
        assert_eq!(event_reasons(&w.plan()), ["StaleSecretInUse"]);
    }

    #[test]
    fn dormant_appears_after_dormant_after_and_clears_on_use() {
        let mut w = World::converged();
        w.cred.spec.dormant_after = Some("100s".into());
        w.now = at(5);
        let p = w.step();
        let dormant = |w: &World| {
            let c = w
                .status()
                .conditions
                .iter()
                .find(|c| c.type_ == DORMANT)
                .unwrap();
            (c.status, c.reason.clone())
        };
        assert_eq!(dormant(&w), (ConditionStatus::False, "InUse".into()));
        assert!(p.events.is_empty());
        // Created at 0 (no creationTimestamp in the test: counted from now).
        use_version(&mut w, 1, 20);
        w.now = at(50);
        let p = w.plan();
        assert!(p.status.is_none(), "a use while not dormant writes nothing");
        assert_eq!(p.requeue, Duration::from_millis(70_050));
        w.now = at(120);
        let p = w.step();
        assert_eq!(event_reasons(&p), ["Dormant"]);
        assert_eq!(dormant(&w), (ConditionStatus::True, "Unused".into()));
        w.now = at(500);
        assert!(w.plan().status.is_none(), "dormant, converged");
        use_version(&mut w, 1, 510);
        w.now = at(511);
        let p = w.step();
        assert_eq!(event_reasons(&p), ["InUse"]);
        assert_eq!(dormant(&w), (ConditionStatus::False, "InUse".into()));
        // Removing dormantAfter removes the condition.
        w.cred.spec.dormant_after = None;
        w.step();
        assert!(w.status().conditions.iter().all(|c| c.type_ != DORMANT));
    }

    #[test]
    fn restart_targets_restart_once_per_rotation() {
        let mut w = World::new();
        w.cred.spec.rotation.restart_targets = vec![crate::crd::RestartTarget {
            kind: crate::crd::RestartKind::Deployment,
            name: "web".into(),
        }];
        let p = w.step();
        assert_eq!(p.restart_for, None, "the first secret restarts nothing");
        assert_eq!(w.status().restarted_version, Some(1));
        w.cred.metadata.annotations = Some([(ROTATE_ANNOTATION.into(), "r1".into())].into());
        w.now = at(10);
        let p = w.step();
        assert_eq!(p.restart_for, Some(2));
        assert_eq!(w.status().restarted_version, Some(1), "recorded once done");
        // Interrupted before the record: the next reconcile tries again
        // (each target's own annotation keeps it to one restart).
        assert_eq!(w.plan().restart_for, Some(2));
        w.cred.status.as_mut().unwrap().restarted_version = Some(2);
        let p = w.plan();
        assert_eq!(p.restart_for, None, "resync: nothing");
        assert!(p.status.is_none());
    }

    #[test]
    fn tampered_secret_is_repaired_without_grace() {
        let mut w = World::converged();
        w.cred.spec.rotation.grace_period = Some("1h".into());
        let secret = w.secret.as_mut().unwrap();
        let data = secret.data.as_mut().unwrap();
        data.insert("client_secret".into(), ByteString(b"m2ms_guessed".to_vec()));
        let p = w.step();
        assert!(p.generated);
        assert_eq!(event_reasons(&p), ["SecretTampered"]);
        assert_eq!(versions(&w), [(2, false)], "no grace for a tampered secret");
    }

    #[test]
    fn two_installations_with_other_keys_settle_instead_of_fighting() {
        let mut w = World::converged();
        let a = w.key.clone();
        let b = VerifierKey::from_bytes(&[9; 32]).unwrap();
        let sealed = w.status().verifiers.clone();
        // The second installation reports the conflict once.
        w.key = b.clone();
        let p = w.step();
        assert!(p.secret_write.is_none() && !p.generated);
        assert_eq!(event_reasons(&p), [VERIFIER_KEY_CONFLICT]);
        assert_eq!(
            w.ready(),
            (ConditionStatus::False, VERIFIER_KEY_CONFLICT.into())
        );
        assert_eq!(
            w.status().verifiers,
            sealed,
            "the other key's verifiers stay"
        );
        // Neither side writes again, however often both reconcile.
        for _ in 0..3 {
            for key in [&a, &b] {
                w.key = key.clone();
                w.now += chrono::Duration::seconds(1);
                let p = w.step();
                assert!(p.secret_write.is_none() && p.status.is_none(), "{p:?}");
                assert!(p.events.is_empty());
            }
        }
        assert_eq!(w.status().secret_version, 1);
        // A spec change clears a report the first installation cannot
        // confirm; the second, still there, reports again.
        w.cred.metadata.generation = Some(2);
        w.key = a;
        assert_eq!(event_reasons(&w.step()), ["Ready"]);
        w.key = b;
        assert_eq!(event_reasons(&w.step()), [VERIFIER_KEY_CONFLICT]);
        assert_eq!(w.status().secret_version, 1);
    }

    #[test]
    fn a_replaced_verifier_key_is_reported_and_recovers_when_the_keys_match() {
        let mut w = World::converged();
        let a = w.key.clone();
        let b = VerifierKey::from_bytes(&[9; 32]).unwrap();
        w.key = b.clone();
        assert_eq!(event_reasons(&w.step()), [VERIFIER_KEY_CONFLICT]);
        assert!(
            w.step().events.is_empty(),
            "one Warning, not one per reconcile"
        );
        // The original key is back: usable again, nothing re-issued.
        w.key = a;
        w.former_key_ids = vec![b.key_id()];
        let p = w.step();
        assert!(p.secret_write.is_none() && !p.generated);
        assert_eq!(event_reasons(&p), ["Ready"]);
        assert_eq!(w.ready(), (ConditionStatus::True, "Issuing".into()));
        assert_eq!(w.status().secret_version, 1);
    }

    #[test]
    fn foreign_secret_is_never_touched() {
        let mut w = World::new();
        let mut foreign = Secret::default();
        foreign.metadata.name = Some("c-credentials".into());
        w.secret = Some(foreign);
        let p = w.step();
        assert!(p.secret_write.is_none() && !p.generated);
        assert_eq!(event_reasons(&p), ["SecretNameConflict"]);
        assert_eq!(
            w.ready(),
            (ConditionStatus::False, "SecretNameConflict".into())
        );
        let synced = w
            .status()
            .conditions
            .iter()
            .find(|c| c.type_ == SECRET_SYNCED);
        assert_eq!(synced.unwrap().status, ConditionStatus::False);
    }

    #[test]
    fn invalid_input_is_a_ready_false_reason_not_an_error() {
        type Change = fn(&mut World);
        let cases: [(&str, Change, &str); 7] = [
            (
                "missing account",
                |w| w.account = None,
                "ServiceAccountNotFound",
            ),
            (
                "scope outside the account",
                |w| w.cred.spec.scopes = vec!["orders.write".into()],
                "ScopesOutsideServiceAccount",
            ),
            (
                "namespace policy",
                |w| w.policy = ScopePolicy::parse("billing.*"),
                "ScopesNotAllowedInNamespace",
            ),
            (
                "token TTL",
                |w| w.cred.spec.token_ttl = Some("0s".into()),
                "InvalidTokenTTL",
            ),
            (
                "rotation duration",
                |w| w.cred.spec.rotation.every = Some("99999999999999999999h".into()),
                "InvalidRotation",
            ),
            (
                "expired",
                |w| w.cred.spec.expires_at = Some(at(-1)),
                "Expired",
            ),
            (
                "disabled account",
                |w| w.account.as_mut().unwrap().disabled = true,
                "ServiceAccountDisabled",
            ),
        ];
        for (what, change, reason) in cases {
            let mut w = World::converged();
            change(&mut w);
            let p = w.step();
            assert!(p.secret_write.is_none() && !p.generated, "{what}");
            assert_eq!(event_reasons(&p), [reason], "{what}");
            assert_eq!(w.ready(), (ConditionStatus::False, reason.into()), "{what}");
            assert!(
                w.plan().events.is_empty(),
                "{what}: one Event per transition"
            );
            // Fixing it makes the credential usable again, same secret.
            let mut fixed = World::converged();
            fixed.cred.status = w.cred.status.clone();
            let p = fixed.step();
            assert_eq!(event_reasons(&p), ["Ready"], "{what}");
            assert!(!p.generated, "{what}");
        }
    }

    fn api_token_world(expires_in_hours: Option<i64>, every: Option<&str>) -> World {
        let mut w = World::new();
        w.cred.spec.type_ = CredentialType::ApiToken;
        w.cred.spec.expires_at = expires_in_hours.map(|h| at(h * 3600));
        w.cred.spec.rotation.every = every.map(str::to_owned);
        w
    }

    fn secret_value(w: &World, key: &str) -> Option<String> {
        let data = w.secret.as_ref()?.data.as_ref()?;
        String::from_utf8(data.get(key)?.0.clone()).ok()
    }

    #[test]
    fn an_api_token_credential_writes_a_token_secret() {
        let mut w = api_token_world(Some(24), None);
        let p = w.step();
        assert!(p.generated);
        assert_eq!(event_reasons(&p), ["SecretCreated"]);
        assert_eq!(w.ready(), (ConditionStatus::True, "Issuing".into()));
        assert_eq!(w.status().mode, Some(CredentialMode::ApiToken));
        let token = secret_value(&w, "token").unwrap();
        assert_eq!(
            api_token::client_id_of(&token),
            Some(client_id_for_uid("uid-1"))
        );
        assert_eq!(secret_value(&w, "client_secret"), None);
        assert!(secret_value(&w, "token_url").is_some());
        assert_eq!(
            w.secret.as_ref().unwrap().type_.as_deref(),
            Some(secret::API_TOKEN_SECRET_TYPE)
        );
        // The digest in status is the token's: the token server accepts it.
        let v = &w.status().verifiers[0];
        let binding = SecretBinding {
            namespace: "team",
            name: "c",
            uid: "uid-1",
            client_id: &client_id_for_uid("uid-1"),
            version: v.version,
        };
        assert!(w.key.verify(&binding, &token, &v.digest));
        assert!(w.plan().status.is_none(), "converged");
        // Rotation works as for a client secret.
        w.cred.metadata.annotations = Some([(ROTATE_ANNOTATION.into(), "r1".into())].into());
        w.now = at(60);
        let p = w.step();
        assert_eq!(event_reasons(&p), ["RotateAnnotationChanged"]);
        assert_ne!(secret_value(&w, "token").unwrap(), token);
        assert_eq!(versions(&w), [(2, false)]);
    }

    #[test]
    fn an_api_token_without_an_end_or_over_the_maximum_is_not_ready() {
        let cases = [
            (None, None, "APITokenWithoutEnd"),
            (Some(8761), None, "APITokenLifetimeTooLong"),
            (None, Some("8761h"), "APITokenLifetimeTooLong"),
        ];
        for (expires, every, reason) in cases {
            let mut w = api_token_world(expires, every);
            let p = w.step();
            assert!(p.secret_write.is_none() && !p.generated, "{reason}");
            assert_eq!(event_reasons(&p), [reason]);
            assert_eq!(w.ready(), (ConditionStatus::False, reason.into()));
            assert!(w.status().verifiers.is_empty());
        }
        for (expires, every) in [(Some(8760), None), (None, Some("8760h"))] {
            let mut w = api_token_world(expires, every);
            w.step();
            assert_eq!(w.ready(), (ConditionStatus::True, "Issuing".into()));
        }
    }

    /// Lengthening an issued token's life past the maximum stops it at
    /// once; shortening it again brings the same token back.
    #[test]
    fn an_issued_token_stops_working_when_its_end_moves_too_far() {
        let mut w = api_token_world(Some(24), None);
        w.step();
        let token = secret_value(&w, "token").unwrap();
        w.now = at(3600);
        w.cred.spec.expires_at = Some(at(8761 * 3600));
        let p = w.step();
        assert_eq!(event_reasons(&p), ["APITokenLifetimeTooLong"]);
        assert!(w.status().verifiers.is_empty(), "the token stops working");
        w.cred.spec.expires_at = Some(at(48 * 3600));
        let p = w.step();
        assert!(!p.generated);
        assert_eq!(event_reasons(&p), ["Ready"]);
        assert_eq!(versions(&w), [(1, false)]);
        assert_eq!(secret_value(&w, "token").unwrap(), token);
    }

    #[test]
    fn the_type_cannot_change_and_excludes_workload_identity() {
        let mut w = World::converged();
        w.cred.spec.type_ = CredentialType::ApiToken;
        w.cred.spec.expires_at = Some(at(3600));
        let p = w.step();
        assert!(!p.generated && p.secret_write.is_none());
        assert_eq!(event_reasons(&p), ["TypeChanged"]);
        assert_eq!(w.status().mode, Some(CredentialMode::ClientSecret));
        assert!(w.status().verifiers.is_empty());
        let mut w = api_token_world(Some(24), None);
        w.cred.spec.workload_identity = Some(crate::crd::WorkloadIdentity {
            kubernetes_service_account: "uploader".into(),
            ..Default::default()
        });
        let p = w.step();
        assert_eq!(event_reasons(&p), ["APITokenWithWorkloadIdentity"]);
        assert!(p.secret_write.is_none());
    }
}
