//! The `m2m-operator` binary: parses flags and hands over to the library.

#![forbid(unsafe_code)]

use clap::Parser;
use m2m_operator::cli::{Cli, Command};
use m2m_operator::runtime;
use std::process::ExitCode;

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds => {
            print!("{}", m2m_operator::crd::crds_yaml()?);
            Ok(())
        }
        Command::Controller(args) => runtime::run_controller(args).await,
        Command::TokenServer(args) => runtime::run_token_server(args).await,
        Command::Run(args) => runtime::run_all(args).await,
        #[cfg(feature = "bench")]
        Command::BenchServer(args) => m2m_operator::bench::run(args).await,
        #[cfg(feature = "bench")]
        Command::BenchDpop(args) => m2m_operator::bench::run_dpop(args),
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
