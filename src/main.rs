//! The `m2m-operator` binary: parses flags and hands over to the library.

use clap::Parser;
use m2m_operator::cli::{Cli, Command, CommonArgs, ControllerOptions, LogFormat};
use m2m_operator::controller::ControllerConfig;
use m2m_operator::core::grant::ScopePolicy;
use std::process::ExitCode;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn controller_config(common: &CommonArgs, opts: &ControllerOptions) -> ControllerConfig {
    let issuer = common.issuer();
    ControllerConfig {
        operator_namespace: common.namespace(),
        watch_namespace: common.watch_namespace.clone(),
        token_url: opts
            .token_url
            .clone()
            .unwrap_or_else(|| format!("{issuer}/oauth/token")),
        issuer,
        default_policy: ScopePolicy::parse(&common.default_allowed_scopes),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds => {
            print!("{}", m2m_operator::crd::crds_yaml()?);
            Ok(())
        }
        Command::Controller(args) => {
            init_logging(args.common.log_format);
            let config = controller_config(&args.common, &args.controller);
            if let Err(e) = &config.default_policy {
                anyhow::bail!("--default-allowed-scopes: {e}");
            }
            let client = kube::Client::try_default().await?;
            m2m_operator::controller::run::run_with_leader_election(
                client,
                config,
                &args.controller.lease_name,
                shutdown_signal(),
            )
            .await
        }
        Command::TokenServer(args) => Ok(m2m_operator::server::run(args).await?),
        Command::BenchServer(args) => m2m_operator::server::bench::run(args).await,
        Command::Run(_) => {
            anyhow::bail!("not implemented yet")
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
