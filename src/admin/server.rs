//! The daemon side of the admin socket.

use super::protocol::{Request, Response, read_frame, write_frame};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;

/// What the daemon does with each request.
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// Bind the socket (replacing a stale one), restrict it to owner and group, and serve until
/// `shutdown`. The socket file is removed on the way out.
pub async fn serve<H: AdminHandler>(
    path: &Path,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a killed daemon would make bind fail; nobody else owns this path.
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    tokio::pin!(shutdown);
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            // One request per connection keeps the protocol trivial to reason about.
            let req = tokio::time::timeout(
                Duration::from_secs(5),
                read_frame::<_, Request>(&mut stream),
            )
            .await;
            let resp = match req {
                Ok(Ok(req)) => handler.handle(req).await,
                Ok(Err(e)) => Response::err(format!("bad request: {e}")),
                Err(_) => return,
            };
            let _ = write_frame(&mut stream, &resp).await;
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}
