//! Process wiring of the long-running subcommands: one client, one metrics
//! registry, one readiness set and one admin endpoint per process, shared by
//! the controller and the token server when `run` hosts both.

use crate::admin::{self, AdminState, Readiness};
use crate::cli::{CommonArgs, ControllerArgs, ControllerOptions, RunArgs};
use crate::controller::ControllerConfig;
use crate::controller::run::run_with_leader_election;
use crate::core::duration::parse_duration;
use crate::core::grant::ScopePolicy;
use crate::signing::store::KeySecretConfig;
use crate::telemetry::{Metrics, init_logging};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Controller configuration from flags; refuses an unparsable default policy.
pub fn controller_config(
    common: &CommonArgs,
    opts: &ControllerOptions,
) -> anyhow::Result<ControllerConfig> {
    let issuer = common.issuer();
    let default_policy = ScopePolicy::parse(&common.default_allowed_scopes);
    if let Err(e) = &default_policy {
        anyhow::bail!("--default-allowed-scopes: {e}");
    }
    Ok(ControllerConfig {
        operator_namespace: common.namespace(),
        watch_namespace: common.watch_namespace.clone(),
        token_url: opts
            .token_url
            .clone()
            .unwrap_or_else(|| format!("{issuer}/oauth/token")),
        issuer,
        default_policy,
    })
}

/// Key Secret configuration from flags; refuses a rotation age that is not
/// a positive duration.
pub fn key_secret_config(
    common: &CommonArgs,
    opts: &ControllerOptions,
) -> anyhow::Result<KeySecretConfig> {
    let rotation = &opts.signing_key_rotation;
    let rotate_every = parse_duration(rotation)
        .map_err(|e| anyhow::anyhow!("--signing-key-rotation {rotation:?}: {e}"))?;
    if rotate_every.is_zero() {
        anyhow::bail!("--signing-key-rotation {rotation:?} is not a positive duration");
    }
    Ok(KeySecretConfig::new(
        common.namespace(),
        opts.signing_alg,
        rotate_every,
    ))
}

struct Process {
    client: kube::Client,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shared<BoxFuture<'static, ()>>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(common: &CommonArgs) -> anyhow::Result<Process> {
    init_logging(common.log_format);
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let shutdown = admin::shutdown_signal().boxed().shared();
    let state = AdminState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    };
    let admin = tokio::spawn(admin::serve(common.admin_listen, state, shutdown.clone()));
    Ok(Process {
        client,
        metrics,
        readiness,
        shutdown,
        admin,
    })
}

async fn finish(process: Process) {
    if let Ok(Err(e)) = process.admin.await {
        tracing::warn!(error = %e, "admin endpoint failed");
    }
}

/// `m2m-operator controller`.
pub async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let config = controller_config(&args.common, &args.controller)?;
    let keys = key_secret_config(&args.common, &args.controller)?;
    let p = start(&args.common).await?;
    let result = controller(&p, config, keys, &args.controller.lease_name).await;
    finish(p).await;
    result
}

async fn controller(
    p: &Process,
    config: ControllerConfig,
    keys: KeySecretConfig,
    lease: &str,
) -> anyhow::Result<()> {
    run_with_leader_election(
        p.client.clone(),
        config,
        keys,
        lease,
        p.metrics.clone(),
        p.readiness.flag("controller"),
        p.shutdown.clone(),
    )
    .await
}

/// `m2m-operator run`: the controller and the token server in one process.
pub async fn run_all(args: RunArgs) -> anyhow::Result<()> {
    let config = controller_config(&args.common, &args.controller)?;
    let keys = key_secret_config(&args.common, &args.controller)?;
    let p = start(&args.common).await?;
    let controller = controller(&p, config, keys, &args.controller.lease_name);
    let server = crate::server::run_token_server(
        p.client.clone(),
        &args.common,
        &args.server,
        p.metrics.clone(),
        &p.readiness,
        p.shutdown.clone(),
    );
    let (c, s) = tokio::join!(controller, server);
    finish(p).await;
    c?;
    s?;
    Ok(())
}
