//! When a client secret is replaced, and which secrets stay valid after.
//! Small pure policy functions in the cert-manager style: each answers one
//! question from the observed state and the clock, and is table-tested.

use crate::crd::SecretVerifier;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Why a credential's secret is replaced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationTrigger {
    /// `m2m.dev/rotate` has a value not handled before.
    Annotation(String),
    /// `rotation.every` elapsed since the last rotation.
    Scheduled {
        /// When the rotation became due.
        due: DateTime<Utc>,
    },
}

impl RotationTrigger {
    /// Machine-readable event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Annotation(_) => "RotateAnnotationChanged",
            Self::Scheduled { .. } => "ScheduledRotation",
        }
    }

    /// Human-readable explanation.
    pub fn message(&self) -> String {
        match self {
            Self::Annotation(v) => format!("m2m.dev/rotate changed to {v:?}"),
            Self::Scheduled { due } => format!("rotation.every elapsed at {}", due.to_rfc3339()),
        }
    }
}

/// The rotation-relevant facts of one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationInputs<'a> {
    /// Current value of the `m2m.dev/rotate` annotation.
    pub annotation: Option<&'a str>,
    /// `status.lastHandledRotateAnnotation`.
    pub last_handled_annotation: Option<&'a str>,
    /// Parsed `rotation.every`.
    pub every: Option<Duration>,
    /// `status.lastRotationTime`.
    pub last_rotation: Option<DateTime<Utc>>,
}

/// When the next scheduled rotation is due, if one is scheduled.
pub fn next_scheduled(inputs: &RotationInputs<'_>) -> Option<DateTime<Utc>> {
    let every = chrono::Duration::from_std(inputs.every?).ok()?;
    if every.is_zero() {
        return None;
    }
    inputs.last_rotation?.checked_add_signed(every)
}

/// Whether the secret must be replaced at `now`, and why. An annotation
/// change wins over the schedule: it is what a human asked for.
pub fn rotation_due(inputs: &RotationInputs<'_>, now: DateTime<Utc>) -> Option<RotationTrigger> {
    if let Some(value) = inputs.annotation
        && inputs.last_handled_annotation != Some(value)
    {
        return Some(RotationTrigger::Annotation(value.to_owned()));
    }
    next_scheduled(inputs)
        .filter(|due| *due <= now)
        .map(|due| RotationTrigger::Scheduled { due })
}

/// The verifiers after a new secret version became current at `now`: the new
/// one, the previous current one until `now + grace` (dropped at once when
/// `grace` is zero), and earlier ones whose grace has not ended yet.
pub fn rotate_verifiers(
    existing: &[SecretVerifier],
    new_current: SecretVerifier,
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<SecretVerifier> {
    let grace_end = chrono::Duration::from_std(grace)
        .ok()
        .and_then(|g| now.checked_add_signed(g));
    let mut out = vec![SecretVerifier {
        not_after: None,
        ..new_current
    }];
    for v in existing {
        if v.version >= out[0].version {
            continue;
        }
        let not_after = match v.not_after {
            None if grace.is_zero() => continue,
            None => grace_end,
            Some(end) if end > now => Some(end),
            Some(_) => continue,
        };
        out.push(SecretVerifier {
            not_after,
            ..v.clone()
        });
    }
    out
}

/// Drop verifiers whose grace period has ended.
pub fn prune_verifiers(existing: &[SecretVerifier], now: DateTime<Utc>) -> Vec<SecretVerifier> {
    existing
        .iter()
        .filter(|v| crate::core::verifier::is_accepted(v, now))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().unwrap()
    }

    fn inputs<'a>(
        annotation: Option<&'a str>,
        handled: Option<&'a str>,
        every: Option<u64>,
        last: Option<i64>,
    ) -> RotationInputs<'a> {
        RotationInputs {
            annotation,
            last_handled_annotation: handled,
            every: every.map(Duration::from_secs),
            last_rotation: last.map(at),
        }
    }

    #[test]
    fn rotation_due_table() {
        let cases = [
            ("nothing set", inputs(None, None, None, Some(0)), 1000, None),
            (
                "annotation unchanged",
                inputs(Some("a"), Some("a"), None, Some(0)),
                1000,
                None,
            ),
            (
                "annotation changed",
                inputs(Some("b"), Some("a"), None, Some(0)),
                1000,
                Some("RotateAnnotationChanged"),
            ),
            (
                "annotation first set",
                inputs(Some("a"), None, None, Some(0)),
                1000,
                Some("RotateAnnotationChanged"),
            ),
            (
                "annotation removed",
                inputs(None, Some("a"), None, Some(0)),
                1000,
                None,
            ),
            (
                "schedule not due",
                inputs(None, None, Some(100), Some(0)),
                99,
                None,
            ),
            (
                "schedule due exactly",
                inputs(None, None, Some(100), Some(0)),
                100,
                Some("ScheduledRotation"),
            ),
            (
                "schedule overdue",
                inputs(None, None, Some(100), Some(0)),
                5000,
                Some("ScheduledRotation"),
            ),
            (
                "zero period never rotates",
                inputs(None, None, Some(0), Some(0)),
                5000,
                None,
            ),
            (
                "never rotated has no schedule",
                inputs(None, None, Some(100), None),
                5000,
                None,
            ),
            (
                "annotation beats schedule",
                inputs(Some("b"), Some("a"), Some(100), Some(0)),
                5000,
                Some("RotateAnnotationChanged"),
            ),
        ];
        for (name, input, now, want) in cases {
            assert_eq!(
                rotation_due(&input, at(now)).map(|t| t.reason()),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn next_due_is_computed_not_polled() {
        assert_eq!(
            next_scheduled(&inputs(None, None, Some(720 * 3600), Some(10))),
            Some(at(10 + 720 * 3600))
        );
        assert_eq!(next_scheduled(&inputs(None, None, None, Some(10))), None);
    }

    fn v(version: i64, not_after: Option<i64>) -> SecretVerifier {
        SecretVerifier {
            version,
            digest: format!("d{version}"),
            not_after: not_after.map(at),
            seal: None,
        }
    }

    #[test]
    fn rotation_without_grace_drops_the_old_secret() {
        let out = rotate_verifiers(&[v(1, None)], v(2, None), at(100), Duration::ZERO);
        assert_eq!(out, vec![v(2, None)]);
    }

    #[test]
    fn rotation_with_grace_keeps_the_old_secret_until_it_ends() {
        let out = rotate_verifiers(&[v(1, None)], v(2, None), at(100), Duration::from_secs(60));
        assert_eq!(out, vec![v(2, None), v(1, Some(160))]);
        // A second rotation inside the grace keeps version 1's own deadline
        // and gives version 2 a fresh one; expired entries disappear.
        let out2 = rotate_verifiers(&out, v(3, None), at(130), Duration::from_secs(60));
        assert_eq!(out2, vec![v(3, None), v(2, Some(190)), v(1, Some(160))]);
        let out3 = rotate_verifiers(&out2, v(4, None), at(170), Duration::ZERO);
        assert_eq!(out3, vec![v(4, None), v(2, Some(190))]);
    }

    #[test]
    fn stale_or_future_versions_never_survive_a_rotation() {
        // A verifier claiming a version ≥ the new one (e.g. a half-finished
        // earlier attempt) is discarded rather than kept valid.
        let out = rotate_verifiers(
            &[v(5, None), v(1, None)],
            v(2, None),
            at(0),
            Duration::from_secs(10),
        );
        assert_eq!(out, vec![v(2, None), v(1, Some(10))]);
    }

    #[test]
    fn pruning_removes_ended_grace() {
        let list = [v(3, None), v(2, Some(100))];
        assert_eq!(prune_verifiers(&list, at(99)).len(), 2);
        assert_eq!(prune_verifiers(&list, at(100)), vec![v(3, None)]);
    }
}
