//! Which scopes a namespace lets its identities hold: the namespace's
//! `m2m.dev/allowed-scopes` annotation, else the operator-wide default. The
//! controller (status, conditions) and the token server (grants) look the
//! policy up with these same functions, so they never disagree.

use crate::core::scope::{ScopePolicy, ScopePolicyError};
use crate::crd::ALLOWED_SCOPES_ANNOTATION;
use kube::api::ObjectMeta;

/// The policy a Namespace's annotation sets, or `None` when it has none.
pub(crate) fn annotated_policy(
    namespace: &ObjectMeta,
) -> Option<Result<ScopePolicy, ScopePolicyError>> {
    let value = namespace
        .annotations
        .as_ref()?
        .get(ALLOWED_SCOPES_ANNOTATION)?;
    Some(ScopePolicy::parse(value))
}

/// The policy of a namespace (`None`: not known yet): its annotation, else
/// `default`.
pub(crate) fn namespace_policy(
    namespace: Option<&ObjectMeta>,
    default: &ScopePolicy,
) -> Result<ScopePolicy, ScopePolicyError> {
    namespace
        .and_then(annotated_policy)
        .unwrap_or_else(|| Ok(default.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ns(annotation: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("team".into()),
            annotations: annotation
                .map(|a| BTreeMap::from([(ALLOWED_SCOPES_ANNOTATION.to_owned(), a.to_owned())])),
            ..Default::default()
        }
    }

    #[test]
    fn annotation_wins_over_default_and_errors_are_kept() {
        let default = ScopePolicy::allow_all();
        let annotated = namespace_policy(Some(&ns(Some("orders.read"))), &default).unwrap();
        assert!(annotated.allows("orders.read"));
        assert!(!annotated.allows("orders.write"));
        let plain = namespace_policy(Some(&ns(None)), &default).unwrap();
        assert!(plain.allows("anything"));
        assert!(namespace_policy(None, &default).unwrap().allows("anything"));
        assert!(namespace_policy(Some(&ns(Some("a*b"))), &default).is_err());
    }
}
