//! Status conditions shared by both kinds, following the Kubernetes API
//! conventions: a list-map keyed by `type` whose `lastTransitionTime` only
//! moves when `status` changes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a condition holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell yet.
    Unknown,
}

/// One observation of the resource's state, in the standard Kubernetes shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, e.g. `Ready`. Unique within the list.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable explanation; never contains secret material.
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: DateTime<Utc>,
}

impl Condition {
    /// A condition observed now; `set_condition` keeps the old transition time
    /// when only the reason or message changed.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }
    }
}

/// Insert or replace the condition of the same type, keeping
/// `lastTransitionTime` unless the status changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time;
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Schema of the `conditions` list: a list-map keyed by `type`, so that
/// server-side apply merges conditions by type instead of replacing the list.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().expect("valid time")
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut list = vec![];
        set_condition(
            &mut list,
            Condition::new("Ready", ConditionStatus::False, "A", "a", Some(1), at(10)),
        );
        set_condition(
            &mut list,
            Condition::new("Ready", ConditionStatus::False, "B", "b", Some(2), at(20)),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason, "B");
        assert_eq!(list[0].last_transition_time, at(10));
        set_condition(
            &mut list,
            Condition::new("Ready", ConditionStatus::True, "C", "c", Some(2), at(30)),
        );
        assert_eq!(list[0].last_transition_time, at(30));
        set_condition(
            &mut list,
            Condition::new("Other", ConditionStatus::True, "D", "d", Some(2), at(40)),
        );
        assert_eq!(list.len(), 2);
    }
}
