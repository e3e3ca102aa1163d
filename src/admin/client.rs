//! The CLI side of the admin socket.

use super::protocol::{OverrideRequest, Request, Response, read_frame, write_frame};
use super::state::{ClearReply, OverrideReply, ReloadReply, Reply, StatusReport};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the daemon is not running (nothing listens on {0}); `leap-edge status` tells how it was last run"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the leap-edge group")]
    Permission(PathBuf),
    #[error("admin socket {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the daemon did not answer in time (is it stopped or overloaded? `leap-edge status` says; an override not answered is not applied)"
    )]
    Timeout,
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error(
        "the daemon answered a {0} request with something else; is it a different leap-edge version?"
    )]
    Mismatch(&'static str),
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

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        match self.call(&Request::Status).await? {
            Reply::Status(s) => Ok(*s),
            _ => Err(ClientError::Mismatch("status")),
        }
    }

    pub async fn set_override(
        &self,
        mut req: OverrideRequest,
    ) -> Result<OverrideReply, ClientError> {
        let limit = Duration::from_secs(10);
        // The daemon must be done with it well before this client gives up: the answer
        // still has to travel back.
        let deadline = chrono::TimeDelta::seconds(8);
        req.expires_at = req
            .expires_at
            .or_else(|| chrono::Utc::now().checked_add_signed(deadline));
        match self.call_within(&Request::Override(req), limit).await? {
            Reply::Override(r) => Ok(r),
            _ => Err(ClientError::Mismatch("override")),
        }
    }

    pub(crate) async fn clear_override(
        &self,
        meter: Option<String>,
    ) -> Result<ClearReply, ClientError> {
        match self.call(&Request::OverrideClear { meter }).await? {
            Reply::Cleared(r) => Ok(r),
            _ => Err(ClientError::Mismatch("override clear")),
        }
    }

    pub(crate) async fn reload(&self) -> Result<ReloadReply, ClientError> {
        match self.call(&Request::Reload).await? {
            Reply::Reload(r) => Ok(r),
            _ => Err(ClientError::Mismatch("reload")),
        }
    }

    /// The polling backstop once, through the daemon. A poll with Leap's retries can take
    /// longer than the usual exchange, so the caller gives the limit.
    pub(crate) async fn leap_poll(
        &self,
        days: Option<u32>,
        limit: Duration,
    ) -> Result<crate::leap::poll::PollReport, ClientError> {
        match self.call_within(&Request::LeapPoll { days }, limit).await? {
            Reply::LeapPoll(r) => Ok(*r),
            _ => Err(ClientError::Mismatch("leap poll")),
        }
    }

    async fn call(&self, req: &Request) -> Result<Reply, ClientError> {
        self.call_within(req, Duration::from_secs(10)).await
    }

    async fn call_within(&self, req: &Request, limit: Duration) -> Result<Reply, ClientError> {
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
                        error: e,
                    },
                })?;
            let io = |error| ClientError::Io {
                path: self.path.clone(),
                error,
            };
            // A daemon at its connection cap answers "busy" and closes without reading:
            // the write then fails, but the answer is there to read.
            let written = write_frame(&mut s, req).await;
            let resp: Response = match read_frame(&mut s).await {
                Ok(r) => r,
                Err(e) => return Err(io(written.err().unwrap_or(e))),
            };
            match (resp.ok, resp.body) {
                (true, Some(body)) => Ok(body),
                (true, None) => Err(ClientError::Mismatch("any")),
                (false, _) => Err(ClientError::Refused(resp.error.unwrap_or_default())),
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}
