//! The webhook server: hyper over TCP (plain on loopback behind a TLS-terminating tunnel, or
//! rustls). Bounded connections, header and body read timeouts, graceful drain on shutdown.

mod routes;
pub mod tls;

pub use routes::{App, StatusSource};
pub(crate) use routes::{
    Ingested, Received, error_response, ingest_body, json_response, receive_notification,
    unavailable,
};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr}: {source} (is another process using it? change server.listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// The answer type of every handler.
pub type Response = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// What the server asks of the side it serves: the gateway's [`App`] or the relay's handler.
/// The connection handling (limits, timeouts, TLS, drain) is the same for both.
pub trait Handler: Send + Sync + 'static {
    /// (max_connections, read_timeout) as configured now.
    fn limits(&self) -> (usize, Duration);
    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Result<Response, std::convert::Infallible>> + Send;
}

impl Handler for App {
    fn limits(&self) -> (usize, Duration) {
        let s = &self.config().server;
        (s.max_connections, Duration::from_secs(s.read_timeout_secs))
    }

    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Result<Response, std::convert::Infallible>> + Send {
        routes::handle(self, peer, req)
    }
}

/// Serve until `shutdown` resolves, then stop accepting and let in-flight requests finish
/// (bounded by the read timeout plus a margin).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let (max_connections, read_timeout) = app.limits();
    let limit = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| app.clone().handle(peer, req));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(true);
            let result = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(s), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("webhook connections drained"),
        _ = tokio::time::sleep(read_timeout + Duration::from_secs(2)) => {
            tracing::warn!("webhook connections still open at shutdown; closing them")
        }
    }
}
