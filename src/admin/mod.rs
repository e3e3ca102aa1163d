//! The local control socket: a Unix socket (mode 0660, for the `leap-edge` group) through
//! which the CLI asks the running daemon for its state and gives it commands. Frames are a
//! 4-byte big-endian length then JSON, capped in size so a bad client cannot make the
//! daemon allocate without bound. [`state`] is the one typed contract both sides use.

mod client;
mod protocol;
mod server;
pub mod state;

pub use client::{AdminClient, ClientError};
pub use protocol::{OverrideAction, OverrideRequest, Peer, Request, Response};
pub(crate) use server::{AdminHandler, EXCHANGE_TIMEOUT, SocketError, bind, serve};

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 1024 * 1024;
