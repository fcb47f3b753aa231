//! Optional TLS for the token endpoint: a PEM certificate chain and key
//! from files (e.g. a mounted cert-manager Secret), reloaded when either
//! file changes. The files are polled every [`POLL_INTERVAL`]: mounted
//! Secrets change by symlink swaps that inotify handles poorly, and a few
//! seconds of delay is irrelevant for certificate renewal. A reload that
//! fails (e.g. half-written files) keeps the previous certificate.
//!
//! With a client-certificate verifier (the token server's
//! `server::mtls::ClientTrust`), the listener asks for a client
//! certificate (optional) and checks it against the trust of the moment.
//! It lives in the HTTP layer because the accept loop ([`super::serve`])
//! takes it; the server only hands in the verifier.

use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::{self, ServerConfig};

/// How often the files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A file is not valid PEM.
    #[error("{0} is not valid PEM")]
    Pem(PathBuf, #[source] pem::Error),
    /// The certificate file holds no certificate.
    #[error("{0} contains no PEM certificate")]
    NoCertificate(PathBuf),
    /// The key file holds no private key.
    #[error("{0} contains no PEM private key")]
    NoKey(PathBuf),
    /// rustls refused the pair.
    #[error("the TLS certificate and key are not usable")]
    Rustls(#[source] rustls::Error),
}

/// Build a rustls server configuration from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    load_with_client_trust(cert, key, None)
}

/// [`load`], asking for client certificates checked by `client` (mTLS hook).
pub fn load_with_client_trust(
    cert: &Path,
    key: &Path,
    client: Option<&Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.to_owned(), e));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(cert.to_owned(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key.to_owned())),
        Err(e) => return Err(TlsError::Pem(key.to_owned(), e)),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client {
        Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The current TLS configuration, replaced when the files change.
#[derive(Debug)]
pub struct ReloadingTls {
    cert: PathBuf,
    key: PathBuf,
    client: Option<Arc<dyn ClientCertVerifier>>,
    current: ArcSwap<ServerConfig>,
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl ReloadingTls {
    /// Load the files once; fails if they are unusable now.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, TlsError> {
        Self::with_client_trust(cert, key, None)
    }

    /// [`ReloadingTls::new`], asking for client certificates checked by `client`.
    pub fn with_client_trust(
        cert: PathBuf,
        key: PathBuf,
        client: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<Arc<Self>, TlsError> {
        let config = load_with_client_trust(&cert, &key, client.as_ref())?;
        Ok(Arc::new(Self {
            cert,
            key,
            client,
            current: ArcSwap::from_pointee(config),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reload now; keeps the previous configuration on failure.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = load_with_client_trust(&self.cert, &self.key, self.client.as_ref())?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Poll the files forever and reload when they change.
    pub async fn watch(self: Arc<Self>) {
        let mut last = mtimes(&self.cert, &self.key);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tick.tick().await;
            let now = mtimes(&self.cert, &self.key);
            if now.is_some() && now != last {
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                        last = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "TLS files changed but do not load; keeping the previous certificate");
                    }
                }
            }
        }
    }
}
