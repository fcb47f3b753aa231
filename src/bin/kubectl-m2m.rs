//! `kubectl-m2m`: the kubectl plugin (`kubectl m2m …`). Everything lives in
//! the library's [`m2m_operator::plugin`] module.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut stdout = std::io::stdout().lock();
    m2m_operator::plugin::main(std::env::args_os(), &mut stdout).await
}
