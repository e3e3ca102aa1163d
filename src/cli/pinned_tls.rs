//! TLS from the CLI to its own daemon (`send-test`): trust exactly the leaf certificate that
//! `[server.tls] cert` names, whatever names it carries. A site's certificate is issued for
//! its public name (`edge.example.com`), which a connection to the loopback address cannot
//! match, so checking the name refused every real certificate; the same certificate plus a
//! handshake signed with its key is the proof that matters for talking to ourselves.

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use std::path::Path;
use std::sync::Arc;

/// The message that ends a handshake with a daemon serving another certificate.
pub(crate) const NOT_OURS: &str = "the daemon serves a different certificate";

#[derive(Debug)]
struct PinnedLeaf {
    leaf: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(NOT_OURS.into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client configuration that accepts only the first certificate of `cert_file` (the leaf;
/// any chain after it is what the daemon sends along, not what we check).
pub(crate) fn client_config(cert_file: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let leaf = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert_file.display()))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", cert_file.display()))?
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedLeaf {
        leaf,
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}
