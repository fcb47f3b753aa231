//! `tls_client_auth` with a Pod certificate and no `client_id` (SPEC §10).
//!
//! A Pod whose certificate the operator signed (`m2m.dev/workload-identity`)
//! cannot know its credential's `status.clientId` (derived from the
//! credential's UID). As for workload identity's projected tokens (SPEC §6),
//! `client_id` may then be left out when exactly one credential accepts the
//! certificate: a credential binding the ServiceAccount the SPIFFE ID
//! names (`spiffe://<trust domain>/ns/<ns>/sa/<name>`), whose `spec.mtls`
//! names one of the certificate's SANs. The lookup uses the index of
//! workload-identity bindings: no scan, no API call.
//!
//! What authenticates is still `spec.mtls` matching a SAN of a certificate
//! that chains to a trusted CA ([`super::binding`]); this only finds the
//! client id to check it against.

use super::TokenServer;
use super::mtls::ClientCert;
use crate::core::podcert::spiffe_service_account;

impl TokenServer {
    /// The client id a certificate implies, if exactly one credential
    /// accepts it.
    pub(crate) fn implied_mtls_client(&self, cert: &ClientCert) -> Option<String> {
        let index = self.inner.state.credentials();
        let mut found: Option<&str> = None;
        for uri in &cert.sans.uris {
            let Some((ns, sa)) = spiffe_service_account(uri) else {
                continue;
            };
            let subject = format!("system:serviceaccount:{ns}:{sa}");
            for id in index.by_subject(&subject) {
                let accepts = index.get(id).is_some_and(|e| {
                    !e.api_token && e.sender.mtls.as_ref().is_some_and(|m| cert.sans.matches(m))
                });
                if accepts {
                    match found {
                        Some(other) if other != id => return None,
                        _ => found = Some(id),
                    }
                }
            }
        }
        found.map(str::to_owned)
    }
}
