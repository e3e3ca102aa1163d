//! Messages on the admin socket and their framing.

use super::MAX_FRAME;
use super::state::Reply;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Override(OverrideRequest),
    OverrideClear {
        meter: Option<String>,
    },
    Reload,
    /// Run the Leap polling backstop once now (`leap-edge leap poll`).
    LeapPoll {
        days: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", content = "kw", rename_all = "kebab-case")]
pub enum OverrideAction {
    /// Battery idle: neither charge nor discharge.
    Hold,
    Charge(f64),
    Discharge(f64),
    /// Normal (self-consumption) operation, whatever Leap asks.
    Release,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OverrideRequest {
    /// A Leap meter id; None = every local meter.
    pub meter: Option<String>,
    pub action: OverrideAction,
    pub seconds: u64,
    /// When the client gives up waiting (set by [`super::AdminClient`]): a daemon that reads
    /// the request later refuses it, so an override the technician was told failed is
    /// never applied behind their back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The daemon's answer: a typed [`Reply`] or a refusal in words.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub(crate) ok: bool,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) body: Option<Reply>,
}

impl Response {
    pub(crate) fn ok(body: Reply) -> Response {
        Response {
            ok: true,
            error: None,
            body: Some(body),
        }
    }

    pub(crate) fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            body: None,
        }
    }
}

/// Who is on the other end of an admin connection (SO_PEERCRED), recorded with every
/// command that changes state (issue 10 point 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    pub(crate) uid: Option<u32>,
    pub(crate) pid: Option<i32>,
    /// A signal to the daemon itself (SIGHUP: reload), not a socket peer.
    pub(crate) signal: Option<&'static str>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(signal) = self.signal {
            return f.write_str(signal);
        }
        let uid = self.uid.map_or("unknown".to_string(), |u| u.to_string());
        let pid = self.pid.map_or("unknown".to_string(), |p| p.to_string());
        write!(f, "uid {uid} pid {pid}")
    }
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_FRAME {
        return Err(std::io::Error::other("message over the admin frame limit"));
    }
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await
}

pub(crate) async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("admin frame of {len} bytes is over the limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let req = Request::Override(OverrideRequest {
            meter: None,
            action: OverrideAction::Charge(3.5),
            seconds: 60,
            expires_at: Some(chrono::Utc::now()),
        });
        write_frame(&mut a, &req).await.unwrap();
        let got: Request = read_frame(&mut b).await.unwrap();
        assert_eq!(got, req);
        a.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame::<_, Request>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
