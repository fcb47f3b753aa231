//! m2m-operator: machine-to-machine identities for Kubernetes workloads.
//!
//! - [`crd`]: the `m2m.dev/v1alpha1` API types users write.
//! - [`core`]: pure domain logic (durations, scopes, client secrets, rotation,
//!   verifiers, signing keys) with no Kubernetes I/O, unit-tested in place.

pub mod cli;
pub mod controller;
pub mod core;
pub mod crd;
