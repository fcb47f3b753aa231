//! The `m2m-operator` binary: parses flags and hands over to the library.

use clap::Parser;
use m2m_operator::cli::{Cli, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => m2m_operator::crd::crds_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::TokenServer(args) => m2m_operator::server::run(args)
            .await
            .map_err(anyhow::Error::from),
        Command::BenchServer(args) => m2m_operator::server::bench::run(args).await,
        Command::Controller(_) | Command::Run(_) => Err(anyhow::anyhow!("not implemented yet")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
