//! Which usage in a credential's status the controller believes (SPEC §8,
//! issue 21 item 5). `status.lastUsedTime` and `status.versionUsage` steer
//! early retirement, `StaleSecretInUse` and `Dormant`, and anyone who may
//! patch `m2mcredentials/status` could write them. So:
//!
//! - a field counts only while the token server's field manager
//!   ([`USAGE_FIELD_MANAGER`]) owns it on the status subresource
//!   (`metadata.managedFields`): a value written by anyone else — which
//!   moves the field's ownership to them — is ignored;
//! - a time later than now plus [`USAGE_CLOCK_SKEW_SECS`] is ignored (a
//!   forged `2100-01-01` would otherwise win every comparison);
//! - the controller remembers the latest trusted use it saw of each version
//!   ([`UsageMemory`]), so stripping the fields does not make a version
//!   look unused while this controller runs.

use crate::crd::{M2MCredential, VersionUsage};
use crate::labels::{USAGE_CLOCK_SKEW_SECS, USAGE_FIELD_MANAGER};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// The usage of a credential the controller believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedUsage {
    /// `status.lastUsedTime`, if trusted.
    pub last_used: Option<DateTime<Utc>>,
    /// `status.versionUsage`, the trusted entries.
    pub versions: Vec<VersionUsage>,
}

impl TrustedUsage {
    /// The usage fields of `cred` the token server owns, without future times.
    pub(crate) fn of(cred: &M2MCredential, now: DateTime<Utc>) -> Self {
        let Some(status) = &cred.status else {
            return Self::default();
        };
        let limit = now + chrono::Duration::seconds(USAGE_CLOCK_SKEW_SECS);
        let (owns_last, owned_versions) = owned_by_token_server(cred);
        Self {
            last_used: status.last_used_time.filter(|t| owns_last && *t <= limit),
            versions: status
                .version_usage
                .iter()
                .filter(|u| owned_versions.contains(&u.version) && u.last_used_time <= limit)
                .cloned()
                .collect(),
        }
    }
}

/// Whether the token server's field manager owns `status.lastUsedTime`, and
/// which `status.versionUsage` entries (by version) it owns.
fn owned_by_token_server(cred: &M2MCredential) -> (bool, BTreeSet<i64>) {
    let mut last = false;
    let mut versions = BTreeSet::new();
    for entry in cred.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() != Some(USAGE_FIELD_MANAGER)
            || entry.subresource.as_deref() != Some("status")
        {
            continue;
        }
        let Some(status) = entry.fields_v1.as_ref().and_then(|f| f.0.get("f:status")) else {
            continue;
        };
        last |= status.get("f:lastUsedTime").is_some();
        if let Some(items) = status.get("f:versionUsage").and_then(|v| v.as_object()) {
            for key in items.keys() {
                let version = key
                    .strip_prefix("k:")
                    .and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok())
                    .and_then(|k| k.get("version")?.as_i64());
                versions.extend(version);
            }
        }
    }
    (last, versions)
}

/// The latest trusted usage the controller has seen per credential (by
/// UID), so that usage stripped from status is not taken for no usage.
/// Lost on restart (the residual risk `docs/security.md` states).
#[derive(Debug, Default)]
pub(crate) struct UsageMemory(Mutex<HashMap<String, Remembered>>);

/// What [`UsageMemory`] keeps of one credential: the last use, and per version.
type Remembered = (Option<DateTime<Utc>>, BTreeMap<i64, DateTime<Utc>>);

impl UsageMemory {
    /// Merge what `cred`'s status shows (trusted part only) into what was
    /// seen before, remember it, and return the merge.
    pub(crate) fn observe(&self, cred: &M2MCredential, now: DateTime<Utc>) -> TrustedUsage {
        let trusted = TrustedUsage::of(cred, now);
        let Some(uid) = cred.metadata.uid.clone() else {
            return trusted;
        };
        let Ok(mut memory) = self.0.lock() else {
            return trusted;
        };
        let (last, versions) = memory.entry(uid).or_default();
        *last = (*last).max(trusted.last_used);
        for u in &trusted.versions {
            let t = versions.entry(u.version).or_insert(u.last_used_time);
            *t = (*t).max(u.last_used_time);
        }
        TrustedUsage {
            last_used: *last,
            versions: versions
                .iter()
                .map(|(v, t)| VersionUsage {
                    version: *v,
                    last_used_time: *t,
                })
                .collect(),
        }
    }

    /// Forget a deleted credential.
    pub(crate) fn forget(&self, uid: &str) {
        if let Ok(mut memory) = self.0.lock() {
            memory.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::M2MCredentialStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    /// A credential whose status shows `version` used at `t`, written by `manager`.
    fn cred(manager: &str, version: i64, t: i64) -> M2MCredential {
        let mut c = M2MCredential::new("c", Default::default());
        c.metadata.uid = Some("uid-1".into());
        c.status = Some(M2MCredentialStatus {
            last_used_time: Some(at(t)),
            version_usage: vec![VersionUsage {
                version,
                last_used_time: at(t),
            }],
            ..Default::default()
        });
        c.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({ "f:status": {
                "f:lastUsedTime": {},
                "f:versionUsage": { format!("k:{{\"version\":{version}}}"): {} },
            }}))),
            ..Default::default()
        }]);
        c
    }

    #[test]
    fn only_the_token_servers_past_usage_is_trusted() {
        let now = at(1000);
        let real = TrustedUsage::of(&cred(USAGE_FIELD_MANAGER, 2, 900), now);
        assert_eq!(real.last_used, Some(at(900)));
        assert_eq!(real.versions.len(), 1);
        let forged = TrustedUsage::of(&cred("kubectl-patch", 2, 900), now);
        assert_eq!(forged, TrustedUsage::default(), "another manager's values");
        let future = TrustedUsage::of(&cred(USAGE_FIELD_MANAGER, 2, 4_102_444_800), now);
        assert_eq!(future, TrustedUsage::default(), "a time in 2100");
        let skewed = TrustedUsage::of(&cred(USAGE_FIELD_MANAGER, 2, 1030), now);
        assert_eq!(skewed.last_used, Some(at(1030)), "within the clock skew");
    }

    /// Usage stripped from status, or overwritten by a forger, does not
    /// make the controller forget a use it saw.
    #[test]
    fn stripped_or_forged_usage_does_not_erase_what_was_seen() {
        let memory = UsageMemory::default();
        let seen = memory.observe(&cred(USAGE_FIELD_MANAGER, 1, 900), at(1000));
        assert_eq!(seen.last_used, Some(at(900)));
        let mut stripped = cred(USAGE_FIELD_MANAGER, 1, 900);
        stripped.status.as_mut().unwrap().version_usage.clear();
        stripped.status.as_mut().unwrap().last_used_time = None;
        let after = memory.observe(&stripped, at(1001));
        assert_eq!(after, seen);
        let after = memory.observe(&cred("kubectl-patch", 1, 4_102_444_800), at(1002));
        assert_eq!(after, seen);
        memory.forget("uid-1");
        assert_eq!(memory.observe(&stripped, at(1003)), TrustedUsage::default());
    }
}
