//! When a client secret is replaced, and which secrets stay valid after.
//! Small pure policy functions in the cert-manager style: each answers one
//! question from the observed state and the clock, and is table-tested.

use crate::crd::{SecretVerifier, VersionUsage};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Why a credential's secret is replaced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RotationTrigger {
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
pub(crate) struct RotationInputs<'a> {
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
pub(crate) fn next_scheduled(inputs: &RotationInputs<'_>) -> Option<DateTime<Utc>> {
    let every = chrono::Duration::from_std(inputs.every?).ok()?;
    if every.is_zero() {
        return None;
    }
    inputs.last_rotation?.checked_add_signed(every)
}

/// Whether the secret must be replaced at `now`, and why. An annotation
/// change wins over the schedule: it is what a human asked for.
pub(crate) fn rotation_due(
    inputs: &RotationInputs<'_>,
    now: DateTime<Utc>,
) -> Option<RotationTrigger> {
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
pub(crate) fn rotate_verifiers(
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
pub(crate) fn prune_verifiers(
    existing: &[SecretVerifier],
    now: DateTime<Utc>,
) -> Vec<SecretVerifier> {
    existing
        .iter()
        .filter(|v| crate::core::verifier::is_accepted(v, now))
        .cloned()
        .collect()
}

/// How recent a use of a previous version must be, when its grace period
/// ends, to count as "still in use" if `retireWhenUnusedFor` is not set.
pub(crate) const DEFAULT_IN_USE_WINDOW: Duration = Duration::from_secs(300);

/// The last use of `version` that counts after the rotation at
/// `rotated_at`: its recorded last use, never earlier than the rotation (a
/// version not used since counts as unused since the rotation).
pub(crate) fn last_use_since(
    usage: &[VersionUsage],
    version: i64,
    rotated_at: DateTime<Utc>,
) -> DateTime<Utc> {
    usage
        .iter()
        .find(|u| u.version == version)
        .map_or(rotated_at, |u| u.last_used_time.max(rotated_at))
}

/// When a previous version may be retired before its grace period ends:
/// `unused_for` after its last use since the rotation. `None` for the
/// current version, or when that is not before the end of its grace period.
pub(crate) fn early_retirement(
    v: &SecretVerifier,
    usage: &[VersionUsage],
    rotated_at: DateTime<Utc>,
    unused_for: Duration,
) -> Option<DateTime<Utc>> {
    let not_after = v.not_after?;
    let at = last_use_since(usage, v.version, rotated_at)
        .checked_add_signed(chrono::Duration::from_std(unused_for).ok()?)?;
    (at < not_after).then_some(at)
}

/// A previous version retired early: its version and last use since the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// The secret version.
    pub version: i64,
    /// Its last use since the rotation (the rotation time if none).
    pub unused_since: DateTime<Utc>,
}

/// Adoption-aware retirement: drop the previous versions that have not
/// been used for `unused_for` since the rotation at `rotated_at`.
pub(crate) fn retire_unused(
    verifiers: &[SecretVerifier],
    usage: &[VersionUsage],
    rotated_at: DateTime<Utc>,
    unused_for: Duration,
    now: DateTime<Utc>,
) -> (Vec<SecretVerifier>, Vec<Retired>) {
    let mut kept = Vec::with_capacity(verifiers.len());
    let mut retired = Vec::new();
    for v in verifiers {
        match early_retirement(v, usage, rotated_at, unused_for) {
            Some(at) if at <= now => retired.push(Retired {
                version: v.version,
                unused_since: last_use_since(usage, v.version, rotated_at),
            }),
            _ => kept.push(v.clone()),
        }
    }
    (kept, retired)
}

/// Whether a previous version whose grace period ends at `grace_end` is
/// still in use then: used after the rotation at `rotated_at`, and within
/// `window` before `grace_end`. Returns that last use.
pub(crate) fn still_in_use(
    usage: &[VersionUsage],
    version: i64,
    rotated_at: DateTime<Utc>,
    grace_end: DateTime<Utc>,
    window: Duration,
) -> Option<DateTime<Utc>> {
    let last = usage.iter().find(|u| u.version == version)?.last_used_time;
    let since = grace_end.checked_sub_signed(chrono::Duration::from_std(window).ok()?)?;
    (last > rotated_at && last >= since).then_some(last)
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

#[cfg(test)]
mod proptests {
    //! Properties of the rotation decisions over arbitrary histories: a
    //! rotation never leaves two current secrets, never lengthens a grace
    //! period, never keeps a secret past its grace, and schedules are
    //! monotonic in time.
    use super::*;
    use crate::core::verifier::is_accepted;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().unwrap()
    }

    fn verifier(version: i64, not_after: Option<i64>) -> SecretVerifier {
        SecretVerifier {
            version,
            digest: format!("d{version}"),
            not_after: not_after.map(at),
            seal: None,
        }
    }

    /// A plausible stored list: distinct versions, at most one current, any
    /// grace ends (past or future), in any order.
    fn verifier_list() -> impl Strategy<Value = Vec<SecretVerifier>> {
        proptest::collection::btree_map(1i64..50, proptest::option::of(0i64..10_000), 0..6)
            .prop_flat_map(|m| {
                let list: Vec<_> = m.into_iter().collect();
                let n = list.len();
                (Just(list), proptest::option::of(0..n.max(1)))
            })
            .prop_map(|(list, current)| {
                list.into_iter()
                    .enumerate()
                    .map(|(i, (version, end))| {
                        let end = if Some(i) == current {
                            None
                        } else {
                            Some(end.unwrap_or(0))
                        };
                        verifier(version, end)
                    })
                    .collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    fn grace() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            (1u64..5_000).prop_map(Duration::from_secs)
        ]
    }

    proptest! {
        #[test]
        fn a_rotation_leaves_exactly_one_current_secret_the_new_one(
            existing in verifier_list(),
            new_version in 1i64..60,
            now in 0i64..10_000,
            grace in grace(),
        ) {
            let out = rotate_verifiers(&existing, verifier(new_version, Some(1)), at(now), grace);
            let current: Vec<_> = out.iter().filter(|v| v.not_after.is_none()).collect();
            prop_assert_eq!(current.len(), 1, "{:?}", out);
            prop_assert_eq!(current[0].version, new_version);
            prop_assert_eq!(out[0].version, new_version);
            let versions: BTreeSet<_> = out.iter().map(|v| v.version).collect();
            prop_assert_eq!(versions.len(), out.len(), "duplicate versions: {:?}", out);
            prop_assert!(out[1..].iter().all(|v| v.version < new_version));
        }

        #[test]
        fn grace_ends_after_the_rotation_and_is_never_lengthened(
            existing in verifier_list(),
            new_version in 1i64..60,
            now in 0i64..10_000,
            grace in grace(),
        ) {
            let out = rotate_verifiers(&existing, verifier(new_version, None), at(now), grace);
            let grace_end = at(now) + chrono::Duration::from_std(grace).unwrap();
            for v in &out[1..] {
                let end = v.not_after.expect("only the new secret is current");
                prop_assert!(end > at(now), "kept a secret whose grace ended: {:?}", v);
                let before = existing.iter().find(|e| e.version == v.version).expect("no new versions appear");
                if let Some(old_end) = before.not_after {
                    prop_assert_eq!(end, old_end, "an existing grace period changed");
                } else {
                    prop_assert_eq!(end, grace_end, "the replaced secret gets exactly the grace period");
                }
            }
            if grace.is_zero() {
                prop_assert!(out[1..].iter().all(|v| v.not_after.is_some_and(|e| e > at(now))));
                prop_assert!(!out[1..].iter().any(|v| existing.iter().any(|e| e.version == v.version && e.not_after.is_none())),
                    "a rotation without grace kept the previous secret");
            }
        }

        #[test]
        fn a_rotation_only_ever_narrows_what_is_accepted_later(
            existing in verifier_list(),
            new_version in 1i64..60,
            now in 0i64..10_000,
            later in 0i64..20_000,
            grace in grace(),
        ) {
            let out = rotate_verifiers(&existing, verifier(new_version, None), at(now), grace);
            // Any old version still accepted at some later moment was
            // accepted before the rotation too (nothing is resurrected) and
            // stops being accepted no later than max(its own end, now + grace).
            let t = at(now + later);
            for v in out[1..].iter().filter(|v| is_accepted(v, t)) {
                prop_assert!(existing.iter().any(|e| e.version == v.version && is_accepted(e, at(now))),
                    "resurrected {:?}", v);
            }
        }

        #[test]
        fn repeated_rotations_keep_one_current_and_versions_descending(
            steps in proptest::collection::vec((1i64..500, grace()), 1..12),
        ) {
            let mut list: Vec<SecretVerifier> = vec![verifier(1, None)];
            let mut now = 0i64;
            for (i, (gap, grace)) in steps.into_iter().enumerate() {
                now += gap;
                let version = i as i64 + 2;
                list = rotate_verifiers(&list, verifier(version, None), at(now), grace);
                prop_assert_eq!(list.iter().filter(|v| v.not_after.is_none()).count(), 1);
                prop_assert!(list.windows(2).all(|w| w[0].version > w[1].version), "{:?}", list);
                let pruned = prune_verifiers(&list, at(now));
                prop_assert_eq!(&pruned, &list, "a fresh rotation holds nothing to prune");
            }
        }

        #[test]
        fn pruning_keeps_the_current_secret_and_exactly_the_accepted_ones(
            existing in verifier_list(),
            now in 0i64..12_000,
        ) {
            let pruned = prune_verifiers(&existing, at(now));
            prop_assert!(pruned.iter().all(|v| is_accepted(v, at(now))));
            prop_assert_eq!(pruned.len(), existing.iter().filter(|v| is_accepted(v, at(now))).count());
            prop_assert_eq!(
                pruned.iter().filter(|v| v.not_after.is_none()).count(),
                existing.iter().filter(|v| v.not_after.is_none()).count()
            );
            prop_assert_eq!(prune_verifiers(&pruned, at(now)), pruned.clone(), "idempotent");
        }

        #[test]
        fn scheduled_rotation_is_monotonic_in_time(
            every in proptest::option::of(0u64..100_000),
            last in proptest::option::of(0i64..100_000),
            t1 in 0i64..300_000,
            dt in 0i64..300_000,
        ) {
            let input = RotationInputs {
                annotation: None,
                last_handled_annotation: None,
                every: every.map(Duration::from_secs),
                last_rotation: last.map(at),
            };
            let due = next_scheduled(&input);
            if let (Some(due), Some(last)) = (due, last) {
                prop_assert!(due > at(last), "due {due} not after the last rotation {last}");
            }
            // Once due, a rotation stays due as time passes (until it is done).
            if rotation_due(&input, at(t1)).is_some() {
                prop_assert!(rotation_due(&input, at(t1 + dt)).is_some());
            }
            prop_assert_eq!(rotation_due(&input, at(t1)).is_some(), due.is_some_and(|d| d <= at(t1)));
            // A later last rotation never makes the next one due earlier.
            if let (Some(every), Some(last)) = (every, last) {
                let later = RotationInputs { last_rotation: Some(at(last + dt)), ..input };
                prop_assert!(next_scheduled(&later) >= next_scheduled(&input));
                let longer = RotationInputs { every: Some(Duration::from_secs(every + 1)), ..input };
                if every > 0 {
                    prop_assert!(next_scheduled(&longer) > next_scheduled(&input));
                }
            }
        }

        #[test]
        fn annotation_rotation_is_due_exactly_when_the_value_is_new(
            annotation in proptest::option::of("[a-c]{0,2}"),
            handled in proptest::option::of("[a-c]{0,2}"),
            now in 0i64..1_000,
        ) {
            let input = RotationInputs {
                annotation: annotation.as_deref(),
                last_handled_annotation: handled.as_deref(),
                every: None,
                last_rotation: Some(at(0)),
            };
            let due = rotation_due(&input, at(now));
            let new = annotation.is_some() && annotation != handled;
            prop_assert_eq!(due.is_some(), new);
            if let Some(RotationTrigger::Annotation(v)) = due {
                prop_assert_eq!(Some(v), annotation);
            }
        }
    }

    fn in_grace(version: i64, not_after: Option<i64>) -> SecretVerifier {
        SecretVerifier {
            version,
            digest: format!("d{version}"),
            not_after: not_after.map(at),
            seal: None,
        }
    }

    fn used(version: i64, t: i64) -> VersionUsage {
        VersionUsage {
            version,
            last_used_time: at(t),
        }
    }

    #[test]
    fn adoption_aware_retirement_table() {
        // Rotated at 1000, grace until 1000 + 600, retire when unused for 60s.
        let unused_for = Duration::from_secs(60);
        type Case = (&'static str, Vec<VersionUsage>, i64, Option<i64>, bool);
        let cases: [Case; 7] = [
            (
                "never used since: 60s after the rotation",
                vec![],
                1059,
                Some(1060),
                false,
            ),
            (
                "never used since: retired at rotation + 60s",
                vec![],
                1060,
                Some(1060),
                true,
            ),
            (
                "a use before the rotation counts as none",
                vec![used(1, 900)],
                1060,
                Some(1060),
                true,
            ),
            (
                "still used: not retired",
                vec![used(1, 1100)],
                1150,
                Some(1160),
                false,
            ),
            (
                "unused for 60s after its last use",
                vec![used(1, 1100)],
                1160,
                Some(1160),
                true,
            ),
            (
                "another version's use does not count",
                vec![used(2, 1200)],
                1060,
                Some(1060),
                true,
            ),
            (
                "the grace period stays the bound",
                vec![used(1, 1590)],
                1590,
                None,
                false,
            ),
        ];
        for (what, usage, now, due, retired) in cases {
            let vs = vec![in_grace(2, None), in_grace(1, Some(1600))];
            assert_eq!(
                early_retirement(&vs[1], &usage, at(1000), unused_for),
                due.map(at),
                "{what}"
            );
            assert_eq!(
                early_retirement(&vs[0], &usage, at(1000), unused_for),
                None,
                "{what}: current"
            );
            let (kept, gone) = retire_unused(&vs, &usage, at(1000), unused_for, at(now));
            assert_eq!(gone.len() == 1, retired, "{what}");
            assert_eq!(kept.len(), if retired { 1 } else { 2 }, "{what}");
            assert_eq!(
                kept[0].version, 2,
                "{what}: the current version always stays"
            );
        }
    }

    #[test]
    fn still_in_use_when_the_grace_period_ends() {
        let window = Duration::from_secs(60);
        let end = at(1600);
        let cases = [
            ("used just before the end", vec![used(1, 1590)], Some(1590)),
            ("used long before the end", vec![used(1, 1200)], None),
            ("only used before the rotation", vec![used(1, 990)], None),
            ("never used", vec![], None),
            ("only the new version used", vec![used(2, 1599)], None),
        ];
        for (what, usage, want) in cases {
            assert_eq!(
                still_in_use(&usage, 1, at(1000), end, window),
                want.map(at),
                "{what}"
            );
        }
    }
}
