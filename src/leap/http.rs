//! One HTTP/1.1 exchange with Leap over a fresh connection: TCP, TLS (rustls, ring, the
//! webpki root set), request, whole answer — all under one deadline. A connection per call
//! is enough at our rate (a poll every few minutes) and leaves no half-dead pooled socket
//! behind a flaky uplink.
//!
//! Roots: the Mozilla set compiled in (webpki-roots), not the system store. Leap's API sits
//! behind a public CA; compiled-in roots behave the same on every gateway image (old
//! Debian/Ubuntu releases with stale ca-certificates, minimal images with none, the
//! sandboxed service) and need no file access. A site that must go through a TLS-inspecting
//! proxy uses a loopback reverse proxy to Leap (`base_url = "http://127.0.0.1:…"`): requests
//! are origin-form with that address as Host, so a forward proxy (Squid) does not fit.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer we read (a search page of 500 results is well below this).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// What went wrong below HTTP: worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

pub(crate) fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Send one request to `uri` (absolute) and read the whole answer within `deadline`.
pub(crate) async fn exchange(
    tls: &Arc<rustls::ClientConfig>,
    method: Method,
    uri: &Uri,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    deadline: Duration,
) -> Result<Answer, TransportError> {
    tokio::time::timeout(deadline, exchange_inner(tls, method, uri, headers, body))
        .await
        .map_err(|_| TransportError::Timeout(deadline))?
}

async fn exchange_inner(
    tls: &Arc<rustls::ClientConfig>,
    method: Method,
    uri: &Uri,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> Result<Answer, TransportError> {
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|source| TransportError::Connect {
            host: host.clone(),
            port,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
    req = req.header(hyper::header::HOST, authority);
    req = req.header(
        hyper::header::USER_AGENT,
        concat!("leap-edge/", env!("CARGO_PKG_VERSION")),
    );
    req = req.header(hyper::header::ACCEPT, "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if body.is_some() && !typed {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| TransportError::Http(e.to_string()))?;
    if https {
        let name = ServerName::try_from(bare.clone()).map_err(|e| TransportError::Tls {
            host: host.clone(),
            source: std::io::Error::other(e),
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| TransportError::Tls { host, source })?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<T>(io: T, req: Request<Full<Bytes>>) -> Result<Answer, TransportError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| TransportError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(http);
    let out = match resp {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| TransportError::Http(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: bytes,
            })
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}
