//! The generated Secret: what it should contain (a pure builder) and what
//! an existing one tells us (authentic, tampered, foreign, half-rotated).
//! The Secret is the only home of the plaintext; its annotations carry an
//! HMAC of the secret so the controller can tell its own writes — including
//! one interrupted by a crash — from a hand edit.

use crate::core::client_secret::ClientSecret;
use crate::core::verifier::{SecretBinding, VerifierKey};
use crate::crd::{CredentialType, M2MCredential};
use crate::labels::{
    ANN_DIGEST, ANN_HANDLED_ROTATE, ANN_PREVIOUS_NOT_AFTER, ANN_ROTATED_AT, ANN_VERIFIER_KEY_ID,
    ANN_VERSION, FIELD_MANAGER, LABEL_CREDENTIAL, MANAGED_BY,
};
use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};

/// `type` of every generated Secret of a `ClientSecret` credential.
pub(crate) const SECRET_TYPE: &str = "m2m.dev/client-credentials";
/// `type` of the Secret of an `APIToken` credential.
pub(crate) const API_TOKEN_SECRET_TYPE: &str = "m2m.dev/api-token";
/// The Secret key holding a client secret.
pub(crate) const CLIENT_SECRET_KEY: &str = "client_secret";
/// The Secret key holding an API token.
pub(crate) const API_TOKEN_KEY: &str = "token";

/// The Secret key holding the generated value, and the Secret `type`.
pub(crate) fn value_key_and_type(kind: CredentialType) -> (&'static str, &'static str) {
    match kind {
        CredentialType::ClientSecret => (CLIENT_SECRET_KEY, SECRET_TYPE),
        CredentialType::ApiToken => (API_TOKEN_KEY, API_TOKEN_SECRET_TYPE),
    }
}
/// Everything the controller writes into a credential Secret.
#[derive(Debug, Clone)]
pub(crate) struct SecretContents<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The client secret.
    pub secret: &'a ClientSecret,
    /// Its version.
    pub version: i64,
    /// Its HMAC digest.
    pub digest: &'a str,
    /// When it was generated.
    pub rotated_at: DateTime<Utc>,
    /// Grace end of the previous secret, if any.
    pub previous_not_after: Option<DateTime<Utc>>,
    /// The rotate annotation value this rotation handled.
    pub handled_rotate: Option<&'a str>,
    /// `token_url` key.
    pub token_url: &'a str,
    /// `issuer` key.
    pub issuer: &'a str,
    /// `scope` key: space-separated default scopes.
    pub scope: String,
}

/// The desired Secret, ready for server-side apply.
pub(crate) fn build_secret(cred: &M2MCredential, name: &str, c: &SecretContents<'_>) -> Secret {
    let cred_name = cred.metadata.name.clone().unwrap_or_default();
    let template = &cred.spec.secret_template;
    let mut labels = template.labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(LABEL_CREDENTIAL.into(), cred_name);
    let mut annotations: BTreeMap<String, String> = template
        .annotations
        .iter()
        .filter(|(k, _)| !k.starts_with("m2m.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ANN_VERSION.into(), c.version.to_string());
    annotations.insert(ANN_DIGEST.into(), c.digest.to_owned());
    annotations.insert(ANN_ROTATED_AT.into(), c.rotated_at.to_rfc3339());
    if let Some(t) = c.previous_not_after {
        annotations.insert(ANN_PREVIOUS_NOT_AFTER.into(), t.to_rfc3339());
    }
    if let Some(h) = c.handled_rotate {
        annotations.insert(ANN_HANDLED_ROTATE.into(), h.to_owned());
    }
    let (value_key, secret_type) = value_key_and_type(cred.spec.type_);
    let data: BTreeMap<String, ByteString> = [
        ("client_id", c.client_id),
        (value_key, c.secret.expose()),
        ("token_url", c.token_url),
        ("issuer", c.issuer),
        ("scope", c.scope.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let mut secret = Secret {
        type_: Some(secret_type.into()),
        data: Some(data),
        ..Default::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = cred.metadata.namespace.clone();
    secret.metadata.labels = Some(labels);
    secret.metadata.annotations = Some(annotations);
    secret.metadata.owner_references = cred.controller_owner_ref(&()).map(|o| vec![o]);
    secret
}

/// Record in `secret` which verifier key sealed it ([`ANN_VERIFIER_KEY_ID`]).
pub(crate) fn stamp_key_id(mut secret: Secret, key: &VerifierKey) -> Secret {
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANN_VERIFIER_KEY_ID.into(), key.key_id());
    secret
}

/// The fingerprint of another verifier key that sealed `existing`, when
/// the Secret records one and it is not `key`'s (Secrets written before the
/// fingerprint existed record none).
pub(crate) fn sealed_under_other_key(
    existing: Option<&Secret>,
    key: &VerifierKey,
) -> Option<String> {
    let id = existing?
        .metadata
        .annotations
        .as_ref()?
        .get(ANN_VERIFIER_KEY_ID)?;
    (*id != key.key_id()).then(|| id.clone())
}

/// What an existing Secret at the credential's `secretName` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ObservedSecret {
    /// No Secret of that name.
    Missing,
    /// A Secret this credential does not control: never touched.
    Foreign,
    /// Our Secret, but its secret or annotations were changed by someone
    /// without the verifier key (or stripped).
    Tampered,
    /// Our Secret, exactly as the controller wrote it.
    Authentic(AuthenticSecret),
}

/// The facts an authentic Secret carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthenticSecret {
    /// The secret itself.
    pub secret: ClientSecret,
    /// Its version.
    pub version: i64,
    /// Its digest.
    pub digest: String,
    /// When it was generated.
    pub rotated_at: DateTime<Utc>,
    /// Grace end of the previous secret.
    pub previous_not_after: Option<DateTime<Utc>>,
    /// The rotate annotation value its rotation handled.
    pub handled_rotate: Option<String>,
}

/// [`observe_as`] for a client-credentials Secret (`client_secret`).
#[cfg(test)]
pub(crate) fn observe(
    existing: Option<&Secret>,
    cred_uid: &str,
    key: &VerifierKey,
    binding: &SecretBinding<'_>,
) -> ObservedSecret {
    observe_as(existing, cred_uid, key, binding, CLIENT_SECRET_KEY)
}

/// Classify the Secret found at the credential's `secretName`, whose
/// generated value is under `value_key` (`client_secret`, or `token` for
/// an API token).
pub(crate) fn observe_as(
    existing: Option<&Secret>,
    cred_uid: &str,
    key: &VerifierKey,
    binding: &SecretBinding<'_>,
    value_key: &str,
) -> ObservedSecret {
    let Some(secret) = existing else {
        return ObservedSecret::Missing;
    };
    let controlled = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == cred_uid && o.controller == Some(true));
    if !controlled {
        return ObservedSecret::Foreign;
    }
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    let data = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let parsed = (|| {
        let version: i64 = ann.get(ANN_VERSION)?.parse().ok()?;
        let digest = ann.get(ANN_DIGEST)?.clone();
        let rotated_at = DateTime::parse_from_rfc3339(ann.get(ANN_ROTATED_AT)?)
            .ok()?
            .to_utc();
        let previous_not_after = match ann.get(ANN_PREVIOUS_NOT_AFTER) {
            Some(t) => Some(DateTime::parse_from_rfc3339(t).ok()?.to_utc()),
            None => None,
        };
        let value = data(value_key)?;
        let client_id = data("client_id")?;
        Some((
            version,
            digest,
            rotated_at,
            previous_not_after,
            value,
            client_id,
        ))
    })();
    let Some((version, digest, rotated_at, previous_not_after, value, client_id)) = parsed else {
        return ObservedSecret::Tampered;
    };
    let authentic = version > 0
        && client_id == binding.client_id
        && key.verify(&binding.with_version(version), &value, &digest);
    if !authentic {
        return ObservedSecret::Tampered;
    }
    ObservedSecret::Authentic(AuthenticSecret {
        secret: ClientSecret::from_stored(value),
        version,
        digest,
        rotated_at,
        previous_not_after,
        handled_rotate: ann.get(ANN_HANDLED_ROTATE).cloned(),
    })
}

/// Keys under `path` (e.g. `f:metadata` → `f:labels`) that `manager` owns
/// according to the object's managed fields.
fn owned_keys(secret: &Secret, manager: &str, path: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in secret.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() != Some(manager) || entry.subresource.is_some() {
            continue;
        }
        let Some(fields) = entry.fields_v1.as_ref() else {
            continue;
        };
        let mut node = &fields.0;
        for p in path {
            match node.get(*p) {
                Some(n) => node = n,
                None => {
                    node = &serde_json::Value::Null;
                    break;
                }
            }
        }
        if let Some(map) = node.as_object() {
            out.extend(
                map.keys()
                    .filter_map(|k| k.strip_prefix("f:"))
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// Whether applying `desired` would change `existing`: a differing value we
/// set, or a label/annotation/data key we own but no longer want. Keeps a
/// converged cluster free of writes.
pub(crate) fn differs(existing: &Secret, desired: &Secret) -> bool {
    if existing.type_ != desired.type_ {
        return true;
    }
    let submap_differs = |have: &Option<BTreeMap<String, String>>,
                          want: &Option<BTreeMap<String, String>>,
                          path: &[&str]| {
        let have = have.clone().unwrap_or_default();
        let want = want.clone().unwrap_or_default();
        want.iter().any(|(k, v)| have.get(k) != Some(v))
            || owned_keys(existing, FIELD_MANAGER, path)
                .iter()
                .any(|k| !want.contains_key(k))
    };
    if submap_differs(
        &existing.metadata.labels,
        &desired.metadata.labels,
        &["f:metadata", "f:labels"],
    ) || submap_differs(
        &existing.metadata.annotations,
        &desired.metadata.annotations,
        &["f:metadata", "f:annotations"],
    ) {
        return true;
    }
    let have = existing.data.clone().unwrap_or_default();
    let want = desired.data.clone().unwrap_or_default();
    if want.iter().any(|(k, v)| have.get(k) != Some(v))
        || owned_keys(existing, FIELD_MANAGER, &["f:data"])
            .iter()
            .any(|k| !want.contains_key(k))
    {
        return true;
    }
    let owners = existing
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    desired.metadata.owner_references.iter().flatten().any(|o| {
        !owners
            .iter()
            .any(|e| e.uid == o.uid && e.controller == o.controller)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{M2MCredentialSpec, SecretTemplate};
    use chrono::TimeZone;

    fn cred() -> M2MCredential {
        let mut c = M2MCredential::new(
            "uploads",
            M2MCredentialSpec {
                service_account_name: "ci-bot".into(),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.uid = Some("uid-1".into());
        c.spec.secret_template = SecretTemplate {
            labels: [("team".to_owned(), "a".to_owned())].into(),
            annotations: [
                ("note".to_owned(), "x".to_owned()),
                ("m2m.dev/secret-version".to_owned(), "99".to_owned()),
            ]
            .into(),
        };
        c
    }

    fn binding() -> SecretBinding<'static> {
        SecretBinding {
            namespace: "team-a",
            name: "uploads",
            uid: "uid-1",
            client_id: "m2mc_uid1",
            version: 1,
        }
    }

    fn built(key: &VerifierKey, secret: &ClientSecret, version: i64) -> Secret {
        let digest = key.digest(&binding().with_version(version), secret.expose());
        build_secret(
            &cred(),
            "uploads-credentials",
            &SecretContents {
                client_id: "m2mc_uid1",
                secret,
                version,
                digest: &digest,
                rotated_at: Utc.timestamp_opt(1000, 0).single().unwrap(),
                previous_not_after: None,
                handled_rotate: Some("r1"),
                token_url: "http://t/oauth/token",
                issuer: "http://t",
                scope: "a b".into(),
            },
        )
    }

    #[test]
    fn built_secret_has_the_documented_shape() {
        let key = VerifierKey::from_bytes(&[1; 32]).unwrap();
        let s = built(&key, &ClientSecret::generate().unwrap(), 1);
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["client_id", "client_secret", "issuer", "scope", "token_url"]
        );
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("m2m-operator")
        );
        assert_eq!(
            labels.get("m2m.dev/credential").map(String::as_str),
            Some("uploads")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.get("note").map(String::as_str), Some("x"));
        assert_eq!(
            ann.get(ANN_VERSION).map(String::as_str),
            Some("1"),
            "template cannot override operator annotations"
        );
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
    }

    #[test]
    fn observe_classifies_secrets() {
        let key = VerifierKey::from_bytes(&[1; 32]).unwrap();
        let value = ClientSecret::generate().unwrap();
        let good = built(&key, &value, 2);
        match observe(Some(&good), "uid-1", &key, &binding()) {
            ObservedSecret::Authentic(a) => {
                assert_eq!(a.version, 2);
                assert_eq!(a.secret, value);
                assert_eq!(a.handled_rotate.as_deref(), Some("r1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            observe(None, "uid-1", &key, &binding()),
            ObservedSecret::Missing
        );
        assert_eq!(
            observe(Some(&good), "uid-2", &key, &binding()),
            ObservedSecret::Foreign
        );

        let mut edited = good.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("client_secret".into(), ByteString(b"m2ms_chosen".to_vec()));
        assert_eq!(
            observe(Some(&edited), "uid-1", &key, &binding()),
            ObservedSecret::Tampered
        );

        let mut bumped = good.clone();
        bumped
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_VERSION.into(), "3".into());
        assert_eq!(
            observe(Some(&bumped), "uid-1", &key, &binding()),
            ObservedSecret::Tampered
        );

        let mut stripped = good.clone();
        stripped.metadata.annotations = None;
        assert_eq!(
            observe(Some(&stripped), "uid-1", &key, &binding()),
            ObservedSecret::Tampered
        );

        let other_key = VerifierKey::from_bytes(&[2; 32]).unwrap();
        assert_eq!(
            observe(Some(&good), "uid-1", &other_key, &binding()),
            ObservedSecret::Tampered
        );
    }

    #[test]
    fn differs_only_when_a_write_would_change_something() {
        let key = VerifierKey::from_bytes(&[1; 32]).unwrap();
        let value = ClientSecret::generate().unwrap();
        let desired = built(&key, &value, 1);
        let mut existing = desired.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by-someone-else".into(), "ok".into());
        assert!(
            !differs(&existing, &desired),
            "foreign additions are not ours to fight"
        );
        let mut drifted = desired.clone();
        drifted
            .data
            .as_mut()
            .unwrap()
            .insert("scope".into(), ByteString(b"admin".to_vec()));
        assert!(differs(&drifted, &desired));
        // A label we own but no longer want must be removed.
        let mut with_owned = desired.clone();
        with_owned
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("old".into(), "1".into());
        with_owned.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(FIELD_MANAGER.into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    serde_json::json!({
                        "f:metadata": {"f:labels": {"f:old": {}, "f:team": {}}}
                    }),
                )),
                ..Default::default()
            },
        ]);
        assert!(differs(&with_owned, &desired));
    }
}
