//! `kubectl m2m status`: one row per credential — identity, type, secret
//! version, last use, previous versions still in their grace period (with
//! their last use), next rotation, expiry, Ready.
//!
//! Rows are built by a pure function from the object's JSON rather than the
//! typed [`M2MCredential`]: usage (`status.lastUsedTime`,
//! `status.versionUsage`), `spec.type` and `spec.workloadIdentity` may be
//! newer than the CRD types this binary was built with, and still show.
//! The typed parts reuse the CRD types and the core's rules (which
//! verifiers are accepted now, when the next scheduled rotation is due).

use super::cli::{GlobalArgs, OutputFormat, StatusArgs};
use super::cluster::{Cluster, Target};
use super::table::{relative, relative_or_dash, render};
use super::{PluginError, write_out};
use crate::core::rotation::{RotationInputs, next_scheduled};
use crate::core::verifier::accepted_at;
use crate::crd::{Condition, ConditionStatus, ROTATE_ANNOTATION, SecretVerifier};
use chrono::{DateTime, Utc};
use kube::api::ListParams;
use serde::Serialize;
use serde_json::Value;
use std::io::Write;

/// `kind` of the `-o json|yaml` document.
pub(crate) const LIST_KIND: &str = "M2MCredentialStatusList";
/// `apiVersion` of the `-o json|yaml` document; bumped on an incompatible change.
pub(crate) const LIST_API_VERSION: &str = "kubectl-m2m.m2m.dev/v1";

/// How a credential authenticates.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialType {
    /// A generated client secret (`spec.type: ClientSecret`, the default).
    ClientSecret,
    /// A long-lived opaque bearer token (`spec.type: APIToken`).
    #[serde(rename = "APIToken")]
    ApiToken,
    /// A core ServiceAccount's projected token (`spec.workloadIdentity`); no stored secret.
    WorkloadIdentity,
}

impl CredentialType {
    /// The name shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecret => "ClientSecret",
            Self::ApiToken => "APIToken",
            Self::WorkloadIdentity => "WorkloadIdentity",
        }
    }
}

/// Who a credential authenticates as.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Identity {
    /// `m2m.dev` for the identity's ServiceAccount, `""` for a core one.
    pub api_group: String,
    /// Always `ServiceAccount`.
    pub kind: String,
    /// Its name, in the credential's namespace.
    pub name: String,
}

impl Identity {
    /// `m2msa/<name>` or `sa/<name>`: the short names kubectl accepts.
    pub fn short(&self) -> String {
        if self.api_group.is_empty() {
            format!("sa/{}", self.name)
        } else {
            format!("m2msa/{}", self.name)
        }
    }
}

/// A replaced secret version that still works until its grace period ends.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreviousVersion {
    /// The secret version.
    pub version: i64,
    /// End of its grace period.
    pub valid_until: DateTime<Utc>,
    /// Its last successful use, if the token server recorded one.
    pub last_used_time: Option<DateTime<Utc>>,
}

/// One credential, as `status` shows it. Field names are the `-o json` contract.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CredentialSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Who it authenticates as: the core ServiceAccount for workload
    /// identity, else the m2m.dev one.
    pub identity: Identity,
    /// `spec.serviceAccountName`: the m2m.dev identity (also for workload identity).
    pub service_account_name: String,
    /// How it authenticates.
    #[serde(rename = "type")]
    pub type_: CredentialType,
    /// `status.clientId`.
    pub client_id: Option<String>,
    /// `status.secretName`.
    pub secret_name: Option<String>,
    /// `status.secretVersion` (none before the first secret, and for workload identity).
    pub version: Option<i64>,
    /// `status.secretHint`: a fingerprint of the current secret (`sha256:`
    /// and 8 hex digits of its SHA-256), never any of its characters.
    pub secret_hint: Option<String>,
    /// `status.lastUsedTime`.
    pub last_used_time: Option<DateTime<Utc>>,
    /// When the current version was last used (`status.versionUsage`).
    pub current_version_last_used_time: Option<DateTime<Utc>>,
    /// Replaced versions still accepted now.
    pub previous_versions: Vec<PreviousVersion>,
    /// `status.lastRotationTime`.
    pub last_rotation_time: Option<DateTime<Utc>>,
    /// `status.nextRotationTime`, else computed from `rotation.every`.
    pub next_rotation_time: Option<DateTime<Utc>>,
    /// `status.expiresAt`, else `spec.expiresAt`.
    pub expires_at: Option<DateTime<Utc>>,
    /// The `m2m.dev/rotate` annotation.
    pub rotate_annotation: Option<String>,
    /// Status of the `Ready` condition (`True`, `False`, `Unknown`).
    pub ready: String,
    /// Its reason.
    pub ready_reason: Option<String>,
    /// Its message.
    pub ready_message: Option<String>,
    /// Status of the `Dormant` condition, when the controller sets one.
    pub dormant: Option<String>,
}

/// The `-o json|yaml` document.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusList {
    /// [`LIST_API_VERSION`].
    pub api_version: &'static str,
    /// [`LIST_KIND`].
    pub kind: &'static str,
    /// One entry per credential, sorted by namespace and name.
    pub items: Vec<CredentialSummary>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn time_at(v: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    str_at(v, pointer)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn parse_at<T: serde::de::DeserializeOwned>(v: &Value, pointer: &str) -> Option<T> {
    v.pointer(pointer)
        .and_then(|x| serde_json::from_value(x.clone()).ok())
}

/// Last use per secret version from `status.versionUsage`.
fn version_last_used(obj: &Value, version: i64) -> Option<DateTime<Utc>> {
    obj.pointer("/status/versionUsage")?
        .as_array()?
        .iter()
        .find(|u| u.get("version").and_then(Value::as_i64) == Some(version))
        .and_then(|u| time_at(u, "/lastUsedTime"))
}

/// Build the summary of one credential object (its JSON as the apiserver returns it).
pub(crate) fn summarize(obj: &Value, now: DateTime<Utc>) -> CredentialSummary {
    let namespace = str_at(obj, "/metadata/namespace")
        .unwrap_or_default()
        .to_owned();
    let name = str_at(obj, "/metadata/name").unwrap_or_default().to_owned();
    let service_account_name = str_at(obj, "/spec/serviceAccountName")
        .unwrap_or_default()
        .to_owned();
    let workload_sa = str_at(obj, "/spec/workloadIdentity/kubernetesServiceAccount");
    let type_ = match (workload_sa, str_at(obj, "/spec/type")) {
        (Some(_), _) => CredentialType::WorkloadIdentity,
        (None, Some("APIToken")) => CredentialType::ApiToken,
        _ => CredentialType::ClientSecret,
    };
    let identity = match workload_sa {
        Some(sa) => Identity {
            api_group: String::new(),
            kind: "ServiceAccount".into(),
            name: sa.to_owned(),
        },
        None => Identity {
            api_group: crate::crd::GROUP.into(),
            kind: "ServiceAccount".into(),
            name: service_account_name.clone(),
        },
    };
    let version = obj
        .pointer("/status/secretVersion")
        .and_then(Value::as_i64)
        .filter(|v| *v > 0);
    let verifiers: Vec<SecretVerifier> = parse_at(obj, "/status/verifiers").unwrap_or_default();
    let mut previous_versions: Vec<PreviousVersion> = accepted_at(&verifiers, now)
        .into_iter()
        .filter(|v| Some(v.version) != version)
        .filter_map(|v| {
            Some(PreviousVersion {
                version: v.version,
                valid_until: v.not_after?,
                last_used_time: version_last_used(obj, v.version),
            })
        })
        .collect();
    previous_versions.sort_by_key(|p| std::cmp::Reverse(p.version));

    let last_rotation_time = time_at(obj, "/status/lastRotationTime");
    let every = str_at(obj, "/spec/rotation/every")
        .and_then(|e| crate::core::duration::parse_duration(e).ok());
    let next_rotation_time = time_at(obj, "/status/nextRotationTime").or_else(|| {
        next_scheduled(&RotationInputs {
            annotation: None,
            last_handled_annotation: None,
            every,
            last_rotation: last_rotation_time,
        })
    });
    let conditions: Vec<Condition> = parse_at(obj, "/status/conditions").unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let status_name = |s: ConditionStatus| {
        match s {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
        .to_owned()
    };
    let ready = condition("Ready");
    CredentialSummary {
        identity,
        service_account_name,
        type_,
        client_id: str_at(obj, "/status/clientId").map(str::to_owned),
        secret_name: str_at(obj, "/status/secretName").map(str::to_owned),
        version,
        secret_hint: str_at(obj, "/status/secretHint").map(str::to_owned),
        last_used_time: time_at(obj, "/status/lastUsedTime"),
        current_version_last_used_time: version.and_then(|v| version_last_used(obj, v)),
        previous_versions,
        last_rotation_time,
        next_rotation_time,
        expires_at: time_at(obj, "/status/expiresAt").or_else(|| time_at(obj, "/spec/expiresAt")),
        rotate_annotation: obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ROTATE_ANNOTATION))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ready: ready.map_or_else(|| "Unknown".to_owned(), |c| status_name(c.status)),
        ready_reason: ready.map(|c| c.reason.clone()).filter(|r| !r.is_empty()),
        ready_message: ready.map(|c| c.message.clone()).filter(|m| !m.is_empty()),
        dormant: condition("Dormant").map(|c| status_name(c.status)),
        namespace,
        name,
    }
}

/// The cell of previous versions: `v2 (ends in 9m, used 1m ago)`, `-` when none.
fn previous_cell(s: &CredentialSummary, now: DateTime<Utc>) -> String {
    if s.previous_versions.is_empty() {
        return "-".into();
    }
    s.previous_versions
        .iter()
        .map(|p| {
            let used = p.last_used_time.map_or_else(
                || "no use seen".to_owned(),
                |t| format!("used {}", relative(t, now)),
            );
            format!(
                "v{} (ends {}, {used})",
                p.version,
                relative(p.valid_until, now)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn expires_cell(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) if t <= now => format!("expired {}", relative(t, now)),
        t => relative_or_dash(t, now),
    }
}

/// The table `status` prints (`wide` adds client id, Secret, Ready reason).
pub(crate) fn render_table(
    items: &[CredentialSummary],
    all_namespaces: bool,
    wide: bool,
    now: DateTime<Utc>,
) -> String {
    let mut headers = vec![];
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "IDENTITY",
        "TYPE",
        "VERSION",
        "LAST USED",
        "PREVIOUS (IN GRACE)",
        "NEXT ROTATION",
        "EXPIRES",
        "READY",
    ]);
    if wide {
        headers.extend(["REASON", "CLIENT ID", "SECRET"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let mut row = vec![];
            if all_namespaces {
                row.push(s.namespace.clone());
            }
            let mut ready = s.ready.clone();
            if s.dormant.as_deref() == Some("True") {
                ready.push_str(" (Dormant)");
            }
            row.extend([
                s.name.clone(),
                s.identity.short(),
                s.type_.as_str().to_owned(),
                s.version.map_or_else(|| "-".into(), |v| v.to_string()),
                relative_or_dash(s.last_used_time, now),
                previous_cell(s, now),
                relative_or_dash(s.next_rotation_time, now),
                expires_cell(s.expires_at, now),
                ready,
            ]);
            if wide {
                row.extend([
                    s.ready_reason.clone().unwrap_or_else(|| "-".into()),
                    s.client_id.clone().unwrap_or_else(|| "-".into()),
                    match (&s.secret_name, &s.secret_hint) {
                        (Some(n), Some(h)) => format!("{n} ({h})"),
                        (Some(n), None) => n.clone(),
                        _ => "-".into(),
                    },
                ]);
            }
            row
        })
        .collect();
    render(&headers, &rows)
}

/// Render `items` in the format `-o` asks for.
pub(crate) fn render_output(
    items: Vec<CredentialSummary>,
    output: Option<OutputFormat>,
    all_namespaces: bool,
    now: DateTime<Utc>,
) -> Result<String, PluginError> {
    let list = || StatusList {
        api_version: LIST_API_VERSION,
        kind: LIST_KIND,
        items: items.clone(),
    };
    match output {
        Some(OutputFormat::Json) => serde_json::to_string_pretty(&list())
            .map(|s| s + "\n")
            .map_err(|e| PluginError::Output(e.to_string())),
        Some(OutputFormat::Yaml) => {
            serde_yaml::to_string(&list()).map_err(|e| PluginError::Output(e.to_string()))
        }
        Some(OutputFormat::Wide) => Ok(render_table(&items, all_namespaces, true, now)),
        None => Ok(render_table(&items, all_namespaces, false, now)),
    }
}

/// `kubectl m2m status`.
pub async fn run(
    cluster: &Cluster,
    g: &GlobalArgs,
    args: &StatusArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let now = Utc::now();
    let mut objects: Vec<Value> = match &args.name {
        Some(name) => {
            if g.all_namespaces {
                return Err(PluginError::Usage(format!(
                    "a credential name ({name:?}) cannot be combined with -A; use -n NAMESPACE"
                )));
            }
            let obj = cluster
                .credentials_dynamic(Some(&cluster.namespace))
                .get(name)
                .await
                .map_err(|e| {
                    cluster.error(
                        e,
                        Target::Credential(name),
                        &describe_get(name, &cluster.namespace),
                    )
                })?;
            vec![serde_json::to_value(obj).map_err(|e| PluginError::Output(e.to_string()))?]
        }
        None => {
            let ns = (!g.all_namespaces).then_some(cluster.namespace.as_str());
            let action = match ns {
                Some(ns) => format!("listing m2mcredentials in namespace {ns:?}"),
                None => "listing m2mcredentials in all namespaces".to_owned(),
            };
            let list = cluster
                .credentials_dynamic(ns)
                .list(&ListParams::default())
                .await
                .map_err(|e| cluster.error(e, Target::Credentials, &action))?;
            list.items
                .into_iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .map_err(|e| PluginError::Output(e.to_string()))?
        }
    };
    objects.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                str_at(v, "/metadata/namespace")
                    .unwrap_or_default()
                    .to_owned(),
                str_at(v, "/metadata/name").unwrap_or_default().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    let items: Vec<CredentialSummary> = objects.iter().map(|o| summarize(o, now)).collect();
    if items.is_empty() && !matches!(g.output, Some(OutputFormat::Json | OutputFormat::Yaml)) {
        // kubectl's wording, on stderr, exit 0.
        if g.all_namespaces {
            eprintln!("No m2mcredentials found.");
        } else {
            eprintln!(
                "No m2mcredentials found in {} namespace.",
                cluster.namespace
            );
        }
        return Ok(());
    }
    write_out(out, &render_output(items, g.output, g.all_namespaces, now)?)
}

/// `reading m2mcredential "x" in namespace "y"`.
pub(crate) fn describe_get(name: &str, namespace: &str) -> String {
    format!("reading m2mcredential {name:?} in namespace {namespace:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/kubectl-plugin.md shows what `status -o json` prints: every
    /// `secretHint` in it has today's fingerprint format, `sha256:` and 8
    /// hex digits (the former last-4-characters hint leaked the secret).
    #[test]
    fn the_documented_output_shows_the_current_secret_hint_format() {
        let doc = include_str!("../../docs/kubectl-plugin.md");
        // `status -o json` (`"secretHint": "…"`) and `rotate` (`(secret …)`).
        let hints: Vec<&str> = [("\"secretHint\": \"", '"'), ("(secret ", ')')]
            .into_iter()
            .flat_map(|(start, end)| {
                doc.match_indices(start).map(move |(i, m)| {
                    let rest = &doc[i + m.len()..];
                    &rest[..rest.find(end).unwrap_or(rest.len())]
                })
            })
            .collect();
        assert!(!hints.is_empty(), "the page shows no secretHint");
        for hint in hints {
            let hex = hint.strip_prefix("sha256:").unwrap_or_default();
            assert!(
                hex.len() == 8
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "docs/kubectl-plugin.md shows secretHint {hint:?}, not sha256:<8 hex digits>"
            );
        }
    }
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .unwrap()
    }

    fn t(offset: Duration) -> String {
        (now() + offset).to_rfc3339()
    }

    /// A credential in the middle of a grace period: version 3 current,
    /// version 2 accepted for 9 more minutes and used 1 minute ago.
    fn rotated() -> Value {
        json!({
            "apiVersion": "m2m.dev/v1alpha1", "kind": "M2MCredential",
            "metadata": {"name": "ci-bot-uploads", "namespace": "team-a",
                         "annotations": {"m2m.dev/rotate": "2026-11-24T11:59:00Z"}},
            "spec": {"serviceAccountName": "ci-bot", "rotation": {"every": "720h", "gracePeriod": "10m"},
                     "expiresAt": t(Duration::days(180))},
            "status": {
                "clientId": "m2mc_abc", "secretName": "ci-bot-uploads-credentials",
                "secretVersion": 3, "secretHint": "sha256:1a2b3c4d",
                "lastRotationTime": t(Duration::minutes(-1)),
                "lastUsedTime": t(Duration::seconds(-20)),
                "versionUsage": [
                    {"version": 2, "lastUsedTime": t(Duration::minutes(-1))},
                    {"version": 3, "lastUsedTime": t(Duration::seconds(-20))}
                ],
                "verifiers": [
                    {"version": 3, "digest": "d3"},
                    {"version": 2, "digest": "d2", "notAfter": t(Duration::minutes(9))},
                    {"version": 1, "digest": "d1", "notAfter": t(Duration::minutes(-5))}
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "SecretReady",
                                "message": "ok", "lastTransitionTime": t(Duration::hours(-1))}]
            }
        })
    }

    fn workload() -> Value {
        json!({
            "metadata": {"name": "uploader", "namespace": "team-b"},
            "spec": {"serviceAccountName": "ci-bot", "workloadIdentity": {"kubernetesServiceAccount": "uploader"}},
            "status": {"clientId": "m2mc_def", "conditions": [
                {"type": "Ready", "status": "False", "reason": "ServiceAccountMissing", "message": "no",
                 "lastTransitionTime": t(Duration::hours(-1))},
                {"type": "Dormant", "status": "True", "reason": "Unused", "message": "unused for 30d",
                 "lastTransitionTime": t(Duration::hours(-1))}]}
        })
    }

    #[test]
    fn a_rotated_credential_shows_its_previous_version_in_grace_with_its_last_use() {
        let s = summarize(&rotated(), now());
        assert_eq!(s.type_, CredentialType::ClientSecret);
        assert_eq!(s.identity.short(), "m2msa/ci-bot");
        assert_eq!(s.version, Some(3));
        assert_eq!(s.last_used_time, Some(now() - Duration::seconds(20)));
        assert_eq!(
            s.current_version_last_used_time,
            Some(now() - Duration::seconds(20))
        );
        // Version 1's grace period is over: it is not shown.
        assert_eq!(
            s.previous_versions,
            [PreviousVersion {
                version: 2,
                valid_until: now() + Duration::minutes(9),
                last_used_time: Some(now() - Duration::minutes(1)),
            }]
        );
        // No nextRotationTime in status: computed from rotation.every.
        assert_eq!(
            s.next_rotation_time,
            Some(now() - Duration::minutes(1) + Duration::hours(720))
        );
        assert_eq!(s.ready, "True");
        assert_eq!(s.rotate_annotation.as_deref(), Some("2026-11-24T11:59:00Z"));
    }

    #[test]
    fn workload_identity_shows_the_core_service_account_and_no_version() {
        let s = summarize(&workload(), now());
        assert_eq!(s.type_, CredentialType::WorkloadIdentity);
        assert_eq!(s.identity.short(), "sa/uploader");
        assert_eq!(s.service_account_name, "ci-bot");
        assert_eq!(s.version, None);
        assert_eq!(s.ready, "False");
        assert_eq!(s.ready_reason.as_deref(), Some("ServiceAccountMissing"));
        assert_eq!(s.dormant.as_deref(), Some("True"));
    }

    #[test]
    fn api_tokens_and_fresh_credentials_without_status() {
        let s = summarize(
            &json!({"metadata": {"name": "x", "namespace": "n"},
                    "spec": {"serviceAccountName": "a", "type": "APIToken"}}),
            now(),
        );
        assert_eq!(s.type_, CredentialType::ApiToken);
        assert_eq!(s.version, None);
        assert_eq!(s.ready, "Unknown");
        assert!(s.previous_versions.is_empty());
        assert_eq!(s.last_used_time, None);
    }

    #[test]
    fn table_has_the_documented_columns() {
        let items = vec![summarize(&rotated(), now()), summarize(&workload(), now())];
        let table = render_table(&items, false, false, now());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0]
                .split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>(),
            [
                "NAME",
                "IDENTITY",
                "TYPE",
                "VERSION",
                "LAST USED",
                "PREVIOUS (IN GRACE)",
                "NEXT ROTATION",
                "EXPIRES",
                "READY"
            ]
        );
        assert!(lines[1].starts_with("ci-bot-uploads   m2msa/ci-bot   ClientSecret       3         20s ago     v2 (ends in 9m, used 60s ago)"), "{table}");
        assert!(lines[1].contains("in 29d"), "{table}");
        assert!(lines[1].contains("in 180d"), "{table}");
        assert!(lines[1].ends_with("True"), "{table}");
        assert!(
            lines[2].starts_with("uploader         sa/uploader    WorkloadIdentity   -         -"),
            "{table}"
        );
        assert!(lines[2].ends_with("False (Dormant)"), "{table}");

        let wide = render_table(&items, true, true, now());
        let header = wide.lines().next().unwrap();
        assert!(header.starts_with("NAMESPACE   NAME"), "{wide}");
        assert!(
            header
                .split_whitespace()
                .rev()
                .take(4)
                .eq(["SECRET", "ID", "CLIENT", "REASON"]),
            "{wide}"
        );
        assert!(
            wide.contains("ci-bot-uploads-credentials (sha256:1a2b3c4d)"),
            "{wide}"
        );
    }

    #[test]
    fn expired_credentials_say_so() {
        assert_eq!(
            expires_cell(Some(now() - Duration::days(2)), now()),
            "expired 2d ago"
        );
        assert_eq!(expires_cell(None, now()), "-");
    }

    #[test]
    fn json_output_is_a_stable_document() {
        let items = vec![summarize(&rotated(), now())];
        let text = render_output(items.clone(), Some(OutputFormat::Json), false, now()).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["apiVersion"], LIST_API_VERSION);
        assert_eq!(doc["kind"], LIST_KIND);
        let item = &doc["items"][0];
        assert_eq!(item["name"], "ci-bot-uploads");
        assert_eq!(item["type"], "ClientSecret");
        assert_eq!(
            item["identity"],
            json!({"apiGroup": "m2m.dev", "kind": "ServiceAccount", "name": "ci-bot"})
        );
        assert_eq!(item["version"], 3);
        assert_eq!(item["previousVersions"][0]["version"], 2);
        assert_eq!(
            item["previousVersions"][0]["validUntil"],
            "2026-11-24T12:09:00Z"
        );
        assert_eq!(item["lastUsedTime"], "2026-11-24T11:59:40Z");
        assert_eq!(item["ready"], "True");
        // YAML carries the same document.
        let yaml = render_output(items, Some(OutputFormat::Yaml), false, now()).unwrap();
        let from_yaml: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(from_yaml, doc);
    }
}
