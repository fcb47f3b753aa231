//! m2m-operator: machine-to-machine identities for Kubernetes workloads.
//!
//! - [`crd`]: the `m2m.dev/v1alpha1` API types users write.
//! - [`core`]: pure domain logic (durations, scopes, client secrets, rotation,
//!   verifiers) with no Kubernetes I/O, unit-tested in place.
//! - [`labels`]: field manager, labels and annotations every writer and reader agrees on.
//! - [`signing`]: JWT signing keys, their stored format (the key Secret), rotation and JWKS.
//! - [`server`]: the OAuth 2.0 token endpoint and its watch-fed index.
//! - [`controller`]: the reconcilers (credentials, service accounts, the
//!   operator's key Secret) and their leader election.
//! - [`runtime`]: process wiring of the `controller`, `token-server` and `run` subcommands.
//! - [`cli`]: flags and their environment fallbacks; [`config`]: the typed
//!   configuration resolved from them once (the only environment reads).
//! - [`telemetry`] and [`admin`]: logs, metrics, `/livez`, `/readyz`, `/metrics`.
//! - [`http`]: the connection loop both listeners share, with its limits.

#![forbid(unsafe_code)]

/// The API types now live in the `m2m-api` crate; the old paths stay.
pub use m2m_api as crd;
pub use m2m_api::labels;

pub mod admin;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod controller;
pub mod core;
pub mod http;
pub mod issuer_keys;
pub mod plugin;
pub mod runtime;
pub mod server;
pub mod signing;
pub mod telemetry;
