//! The names every writer and reader of operator-managed objects agree on:
//! the field manager of the operator's writes, the labels it sets and the
//! annotations of a generated credential Secret. Both the controller and
//! the token server import them from here, never from each other.
//!
//! The user-facing annotations (`m2m.dev/rotate`,
//! `m2m.dev/allowed-scopes`) are part of the API and live in [`crate`].

/// Field manager of every write the operator makes (server-side apply,
/// creates, merge patches).
pub const FIELD_MANAGER: &str = "m2m-operator";

/// Field manager of the token server's usage writes (`status.lastUsedTime`,
/// `status.versionUsage`); the controller never sends those fields.
pub const USAGE_FIELD_MANAGER: &str = "m2m-token-server";

/// Usage times later than now plus this many seconds are not believed,
/// by the token server (it overwrites them) nor the controller (it ignores
/// them): clock skew is far below it, a forged far-future time is not.
pub const USAGE_CLOCK_SKEW_SECS: i64 = 60;

/// The label (key, value) every object the operator manages carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "m2m-operator");

/// Label of a generated Secret naming the owning credential.
pub const LABEL_CREDENTIAL: &str = "m2m.dev/credential";
/// Annotation of a generated Secret: the secret version held.
pub const ANN_VERSION: &str = "m2m.dev/secret-version";
/// Annotation of a generated Secret: HMAC of the held secret (the same
/// digest as its verifier).
pub const ANN_DIGEST: &str = "m2m.dev/secret-digest";
/// Annotation of a generated Secret: when the held secret was generated.
pub const ANN_ROTATED_AT: &str = "m2m.dev/rotated-at";
/// Annotation of a generated Secret: until when the previous secret stays
/// valid (absent: not at all).
pub const ANN_PREVIOUS_NOT_AFTER: &str = "m2m.dev/previous-not-after";
/// Annotation of a generated Secret: the `m2m.dev/rotate` value handled by
/// this secret's rotation.
pub const ANN_HANDLED_ROTATE: &str = "m2m.dev/rotate-handled";
/// Annotation of a generated Secret: the public fingerprint of the verifier
/// key it was sealed under (`VerifierKey::key_id`), so a Secret written by
/// an installation with other keys is told apart from a hand edit.
pub const ANN_VERIFIER_KEY_ID: &str = "m2m.dev/verifier-key-id";
