//! Mutual TLS at the token endpoint (RFC 8705).
//!
//! - Trust: the CAs that client certificates must chain to, from a PEM file
//!   (`--tls-client-ca`, polled like the serving certificate) and/or every
//!   `certificates.k8s.io/v1` `ClusterTrustBundle` of a signer
//!   (`--tls-client-ca-signer`, watched). Both are reloaded without a
//!   restart: [`ClientTrust`] swaps the verifier new handshakes use.
//! - Client certificates are optional at the handshake (bearer clients keep
//!   connecting); one that is sent must chain to the trust (rustls'
//!   `WebPkiClientVerifier`: signatures, validity, `clientAuth` usage), or
//!   the handshake fails.
//! - [`ClientCert`]: what the handlers learn about a connection's
//!   certificate, computed once per connection: its RFC 8705 §3.1
//!   thumbprint (`x5t#S256`, every token issued over the connection
//!   carries it in `cnf`) and its subject alternative names (parsed with
//!   the RustCrypto `x509-cert` crate) for `tls_client_auth` (§2.1), which
//!   authenticates a credential whose `spec.mtls` names one of them.
//!
//! Written here rather than taken from a crate: the delegating verifier
//! ([`DynamicClientVerifier`]), because rustls fixes a `ServerConfig`'s
//! verifier at build time and the trust must change under live
//! connections; the rest is glue.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};

/// The RFC 8414 / RFC 8705 client authentication method name.
pub const METHOD: &str = "tls_client_auth";

pub use crate::http::peer::{ClientCert, PeerCertificate};

/// Where the client-certificate trust comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSources {
    /// A PEM file of CA certificates.
    pub ca_file: Option<PathBuf>,
    /// Trust every `ClusterTrustBundle` with this `spec.signerName`.
    pub signer: Option<String>,
}

impl TrustSources {
    /// Whether client certificates are requested at all.
    pub fn is_enabled(&self) -> bool {
        self.ca_file.is_some() || self.signer.is_some()
    }
}

/// Why the client CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("reading the client CA file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Not PEM certificates.
    #[error("the client CA file {0} holds no usable PEM certificate")]
    Pem(PathBuf),
}

/// The client-certificate trust of one token server: the CAs of the file
/// and of the watched bundles, and the verifier built from them.
#[derive(Debug)]
pub struct ClientTrust {
    sources: TrustSources,
    provider: Arc<CryptoProvider>,
    file_roots: Mutex<Vec<CertificateDer<'static>>>,
    bundle_roots: Mutex<BTreeMap<String, Vec<CertificateDer<'static>>>>,
    verifier: ArcSwap<Option<Arc<dyn ClientCertVerifier>>>,
}

fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

impl ClientTrust {
    /// Load the CA file (if any) now; bundles arrive from [`ClientTrust::watch_bundles`].
    pub fn new(sources: TrustSources) -> Result<Arc<Self>, TrustError> {
        let trust = Arc::new(Self {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            file_roots: Mutex::new(Vec::new()),
            bundle_roots: Mutex::new(BTreeMap::new()),
            verifier: ArcSwap::from_pointee(None),
            sources,
        });
        if trust.sources.ca_file.is_some() {
            trust.reload_file()?;
        }
        Ok(trust)
    }

    /// The rustls verifier for a `ServerConfig`: always the current trust.
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(DynamicClientVerifier(self.clone()))
    }

    /// How many CA certificates are trusted now.
    pub fn roots(&self) -> usize {
        let file = self.file_roots.lock().map(|r| r.len()).unwrap_or(0);
        let bundles: usize = self
            .bundle_roots
            .lock()
            .map(|b| b.values().map(Vec::len).sum())
            .unwrap_or(0);
        file + bundles
    }

    fn rebuild(&self) {
        let mut store = RootCertStore::empty();
        let file = self
            .file_roots
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let bundles: Vec<_> = self
            .bundle_roots
            .lock()
            .map(|b| b.values().flatten().cloned().collect())
            .unwrap_or_default();
        let (added, ignored) = store.add_parsable_certificates(file.into_iter().chain(bundles));
        if ignored > 0 {
            tracing::warn!(
                ignored,
                "client CA certificates that do not parse were ignored"
            );
        }
        let verifier = if added == 0 {
            None
        } else {
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(
                    |error| tracing::warn!(%error, "the client CA certificates are not usable"),
                )
                .ok()
        };
        tracing::info!(roots = added, "client certificate trust updated");
        self.verifier.store(Arc::new(verifier));
    }

    /// Read the CA file again; keeps the previous trust if it fails.
    pub fn reload_file(&self) -> Result<(), TrustError> {
        let Some(path) = &self.sources.ca_file else {
            return Ok(());
        };
        let pem = std::fs::read(path).map_err(|e| TrustError::Read(path.clone(), e))?;
        let certs = pem_certs(&pem);
        if certs.is_empty() {
            return Err(TrustError::Pem(path.clone()));
        }
        if let Ok(mut roots) = self.file_roots.lock() {
            *roots = certs;
        }
        self.rebuild();
        Ok(())
    }

    /// Replace the CAs of bundle `name` (`None`: it was deleted).
    pub fn set_bundle(&self, name: &str, pem: Option<&str>) {
        if let Ok(mut bundles) = self.bundle_roots.lock() {
            match pem {
                Some(pem) => {
                    bundles.insert(name.to_owned(), pem_certs(pem.as_bytes()));
                }
                None => {
                    bundles.remove(name);
                }
            }
        }
        self.rebuild();
    }

    /// Poll the CA file every [`crate::http::tls::POLL_INTERVAL`] and reload it when it changes.
    pub async fn watch_file(self: Arc<Self>) {
        let Some(path) = self.sources.ca_file.clone() else {
            return;
        };
        let mtime =
            |p: &PathBuf| -> Option<SystemTime> { std::fs::metadata(p).ok()?.modified().ok() };
        let mut last = mtime(&path);
        let mut tick = tokio::time::interval(crate::http::tls::POLL_INTERVAL);
        loop {
            tick.tick().await;
            let now = mtime(&path);
            if now.is_some() && now != last {
                match self.reload_file() {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "reloaded the client CA file");
                        last = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the client CA file changed but does not load; keeping the previous trust");
                    }
                }
            }
        }
    }

    /// Watch the `ClusterTrustBundle`s of the configured signer for ever.
    pub async fn watch_bundles(self: Arc<Self>, client: kube::Client) {
        use futures::StreamExt;
        use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
        use kube::runtime::watcher;
        let Some(signer) = self.sources.signer.clone() else {
            return;
        };
        let gvk = GroupVersionKind::gvk("certificates.k8s.io", "v1", "ClusterTrustBundle");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "clustertrustbundles");
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let config = watcher::Config::default().fields(&format!("spec.signerName={signer}"));
        let mut seen: std::collections::BTreeSet<String> = Default::default();
        let mut relisted: std::collections::BTreeSet<String> = Default::default();
        let mut events = watcher(api, config).boxed();
        let pem_of = |o: &DynamicObject| -> Option<String> {
            let spec = o.data.get("spec")?;
            // The field selector already filters; check again in case a
            // server ignores it.
            (spec.get("signerName")?.as_str()? == signer)
                .then(|| spec.get("trustBundle")?.as_str().map(str::to_owned))?
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(o)) => {
                    let Some(name) = o.metadata.name.clone() else {
                        continue;
                    };
                    self.set_bundle(&name, pem_of(&o).as_deref());
                    seen.insert(name);
                }
                Ok(watcher::Event::InitApply(o)) => {
                    let Some(name) = o.metadata.name.clone() else {
                        continue;
                    };
                    self.set_bundle(&name, pem_of(&o).as_deref());
                    relisted.insert(name.clone());
                    seen.insert(name);
                }
                Ok(watcher::Event::Delete(o)) => {
                    if let Some(name) = o.metadata.name {
                        self.set_bundle(&name, None);
                        seen.remove(&name);
                    }
                }
                Ok(watcher::Event::Init) => relisted.clear(),
                Ok(watcher::Event::InitDone) => {
                    // Bundles gone while the watch was down.
                    for gone in seen.difference(&relisted).cloned().collect::<Vec<_>>() {
                        self.set_bundle(&gone, None);
                        seen.remove(&gone);
                    }
                    tracing::info!(%signer, bundles = seen.len(), roots = self.roots(), "ClusterTrustBundles listed");
                }
                Err(error) => {
                    tracing::warn!(%error, %signer, "watching ClusterTrustBundles failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// A client-certificate verifier that asks the current trust each time.
#[derive(Debug)]
pub struct DynamicClientVerifier(Arc<ClientTrust>);

impl ClientCertVerifier for DynamicClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No CA hints: the trust changes, and clients send the certificate
    /// they were given anyway (an empty list means "any").
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verifier.load().as_ref() {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn sans_and_thumbprint_of_an_openssl_certificate() {
        let dir = std::env::temp_dir().join(format!("m2m-mtls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.pem");
        let crt = dir.join("c.pem");
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=client"])
            .args([
                "-addext",
                "subjectAltName=URI:spiffe://td/ns/a/sa/b,DNS:client.example",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let der = pem_certs(&std::fs::read(&crt).unwrap()).remove(0);
        let cert = ClientCert::from_der(&der);
        assert_eq!(cert.sans.uris, ["spiffe://td/ns/a/sa/b"]);
        assert_eq!(cert.sans.dns, ["client.example"]);
        // The thumbprint openssl computes (RFC 8705 §3.1).
        let fp = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&crt)
            .output()
            .unwrap();
        let hex: String = String::from_utf8_lossy(&fp.stdout)
            .split('=')
            .nth(1)
            .unwrap()
            .trim()
            .replace(':', "");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(cert.x5t_s256, URL_SAFE_NO_PAD.encode(bytes));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
