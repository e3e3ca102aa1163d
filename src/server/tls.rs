//! TLS termination with rustls (ring provider), TLS 1.2 and 1.3 only (SPEC §1). The
//! certificate can be replaced while the daemon runs (`leap-edge reload` after a certbot or
//! ACME renewal): new connections get the new one, connections in progress keep theirs.

use super::ServerError;
use chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

/// The acceptor in force and where it came from; swapped whole, so a handshake sees either
/// the old pair or the new one, never a mix.
pub(crate) struct ReloadableTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

/// A pair in service: its acceptor, the leaf's fingerprint and when the leaf expires.
struct Loaded {
    acceptor: TlsAcceptor,
    fingerprint: String,
    not_after: Option<DateTime<Utc>>,
}

/// `/healthz` fails this long before the certificate expires: time to renew and `reload`.
const EXPIRY_WARNING_DAYS: i64 = 7;

impl ReloadableTls {
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<ReloadableTls, ServerError> {
        let loaded = load_pair(cert, key)?;
        Ok(ReloadableTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(loaded),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current.read().expect("tls lock").acceptor.clone()
    }

    /// SHA-256 of the leaf certificate in service, as hex.
    pub(crate) fn fingerprint(&self) -> String {
        self.current.read().expect("tls lock").fingerprint.clone()
    }

    /// When the leaf certificate in service stops being valid (None: unreadable).
    pub(crate) fn not_after(&self) -> Option<DateTime<Utc>> {
        self.current.read().expect("tls lock").not_after
    }

    /// Re-read both files; on any problem the old pair stays in service and the error says
    /// why. Returns the new fingerprint.
    pub(crate) fn reload(&self) -> Result<String, ServerError> {
        let loaded = load_pair(&self.cert, &self.key)?;
        let fp = loaded.fingerprint.clone();
        *self.current.write().expect("tls lock") = loaded;
        Ok(fp)
    }
}

impl crate::seam::StatusSource for ReloadableTls {
    fn render_metrics(&self, out: &mut String) {
        if let Some(t) = self.not_after() {
            let name = "leap_edge_tls_certificate_not_after_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} When the served TLS certificate expires (Unix time).\n# TYPE {name} gauge\n{name} {}",
                t.timestamp()
            );
        }
    }

    fn health_problems(&self) -> Vec<String> {
        let Some(t) = self.not_after() else {
            return Vec::new();
        };
        let left = t - Utc::now();
        if left > chrono::Duration::days(EXPIRY_WARNING_DAYS) {
            return Vec::new();
        }
        let when = crate::textfmt::ts(t);
        vec![if left <= chrono::Duration::zero() {
            format!(
                "TLS certificate {} expired at {when}: Leap's pushes fail; renew it and run `leap-edge reload`",
                self.cert.display()
            )
        } else {
            format!(
                "TLS certificate {} expires at {when} (in {} h): renew it and run `leap-edge reload`",
                self.cert.display(),
                left.num_hours()
            )
        }]
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, ServerError> {
    let tls_err = |path: &Path, reason: String| ServerError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(cert, "holds no certificate".into()));
    }
    if let Some(problem) = key_problem(key) {
        return Err(tls_err(key, problem));
    }
    let fingerprint = hex(&crate::secret::sha256(certs[0].as_ref()));
    let not_after = super::cert_expiry::not_after(certs[0].as_ref());
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(key, format!("cannot read a PEM private key: {e}")))?;
    // Two providers may be compiled in through dependencies; choose ring explicitly.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| tls_err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            tls_err(
                cert,
                format!("certificate and key do not make a usable pair: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
        not_after,
    })
}

/// What is wrong with a private key file before rustls sees it (issue 10.10): readable by
/// every user, or encrypted with a passphrase an unattended daemon cannot type. `None` if
/// neither (or the file cannot be read: rustls then says so).
pub(crate) fn key_problem(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Some(format!(
            "the private key is readable by every user on this machine (mode {mode:04o}); \
             run `chmod 0640 {p}` (owner root, group leap-edge)",
            p = path.display()
        ));
    }
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Some(format!(
            "the private key is encrypted with a passphrase, which a service cannot type at \
             start; write an unencrypted copy with `openssl pkey -in {p} -out {p}.plain`, \
             `chmod 0640` it and point server.tls.key at it",
            p = path.display()
        ));
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
