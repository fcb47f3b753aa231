//! Process wiring of the long-running subcommands: the configuration is
//! resolved once ([`crate::config`]), then one client, one metrics
//! registry, one readiness set and one admin endpoint per process, shared by
//! the controller and the token server when `run` hosts both. `controller`,
//! `token-server` and `run` all start through [`start`].

use crate::admin::{self, AdminState, Readiness};
use crate::cli::{ControllerArgs, ControllerOptions, RunArgs, TokenServerArgs, TokenServerOptions};
use crate::config::{Config, Environment};
use crate::controller::run::run_with_leader_election;
use crate::telemetry::{Metrics, init_logging};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

struct Process {
    config: Config,
    client: kube::Client,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shared<BoxFuture<'static, ()>>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The start-up every subcommand shares: configuration, logging, client,
/// metrics, readiness, the shutdown signal and the admin endpoint.
async fn start(common: &crate::cli::CommonArgs) -> anyhow::Result<Process> {
    let config = Config::resolve(common, &Environment::current())?;
    init_logging(config.log_format);
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let shutdown = admin::shutdown_signal().boxed().shared();
    let state = AdminState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    };
    let admin = tokio::spawn(admin::serve(config.admin_listen, state, shutdown.clone()));
    Ok(Process {
        config,
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

async fn controller(p: &Process, opts: &ControllerOptions) -> anyhow::Result<()> {
    run_with_leader_election(
        p.client.clone(),
        p.config.controller(opts),
        p.config.key_secret(opts),
        &opts.lease_name,
        p.metrics.clone(),
        p.readiness.flag("controller"),
        p.shutdown.clone(),
    )
    .await
}

async fn token_server(p: &Process, opts: &TokenServerOptions) -> anyhow::Result<()> {
    crate::server::run_token_server(
        p.client.clone(),
        p.config.server(opts),
        p.config.watch_namespace.clone(),
        p.metrics.clone(),
        &p.readiness,
        p.shutdown.clone(),
    )
    .await?;
    Ok(())
}

/// `m2m-operator controller`.
pub async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let p = start(&args.common).await?;
    let result = controller(&p, &args.controller).await;
    finish(p).await;
    result
}

/// `m2m-operator token-server`.
pub async fn run_token_server(args: TokenServerArgs) -> anyhow::Result<()> {
    let p = start(&args.common).await?;
    let result = token_server(&p, &args.server).await;
    finish(p).await;
    result
}

/// `m2m-operator run`: the controller and the token server in one process.
pub async fn run_all(args: RunArgs) -> anyhow::Result<()> {
    let p = start(&args.common).await?;
    let (c, s) = tokio::join!(
        controller(&p, &args.controller),
        token_server(&p, &args.server)
    );
    finish(p).await;
    c?;
    s
}
