//! The local control socket: a Unix socket (mode 0660, for the `leap-edge` group) through
//! which the CLI asks the running daemon for its state and gives it commands. Frames are a
//! 4-byte big-endian length then JSON, capped in size so a bad client cannot make the
//! daemon allocate without bound.

mod client;
mod protocol;
mod server;

pub use client::{AdminClient, ClientError};
pub use protocol::{OverrideAction, OverrideRequest, Request, Response};
pub use server::{AdminHandler, serve};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 1024 * 1024;
