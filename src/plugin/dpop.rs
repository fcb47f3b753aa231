//! `kubectl m2m token --dpop`: the client side of RFC 9449 — a key kept in
//! a file (or a throw-away one) and a fresh proof for each token request.

use super::PluginError;
use crate::server::dpop::client::ProofKey;
use reqwest::Url;
use std::path::Path;

/// The key of `--dpop-key`: read if the file exists, else a new P-256 key
/// written there (mode 0600, never overwritten); without a path, a key
/// that lives as long as this process.
pub(crate) fn key(path: Option<&Path>) -> Result<ProofKey, PluginError> {
    let Some(path) = path else {
        eprintln!(
            "note: --dpop without --dpop-key: the token is bound to a throw-away key and cannot be used; pass --dpop-key FILE to keep the key"
        );
        return generate();
    };
    match std::fs::read(path) {
        Ok(pem) => ProofKey::from_pem(&pem)
            .map_err(|e| PluginError::Usage(format!("--dpop-key {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate()?;
            write_new(path, key.to_pem().as_bytes()).map_err(|e| {
                PluginError::Usage(format!(
                    "--dpop-key {}: cannot create it: {e}",
                    path.display()
                ))
            })?;
            eprintln!(
                "created DPoP key {} (P-256, jkt {})",
                path.display(),
                key.thumbprint()
            );
            Ok(key)
        }
        Err(e) => Err(PluginError::Usage(format!(
            "--dpop-key {}: {e}",
            path.display()
        ))),
    }
}

fn generate() -> Result<ProofKey, PluginError> {
    ProofKey::generate(jsonwebtoken::Algorithm::ES256)
        .map_err(|e| PluginError::Usage(format!("generating a DPoP key failed: {e}")))
}

/// Create `path` with `bytes`, readable by its owner only; never replace a file.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// A proof for `POST url` (without query and fragment, RFC 9449 §4.2), now.
pub(crate) fn proof(key: &ProofKey, url: &Url, nonce: Option<&str>) -> Result<String, PluginError> {
    let mut htu = url.clone();
    htu.set_query(None);
    htu.set_fragment(None);
    key.proof(htu.as_str(), chrono::Utc::now().timestamp(), nonce)
        .map_err(|e| PluginError::Usage(format!("signing the DPoP proof failed: {e}")))
}

/// The `binding:` line of `decode`: what the token is bound to (`cnf`).
pub(crate) fn binding_line(claims: &serde_json::Value) -> String {
    let cnf = claims.get("cnf");
    let jkt = cnf.and_then(|c| c.get("jkt")).and_then(|v| v.as_str());
    let x5t = cnf.and_then(|c| c.get("x5t#S256")).and_then(|v| v.as_str());
    match (jkt, x5t) {
        (None, None) => "binding:   none (a bearer token: whoever holds it can use it)".to_owned(),
        (jkt, x5t) => {
            let mut parts = Vec::new();
            if let Some(jkt) = jkt {
                parts.push(format!(
                    "DPoP key jkt {jkt} (send it as Authorization: DPoP with a proof of that key, RFC 9449)"
                ));
            }
            if let Some(x5t) = x5t {
                parts.push(format!(
                    "client certificate x5t#S256 {x5t} (present it over mutual TLS with that certificate, RFC 8705)"
                ));
            }
            format!("binding:   {}", parts.join("; and "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("m2m-plugin-dpop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dpop.pem");
        let _ = std::fs::remove_file(&path);
        let created = key(Some(&path)).unwrap();
        let read = key(Some(&path)).unwrap();
        assert_eq!(created.thumbprint(), read.thumbprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(key(Some(&path)), Err(PluginError::Usage(m)) if m.contains("dpop.pem")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_binding_line_names_what_the_token_is_bound_to() {
        let none = binding_line(&serde_json::json!({"sub": "x"}));
        assert!(none.contains("none"), "{none}");
        let dpop = binding_line(&serde_json::json!({"cnf": {"jkt": "abc"}}));
        assert!(dpop.contains("DPoP key jkt abc"), "{dpop}");
        let mtls = binding_line(&serde_json::json!({"cnf": {"x5t#S256": "xyz"}}));
        assert!(mtls.contains("x5t#S256 xyz"), "{mtls}");
    }
}
