//! `kubectl m2m rotate NAME [--wait]`: set the `m2m.dev/rotate` annotation
//! to the current time (a merge patch of that one annotation, so nothing
//! else the caller or GitOps owns is touched); with `--wait`, watch until
//! the controller reports a higher `status.secretVersion` and `Ready=True`,
//! then say what the grace period means for the previous secret now.

use super::cli::RotateArgs;
use super::cluster::{Cluster, Target};
use super::status::{CredentialSummary, describe_get, summarize};
use super::table::relative;
use super::{PluginError, write_out};
use crate::crd::{ConditionStatus, M2MCredential, ROTATE_ANNOTATION};
use chrono::{DateTime, SecondsFormat, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::Value;
use std::io::Write;

/// Field manager of the annotation patch.
pub(crate) const FIELD_MANAGER: &str = "kubectl-m2m";

/// The annotation value for a rotation requested at `now`: RFC 3339,
/// different from `current` (two rotations within one second still differ).
pub(crate) fn annotation_value(now: DateTime<Utc>, current: Option<&str>) -> String {
    let value = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    if current == Some(value.as_str()) {
        now.to_rfc3339_opts(SecondsFormat::Millis, true)
    } else {
        value
    }
}

/// Whether the rotation asked for has landed: a version above `before`,
/// Ready=True.
pub(crate) fn rotation_done(cred: &M2MCredential, before: i64) -> bool {
    cred.status.as_ref().is_some_and(|s| {
        s.secret_version > before
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
    })
}

/// What the grace period means for the previous version, now that `after`
/// replaced `before`. `obj` is the credential's JSON (for fields newer than
/// the CRD types, e.g. `rotation.retireWhenUnusedFor`).
pub(crate) fn grace_message(
    obj: &Value,
    summary: &CredentialSummary,
    before: i64,
    now: DateTime<Utc>,
) -> String {
    let grace = obj
        .pointer("/spec/rotation/gracePeriod")
        .and_then(Value::as_str)
        .unwrap_or("0s");
    let mut lines = vec![];
    let in_grace: Vec<_> = summary
        .previous_versions
        .iter()
        .filter(|p| p.version <= before)
        .collect();
    if before == 0 {
        lines.push("this was the credential's first secret; nothing was replaced.".to_owned());
    } else if in_grace.is_empty() {
        lines.push(format!(
            "previous secret (version {before}) was revoked at once (gracePeriod {grace}): consumers still using it fail from now on, and access tokens issued with it are inactive."
        ));
    } else {
        for p in in_grace {
            let mut line = format!(
                "previous secret (version {}) keeps working until {} ({}, gracePeriod {grace})",
                p.version,
                p.valid_until.to_rfc3339_opts(SecondsFormat::Secs, true),
                relative(p.valid_until, now)
            );
            if let Some(unused) = obj
                .pointer("/spec/rotation/retireWhenUnusedFor")
                .and_then(Value::as_str)
            {
                line.push_str(&format!(
                    ", or until it has gone unused for {unused}, whichever comes first"
                ));
            }
            line.push('.');
            lines.push(line);
        }
        lines.push(format!(
            "watch consumers move to the new secret with: kubectl m2m status -n {} {}",
            summary.namespace, summary.name
        ));
    }
    if let Some(targets) = obj
        .pointer("/spec/rotation/restartTargets")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        let names: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{}/{}",
                    t.get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_ascii_lowercase(),
                    t.get("name").and_then(Value::as_str).unwrap_or("?")
                )
            })
            .collect();
        lines.push(format!("rollout restart of: {}.", names.join(", ")));
    }
    if let Some(secret) = &summary.secret_name {
        lines.push(format!(
            "pods that mount Secret {secret:?} see the new secret within the kubelet's sync period; ones that read it once (environment variables) need a restart."
        ));
    }
    lines.join("\n") + "\n"
}

/// `kubectl m2m rotate`.
pub async fn run(
    cluster: &Cluster,
    args: &RotateArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let name = args.name.as_str();
    let ns = cluster.namespace.as_str();
    let api = cluster.credentials();
    let current = api
        .get(name)
        .await
        .map_err(|e| cluster.error(e, Target::Credential(name), &describe_get(name, ns)))?;
    let before = current.status.as_ref().map_or(0, |s| s.secret_version);
    let value = annotation_value(
        Utc::now(),
        current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE_ANNOTATION))
            .map(String::as_str),
    );
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            cluster.error(
                e,
                Target::Credential(name),
                &format!("rotating m2mcredential {name:?} in namespace {ns:?}"),
            )
        })?;
    if !args.wait {
        return write_out(
            out,
            &format!(
                "m2mcredential.m2m.dev/{name} rotation requested ({ROTATE_ANNOTATION}={value}, current version {before}); follow it with kubectl m2m status -n {ns} {name}\n"
            ),
        );
    }

    let waited = tokio::time::timeout(
        args.timeout,
        await_condition(api.clone(), name, move |c: Option<&M2MCredential>| {
            c.is_some_and(|c| rotation_done(c, before))
        }),
    )
    .await;
    match waited {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => {
            return Err(PluginError::Credential(format!(
                "m2mcredential {name:?} in namespace {ns:?} was deleted while waiting for its rotation"
            )));
        }
        Ok(Err(e)) => {
            return Err(PluginError::Api {
                action: format!("watching m2mcredential {name:?} in namespace {ns:?}"),
                message: super::error_chain(&e),
            });
        }
        Err(_) => {
            let now = api.get(name).await.ok();
            let state = now
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .map(|s| {
                    let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
                    format!(
                        "now version {}, Ready={}{}",
                        s.secret_version,
                        ready.map_or("Unknown".to_owned(), |c| format!("{:?}", c.status)),
                        ready.map_or(String::new(), |c| format!(" ({}: {})", c.reason, c.message))
                    )
                })
                .unwrap_or_else(|| "no status yet".into());
            return Err(PluginError::Timeout(format!(
                "timed out after {} waiting for m2mcredential {name:?} in namespace {ns:?} to pass version {before} and be Ready ({state}); is the operator running? see kubectl get events -n {ns} --field-selector involvedObject.name={name}, or wait longer with --timeout",
                crate::core::duration::format_duration(args.timeout)
            )));
        }
    }
    // Read it again as JSON: fields newer than the CRD types shape the message.
    let obj = cluster
        .credentials_dynamic(Some(ns))
        .get(name)
        .await
        .map_err(|e| cluster.error(e, Target::Credential(name), &describe_get(name, ns)))?;
    let obj = serde_json::to_value(obj).map_err(|e| PluginError::Output(e.to_string()))?;
    let now = Utc::now();
    let summary = summarize(&obj, now);
    let mut text = format!(
        "m2mcredential.m2m.dev/{name} rotated: version {} is Ready{}\n",
        summary.version.unwrap_or_default(),
        summary
            .secret_hint
            .as_deref()
            .map(|h| format!(" (secret {h})"))
            .unwrap_or_default()
    );
    text.push_str(&grace_message(&obj, &summary, before, now));
    write_out(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn the_annotation_is_the_current_time_and_always_changes() {
        assert_eq!(annotation_value(now(), None), "2026-11-24T12:00:00Z");
        assert_eq!(
            annotation_value(now(), Some("2026-11-23")),
            "2026-11-24T12:00:00Z"
        );
        assert_eq!(
            annotation_value(now(), Some("2026-11-24T12:00:00Z")),
            "2026-11-24T12:00:00.000Z"
        );
    }

    fn cred(version: i64, ready: &str) -> M2MCredential {
        serde_json::from_value(json!({
            "apiVersion": "m2m.dev/v1alpha1", "kind": "M2MCredential",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"serviceAccountName": "a"},
            "status": {"secretVersion": version, "conditions": [{"type": "Ready", "status": ready,
                "reason": "R", "message": "m", "lastTransitionTime": "2026-11-24T12:00:00Z"}]}
        }))
        .unwrap()
    }

    #[test]
    fn done_needs_a_higher_version_and_ready() {
        assert!(!rotation_done(&cred(2, "True"), 2));
        assert!(!rotation_done(&cred(3, "False"), 2));
        assert!(rotation_done(&cred(3, "True"), 2));
    }

    fn obj(grace: &str, verifiers: Value, extra: Value) -> Value {
        let mut rotation = json!({"gracePeriod": grace});
        if let (Some(r), Some(e)) = (rotation.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        json!({
            "metadata": {"name": "ci", "namespace": "team-a"},
            "spec": {"serviceAccountName": "a", "rotation": rotation},
            "status": {"secretVersion": 3, "secretName": "ci-credentials", "verifiers": verifiers}
        })
    }

    #[test]
    fn without_grace_the_old_secret_is_revoked_at_once() {
        let o = obj("0s", json!([{"version": 3, "digest": "d"}]), json!({}));
        let msg = grace_message(&o, &summarize(&o, now()), 2, now());
        assert!(
            msg.starts_with("previous secret (version 2) was revoked at once (gracePeriod 0s)"),
            "{msg}"
        );
        assert!(msg.contains("Secret \"ci-credentials\""), "{msg}");
    }

    #[test]
    fn with_grace_the_end_and_early_retirement_are_named() {
        let end = (now() + Duration::minutes(10)).to_rfc3339();
        let o = obj(
            "10m",
            json!([{"version": 3, "digest": "d"}, {"version": 2, "digest": "e", "notAfter": end}]),
            json!({"retireWhenUnusedFor": "2m", "restartTargets": [{"kind": "Deployment", "name": "web"}]}),
        );
        let msg = grace_message(&o, &summarize(&o, now()), 2, now());
        assert!(
            msg.starts_with("previous secret (version 2) keeps working until 2026-11-24T12:10:00Z (in 10m, gracePeriod 10m), or until it has gone unused for 2m, whichever comes first."),
            "{msg}"
        );
        assert!(msg.contains("kubectl m2m status -n team-a ci"), "{msg}");
        assert!(msg.contains("rollout restart of: deployment/web."), "{msg}");
    }
}
