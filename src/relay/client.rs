//! A small HTTP/1.1 client for the relay's deliveries: plain HTTP to a loopback tunnel port
//! or to a Unix socket that `ssh -R` binds (`unix:/path`), or HTTPS trusting only the
//! gateway's own certificate (or its CA). One connection per
//! worker, reused while the gateway keeps it open; every step bounded by a timeout.

use super::config::GatewayConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach one gateway, checked once.
#[derive(Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    path: String,
    authority: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// `unix:/path`: the socket to connect to instead of host:port.
    unix: Option<std::path::PathBuf>,
}

/// At most this much of a gateway's answer is kept (for dead letters and logs).
const ANSWER_LIMIT: usize = 4096;

impl Target {
    /// Where posts go, whatever the spelling: two gateways with the same one would send
    /// one site's dispatches to the other, which accepts them (unmapped meters are stored).
    pub(crate) fn destination(&self) -> String {
        match &self.unix {
            Some(sock) => format!("unix:{}{}", sock.display(), self.path),
            // Behind one TLS front, sites are told apart by the name they are reached as.
            None => format!(
                "{}:{}{} {}",
                self.host.to_ascii_lowercase(),
                self.port,
                self.path,
                self.tls
                    .as_ref()
                    .map_or(String::new(), |(_, n)| format!("{n:?}"))
            ),
        }
    }

    pub(crate) fn parse(g: &GatewayConfig) -> Result<Target, String> {
        if let Some(sock) = g.url.strip_prefix("unix:") {
            if !sock.starts_with('/') {
                return Err("unix: needs an absolute socket path, e.g. unix:/run/leap-edge-relay/site-a.sock".into());
            }
            return Ok(Target {
                host: "localhost".into(),
                port: 0,
                path: g.path.clone(),
                authority: "localhost".into(),
                tls: None,
                unix: Some(sock.into()),
            });
        }
        let (https, rest) = if let Some(r) = g.url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = g.url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err("must start with http://, https:// or unix:".into());
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if path.is_empty() {
            // Every post to "/" would be a 404 dead letter: a forgotten path, not a choice.
            return Err(format!(
                "has no path: add the gateway's [server] path, e.g. {}/leap/dispatch (end it with / if the gateway really listens at the root)",
                g.url
            ));
        }
        let (host, port) = split_host_port(authority, if https { 443 } else { 80 })?;
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(
                "plain http is allowed only to a loopback address (a reverse-tunnel port); use https:// with ca"
                    .into(),
            );
        }
        let tls = if https {
            Some(connector(g, &host)?)
        } else {
            None
        };
        Ok(Target {
            host,
            port,
            path: path.to_string(),
            authority: authority.to_string(),
            tls,
            unix: None,
        })
    }

    /// POST `body` and return (status, answer text). `Err` = no HTTP answer (transient).
    pub(crate) async fn post(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        header: &str,
        key: &str,
        body: String,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let attempt = async {
            let sender = match conn.take() {
                Some(s) if s.is_ready() => s,
                _ => self.connect().await?,
            };
            let mut sender = sender;
            let req = hyper::Request::post(&self.path)
                .header("host", &self.authority)
                .header("content-type", "application/json")
                .header(
                    "user-agent",
                    concat!("leap-edge-relay/", env!("CARGO_PKG_VERSION")),
                )
                .header(header, key)
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("request: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status().as_u16();
            let answer = match Limited::new(resp.into_body(), ANSWER_LIMIT).collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => format!("(answer over {ANSWER_LIMIT} bytes)"),
            };
            *conn = Some(sender);
            Ok((status, answer))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => {
                *conn = None;
                Err(format!("no answer within {} s", timeout.as_secs()))
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(sock) = &self.unix {
            let s = tokio::net::UnixStream::connect(sock)
                .await
                .map_err(|e| format!("connect {}: {e}", sock.display()))?;
            return handshake(TokioIo::new(s)).await;
        }
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let s = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                handshake(TokioIo::new(s)).await
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in the host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => default,
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port {p:?}"))?,
        )),
        None if authority.is_empty() => Err("no host".into()),
        None => Ok((authority.to_string(), default)),
    }
}

fn connector(
    g: &GatewayConfig,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let ca =
        g.ca.as_ref()
            .ok_or("https needs ca = the gateway's certificate or CA (PEM): only it is trusted")?;
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| format!("ca {}: {e}", ca.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("ca {}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("ca {}: {e}", ca.display()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = g.tls_name.clone().unwrap_or_else(|| host.to_string());
    let name = ServerName::try_from(name).map_err(|e| format!("tls_name: {e}"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}
