//! The benchmark's subcommands (cargo feature `bench`, never in the
//! production binary): `bench-server` serves the production routes of a
//! cluster-free token server ([`crate::server::bench`] builds it) plus the
//! no-signing baseline route, and `bench-dpop` writes DPoP proofs for the
//! load generator and times the verification of one proof.

use crate::cli::{BenchDpopArgs, BenchServerArgs};
use crate::server::bench::{bench_router, fixture_with};
use crate::telemetry::init_logging;
use chrono::Utc;

/// `m2m-operator bench-server`.
pub async fn run(args: BenchServerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let sender = crate::server::binding::SenderOptions {
        dpop: crate::server::dpop::DpopConfig {
            max_age: args.dpop_proof_max_age,
            ..Default::default()
        },
        client_certificates: args.tls_client_ca.is_some(),
    };
    let fixture = fixture_with(args.signing_alg, sender)?;
    if let Some(path) = &args.assertion_file {
        std::fs::write(path, &fixture.assertion)?;
    }
    if let Some(path) = &args.api_token_file {
        std::fs::write(path, &fixture.api_token)?;
    }
    std::fs::write(
        &args.credentials_file,
        format!("{}:{}\n", fixture.client_id, fixture.client_secret),
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let limits = fixture.server.config().limits.clone();
    let metrics = fixture.server.metrics().clone();
    // mTLS: the same routes over TLS, asking for client certificates.
    if let (Some(tls_listen), Some(cert), Some(key)) =
        (args.tls_listen, &args.tls_cert, &args.tls_key)
    {
        let trust = match &args.tls_client_ca {
            Some(ca) => Some(crate::server::mtls::ClientTrust::new(
                crate::server::mtls::TrustSources {
                    ca_file: Some(ca.clone()),
                    signer: None,
                },
            )?),
            None => None,
        };
        let tls = crate::http::tls::ReloadingTls::with_client_trust(
            cert.clone(),
            key.clone(),
            trust.map(|t| t.verifier()),
        )?;
        let tls_listener = tokio::net::TcpListener::bind(tls_listen).await?;
        tokio::spawn(crate::http::serve(
            "token",
            tls_listener,
            bench_router(fixture.server.clone()),
            Some(tls),
            limits.clone(),
            metrics.clone(),
            crate::admin::shutdown_signal(),
        ));
    }
    tracing::info!(listen = %args.listen, alg = args.signing_alg.as_str(), "bench server ready");
    crate::http::serve(
        "token",
        listener,
        bench_router(fixture.server),
        None,
        limits,
        metrics,
        crate::admin::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// `m2m-operator bench-dpop`: write `--count` DPoP proofs of one fresh key
/// (one per line) for the load generator, and print how long the token
/// endpoint's verification of one proof takes — the stateless checks of
/// [`crate::server::dpop::DpopVerifier::check_proof`] and the replay-cache insert,
/// on distinct proofs, single-threaded — as `verify_us=… sign_us=…`.
pub fn run_dpop(args: BenchDpopArgs) -> anyhow::Result<()> {
    use crate::server::dpop::client::ProofKey;
    use std::io::Write;
    let alg = match args.alg.as_str() {
        "ES256" => jsonwebtoken::Algorithm::ES256,
        "EdDSA" => jsonwebtoken::Algorithm::EdDSA,
        other => anyhow::bail!("--alg {other}: ES256 or EdDSA"),
    };
    let key = ProofKey::generate(alg)?;
    let now = Utc::now().timestamp();
    let started = std::time::Instant::now();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    for _ in 0..args.count {
        writeln!(out, "{}", key.proof(&args.htu, now, None)?)?;
    }
    out.flush()?;
    let sign_us = started.elapsed().as_secs_f64() * 1e6 / args.count.max(1) as f64;
    // The micro-benchmark: fresh proofs, the production checks.
    let issuer = args
        .htu
        .strip_suffix("/oauth/token")
        .ok_or_else(|| anyhow::anyhow!("--htu must end in /oauth/token"))?;
    let verifier =
        crate::server::dpop::DpopVerifier::new(issuer, crate::server::dpop::DpopConfig::default());
    let samples: Vec<String> = (0..args.verify_iterations)
        .map(|_| key.proof(&args.htu, now, None))
        .collect::<Result<_, _>>()?;
    let started = std::time::Instant::now();
    for proof in &samples {
        let checked = verifier
            .check_proof(proof, "POST", now, None)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        verifier
            .record(&checked, now)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let verify_us = started.elapsed().as_secs_f64() * 1e6 / samples.len().max(1) as f64;
    println!("verify_us={verify_us:.1} sign_us={sign_us:.1}");
    Ok(())
}
