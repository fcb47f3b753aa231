//! `kubectl m2m`, the kubectl plugin (binary `kubectl-m2m`): what an
//! application team asks about its credentials, answered from the cluster
//! with the caller's own kubeconfig and RBAC — never with the operator's.
//!
//! - [`cli`]: flags, in kubectl's conventions.
//! - [`cluster`]: the connection (`--kubeconfig`, `--context`, `-n`) and
//!   API errors turned into messages that name the resource and the fix.
//! - [`status`]: one row per credential, built by a pure function from the
//!   object's JSON (so fields newer than this build's CRD types still show).
//! - [`rotate`]: the `m2m.dev/rotate` annotation, and waiting for the new version.
//! - [`token`]: a client-credentials request with the credential's Secret.
//! - [`jwt`]: header and claims of a JWT, and its signature checked against a JWKS.
//! - [`table`]: kubectl-style tables and human durations.
//!
//! Exit status: 0 on success, 1 on any error, including a token whose
//! signature does not verify.

pub mod cli;
pub mod cluster;
pub mod dpop;
pub mod jwt;
pub mod rotate;
pub mod status;
pub mod table;
pub mod token;

use clap::Parser;
use cli::{Cli, Command};
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// Everything that makes a command fail. The message is what the user
/// reads: it names the resource and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Flags that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig could not be read or used.
    #[error("cannot use the kubeconfig{}: {message}; pass --kubeconfig PATH or --context NAME, or set KUBECONFIG", context.as_deref().map(|c| format!(" (context {c:?})")).unwrap_or_default())]
    Kubeconfig {
        /// The context asked for, if any.
        context: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The named credential does not exist.
    #[error(
        "m2mcredential {name:?} not found in namespace {namespace:?}; list them with kubectl m2m status -n {namespace}"
    )]
    CredentialNotFound {
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// The cluster does not serve `m2mcredentials.m2m.dev`.
    #[error(
        "the cluster does not serve m2mcredentials.m2m.dev: the m2m-operator CRDs are not installed; install the chart (charts/m2m-operator) or kubectl apply -f crds/"
    )]
    CrdMissing,
    /// The caller's RBAC does not allow the request.
    #[error("forbidden: {message}; {fix}")]
    Forbidden {
        /// The apiserver's message (names user, verb and resource).
        message: String,
        /// The permission to ask for.
        fix: String,
    },
    /// The apiserver could not be reached.
    #[error("cannot reach the Kubernetes API server{}: {message}; check --context and --kubeconfig", context.as_deref().map(|c| format!(" of context {c:?}")).unwrap_or_default())]
    Unreachable {
        /// The context in use.
        context: Option<String>,
        /// The underlying error.
        message: String,
    },
    /// Any other API failure, with the step that failed.
    #[error("{action}: {message}")]
    Api {
        /// What was being done, e.g. `reading m2mcredential "x" in namespace "y"`.
        action: String,
        /// The apiserver's or client's message.
        message: String,
    },
    /// A credential is in a state the command cannot work with.
    #[error("{0}")]
    Credential(String),
    /// `rotate --wait` ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// The token endpoint could not be reached or refused the request.
    #[error("{0}")]
    TokenEndpoint(String),
    /// The input is not a JWT.
    #[error("not a JWT: {0}")]
    MalformedToken(String),
    /// The signature of a token did not verify (already reported on stdout).
    #[error("signature INVALID: {0}")]
    InvalidSignature(String),
    /// The signature could not be verified (no trusted JWKS, or it could
    /// not be fetched); already reported on stdout.
    #[error("signature not verified: {0}")]
    Unverified(String),
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Output(String),
}

/// The source chain of an error as one line (`a: b: c`), for messages
/// from libraries whose top-level `Display` is terse.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Parse `args` and run the command, writing results to `stdout` and
/// errors to stderr. Returns the process exit status.
pub async fn main(args: impl IntoIterator<Item = OsString>, stdout: &mut dyn Write) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // kubectl exits 1 on a usage error; help and version are successes.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli, stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = stdout.flush();
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run one parsed command.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), PluginError> {
    let g = &cli.global;
    if g.all_namespaces && !matches!(cli.command, Command::Status(_)) {
        return Err(PluginError::Usage(
            "-A/--all-namespaces works with status only; name the namespace with -n".into(),
        ));
    }
    match &cli.command {
        Command::Status(args) => {
            let cluster = cluster::Cluster::connect(g).await?;
            status::run(&cluster, g, args, out).await
        }
        Command::Rotate(args) => {
            let cluster = cluster::Cluster::connect(g).await?;
            rotate::run(&cluster, args, out).await
        }
        Command::Token(args) => {
            let cluster = cluster::Cluster::connect(g).await?;
            token::run(&cluster, g, args, out).await
        }
        Command::Decode(args) => jwt::run(g, args, out).await,
    }
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), PluginError> {
    out.write_all(text.as_bytes())
        .map_err(|e| PluginError::Output(e.to_string()))
}

fn http_client() -> Result<reqwest::Client, PluginError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| {
            PluginError::TokenEndpoint(format!(
                "building the HTTP client failed: {}",
                error_chain(&e)
            ))
        })
}
