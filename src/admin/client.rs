//! The CLI side of the admin socket.

use super::protocol::{Request, Response, read_frame, write_frame};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the daemon is not running (no socket at {0}); start it with `systemctl start leap-edge`"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the leap-edge group")]
    Permission(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon did not answer in time")]
    Timeout,
    #[error("the daemon refused: {0}")]
    Refused(String),
}

pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    pub fn new(path: &Path) -> AdminClient {
        AdminClient {
            path: path.to_path_buf(),
        }
    }

    pub async fn call(&self, req: &Request) -> Result<serde_json::Value, ClientError> {
        self.call_within(req, Duration::from_secs(10)).await
    }

    /// [`AdminClient::call`] for requests that take longer (a Leap poll with retries).
    pub async fn call_within(
        &self,
        req: &Request,
        limit: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let fut = async {
            let mut s = tokio::net::UnixStream::connect(&self.path)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning(self.path.clone())
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        ClientError::Permission(self.path.clone())
                    }
                    _ => ClientError::Io {
                        path: self.path.clone(),
                        source: e,
                    },
                })?;
            let io = |source| ClientError::Io {
                path: self.path.clone(),
                source,
            };
            write_frame(&mut s, req).await.map_err(io)?;
            let resp: Response = read_frame(&mut s).await.map_err(io)?;
            if resp.ok {
                Ok(resp.body)
            } else {
                Err(ClientError::Refused(resp.error.unwrap_or_default()))
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}
