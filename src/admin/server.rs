//! The daemon side of the admin socket.

use super::protocol::{Peer, Request, Response, read_frame, write_frame};
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Concurrent admin connections served; more are answered "busy" and closed, so a local
/// client that opens connections without end cannot exhaust the daemon's tasks or files.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// Reading a request and writing its reply must each end within this, and so must
/// handling it unless the handler gives the request a longer bound (a poll of Leap).
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "admin.socket = {0}: another process is listening on this socket; is leap-edge already running?"
    )]
    InUse(PathBuf),
    #[error(
        "admin.socket = {path}: a {what} is in the way, not a socket; leap-edge only replaces a stale socket. Move it away or choose another admin.socket"
    )]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("admin.socket = {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// The folder cannot be written: a restart will not fix it (exit 78).
    #[error(
        "admin.socket = {path}: {reason}; the service must be able to write its folder (under systemd, the unit's RuntimeDirectory /run/leap-edge, or a path listed in ReadWritePaths=)"
    )]
    NotWritable { path: PathBuf, reason: String },
}

impl SocketError {
    /// A problem with the configured path itself, which only a change can fix.
    pub(crate) fn is_config(&self) -> bool {
        matches!(self, SocketError::NotWritable { .. })
    }
}

/// What the daemon does with each request. `peer` is who sent it.
pub(crate) trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, req: Request, peer: Peer) -> impl Future<Output = Response> + Send;

    /// How long handling `req` may take before the client is told it did not finish.
    fn time_limit(&self, _req: &Request) -> Duration {
        EXCHANGE_TIMEOUT
    }
}

/// Bind the socket and restrict it to owner and group. A socket left by a killed daemon is
/// replaced; a live socket or any other kind of file at the path is refused.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |e: std::io::Error| {
        let (path, reason) = (path.to_path_buf(), e.to_string());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                SocketError::NotWritable { path, reason }
            }
            _ => SocketError::Io { path, reason },
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(meta) => {
            let t = meta.file_type();
            let what = if t.is_dir() {
                "directory"
            } else if t.is_symlink() {
                "symbolic link"
            } else if t.is_file() {
                "regular file"
            } else {
                "special file"
            };
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
                what,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Serve until `shutdown` is cancelled. The socket file is removed on the way out. Each
/// connection is a task of `tasks` (issue 16.5: the daemon awaits them at shutdown); one
/// still waiting for its request ends on `shutdown`, one being answered finishes.
pub(crate) async fn serve<H: AdminHandler>(
    listener: UnixListener,
    path: &Path,
    handler: Arc<H>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            busy(&stream);
            continue;
        };
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        tasks.spawn(async move {
            exchange(stream, &*handler, &shutdown).await;
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(path);
}

/// One request per connection keeps the protocol trivial to reason about.
async fn exchange<H: AdminHandler>(
    mut stream: UnixStream,
    handler: &H,
    shutdown: &CancellationToken,
) {
    let peer = stream
        .peer_cred()
        .map(|c| Peer {
            uid: Some(c.uid()),
            pid: c.pid(),
            signal: None,
        })
        .unwrap_or_default();
    let request = tokio::select! {
        r = tokio::time::timeout(EXCHANGE_TIMEOUT, read_frame::<_, Request>(&mut stream)) => r,
        _ = shutdown.cancelled() => return,
    };
    let resp = match request {
        Err(_) => return,
        Ok(Ok(req)) => {
            let limit = handler.time_limit(&req);
            tokio::time::timeout(limit, handler.handle(req, peer))
                .await
                .unwrap_or_else(|_| {
                    Response::err(format!(
                        "the daemon did not finish this request within {} s; it was stopped",
                        limit.as_secs()
                    ))
                })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
        Ok(Err(e)) => Response::err(format!("bad request: {e}")),
    };
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, write_frame(&mut stream, &resp)).await;
}

/// Over the cap: say so without waiting on the client (the frame fits any socket buffer).
fn busy(stream: &UnixStream) {
    tracing::warn!(
        max = MAX_CONNECTIONS,
        "admin connection refused: too many at once"
    );
    let resp = Response::err(format!(
        "the daemon is busy ({MAX_CONNECTIONS} admin connections open); try again"
    ));
    if let Ok(body) = serde_json::to_vec(&resp) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let _ = stream.try_write(&frame);
    }
}
