//! The webhook server: hyper over TCP (plain on loopback behind a TLS-terminating tunnel, or
//! rustls). Bounded connections, each with deadlines (see [`conn`]), graceful drain on
//! shutdown. `/metrics` and `/healthz` have their own loopback listener (issue 10.2).

mod cert_expiry;
mod conn;
mod counts;
mod quiet;
mod routes;
pub(crate) mod tls;

pub(crate) use conn::ConnState;
pub(crate) use quiet::QuietLog;
pub(crate) use routes::{App, HEALTH_DB_WAIT, Role, WebhookSettings};
pub(crate) use routes::{
    Ingested, Intake, Received, error_response, ingest_body, json_response, receive_notification,
    refuse_ambiguous, unavailable,
};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr}: {source} (is another process using it? change server.listen or server.metrics_listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Connections at once on the metrics listener: a scraper and a health check or two.
const METRICS_CONNECTIONS: usize = 4;

/// The answer type of every handler.
pub(crate) type Response = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// The `[server]` settings a listener runs with: connection cap and deadlines (issue 10.1).
pub(crate) struct ServerLimits {
    max_connections: usize,
    conn: conn::Limits,
}

impl ServerLimits {
    pub(crate) fn of(s: &crate::config::ServerConfig) -> ServerLimits {
        ServerLimits {
            max_connections: s.max_connections,
            conn: conn::Limits {
                read: Duration::from_secs(s.read_timeout_secs),
                overall: Duration::from_secs(s.connection_max_secs),
            },
        }
    }
}

/// What the server asks of the side it serves: the gateway's [`App`] or the relay's. The
/// connection handling (cap, deadlines, write deadline, CL+TE scan, TLS, drain, quiet 401
/// logging) is the same for both.
pub(crate) trait Handler: Send + Sync + 'static {
    /// The `[server]` settings in force now (they can change on reload).
    fn limits(&self) -> ServerLimits;
    /// Requests without a valid key, logged at most once per interval (issue 10.8).
    fn unauthorized_log(&self) -> &QuietLog;
    /// One request. Call [`refuse_ambiguous`] first, and `conn.authorize()` once the key is
    /// valid ([`receive_notification`] does).
    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        role: Role,
        conn: Arc<ConnState>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Result<Response, std::convert::Infallible>> + Send;
}

impl Handler for App {
    fn limits(&self) -> ServerLimits {
        ServerLimits::of(&self.settings().server)
    }

    fn unauthorized_log(&self) -> &QuietLog {
        &self.unauthorized_log
    }

    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        role: Role,
        conn: Arc<ConnState>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Result<Response, std::convert::Infallible>> + Send {
        routes::handle(self, peer, role, conn, req)
    }
}

/// A connection slot. The 401 summary keeps its minute while every slot is held: 64
/// keyless clients at once is exactly when it matters.
async fn free_slot<H: Handler>(
    limit: &Arc<Semaphore>,
    summary: &mut tokio::time::Interval,
    app: &H,
) -> tokio::sync::OwnedSemaphorePermit {
    loop {
        tokio::select! {
            p = limit.clone().acquire_owned() => return p.expect("semaphore never closed"),
            _ = summary.tick() => app.unauthorized_log().summarise(),
        }
    }
}

/// Serve until `shutdown` resolves, then stop accepting and let in-flight requests finish
/// (bounded by the read timeout plus a margin).
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<tls::ReloadableTls>>,
    app: Arc<H>,
    role: Role,
    shutdown: impl Future<Output = ()>,
) {
    let limits = app.limits();
    let max = match role {
        Role::Webhook => limits.max_connections,
        Role::Metrics => METRICS_CONNECTIONS,
    };
    let limit = Arc::new(Semaphore::new(max));
    let read_timeout = limits.conn.read;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut summary = tokio::time::interval(quiet::INTERVAL);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = free_slot(&limit, &mut summary, &*app) => p,
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
            _ = summary.tick() => {
                drop(permit);
                app.unauthorized_log().summarise();
                continue;
            }
            _ = &mut shutdown => break,
        };
        let accepted = tokio::time::Instant::now();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(connection(
            stream,
            peer,
            acceptor,
            app.clone(),
            role,
            accepted,
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    app.unauthorized_log().summarise();
    // Every connection task holds a permit: all of them back means all connections ended.
    let drained = tokio::time::timeout(
        read_timeout + Duration::from_secs(2),
        limit.acquire_many(max as u32),
    );
    match drained.await {
        Ok(_) => tracing::info!(listener = role.name(), "connections drained"),
        Err(_) => tracing::warn!(
            listener = role.name(),
            "connections still open at shutdown; closing them"
        ),
    }
}

/// One accepted connection: TLS handshake (within the first deadline), then HTTP.
#[allow(clippy::too_many_arguments)]
async fn connection<H: Handler>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<H>,
    role: Role,
    accepted: tokio::time::Instant,
    stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let limits = app.limits().conn;
    let Some(acceptor) = acceptor else {
        return conn::serve(stream, app, peer, role, accepted, limits, stop).await;
    };
    // The handshake counts against the connection's first deadline.
    let deadline = accepted + limits.read;
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => conn::serve(s, app, peer, role, accepted, limits, stop).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
